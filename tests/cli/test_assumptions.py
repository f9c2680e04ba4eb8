"""Entry points that fall back to an assumed pixel size say so in one line: the value and the
flag that sets it (a real Sarder patch: a PNG without a pixel size)."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_ftu.cli import main
from napari_ftu.io.images import assumed_pixel_size

PATCH = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sarder_frozen_kidney_glomeruli" / "images"
         / "slide_O27_10_180_992.png")
needs_patch = pytest.mark.skipif(not PATCH.is_file(), reason="../shared/data/sarder_frozen_kidney_glomeruli absent")


def test_the_line_names_the_value_and_the_setting():
    assert assumed_pixel_size("a.png", None, 2.0, "the model's", "--um-per-px") == (
        2.0, "a.png has no pixel size; assumed 2 µm/px (the model's); set --um-per-px")
    assert assumed_pixel_size("a.png", 0.5, 2.0, "the model's", "--um-per-px") == (0.5, None)


@needs_patch
def test_segment_and_annotate_say_what_they_assume(tmp_path, capsys):
    assert main(["segment", str(PATCH), "--out", str(tmp_path / "s.csv"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"{PATCH.name} has no pixel size; assumed 2 µm/px (the model's); set --um-per-px" in err.splitlines()
    (tmp_path / "c.csv").write_text("x,y\n100,100\n")
    assert main(["annotate", str(PATCH), "--clicks", str(tmp_path / "c.csv"), "--out", str(tmp_path / "a.csv")]) == 0
    out = capsys.readouterr()
    assert out.err.splitlines() == [f"{PATCH.name} has no pixel size; assumed 1 µm/px (the default); set --um-per-px"]
    assert main(["segment", str(PATCH), "--out", str(tmp_path / "s2.csv"), "--device", "cpu",
                 "--um-per-px", "0.5"]) == 0
    assert "no pixel size" not in capsys.readouterr().err


@needs_patch
def test_a_batch_and_training_say_what_they_assume(tmp_path, capsys):
    folder = tmp_path / "patches"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    mask = PATCH.parents[1] / "masks" / PATCH.name.replace("slide_", "mask_")
    (folder / "images" / PATCH.name).symlink_to(PATCH)
    (folder / "masks" / mask.name).symlink_to(mask)
    assert main(["segment", str(folder / "images"), "--out", str(tmp_path / "batch"), "--device", "cpu"]) == 0
    assert ("1 slide(s) have no pixel size (O27_10_180_992); assumed 2 µm/px (the model's); set --um-per-px or a "
            "pixel_size column in a CSV") in capsys.readouterr().err.replace("slide_O27", "O27")
    assert main(["train", "--tiles", str(folder), "--out", str(tmp_path / "m"), "--steps", "1", "--hold-out-every",
                 "0", "--no-pretrained", "--encoder", "resnet18"]) == 0
    err = capsys.readouterr().err
    assert "1 training image(s) have no pixel size" in err and "set --data-um-per-px" in err


def test_a_pixel_size_far_outside_the_models_range_is_said_not_refused(tmp_path, capsys):
    from napari_ftu.io.images import write_tiff
    from napari_ftu.io.synthetic import make_slide
    from napari_ftu.models.card import scale_note
    from napari_ftu.models.loading import load_model

    card = load_model(None, device="cpu").card
    low, high = card.trained_on["um_per_px"]
    assert scale_note("a", low, card, "--um-per-px") is None and scale_note("a", high * 1.9, card, "x") is None
    rgb, _, _ = make_slide(256, 256, seed=3, um_per_px=high * 4)
    image = write_tiff(tmp_path / "coarse.tif", rgb, high * 4)
    assert main(["segment", str(image), "--out", str(tmp_path / "c.csv"), "--device", "cpu"]) == 0
    assert (f"coarse.tif is at {high * 4:g} µm/px, far outside the {low:g}–{high:g} µm/px the model was trained on; "
            "if the file's pixel size is wrong, set --um-per-px") in capsys.readouterr().err.splitlines()
