"""Instances from a probability map read strip by strip, so memory does not grow with the slide.

Threshold → fill holes → drop objects below a size → connected components, exactly as
:func:`scipy.ndimage.binary_fill_holes` and :func:`scipy.ndimage.label` would do on the whole
image, but over horizontal strips of any array-like (numpy or zarr). Components that continue
across a strip boundary are joined with a union-find over provisional ids; final ids follow the
first pixel of each object in raster order, as ``ndimage.label`` numbers them.

Three passes read the probability: background components (to find holes: background not
connected to the border), foreground components of the filled mask (with per-object sums for
area, confidence and centroid), and the final relabelling of the written strips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_ftu.boxes import Box, from_corners
from napari_ftu.steps import LabelProgress


class _UnionFind:
    """Union by smallest id, so a root is always the provisional id seen first. The parent
    array grows by doubling, so adding ids strip by strip costs linear time."""

    def __init__(self):
        self.parent = np.zeros(1024, np.int64)
        self.size = 1

    def grow(self, n: int) -> None:
        if n > self.parent.size:
            bigger = np.empty(max(n, 2 * self.parent.size), np.int64)
            bigger[: self.size] = self.parent[: self.size]
            self.parent = bigger
        if n > self.size:
            self.parent[self.size : n] = np.arange(self.size, n)
            self.size = n

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return int(root)

    def union_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in set(zip(a.tolist(), b.tolist())):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                lo, hi = min(rx, ry), max(rx, ry)
                self.parent[hi] = lo

    def roots(self) -> np.ndarray:
        """Root of every id (vectorised pointer jumping until stable)."""
        p = self.parent[: self.size].copy()
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p
            p = q


def _strips(height: int, strip: int):
    return [(a, min(a + strip, height)) for a in range(0, height, strip)]


def _label_strip(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """A strip's components ``1..n`` (int32)."""
    return ndi.label(mask)


def _boxes(labels: np.ndarray, n: int) -> np.ndarray:
    """Boxes ``(n, 4)`` = row0, row1, col0, col1 of components ``1..n``."""
    return np.array([[s[0].start, s[0].stop, s[1].start, s[1].stop] for s in ndi.find_objects(labels, n)],
                    np.int64).reshape(n, 4)


def _global(row: np.ndarray, offset: int) -> np.ndarray:
    """Provisional ids of one row of local labels (0 stays 0)."""
    return np.where(row > 0, row.astype(np.int64) + offset, 0)


def _join(uf: _UnionFind, above: np.ndarray | None, below: np.ndarray) -> None:
    """Union ids that touch vertically across a strip boundary (4-connectivity)."""
    if above is None:
        return
    both = (above > 0) & (below > 0)
    if both.any():
        uf.union_pairs(above[both], below[both])


@dataclass
class Instances:
    """Per-object facts gathered while labelling; row ``i`` is object ``i`` (row 0 unused).

    Parameters
    ----------
    count : int
        Number of objects.
    area, prob_sum, y_sum, x_sum : ndarray
        Per object: pixels, summed probability (0..1), summed rows and columns, for the object
        table's area, confidence and centroid without a second pass over the image.
    boxes : ndarray
        ``(count + 1, 4)`` rows ``row0, row1, col0, col1``; :meth:`box` gives one as a Box.
    """

    count: int
    area: np.ndarray  # pixels
    prob_sum: np.ndarray  # sum of probability (0..1) over the object
    y_sum: np.ndarray
    x_sum: np.ndarray
    boxes: np.ndarray  # (count + 1, 4): row0, row1, col0, col1 (stop exclusive), merged column-wise

    def box(self, i: int) -> Box:
        """Object ``i``'s box.

        Parameters
        ----------
        i : int
            The object's id (row of :attr:`boxes`).

        Returns
        -------
        Box
        """
        r0, r1, c0, c1 = self.boxes[i]
        return from_corners(r0, c0, r1, c1)


def label_steps(prob, threshold: float, min_area_px: int, out, strip: int = 1024, scale: float = 1.0):
    """Write instance labels of ``prob >= threshold * scale`` (holes filled, small objects removed)
    into ``out`` (an int32 array-like of the same 2-D shape), strip by strip.

    ``scale`` is the value of probability 1 in ``prob`` (255 for uint8 storage). Yields
    :class:`~napari_ftu.steps.LabelProgress` after each strip of each pass; returns :class:`Instances`.

    Parameters
    ----------
    prob : array-like
        2-D probability (numpy or zarr), read strip by strip.
    threshold : float
        Foreground where ``prob >= threshold * scale``.
    min_area_px : int
        Objects smaller than this are dropped.
    out : array-like
        int32, the shape of ``prob``; receives the labels.
    strip : int
        Rows per strip: bounds memory on slides of any height.
    scale : float
        The stored value of probability 1.

    Yields
    ------
    LabelProgress

    Returns
    -------
    Instances
        Per-object sums for :func:`~napari_ftu.engine.postprocess.objects_from`.
    """
    height, width = prob.shape
    cut = threshold * scale
    strips = _strips(height, max(1, int(strip)))
    total = 3 * len(strips)
    step = 0

    def tick():
        nonlocal step
        step += 1
        return LabelProgress(step, total)

    def foreground(a, b):
        return np.asarray(prob[a:b]) >= cut

    # Pass 1: background components; those touching the border are not holes.
    bg = _UnionFind()
    offsets, counts, border_ids, above, next_id = [], [], [], None, 1
    for a, b in strips:
        labels, n = _label_strip(~foreground(a, b))
        offset = next_id - 1
        offsets.append(offset)
        counts.append(n)
        next_id += n
        bg.grow(next_id)
        _join(bg, above, _global(labels[0], offset))
        edge = [labels[:, 0], labels[:, -1]] + ([labels[0]] if a == 0 else []) + ([labels[-1]] if b == height else [])
        ids = np.unique(np.concatenate(edge))
        border_ids.append(ids[ids > 0] + offset)
        above = _global(labels[-1], offset)
        yield tick()
    bg_root = bg.roots()
    open_bg = np.zeros(next_id, bool)
    open_bg[bg_root[np.concatenate(border_ids).astype(np.int64)]] = True
    is_hole = ~open_bg[bg_root]
    is_hole[0] = False

    # Pass 2: components of the filled mask, with their sums (one entry per provisional id).
    fg = _UnionFind()
    parts = {k: [np.zeros(1)] for k in range(4)}
    box_parts = [np.zeros((1, 4), np.int64)]
    above, next_id = None, 1
    for (a, b), bg_offset, n_bg in zip(strips, offsets, counts):
        block = np.asarray(prob[a:b])
        mask = block >= cut
        holes = is_hole[bg_offset + 1 : bg_offset + n_bg + 1]
        if holes.any():  # most strips have none: no second background labelling
            bg_labels, _ = _label_strip(~mask)
            mask |= np.concatenate([[False], holes])[bg_labels]
        labels, n = _label_strip(mask)
        offset = next_id - 1
        next_id += n
        fg.grow(next_id)
        _join(fg, above, _global(labels[0], offset))
        above = _global(labels[-1], offset)
        box_parts.append(_boxes(labels, n) + [a, a, 0, 0])
        flat = labels.ravel()
        idx = np.flatnonzero(flat)  # sums over object pixels only
        ids = flat[idx]
        rows, cols = np.divmod(idx, width)
        for k, weights in enumerate((None, block.ravel()[idx] / scale, rows + a, cols)):
            parts[k].append(np.bincount(ids, weights, minlength=n + 1)[1:].astype(np.float64))
        labels[mask] += np.int32(offset)
        out[a:b] = labels
        yield tick()
    sums = [np.concatenate(parts[k]) for k in range(4)]
    boxes = np.concatenate(box_parts)

    # Pass 3: merge sums per root, drop small objects, number by first appearance.
    root = fg.roots()
    merged = [np.bincount(root, weights=s, minlength=next_id) for s in sums]
    merged_boxes = np.tile(np.array([height, 0, width, 0], np.int64), (next_id, 1))
    for k, combine in enumerate((np.minimum, np.maximum, np.minimum, np.maximum)):
        combine.at(merged_boxes[:, k], root, boxes[:, k])
    keep = merged[0] >= max(1, min_area_px)
    keep[0] = False
    kept_roots = np.flatnonzero(keep)  # ascending = raster order of first pixels
    final = np.zeros(next_id, np.int32)
    final[kept_roots] = np.arange(1, kept_roots.size + 1, dtype=np.int32)
    lut = final[root]
    for a, b in strips:
        out[a:b] = lut[np.asarray(out[a:b])]
        yield tick()
    pick = np.concatenate([[0], kept_roots])
    return Instances(int(kept_roots.size), *(m[pick] for m in merged), merged_boxes[pick])


def label_instances(prob, threshold: float, min_area_px: int, out, **kwargs) -> Instances:
    """:func:`label_steps` run to the end.

    Parameters
    ----------
    prob, threshold, min_area_px, out, **kwargs
        As for :func:`label_steps`.

    Returns
    -------
    Instances
    """
    from napari_ftu.steps import drain

    return drain(label_steps(prob, threshold, min_area_px, out, **kwargs))
