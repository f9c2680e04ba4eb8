"""From probability to instances: threshold, fill holes, drop small objects, label, and
optionally split touching objects; plus the per-object table (area, confidence, centroid, box)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_ftu.boxes import corners, from_corners, shift
from napari_ftu.engine.components import Instances, label_instances


def instances(prob: np.ndarray, threshold: float, min_area_px: int = 0) -> np.ndarray:
    """Instance labels (int32, 0 = background) of an in-memory 2-D probability map.

    Parameters
    ----------
    prob : ndarray
        2-D probability (0..1).
    threshold : float
    min_area_px : int
        Smaller objects are dropped.

    Returns
    -------
    ndarray
    """
    out = np.zeros(prob.shape, np.int32)
    label_instances(prob, threshold, min_area_px, out, strip=max(1, prob.shape[0]))
    return out


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 1..n in order of their current ids.

    Parameters
    ----------
    labels : ndarray
        Integer labels, any ids.

    Returns
    -------
    ndarray
        int32, same shape; order of ids kept, so object 3 stays after object 2.
    """
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
    """Pixel count of each id (without a full-size float image).

    Parameters
    ----------
    labels : ndarray
    ids : ndarray
        The ids to count.

    Returns
    -------
    ndarray
        int64, one count per id (0 for an absent id).
    """
    values, counts = np.unique(labels, return_counts=True)
    lookup = dict(zip(values.tolist(), counts.tolist()))
    return np.array([lookup.get(int(i), 0) for i in ids], dtype=np.int64)


def _row(i, area, conf, cy, cx, box, um_per_px):
    return {
        "id": int(i),
        "area_px": int(area),
        "area_um2": float(area * um_per_px**2) if um_per_px else None,
        "centroid_y": float(cy),
        "centroid_x": float(cx),
        "confidence": float(conf),
        "bbox": list(corners(box)),  # written down as (y0, x0, y1, x1), stops exclusive
    }


def objects_from(inst: Instances, um_per_px: float | None = None) -> list[dict]:
    """The object table from the sums gathered while labelling.

    Parameters
    ----------
    inst : Instances
        From :func:`~napari_ftu.engine.components.label_steps`.
    um_per_px : float, optional
        For areas in µm² (None: no µm² area).

    Returns
    -------
    list of dict
        One row per object; ``bbox`` written as corners ``[y0, x0, y1, x1]``.
    """
    return [
        _row(i, inst.area[i], inst.prob_sum[i] / inst.area[i], inst.y_sum[i] / inst.area[i],
             inst.x_sum[i] / inst.area[i], inst.box(i), um_per_px)
        for i in range(1, inst.count + 1)
    ]


def object_table(labels: np.ndarray, prob: np.ndarray | None = None, um_per_px: float | None = None) -> list[dict]:
    """Per object of an in-memory label image: id, area, centroid, confidence (mean probability), box.

    Parameters
    ----------
    labels : ndarray
    prob : ndarray, optional
        Probability for the confidence column (NaN without it).
    um_per_px : float, optional
        For areas in µm².

    Returns
    -------
    list of dict
        As :func:`objects_from`.
    """
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return []
    area = label_areas(labels, ids)
    cy, cx = np.asarray(ndi.center_of_mass(labels > 0, labels, ids)).T
    conf = ndi.mean(prob, labels, ids) if prob is not None else np.full(ids.size, np.nan)
    slices = ndi.find_objects(labels)
    boxes = [slices[i - 1] for i in ids]
    return [_row(*row, um_per_px) for row in zip(ids, area, conf, cy, cx, boxes)]


def split_touching(labels, prob, objects: list[dict], min_distance_px: float, scale: float = 1.0,
                   um_per_px: float | None = None) -> list[dict]:
    """Split objects that are several touching blobs, by a watershed of the distance transform
    seeded at its peaks. Works object by object on its box, so ``labels`` and ``prob`` may be
    zarr arrays; new pieces get ids after the largest. Returns the updated object table.

    Parameters
    ----------
    labels : array-like
        Instance labels, changed in place.
    prob : array-like
        Probability, for the new pieces' confidence.
    objects : list of dict
        The object table of ``labels``.
    min_distance_px : float
        Peaks closer than this seed one piece (about an object's radius).
    scale : float
        The stored value of probability 1.
    um_per_px : float, optional
        For areas in µm².

    Returns
    -------
    list of dict
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    next_id = max((o["id"] for o in objects), default=0) + 1
    table = []
    for obj in objects:
        box = from_corners(*obj["bbox"])
        y0, x0 = corners(box)[:2]
        crop = np.asarray(labels[box])
        mask = crop == obj["id"]
        dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        peaks = peak_local_max(dist, min_distance=max(1, int(min_distance_px)), labels=mask.astype(np.int32),
                               exclude_border=False)
        if len(peaks) < 2:
            table.append(obj)
            continue
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        pieces = watershed(-dist, markers, mask=mask)
        ids = np.array([obj["id"]] + list(range(next_id, next_id + len(peaks) - 1)), np.int32)
        next_id += len(peaks) - 1
        crop = np.where(mask, ids[np.maximum(pieces - 1, 0)], crop)
        labels[box] = crop
        p = np.asarray(prob[box], np.float64) / scale
        for row in object_table(np.where(np.isin(crop, ids), crop, 0), p, um_per_px):
            row["bbox"] = list(corners(shift(from_corners(*row["bbox"]), y0, x0)))
            row["centroid_y"] += y0
            row["centroid_x"] += x0
            table.append(row)
    return table
