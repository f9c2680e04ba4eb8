"""One prediction (A) against ground truth and, optionally, against a second prediction (B):
the numbers, error map, difference map and threshold curve the Debug dock shows and
``napari-ftu evaluate PRED TRUTH --compare B`` prints, and the CSV files both write."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ftu.atomic import write_text
from napari_ftu.evaluation.evaluate import (
    error_map,
    evaluate_image,
    load_annotations,
    object_rows,
    pair_by_id,
    report_csv,
    summarize,
)
from napari_ftu.evaluation.metrics import best_threshold, dice_curve
from napari_ftu.formats.annotations import Annotations, features_by_id

A_TRUTH, B_TRUTH, A_B = "A vs truth", "B vs truth", "A vs B"
ONLY_A, ONLY_B = 1, 2  # values of the difference map
OBJECT_KEYS = ["kind", "id", "iou", "area_px", "centroid_y", "centroid_x"]


def object_scores(labels: np.ndarray, prob: np.ndarray | None = None, features=None) -> dict:
    """Confidences for AP: a ``confidence`` column (with ``index``) when the objects carry one,
    else each object's mean probability, else none (every object then counts as 1).

    Parameters
    ----------
    labels : ndarray
        Instance labels.
    prob : ndarray, optional
        Probability map of the same shape.
    features : mapping, optional
        Per-object table (a napari layer's ``features``) with ``index`` and ``confidence``.

    Returns
    -------
    dict
        Object id -> confidence.
    """
    known = features_by_id(features)
    if known and all(s is not None for _, s in known.values()):  # the objects carry a confidence column
        return {i: s for i, (_, s) in known.items() if s == s}
    if prob is None:
        return {}
    from scipy import ndimage as ndi

    ids = np.unique(labels)
    ids = ids[ids > 0]
    return dict(zip(ids.tolist(), np.atleast_1d(ndi.mean(prob, labels, ids)).tolist())) if ids.size else {}


def compare(pred, truth=None, other=None, prob=None, iou_threshold: float = 0.5, scores=None,
            other_scores=None, pixels: bool = False) -> dict:
    """Everything the Debug dock shows for one image.

    Parameters
    ----------
    pred : ndarray
        Prediction A (instance labels).
    truth, other : ndarray, optional
        Ground truth and prediction B, both the shape of ``pred``; at least one is needed.
    prob : ndarray, optional
        A's probability map, for the Dice-vs-threshold curve.
    iou_threshold : float
        IoU at which two objects match.
    scores, other_scores : dict, optional
        Confidences of A's and B's objects (see :func:`object_scores`).
    pixels : bool
        Error map per pixel instead of per object.

    Returns
    -------
    dict
        ``columns`` (A vs truth, B vs truth, A vs B: those that apply) and their metric ``rows``;
        ``objects`` (A's FN/FP/TP table), ``errors`` (TP/FP/FN map), ``diff`` (only A / only B)
        and ``curve`` (thresholds, Dice, best), each ``None`` when it does not apply.
    """
    out = {"columns": [], "rows": [], "objects": [], "errors": None, "diff": None, "curve": None}
    a = Annotations("prediction", pred, scores=scores or {})
    if truth is not None:
        res = evaluate_image(a, Annotations("truth", truth), iou_threshold).classes["all"]
        out["columns"].append(A_TRUTH)
        out["rows"].append(res.row())
        out["objects"] = object_rows(pred, truth, res.table, res.counts)
        out["errors"] = error_map(pred, truth, None if pixels else res.counts)
        if prob is not None:
            thresholds, curve = dice_curve(prob, truth)
            out["curve"] = (thresholds, curve, best_threshold(thresholds, curve))
    if other is not None:
        if truth is not None:
            res_b = evaluate_image(Annotations("other", other, scores=other_scores or {}),
                                   Annotations("truth", truth), iou_threshold).classes["all"]
            out["columns"].append(B_TRUTH)
            out["rows"].append(res_b.row())
        agree = evaluate_image(a, Annotations("other", other), iou_threshold).classes["all"]
        out["columns"].append(A_B)
        out["rows"].append(agree.row())
        in_a, in_b = pred != 0, other != 0
        diff = np.zeros(pred.shape, np.uint8)
        diff[in_a & ~in_b], diff[in_b & ~in_a] = ONLY_A, ONLY_B
        out["diff"] = diff
    return out


def write_comparison(folder, result: dict) -> list[Path]:
    """``metrics.csv`` (one row per column), ``objects.csv`` and, with a curve,
    ``dice_vs_threshold.csv`` into ``folder``, each atomically."""
    folder = Path(folder)
    rows = [{**row, "image": col, "class": "all"} for col, row in zip(result["columns"], result["rows"])]
    written = [write_text(folder / "metrics.csv", report_csv(rows)),
               write_text(folder / "objects.csv", ",".join(OBJECT_KEYS) + "\n" + "".join(
                   ",".join(str(o[k]) for k in OBJECT_KEYS) + "\n" for o in result["objects"]))]
    if result["curve"] is not None:
        thresholds, curve, _ = result["curve"]
        written.append(write_text(folder / "dice_vs_threshold.csv", "threshold,dice\n" + "".join(
            f"{t:.4f},{d:.6f}\n" for t, d in zip(thresholds, curve))))
    return written


def compare_paths(pred, truth, other, pred_format=None, truth_format=None, other_format=None,
                  iou_threshold: float = 0.5, ap_iou: float = 0.6):
    """``evaluate PRED TRUTH --compare B``: A and B against the truth and against each other,
    image by image (paired by id), as the Debug dock computes them for one image.

    Returns
    -------
    tuple
        ``(image rows, summary rows, ids without a prediction)``; each row's ``group`` names its
        comparison (A vs truth, B vs truth, A vs B).
    """
    truths = load_annotations(truth, truth_format)
    shapes = {t.image_id: t.shape for t in truths}
    pairs_a, missing = pair_by_id(truths, load_annotations(pred, pred_format, shapes), pred)
    pairs_b, _ = pair_by_id(truths, load_annotations(other, other_format, shapes), other)
    results = {A_TRUTH: [], B_TRUTH: [], A_B: []}
    for (t, p), (_, b) in zip(pairs_a, pairs_b):
        results[A_TRUTH].append(evaluate_image(p, t, iou_threshold, ap_iou))
        results[B_TRUTH].append(evaluate_image(b, t, iou_threshold, ap_iou))
        results[A_B].append(evaluate_image(p, Annotations(t.image_id, b.labels), iou_threshold, ap_iou))
    image_rows, summary = [], []
    for name, res in results.items():
        for r in res:
            r.group = name
        image_rows += [row for r in res for row in r.rows() if row["class"] == "all"]
        summary += [{**row, "group": name} for row in summarize(res) if row["class"] == "all"]
    return image_rows, summary, missing
