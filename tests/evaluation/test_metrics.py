"""Metrics on constructed cases with known answers, the COCOeval cross-check on the real
vasculature ground truth, and ``napari-ftu evaluate``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ftu.evaluation.metrics import (
    average_precision,
    best_threshold,
    dice,
    dice_curve,
    iou,
    match,
    match_objects,
    overlap_table,
)
from napari_ftu.formats.annotations import Annotations


def _square(shape, y, x, size, value=1, out=None):
    out = np.zeros(shape, np.int32) if out is None else out
    out[y : y + size, x : x + size] = value
    return out


# --- constructed cases -------------------------------------------------------------------------


def test_dice_and_iou_of_shifted_squares():
    truth = _square((40, 40), 5, 5, 10)
    pred = _square((40, 40), 5, 7, 10)  # 80 shared pixels of 100 + 100
    assert dice(pred, truth) == pytest.approx(0.8)
    assert iou(pred, truth) == pytest.approx(80 / 120)
    assert dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0 and iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert dice(truth, np.zeros_like(truth)) == 0.0 and iou(truth, np.zeros_like(truth)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        iou(truth, truth[:-1])


def test_overlap_table_counts_every_pair_with_huge_sparse_ids():
    truth = _square((30, 30), 0, 0, 10, value=7)
    _square((30, 30), 20, 20, 5, value=3, out=truth)
    pred = _square((30, 30), 0, 5, 10, value=2_000_000_000)  # 50 px on truth 7
    _square((30, 30), 15, 15, 10, value=5, out=pred)  # 25 px on truth 3
    t = overlap_table(pred, truth)
    assert t.pred_ids.tolist() == [5, 2_000_000_000] and t.truth_ids.tolist() == [3, 7]
    assert t.pred_areas.tolist() == [100, 100] and t.truth_areas.tolist() == [25, 100]
    pairs = {(int(t.pred_ids[p]), int(t.truth_ids[q])): int(n) for p, q, n in zip(t.pair_pred, t.pair_truth, t.inter)}
    assert pairs == {(2_000_000_000, 7): 50, (5, 3): 25}
    assert t.dice() == pytest.approx(dice(pred, truth))
    assert t.iou() == pytest.approx(iou(pred, truth))
    assert sorted(t.pair_iou().tolist()) == pytest.approx([25 / 100, 50 / 150])


def test_matching_counts_at_a_threshold():
    truth = _square((60, 60), 0, 0, 10, 1)
    _square((60, 60), 20, 0, 10, 2, out=truth)
    _square((60, 60), 40, 40, 10, 3, out=truth)  # missed: FN
    pred = _square((60, 60), 0, 2, 10, 1)  # IoU 80/120 = 0.667 with truth 1
    _square((60, 60), 20, 0, 10, 2, out=pred)  # exact: IoU 1
    _square((60, 60), 40, 0, 8, 3, out=pred)  # on nothing: FP
    m = match_objects(pred, truth, 0.6)
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    assert m.fp_ids.tolist() == [3] and m.fn_ids.tolist() == [3]
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 / 3)
    strict = match_objects(pred, truth, 0.7)  # the shifted square no longer counts
    assert (strict.tp, strict.fp, strict.fn) == (1, 2, 2)
    assert sorted(p[:2] for p in m.pairs) == [(1, 1), (2, 2)]


def test_one_truth_is_matched_once_and_by_the_most_confident_prediction():
    truth = _square((20, 20), 0, 0, 10, 1)
    pred = np.zeros((20, 20), np.int32)
    pred[0:10, 0:9] = 1  # IoU 0.9
    pred[0:10, 9:10] = 2  # IoU 0.1: below any threshold
    m = match_objects(pred, truth, 0.5, scores={1: 0.2, 2: 0.9})
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    # Two predictions above the threshold on one truth: the more confident one takes it
    # (COCO's order), even when the other overlaps more.
    pred2 = np.zeros((20, 20), np.int32)
    pred2[0:10, 0:9] = 1  # IoU 0.9
    pred2[0:11, 9:10] = 2  # 11 px, 10 on the truth: IoU 10 / 101
    pred2[10, 0:9] = 2  # 20 px in all: IoU 10 / 110
    table = overlap_table(pred2, truth)
    by_score = match(table, 0.05, [0.1, 0.9])
    assert by_score.pairs[0][:2] == (2, 1) and by_score.fp_ids.tolist() == [1]
    assert match(table, 0.05).pairs[0][:2] == (1, 1)  # without scores: the better overlap wins
    with pytest.raises(ValueError, match="2 predictions"):
        match(table, 0.5, [1.0])


def test_average_precision_hand_computed():
    # Three truths; ranked predictions hit, miss, hit: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3.
    # Interpolated: 1.0 at the 34 recall points 0..0.33, 2/3 at the 33 points 0.34..0.66, 0 beyond.
    shape = (40, 40)
    truth = np.zeros(shape, np.int32)
    for k in range(3):
        _square(shape, 12 * k, 0, 8, k + 1, out=truth)
    pred = np.zeros(shape, np.int32)
    _square(shape, 0, 0, 8, 1, out=pred)  # on truth 1
    _square(shape, 0, 30, 8, 2, out=pred)  # nowhere
    _square(shape, 12, 0, 8, 3, out=pred)  # on truth 2
    m = match_objects(pred, truth, 0.6, scores={1: 0.9, 2: 0.8, 3: 0.7})
    assert average_precision(m) == pytest.approx((34 * 1 + 33 * 2 / 3) / 101)
    # The false object ranked last no longer hurts: precision 1 up to recall 2/3.
    m = match_objects(pred, truth, 0.6, scores={1: 0.9, 2: 0.1, 3: 0.7})
    assert average_precision(m) == pytest.approx(67 / 101)
    assert average_precision(match_objects(truth, truth, 0.6)) == 1.0
    assert average_precision(match_objects(np.zeros(shape, int), truth, 0.6)) == 0.0
    assert np.isnan(average_precision(match_objects(pred, np.zeros(shape, int), 0.6)))


def test_dice_curve_equals_thresholding_one_by_one(rng):
    truth = ndi.gaussian_filter(rng.random((120, 130)), 4) > 0.5
    prob = np.clip(ndi.gaussian_filter(truth.astype(float), 3) + rng.normal(0, 0.15, truth.shape), 0, 1)
    thresholds, curve = dice_curve(prob.astype(np.float32), truth, chunk=5000)  # several chunks
    assert thresholds[0] == pytest.approx(0.01) and len(thresholds) == 99
    brute = [dice(prob.astype(np.float32) >= t, truth) for t in thresholds]
    assert curve == pytest.approx(brute, abs=1e-12)
    t, best = best_threshold(thresholds, curve)
    assert best == pytest.approx(max(brute)) and t == pytest.approx(thresholds[int(np.argmax(brute))])
    assert 0.2 < t < 0.8  # a blurred copy of the truth is best cut near its middle


# --- the COCOeval cross-check on real data -----------------------------------------------------


def _perturbed(truth: np.ndarray, rng) -> tuple[np.ndarray, dict]:
    """A prediction from the truth: objects dropped, dilated, eroded, shifted, false ones added;
    random confidences."""
    pred = np.zeros_like(truth)
    next_id = 1
    for obj in np.unique(truth)[1:]:
        mask = truth == obj
        kind = rng.choice(["drop", "keep", "dilate", "erode", "shift"], p=[0.15, 0.2, 0.25, 0.25, 0.15])
        if kind == "drop":
            continue
        if kind == "dilate":
            mask = ndi.binary_dilation(mask, iterations=int(rng.integers(1, 6)))
        elif kind == "erode":
            mask = ndi.binary_erosion(mask, iterations=int(rng.integers(1, 5)))
        elif kind == "shift":
            mask = np.roll(mask, tuple(rng.integers(-6, 7, 2)), axis=(0, 1))
        pred[mask] = next_id
        next_id += 1
    for _ in range(int(rng.integers(1, 5))):  # false objects
        y, x = rng.integers(20, truth.shape[0] - 20, 2)
        yy, xx = np.ogrid[: truth.shape[0], : truth.shape[1]]
        pred[(yy - y) ** 2 + (xx - x) ** 2 <= rng.integers(4, 15) ** 2] = next_id
        next_id += 1
    ids = np.unique(pred)[1:]
    return pred, {int(i): float(rng.random()) for i in ids}


def _coco_eval_ap(truths, preds, scores, image_ids=None):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask):
        return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))

    images, gts, dts = [], [], []
    for n, (t, p) in enumerate(zip(truths, preds), start=1):
        images.append({"id": n, "height": t.shape[0], "width": t.shape[1]})
        for i in np.unique(t)[1:]:
            r = rle(t == i)
            gts.append({"id": len(gts) + 1, "image_id": n, "category_id": 1, "segmentation": r,
                        "area": float(mask_utils.area(r)), "bbox": mask_utils.toBbox(r).tolist(), "iscrowd": 0})
        for i in np.unique(p)[1:]:
            dts.append({"image_id": n, "category_id": 1, "segmentation": rle(p == i), "score": scores[n - 1][int(i)]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1, "name": "blood_vessel"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(dts)
    ev = COCOeval(gt, dt, "segm")
    ev.params.iouThrs = np.array([0.6])
    ev.params.maxDets = [10000]
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    if image_ids is not None:
        ev.params.imgIds = image_ids
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, 0, 0, 0]
    return float(precision[precision > -1].mean()) if (precision > -1).any() else float("nan")


def test_ap_at_iou_06_equals_pycocotools_on_the_vasculature_truth(shared_data):
    from napari_ftu.formats.json_formats import read_coco

    coco = shared_data / "hubmap2023_vasculature" / "annotations_blood_vessel_coco.json"
    truths = [a.labels for a in read_coco(coco)]
    assert len(truths) == 8 and sum(len(np.unique(t)) - 1 for t in truths) >= 70
    rng = np.random.default_rng(20230601)
    preds, scores = zip(*(_perturbed(t, rng) for t in truths))
    matchings = [match_objects(p, t, 0.6, s) for p, t, s in zip(preds, truths, scores)]
    ours = average_precision(matchings)  # pooled: detections of all 8 tiles ranked together
    theirs = _coco_eval_ap(truths, preds, scores)
    per_image = [(average_precision(m), _coco_eval_ap(truths, preds, scores, [n]))
                 for n, m in enumerate(matchings, start=1)]
    print(f"\nAP@0.6 pooled over 8 tiles: ours {ours:.10f}, COCOeval {theirs:.10f}; "
          f"per tile: {[(round(a, 6), round(b, 6)) for a, b in per_image]}")
    assert 0.2 < ours < 0.95  # the perturbation is neither trivial nor hopeless
    assert ours == pytest.approx(theirs, abs=1e-6)
    for a, b in per_image:
        assert a == pytest.approx(b, abs=1e-6)
    assert len({round(a, 6) for a, _ in per_image}) > 3  # the tiles really differ


# --- napari-ftu evaluate -----------------------------------------------------------------------


def test_cli_evaluate_label_images_and_coco(tmp_path, small_slide, capsys):
    from napari_ftu.cli import main
    from napari_ftu.formats.export import export_annotations
    from napari_ftu.io.images import write_tiff

    _, truth, _ = small_slide
    rng = np.random.default_rng(5)
    pred, scores = _perturbed(truth, rng)
    write_tiff(tmp_path / "gt.tif", truth.astype(np.uint16))
    write_tiff(tmp_path / "pred.tif", pred.astype(np.uint16))
    assert main(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif"), "--json",
                 "--out", str(tmp_path / "report.csv")]) == 0
    out = json.loads(capsys.readouterr().out)
    summary = out["summary"][0]
    m = match_objects(pred, truth, 0.5)
    assert summary["dice"] == pytest.approx(dice(pred, truth)) and summary["iou"] == pytest.approx(iou(pred, truth))
    assert (summary["tp"], summary["fp"], summary["fn"]) == (m.tp, m.fp, m.fn)
    rows = list(csv.DictReader(open(tmp_path / "report.csv")))
    assert [r["image"] for r in rows] == ["gt", "(summary)"]
    assert float(rows[0]["dice"]) == pytest.approx(dice(pred, truth), abs=1e-6)

    # The same prediction as a COCO file with confidences: AP now follows them.
    export_annotations(Annotations("gt", pred, scores=scores), tmp_path / "pred.json", "coco")
    assert main(["evaluate", str(tmp_path / "pred.json"), str(tmp_path / "gt.tif"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"][0]
    assert summary["ap"] == pytest.approx(average_precision(match_objects(pred, truth, 0.6, scores)))
    assert summary["n_pred"] == len(scores)

    assert main(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif"), "--out",
                 str(tmp_path / "report.csv")]) == 2  # exists, no --overwrite
    assert main(["evaluate", str(tmp_path / "missing.tif"), str(tmp_path / "gt.tif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("napari-ftu: error:") for line in err)


def test_cli_evaluate_folders_per_image_rows_and_summary(tmp_path, capsys):
    from napari_ftu.cli import main
    from napari_ftu.io.images import write_tiff

    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    truth_a = _square((50, 50), 0, 0, 10)
    truth_b = _square((50, 50), 20, 20, 10)
    write_tiff(tmp_path / "gt" / "a.tif", (truth_a * 255).astype(np.uint8))  # binary masks
    write_tiff(tmp_path / "gt" / "b.tif", (truth_b * 255).astype(np.uint8))
    write_tiff(tmp_path / "pred" / "a.tif", (truth_a * 255).astype(np.uint8))  # perfect on a, b missing
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json",
                 "--out", str(tmp_path / "r.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["dice"] for r in out["images"]] == [1.0, 0.0]
    assert out["missing_predictions"] == ["b"]
    assert out["summary"][0]["dice"] == 0.5 and out["summary"][0]["fn"] == 1
    assert json.loads((tmp_path / "r.json").read_text())["summary"] == out["summary"]


def test_metrics_stay_qt_free():
    code = ("import sys, napari_ftu.evaluation.metrics, napari_ftu.evaluation.evaluate, napari_ftu.evaluation.plots\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'qtpy', 'PyQt5', 'PyQt6', 'PySide2', "
            "'PySide6', 'napari', 'magicgui', 'matplotlib'})\nprint(bad)\nsys.exit(1 if bad else 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_evaluate_hubmap_train_csv_summarises_per_organ(tmp_path, capsys):
    from napari_ftu.cli import main
    from napari_ftu.formats.export import export_annotations
    from napari_ftu.io.images import write_tiff

    truth = {"k1": _square((40, 40), 0, 0, 10), "s1": _square((40, 40), 5, 5, 20)}
    organs = {"k1": "kidney", "s1": "spleen"}
    items = [Annotations(i, m, meta={"organ": organs[i], "data_source": "HPA", "pixel_size": "0.4"})
             for i, m in truth.items()]
    export_annotations(items, tmp_path / "train.csv", "hubmap-train")
    (tmp_path / "pred").mkdir()
    write_tiff(tmp_path / "pred" / "k1.tif", (truth["k1"] * 255).astype(np.uint8))
    write_tiff(tmp_path / "pred" / "s1.tif", (_square((40, 40), 5, 5, 10) * 255).astype(np.uint8))
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "train.csv"), "--json"]) == 0
    summary = {(r["group"], r["class"]): r for r in json.loads(capsys.readouterr().out)["summary"]}
    assert summary[("kidney", "all")]["dice"] == 1.0
    assert summary[("spleen", "all")]["dice"] == pytest.approx(2 * 100 / (100 + 400))
    assert summary[("all", "all")]["dice"] == pytest.approx((1.0 + 0.4) / 2)
    assert summary[("spleen", "all")]["fn"] == 1 and summary[("spleen", "all")]["fp"] == 1  # IoU 0.25
