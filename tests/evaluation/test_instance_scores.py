"""Panoptic quality (PQ = SQ × RQ) and the aggregated Jaccard index on hand-computed cases, and
against the ccf tiles' instance truth, where binary masks join touching glomeruli."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_ftu.evaluation.metrics import aggregated_jaccard, overlap_table, panoptic


def _scores(pred, truth):
    table = overlap_table(pred, truth)
    p = panoptic(table)
    return p.pq, p.sq, p.rq, aggregated_jaccard(table)


def test_identical_and_empty_images_score_one():
    labels = np.zeros((20, 20), np.int32)
    assert _scores(labels, labels) == (1.0, 1.0, 1.0, 1.0)
    labels[2:8, 2:8], labels[10:15, 10:18] = 1, 2
    assert _scores(labels, labels) == (1.0, 1.0, 1.0, 1.0)
    assert _scores(np.zeros_like(labels), labels) == (0.0, 0.0, 0.0, 0.0)


def test_a_shifted_square_and_a_false_object():
    truth = np.zeros((30, 30), np.int32)
    truth[0:10, 0:10] = 1
    pred = np.zeros_like(truth)
    pred[0:10, 2:12] = 1  # 80 shared pixels, 120 in the union: IoU 2/3
    pq, sq, rq, aji = _scores(pred, truth)
    assert (sq, rq, pq, aji) == pytest.approx((2 / 3, 1.0, 2 / 3, 80 / 120))
    pred[20:25, 20:30] = 2  # a false object of 50 px: half a miss in RQ, its area in AJI's union
    pq, sq, rq, aji = _scores(pred, truth)
    assert (sq, rq, pq, aji) == pytest.approx((2 / 3, 1 / 1.5, 4 / 9, 80 / 170))


def test_a_merge_of_two_touching_objects():
    """One prediction over two true squares: IoU 0.5 each is not a match (> 0.5 needed), so PQ is
    0; AJI pairs both truths with it and counts its pixels once per truth."""
    truth = np.zeros((10, 20), np.int32)
    truth[:, :10], truth[:, 10:] = 1, 2
    pred = (truth > 0).astype(np.int32)
    pq, sq, rq, aji = _scores(pred, truth)
    assert (pq, sq, rq) == (0.0, 0.0, 0.0)
    assert aji == pytest.approx((100 + 100) / (200 + 200))
    # A split (half an object found): IoU 0.5, no match either; AJI 100 / 200.
    half = np.zeros_like(truth)
    half[:, :10] = 1
    pq, sq, rq, aji = _scores(half, pred)
    assert (pq, rq) == (0.0, 0.0) and aji == pytest.approx(100 / 200)


def test_instance_truth_separates_what_binary_masks_join(shared_data, capsys):
    """ccf_test_33 holds two touching glomeruli: scored against itself as instances every score
    is 1; the binary mask, read as components, joins them, which PQ and AJI both see."""
    from napari_ftu.cli import main

    d = shared_data / "hubmap_ccf_kidney_glomeruli"
    inst, mask = d / "instances" / "ccf_test_33.png", d / "masks" / "ccf_test_33.png"
    assert main(["evaluate", str(inst), str(inst), "--json"]) == 0
    (s,) = json.loads(capsys.readouterr().out)["summary"]
    assert (s["pq"], s["sq"], s["rq"], s["aji"]) == (1.0, 1.0, 1.0, 1.0)
    assert main(["evaluate", str(mask), str(inst), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (s,) = report["summary"]
    assert (s["n_pred"], s["n_truth"]) == (4, 5)
    # Brute force, object pair by object pair: matches at IoU > 0.5.
    from scipy import ndimage as ndi

    from napari_ftu.io.images import read_image

    t = np.asarray(read_image(inst).data)
    p = ndi.label(np.asarray(read_image(mask).data) > 0)[0]
    ious = [[((p == i) & (t == j)).sum() / ((p == i) | (t == j)).sum() for j in range(1, 6)] for i in range(1, 5)]
    hits = [v for row in ious for v in row if v > 0.5]
    assert len(hits) == 4  # the joined component still matches the larger of its two glomeruli
    assert s["rq"] == pytest.approx(4 / (4 + 0.5 * 0 + 0.5 * 1))
    assert s["sq"] == pytest.approx(np.mean(hits)) and s["sq"] < 1
    assert s["pq"] == pytest.approx(s["sq"] * s["rq"])
    assert 0.5 < s["aji"] < 1.0
    assert report["images"][0]["pq"] == s["pq"]


def test_dataset_masks_may_be_16_bit_instance_images(shared_data, tmp_path, capsys):
    from napari_ftu.cli import main

    d = shared_data / "hubmap_ccf_kidney_glomeruli"
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    for i in ("ccf_test_33", "ccf_test_32"):
        (ds / "images" / f"{i}.jpg").symlink_to(d / "images" / f"{i}.jpg")
        (ds / "masks" / f"{i}.png").symlink_to(d / "instances" / f"{i}.png")
    pred = tmp_path / "pred"
    pred.mkdir()
    for i in ("ccf_test_33", "ccf_test_32"):
        (pred / f"{i}.png").symlink_to(d / "instances" / f"{i}.png")
    assert main(["evaluate", str(pred), str(ds), "--json"]) == 0
    (s,) = json.loads(capsys.readouterr().out)["summary"]
    assert s["n_truth"] == 5 + 6 and s["pq"] == 1.0 and s["aji"] == 1.0
