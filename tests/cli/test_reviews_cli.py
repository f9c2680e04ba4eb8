"""Headless learning from saved reviews: ``train --reviews`` and ``segment --keep-reviewed`` on a
real frozen H&E patch whose review sits beside it, as the Review dock saves it."""

import json
import shutil

import numpy as np
import pytest

from napari_ftu.boxes import from_corners
from napari_ftu.cli import main
from napari_ftu.review.autosave import SessionStore
from napari_ftu.review.session import ReviewSession


@pytest.fixture
def reviewed_patch(tmp_path, shared_data, default_model):
    from napari_ftu.engine.inference import segment
    from napari_ftu.io.images import read_image

    slide = tmp_path / "O27_2.png"
    shutil.copy(shared_data / "sarder_frozen_kidney_glomeruli" / "images" / "slide_O27_2_589_736.png", slide)
    labels = np.asarray(segment(read_image(slide).data[..., :3], default_model, um_per_px=3.0).labels, np.int32)
    session = ReviewSession(labels, um_per_px=3.0)
    ids = sorted(session.review.rows)
    assert len(ids) >= 2, "the built-in model finds objects on this patch"
    session.accept(ids[:1])
    session.reject(ids[1:2])
    session.mark_done(from_corners(0, 0, 64, 256))
    store = SessionStore(tmp_path / "O27_2.png.ftu", "O27_2 FTUs")
    store.save(session)
    store.release()
    return slide, session, ids


def test_train_from_reviews_then_segment_keeping_them(reviewed_patch, tmp_path, capsys):
    slide, session, ids = reviewed_patch
    model = tmp_path / "learned"
    assert main(["train", "--reviews", str(slide), "--out", str(model), "--steps", "4", "--crop", "128",
                 "--data-um-per-px", "3", "--threads", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "1 review(s): 2 reviewed objects, 1 regions marked done" in out
    card = json.loads((model / "model_card.json").read_text())
    assert card["notes"]["learned_from"]["slides"] == ["O27_2.png"]
    assert card["notes"]["learned_from"]["reviewed_objects"] == 2

    labels_out = tmp_path / "labels.tif"
    assert main(["segment", str(slide), "--model", str(model), "--out", str(tmp_path / "p.csv"), "--labels",
                 str(labels_out), "--um-per-px", "3", "--keep-reviewed", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["reviewed_kept"] == 1
    from napari_ftu.io.images import read_image

    result = np.asarray(read_image(labels_out).data)
    accepted = session.labels == ids[0]
    kept_ids = np.unique(result[accepted])
    assert len(kept_ids) == 1 and kept_ids[0] > 0 and np.array_equal(result == kept_ids[0], accepted)
    assert not np.isin(result[session.rejected == ids[1]], [0], invert=True).mean() >= 0.5


def test_keep_reviewed_without_a_review_is_one_clear_error(tmp_path, shared_data, capsys):
    slide = tmp_path / "p.png"
    shutil.copy(shared_data / "sarder_frozen_kidney_glomeruli" / "images" / "slide_O27_2_589_736.png", slide)
    assert main(["segment", str(slide), "--out", str(tmp_path / "p.csv"), "--keep-reviewed"]) == 2
    err = capsys.readouterr().err
    assert "p.png" in err and "no saved review" in err
    assert main(["train", "--reviews", str(slide), "--out", str(tmp_path / "m")]) == 2
    assert "no saved review" in capsys.readouterr().err
