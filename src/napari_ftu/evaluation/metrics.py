"""Metrics against ground truth: pixel Dice/IoU, object matching, AP at IoU 0.6, threshold sweeps.

Competition definitions: HuBMAP scores the per-image Dice of the foreground (averaged over
images); the 2023 vasculature challenge scores average precision at IoU 0.6, computed as
COCO does (greedy matching by descending confidence, 101-point interpolated precision).
Object metrics work from a sparse overlap table (one entry per overlapping pair), never from
per-pair masks, so label images with thousands of objects stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's recThrs


def _foregrounds(pred, truth):
    pred, truth = np.asarray(pred) != 0, np.asarray(truth) != 0
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, truth {truth.shape}")
    return pred, truth


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice 2|X∩Y|/(|X|+|Y|) of the foregrounds (nonzero); 1.0 when both are empty."""
    pred, truth = _foregrounds(pred, truth)
    denom = int(pred.sum()) + int(truth.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / denom


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU |X∩Y|/|X∪Y| (Jaccard) of the foregrounds; 1.0 when both are empty."""
    pred, truth = _foregrounds(pred, truth)
    union = int(np.logical_or(pred, truth).sum())
    return 1.0 if union == 0 else int(np.logical_and(pred, truth).sum()) / union


# --- the overlap table -------------------------------------------------------------------------


@dataclass
class Overlap:
    """Objects of two label images and the pixel counts of every overlapping pair.

    ``pair_pred``/``pair_truth`` index into ``pred_ids``/``truth_ids``; ``inter`` is the
    shared pixel count of that pair. Everything else (Dice, IoU, matching) derives from it.
    """

    pred_ids: np.ndarray
    pred_areas: np.ndarray
    truth_ids: np.ndarray
    truth_areas: np.ndarray
    pair_pred: np.ndarray
    pair_truth: np.ndarray
    inter: np.ndarray

    def pair_iou(self) -> np.ndarray:
        union = self.pred_areas[self.pair_pred] + self.truth_areas[self.pair_truth] - self.inter
        return self.inter / np.maximum(union, 1)

    def subset(self, pred_keep: np.ndarray, truth_keep: np.ndarray) -> "Overlap":
        """The table restricted to some objects (boolean masks over the id arrays), e.g. one class."""
        pairs = pred_keep[self.pair_pred] & truth_keep[self.pair_truth]
        p_new = np.cumsum(pred_keep) - 1
        t_new = np.cumsum(truth_keep) - 1
        return Overlap(self.pred_ids[pred_keep], self.pred_areas[pred_keep], self.truth_ids[truth_keep],
                       self.truth_areas[truth_keep], p_new[self.pair_pred[pairs]], t_new[self.pair_truth[pairs]],
                       self.inter[pairs])

    def dice(self) -> float:
        denom = int(self.pred_areas.sum() + self.truth_areas.sum())
        return 1.0 if denom == 0 else 2.0 * int(self.inter.sum()) / denom

    def iou(self) -> float:
        inter = int(self.inter.sum())
        union = int(self.pred_areas.sum() + self.truth_areas.sum()) - inter
        return 1.0 if union == 0 else inter / union


def _ids_areas(labels: np.ndarray):
    ids, areas = np.unique(labels, return_counts=True)
    keep = ids != 0
    return ids[keep].astype(np.int64), areas[keep].astype(np.int64)


def overlap_table(pred: np.ndarray, truth: np.ndarray) -> Overlap:
    """The sparse overlap table of two instance label images (0 = background)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, truth {truth.shape}")
    pred_ids, pred_areas = _ids_areas(pred)
    truth_ids, truth_areas = _ids_areas(truth)
    both = (pred != 0) & (truth != 0)
    p = np.searchsorted(pred_ids, pred[both].astype(np.int64))
    t = np.searchsorted(truth_ids, truth[both].astype(np.int64))
    n_t = max(len(truth_ids), 1)
    keys, inter = np.unique(p * n_t + t, return_counts=True)  # one key per (pred, truth) pair
    return Overlap(pred_ids, pred_areas, truth_ids, truth_areas, keys // n_t, keys % n_t, inter.astype(np.int64))


# --- object matching ---------------------------------------------------------------------------


@dataclass
class Matching:
    """One-to-one matches at an IoU threshold. ``pred_tp`` marks each prediction (in
    ``pred_ids`` order) that matched; ``pairs`` holds ``(pred id, truth id, IoU)`` per match."""

    pred_ids: np.ndarray
    truth_ids: np.ndarray
    pred_tp: np.ndarray
    truth_tp: np.ndarray
    scores: np.ndarray
    pairs: list = field(default_factory=list)
    iou_threshold: float = 0.5

    @property
    def tp(self) -> int:
        return int(self.pred_tp.sum())

    @property
    def fp(self) -> int:
        return int((~self.pred_tp).sum())

    @property
    def fn(self) -> int:
        return int((~self.truth_tp).sum())

    @property
    def fp_ids(self) -> np.ndarray:
        return self.pred_ids[~self.pred_tp]

    @property
    def fn_ids(self) -> np.ndarray:
        return self.truth_ids[~self.truth_tp]

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)


def _ratio(a: int, b: int) -> float:
    """a / b, with 1.0 for 0 / 0: nothing to find and nothing claimed is a perfect result."""
    return 1.0 if b == 0 else a / b


def match(table: Overlap, iou_threshold: float = 0.5, scores=None) -> Matching:
    """Match predictions to truth one-to-one where IoU >= ``iou_threshold``.

    With ``scores`` (one per prediction, ``pred_ids`` order) predictions are taken by
    descending score and each takes the unmatched truth of highest IoU — COCOeval's rule.
    Without scores, pairs are taken by descending IoU.
    """
    n_pred = len(table.pred_ids)
    ious = table.pair_iou()
    thr = min(float(iou_threshold), 1 - 1e-10)  # as COCOeval
    cand = np.flatnonzero(ious >= thr)
    if scores is None:
        score_arr = np.ones(n_pred)
        order = cand[np.argsort(-ious[cand], kind="stable")]
    else:
        score_arr = np.asarray(scores, dtype=float).reshape(-1)
        if score_arr.size != n_pred:
            raise ValueError(f"{score_arr.size} scores for {n_pred} predictions")
        rank = np.empty(n_pred, np.int64)
        rank[np.argsort(-score_arr, kind="mergesort")] = np.arange(n_pred)
        order = cand[np.lexsort((-ious[cand], rank[table.pair_pred[cand]]))]
    pred_tp = np.zeros(n_pred, bool)
    truth_tp = np.zeros(len(table.truth_ids), bool)
    pairs = []
    for k in order:
        p, t = table.pair_pred[k], table.pair_truth[k]
        if not pred_tp[p] and not truth_tp[t]:
            pred_tp[p] = truth_tp[t] = True
            pairs.append((int(table.pred_ids[p]), int(table.truth_ids[t]), float(ious[k])))
    return Matching(table.pred_ids, table.truth_ids, pred_tp, truth_tp, score_arr, pairs, float(iou_threshold))


def match_objects(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5, scores=None) -> Matching:
    """:func:`match` on two label images; ``scores`` may be a dict id -> confidence."""
    table = overlap_table(pred, truth)
    if isinstance(scores, dict):
        scores = [scores.get(int(i), 1.0) for i in table.pred_ids]
    return match(table, iou_threshold, scores)


def average_precision(matchings) -> float:
    """COCO average precision of one or many images' matchings, detections ranked together.

    Precision is made monotone from the right and read at 101 recall points; NaN when
    there is no ground-truth object (COCO leaves such a class out of its mean).
    """
    matchings = [matchings] if isinstance(matchings, Matching) else list(matchings)
    n_truth = sum(len(m.truth_ids) for m in matchings)
    if n_truth == 0:
        return float("nan")
    if not matchings or sum(len(m.pred_ids) for m in matchings) == 0:
        return 0.0
    scores = np.concatenate([m.scores for m in matchings])
    hits = np.concatenate([m.pred_tp for m in matchings])[np.argsort(-scores, kind="mergesort")]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    recall = tp / n_truth
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean())


# --- instance-segmentation scores --------------------------------------------------------------


@dataclass
class Panoptic:
    """Panoptic quality of one image (Kirillov et al. 2019): objects match when IoU > 0.5,
    which makes matches unique; SQ is the mean IoU of the matches, RQ their F1, PQ = SQ × RQ."""

    tp: int
    fp: int
    fn: int
    iou_sum: float

    @property
    def sq(self) -> float:
        if self.tp + self.fp + self.fn == 0:
            return 1.0  # nothing to find, nothing claimed
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def rq(self) -> float:
        return _ratio(self.tp, self.tp + 0.5 * self.fp + 0.5 * self.fn)

    @property
    def pq(self) -> float:
        return self.sq * self.rq


def panoptic(table: Overlap) -> Panoptic:
    """:class:`Panoptic` of two label images' overlap table."""
    ious = table.pair_iou()
    hit = ious > 0.5
    tp = int(hit.sum())
    return Panoptic(tp, len(table.pred_ids) - tp, len(table.truth_ids) - tp, float(ious[hit].sum()))


def aggregated_jaccard(table: Overlap) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017): each true object is paired with the predicted
    object of highest IoU (a prediction may serve several), intersections and unions are summed,
    and every prediction never chosen adds its area to the union. Penalises both merges and
    splits, unlike counts at one IoU threshold; 1.0 when both images are empty."""
    ious = table.pair_iou()
    inter_sum, union_sum = 0, 0
    used = np.zeros(len(table.pred_ids), bool)
    best = np.full(len(table.truth_ids), -1, np.int64)
    best_iou = np.full(len(table.truth_ids), -1.0)
    for k in range(len(ious)):  # first pair of highest IoU per true object
        t = table.pair_truth[k]
        if ious[k] > best_iou[t]:
            best_iou[t], best[t] = ious[k], k
    for t in range(len(table.truth_ids)):
        k = best[t]
        if k < 0:
            union_sum += int(table.truth_areas[t])
            continue
        p = table.pair_pred[k]
        used[p] = True
        inter_sum += int(table.inter[k])
        union_sum += int(table.truth_areas[t] + table.pred_areas[p] - table.inter[k])
    union_sum += int(table.pred_areas[~used].sum())
    return 1.0 if union_sum == 0 else inter_sum / union_sum


# --- probability threshold sweep ---------------------------------------------------------------


def dice_curve(prob: np.ndarray, truth: np.ndarray, thresholds=None, chunk: int = 1 << 22):
    """Dice of ``prob >= t`` against the truth's foreground for every threshold ``t``, exactly,
    in one pass: each pixel is counted in the bin of thresholds it passes (two histograms)
    instead of thresholding the map once per value. This is the raw threshold's Dice: instances
    made from it may also fill holes and drop small objects. Returns ``(thresholds, dice)``."""
    thresholds = np.linspace(0.01, 0.99, 99) if thresholds is None else np.sort(np.asarray(thresholds, float))
    prob, truth = np.asarray(prob).reshape(-1), np.asarray(truth).reshape(-1)
    if prob.shape != truth.shape:
        raise ValueError(f"sizes differ: probability {prob.size} px, truth {truth.size} px")
    n = len(thresholds)
    all_hist = np.zeros(n + 1, np.int64)
    fg_hist = np.zeros(n + 1, np.int64)
    for start in range(0, prob.size, chunk):
        k = np.searchsorted(thresholds, prob[start : start + chunk], side="right")  # thresholds passed
        all_hist += np.bincount(k, minlength=n + 1)
        fg_hist += np.bincount(k[truth[start : start + chunk] != 0], minlength=n + 1)
    # Pixel in bin k passes thresholds 0..k-1: counts at threshold j are the sums over bins > j.
    pred_size = np.cumsum(all_hist[::-1])[::-1][1:]
    inter = np.cumsum(fg_hist[::-1])[::-1][1:]
    truth_size = int(fg_hist.sum())
    denom = pred_size + truth_size
    return thresholds, np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 1.0)


def best_threshold(thresholds, scores) -> tuple[float, float]:
    """The threshold of the highest score (the first one on ties) and that score."""
    k = int(np.argmax(scores))
    return float(thresholds[k]), float(scores[k])
