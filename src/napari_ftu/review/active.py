"""The active review queue: what a look is worth, so a reviewer's minutes go where the model is
least sure, and the places it may have missed are offered too.

An object's *doubt* is how close its confidence lies to the threshold (0: a coin toss, 1: sure),
lowered when the last two models disagree on it (their overlap). *Possible misses* are regions
of high but sub-threshold probability outside every object: one key turns such a candidate into
an accepted object. "by confidence" and "by position" stay as orders to compare against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ORDERS = ("most doubtful first", "low confidence first", "by position")
MISS_LOW = 0.5  # candidates: probability from this share of the threshold up to the threshold


@dataclass
class Candidate:
    """A possible miss: a region the model almost called an FTU.

    Parameters
    ----------
    box : Box
        In label coordinates.
    mask : ndarray
        Boolean, the box's size.
    confidence : float
        The region's mean probability.
    """

    box: tuple
    mask: np.ndarray
    confidence: float

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())

    @property
    def centroid(self) -> tuple[float, float]:
        rr, cc = np.nonzero(self.mask)
        return self.box[0].start + float(rr.mean()), self.box[1].start + float(cc.mean())


def doubt(confidence: float, threshold: float, agreement: float = 1.0) -> float:
    """0 for an object at the threshold (or one the models disagree on), 1 for a certain one;
    NaN confidence (drawn objects) counts as certain.

    Parameters
    ----------
    confidence : float or None
        The object's mean probability.
    threshold : float
        The probability threshold objects were cut at.
    agreement : float
        How far the previous model agrees on the object (:func:`agreement`), 0 to 1.

    Returns
    -------
    float
    """
    if confidence is None or math.isnan(confidence):
        return 1.0
    span = (1 - threshold) if confidence >= threshold else threshold
    return min(1.0, abs(confidence - threshold) / max(span, 1e-6)) * float(np.clip(agreement, 0, 1))


def agreement(labels: np.ndarray, previous: np.ndarray | None, box, obj: int) -> float:
    """Intersection over union of object ``obj`` with whatever ``previous`` labels cover there
    (1 when there is no previous prediction).

    Parameters
    ----------
    labels : numpy.ndarray
        The current labels.
    previous : numpy.ndarray or None
        The labels before the last re-prediction.
    box : Box
        The object's box.
    obj : int
        The object's id in ``labels``.

    Returns
    -------
    float
    """
    if previous is None:
        return 1.0
    mine = np.asarray(labels[box]) == obj
    theirs = np.asarray(previous[box]) > 0
    union = (mine | theirs).sum()
    return float((mine & theirs).sum() / union) if union else 1.0


def order(rows: list, how: str, threshold: float = 0.5, agreements: dict | None = None) -> list:
    """``rows`` (review :class:`~napari_ftu.review.table.Row` or anything with ``id``,
    ``confidence``, ``centroid``) in the order ``how`` (one of :data:`ORDERS`).

    Parameters
    ----------
    rows : list
    how : str
        One of :data:`ORDERS`.
    threshold : float
        The probability threshold, for "most doubtful first".
    agreements : dict, optional
        Object id -> :func:`agreement`, for "most doubtful first".

    Returns
    -------
    list
    """
    if how == "most doubtful first":
        agreements = agreements or {}
        return sorted(rows, key=lambda r: (doubt(r.confidence, threshold, agreements.get(r.id, 1.0)), r.id))
    if how == "low confidence first":
        return sorted(rows, key=lambda r: (math.inf if math.isnan(r.confidence) else r.confidence, r.id))
    if how == "by position":
        return sorted(rows, key=lambda r: (round(r.centroid[0]) // 256, r.centroid[1], r.id))
    raise ValueError(f"unknown order {how!r}; one of {ORDERS}")


def possible_misses(prob: np.ndarray, labels: np.ndarray, threshold: float, min_area_px: int,
                    low: float = MISS_LOW, blocked: np.ndarray | None = None, scale: float = 1.0) -> list[Candidate]:
    """Regions where ``low × threshold <= prob < threshold`` outside every object (and outside
    ``blocked``: rejected objects, regions marked done) of at least ``min_area_px``; the most
    probable first. ``prob`` is on the labels' grid; ``scale`` is its value of probability 1.

    Parameters
    ----------
    prob : numpy.ndarray
        The foreground probability, on the labels' grid.
    labels : numpy.ndarray
    threshold : float
        The probability threshold objects were cut at.
    min_area_px : int
        The smallest region reported.
    low : float
        The share of ``threshold`` a region's probability must reach.
    blocked : numpy.ndarray, optional
        Boolean pixels never reported (rejected objects, regions marked done).
    scale : float
        The value of probability 1 in ``prob`` (255 for uint8).

    Returns
    -------
    list of Candidate
    """
    from scipy import ndimage as ndi

    p = np.asarray(prob, np.float32) / scale
    if p.shape != labels.shape:
        raise ValueError(f"probability {p.shape} and labels {labels.shape} differ in size")
    near = (p >= low * threshold) & (np.asarray(labels) == 0)
    if blocked is not None:
        near &= ~blocked
    comp, n = ndi.label(near)
    out = []
    for k, box in enumerate(ndi.find_objects(comp), start=1):
        if box is None:
            continue
        mask = comp[box] == k
        if mask.sum() < max(1, min_area_px):
            continue
        out.append(Candidate(box, mask, float(p[box][mask].mean())))
    return sorted(out, key=lambda c: -c.confidence)
