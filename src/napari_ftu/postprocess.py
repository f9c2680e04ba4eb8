"""From probability to instances: threshold, fill holes, drop small objects, label."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def instances(prob: np.ndarray, threshold: float, min_area_px: int = 0) -> np.ndarray:
    """Instance labels (int32, 0 = background) from a 2-D probability map."""
    mask = ndi.binary_fill_holes(prob >= threshold)
    labels, n = ndi.label(mask)
    if n and min_area_px > 0:
        areas = np.bincount(labels.ravel())
        small = areas < min_area_px
        small[0] = False
        labels[small[labels]] = 0
        labels = relabel_sequential(labels)
    return labels.astype(np.int32, copy=False)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 1..n in order of their current ids."""
    if labels.size == 0:
        return labels.astype(np.int32)
    top = int(labels.max())
    if top > 4 * labels.size + 1024:  # sparse huge ids: a lookup table would not fit
        ids, inverse = np.unique(labels, return_inverse=True)
        return (inverse.reshape(labels.shape) + (0 if ids[0] == 0 else 1)).astype(np.int32)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(top + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[labels]


def label_areas(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Pixel count of each id (without a full-size float image)."""
    values, counts = np.unique(labels, return_counts=True)
    lookup = dict(zip(values.tolist(), counts.tolist()))
    return np.array([lookup.get(int(i), 0) for i in ids], dtype=np.int64)


def object_table(labels: np.ndarray, prob: np.ndarray | None = None, um_per_px: float | None = None) -> list[dict]:
    """Per object: id, area in px and µm², centroid, and mean probability as confidence."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return []
    area = label_areas(labels, ids)
    cy, cx = np.asarray(ndi.center_of_mass(labels > 0, labels, ids)).T
    conf = ndi.mean(prob, labels, ids) if prob is not None else np.full(ids.size, np.nan)
    scale = (um_per_px or 1.0) ** 2
    return [
        {
            "id": int(i),
            "area_px": int(a),
            "area_um2": float(a * scale) if um_per_px else None,
            "centroid_y": float(y),
            "centroid_x": float(x),
            "confidence": float(c),
        }
        for i, a, y, x, c in zip(ids, area, cy, cx, conf)
    ]
