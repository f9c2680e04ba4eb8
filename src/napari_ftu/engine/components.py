"""Instances from a probability map read strip by strip, so memory does not grow with the slide.

Threshold → fill holes → drop objects below a size → connected components, exactly as
:func:`scipy.ndimage.binary_fill_holes` and :func:`scipy.ndimage.label` would do on the whole
image, but over horizontal strips of any array-like (numpy or zarr). Components that continue
across a strip boundary are joined with a union-find over provisional ids; final ids follow the
first pixel of each object in raster order, as ``ndimage.label`` numbers them.

Two passes read the image. The first labels the mask as thresholded (with per-object sums for
area, confidence and centroid, and the pairs of components that touch only at a corner) and
writes provisional ids into ``out``. Holes are then filled without labelling the background of
the whole slide: a hole is enclosed by one 8-connected component, so it lies inside that
component's box, and only boxes that can hold a hole and a kept object are searched (holes of
smaller ones belong to objects dropped for their size anyway). The second pass renumbers ``out``.
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
        if len(a) == 0:
            return
        keys = np.unique(np.asarray(a, np.int64) * self.size + np.asarray(b, np.int64))  # each pair once
        for x, y in zip(*divmod(keys, self.size)):
            rx, ry = self.find(int(x)), self.find(int(y))
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


def _strips(start: int, stop: int, strip: int):
    return [(a, min(a + strip, stop)) for a in range(start, stop, strip)]


_CROSS = ndi.generate_binary_structure(2, 1)  # 4-connectivity, made once: labelling many small boxes
BOX_COST_PX = 20_000  # a box searched on its own costs about as much as labelling this many more pixels


def _label_strip(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """A strip's components ``1..n`` (int32)."""
    return ndi.label(mask, _CROSS)


def enclosed(labels: np.ndarray, n: int) -> np.ndarray:
    """Per background component ``0..n`` of a crop: True for those off the crop's border (holes).

    Parameters
    ----------
    labels : ndarray
        The crop's background components (2-D, ``1..n``; 0 is foreground).
    n : int
        How many there are.

    Returns
    -------
    ndarray
        bool ``(n + 1,)``, indexable by ``labels``.
    """
    is_hole = np.ones(n + 1, bool)
    is_hole[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    return is_hole


def _boxes(labels: np.ndarray, n: int, ids: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Boxes ``(n, 4)`` = row0, row1, col0, col1 of components ``1..n``, from the object pixels
    (``ids`` at ``rows``, ``cols``) when they are few, else by a scan of the strip."""
    if ids.size > labels.size // 8:
        return np.array([[s[0].start, s[0].stop, s[1].start, s[1].stop] for s in ndi.find_objects(labels, n)],
                        np.int64).reshape(n, 4)
    boxes = np.empty((n + 1, 4), np.int64)
    boxes[:, 0::2], boxes[:, 1::2] = labels.size, -1
    for k, (combine, at) in enumerate(((np.minimum, rows), (np.maximum, rows), (np.minimum, cols), (np.maximum, cols))):
        combine.at(boxes[:, k], ids, at)
    boxes[:, 1::2] += 1  # stops are exclusive
    return boxes[1:]


def _join(uf: _UnionFind, above: np.ndarray | None, below: np.ndarray) -> None:
    """Union ids that touch vertically across a strip boundary (4-connectivity)."""
    if above is None:
        return
    both = (above > 0) & (below > 0)
    if both.any():
        uf.union_pairs(above[both], below[both])


def _corners(mask: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``(2, k)`` ids of components that touch only at a corner inside a strip (8- but not
    4-connected). ``idx`` are the flat indices of ``mask``: when they are few, only their
    neighbours are looked at, else the whole strip, shifted."""
    h, w = mask.shape
    pairs = []
    if idx.size > mask.size // 8:
        for left, right in ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))):
            y, x = np.nonzero(mask[:-1, left] & mask[1:, right] & ~mask[:-1, right] & ~mask[1:, left])
            pairs.append(np.stack([labels[:-1, left][y, x], labels[1:, right][y, x]]))
        return np.concatenate(pairs, axis=1)
    fm, fl = mask.ravel(), labels.ravel()
    p = idx[idx < (h - 1) * w]
    col = p % w
    for step, side, ok in ((w + 1, 1, col < w - 1), (w - 1, -1, col > 0)):
        q = p[ok]
        q = q[fm[q + step] & ~fm[q + side] & ~fm[q + w]]
        pairs.append(np.stack([fl[q], fl[q + step]]))
    return np.concatenate(pairs, axis=1)


def _corners_across(above: np.ndarray, below: np.ndarray) -> np.ndarray:
    """``(2, k)`` ids touching at a corner across a strip boundary (4-neighbours are joined anyway)."""
    pairs = []
    for x, y in ((above[:-1], below[1:]), (above[1:], below[:-1])):
        both = (x > 0) & (y > 0)
        pairs.append(np.stack([x[both], y[both]]))
    return np.concatenate(pairs, axis=1)


def _fill_box(out, prob, box, rows: int, uf: _UnionFind, sums: list, scale: float, y0: int = 0) -> bool:
    """Fill the holes of the mask (``out != 0``) that lie inside ``box`` (background not connected
    to the box's border), strip by strip: hole pixels take the id of a component they touch,
    components a hole joins are united in ``uf``, and the pixels are added to ``sums``. ``out``
    and ``prob`` may be a band of the image starting at row ``y0``. Returns whether any was filled."""
    r0, r1, c0, c1 = (int(v) for v in box)
    if r1 - r0 <= rows:  # one read, one labelling
        ids = np.asarray(out[r0:r1, c0:c1])
        labels, n = _label_strip(ids == 0)
        is_hole = enclosed(labels, n)
        if not is_hole.any():
            return False
        ids = np.array(ids)
        _take_holes(ids, labels, is_hole, uf, sums, np.asarray(prob[r0:r1, c0:c1]), scale, r0 + y0, c0)
        out[r0:r1, c0:c1] = ids
        return True
    strips = _strips(r0, r1, rows)
    bg, spans, open_ids, above, next_id = _UnionFind(), [], [], None, 1
    for a, b in strips:  # background components, joined across strips; those on the box's border are open
        labels, n = _label_strip(np.asarray(out[a:b, c0:c1]) == 0)
        offset = next_id - 1
        spans.append((offset, n))
        next_id += n
        bg.grow(next_id)
        _join(bg, above, np.where(labels[0] > 0, labels[0].astype(np.int64) + offset, 0))
        above = np.where(labels[-1] > 0, labels[-1].astype(np.int64) + offset, 0)
        edge = [labels[:, 0], labels[:, -1]] + ([labels[0]] if a == r0 else []) + ([labels[-1]] if b == r1 else [])
        ids = np.unique(np.concatenate(edge))
        open_ids.append(ids[ids > 0] + offset)
    root = bg.roots()
    is_open = np.zeros(next_id, bool)
    is_open[root[np.concatenate(open_ids).astype(np.int64)]] = True
    is_hole = ~is_open[root]
    is_hole[0] = False
    if not is_hole.any():
        return False
    above = None
    for (a, b), (offset, n) in zip(strips, spans):
        holes = is_hole[offset + 1 : offset + n + 1]
        ids = np.array(out[a:b, c0:c1])
        if holes.any():
            labels = _label_strip(ids == 0)[0]
            _take_holes(ids, labels, np.concatenate([[False], holes]), uf, sums, np.asarray(prob[a:b, c0:c1]), scale,
                        a + y0, c0)
            out[a:b, c0:c1] = ids
        _join(uf, above, ids[0])  # hole pixels touching across the strip boundary
        above = ids[-1].copy()
    return True


class _Rows:
    """Rows ``lo:hi`` of an array-like, read when first indexed (most bands have no hole)."""

    def __init__(self, array, lo: int, hi: int):
        self.array, self.lo, self.hi, self.data = array, lo, hi, None

    def __getitem__(self, key):
        if self.data is None:
            self.data = np.asarray(self.array[self.lo : self.hi])
        return self.data[key]


def _take_holes(ids: np.ndarray, labels: np.ndarray, is_hole: np.ndarray, uf: _UnionFind, sums: list, prob,
                scale: float, y0: int, x0: int) -> None:
    """Fill the background components ``labels`` marked ``is_hole`` in a crop of provisional ``ids``
    (changed in place): each hole takes the id of a component it touches, the ids it touches are
    united, its pixels go into ``sums``. Work follows the hole pixels, not the crop."""
    h, w = ids.shape
    flat = ids.reshape(-1)
    at = np.flatnonzero(is_hole[labels.reshape(-1)])
    hole = labels.reshape(-1)[at]
    rows, cols = np.divmod(at, w)
    touch_hole, touch_id = [], []
    for step, ok in ((-1, cols > 0), (1, cols < w - 1), (-w, rows > 0), (w, rows < h - 1)):
        nb = flat[at[ok] + step]  # a hole's neighbours are foreground or the same hole
        touch_hole.append(hole[ok][nb != 0])
        touch_id.append(nb[nb != 0])
    touch_hole, touch_id = np.concatenate(touch_hole), np.concatenate(touch_id)
    rep = np.zeros(is_hole.size, np.int64)
    rep[touch_hole] = touch_id  # each hole meets the foreground in its own rows
    differ = touch_id != rep[touch_hole]
    uf.union_pairs(touch_id[differ], rep[touch_hole][differ])
    flat[at] = rep[hole]
    k = np.flatnonzero(is_hole)
    weights = (None, np.asarray(prob[rows, cols], np.float64) / scale, rows + y0, cols + x0)
    for total, weight in zip(sums, weights):
        np.add.at(total, rep[k], np.bincount(hole, weight, minlength=is_hole.size)[k])


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


def _merge_boxes(boxes: np.ndarray, root: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes per root: the union of the boxes of the ids that share it."""
    merged = np.tile(np.array([height, 0, width, 0], np.int64), (root.size, 1))
    for k, combine in enumerate((np.minimum, np.maximum, np.minimum, np.maximum)):
        combine.at(merged[:, k], root, boxes[:, k])
    return merged


def label_steps(prob, threshold: float, min_area_px: int, out, strip: int = 1024, scale: float = 1.0, box=None,
                edge_min_area_px: int | None = None):
    """Write instance labels of ``prob >= threshold * scale`` (holes filled, small objects removed)
    into ``out`` (an int32 array-like of the same 2-D shape), strip by strip.

    With ``box`` (row0, row1, col0, col1), only that part of the image is read and written: the
    caller knows ``prob`` is 0 and ``out`` is 0 outside it (no tile computed there), so labelling
    costs what the tissue covers, not the whole slide.

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
    box : tuple of int, optional
        ``(row0, row1, col0, col1)`` outside of which ``prob`` and ``out`` are 0; ignored when
        ``threshold`` is not positive (then every pixel is foreground).
    edge_min_area_px : int, optional
        The smallest object kept when it touches the image's edge (default ``min_area_px``):
        an object cut by the edge shows only part of its area.

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
    top, bottom, left, right = (int(v) for v in box) if box is not None and cut > 0 else (0, height, 0, width)
    rows = max(1, int(strip))
    strips = _strips(top, bottom, rows)
    total = 2 * len(strips) + 1
    step = 0
    min_area = max(1, min_area_px)

    def tick():
        nonlocal step
        step += 1
        return LabelProgress(step, total)

    # Pass 1: components of the mask as thresholded, their sums and corner contacts.
    uf = _UnionFind()
    parts = {k: [np.zeros(1)] for k in range(4)}
    box_parts = [np.zeros((1, 4), np.int64)]
    corners = [np.zeros((2, 0), np.int32)]  # none when the box is empty
    above, next_id = None, 1
    for a, b in strips:
        block = np.asarray(prob[a:b, left:right])
        mask = block >= cut
        labels, n = _label_strip(mask)
        offset = next_id - 1
        next_id += n
        uf.grow(next_id)
        idx = np.flatnonzero(mask)  # sums over object pixels only
        flat = labels.ravel()
        ids = flat[idx]
        r, c = np.divmod(idx, right - left)
        box_parts.append(_boxes(labels, n, ids, r, c) + [a, a, left, left])
        for k, weights in enumerate((None, block.ravel()[idx] / scale, r + a, c + left)):
            parts[k].append(np.bincount(ids, weights, minlength=n + 1)[1:].astype(np.float64))
        flat[idx] = ids + np.int32(offset)  # provisional ids
        corners.append(_corners(mask, labels, idx))
        if above is not None:
            _join(uf, above, labels[0])
            corners.append(_corners_across(above, labels[0]))
        above = labels[-1].copy()
        out[a:b, left:right] = labels
        yield tick()
    sums = [np.concatenate(parts[k]) for k in range(4)]
    boxes = np.concatenate(box_parts)

    # Holes: group the components 8-connected (a hole's rim is one such group) and search the
    # boxes that could hold both a hole and an object big enough to keep.
    group = _UnionFind()
    group.grow(next_id)
    group.parent[:next_id] = uf.roots()
    pairs = np.concatenate(corners, axis=1)
    group.union_pairs(pairs[0], pairs[1])
    root8 = group.roots()
    box8 = _merge_boxes(boxes, root8, height, width)
    area8 = np.bincount(root8, weights=sums[0], minlength=next_id)
    h8, w8 = box8[:, 1] - box8[:, 0], box8[:, 3] - box8[:, 2]
    search = (root8 == np.arange(next_id)) & (h8 >= 3) & (w8 >= 3) & (h8 * w8 >= min_area) & (area8 < h8 * w8)
    search[0] = False
    tall = search & (h8 > rows)
    for i in np.flatnonzero(tall):  # rare: searched strip by strip, as many pixels as a strip at a time
        _fill_box(out, prob, box8[i], max(1, rows * width // int(w8[i])), uf, sums, scale)
    short = np.flatnonzero(search & ~tall)
    last_strip = (box8[short, 1] - 1) // rows
    in_memory = isinstance(out, np.ndarray)
    for k in np.unique(last_strip):  # the others by the strip they end in: one read of a store per strip
        mine = short[last_strip == k]
        lo, hi, c0, c1 = box8[mine, 0].min(), box8[mine, 1].max(), box8[mine, 2].min(), box8[mine, 3].max()
        band = out[lo:hi] if in_memory else np.array(out[lo:hi])  # at most two strips
        band_prob = _Rows(prob, lo, hi)
        if (h8[mine] * w8[mine]).sum() + BOX_COST_PX * mine.size > (hi - lo) * (c1 - c0):  # many: all at once
            changed = _fill_box(band, band_prob, (0, hi - lo, c0, c1), hi - lo, uf, sums, scale, lo)
        else:
            changed = False
            for i in mine:
                changed |= _fill_box(band, band_prob, box8[i] - [lo, lo, 0, 0], rows, uf, sums, scale, lo)
        if changed and not in_memory:
            out[lo:hi] = band
    yield tick()

    # Pass 2: merge sums per root, drop small objects, number by first appearance.
    root = uf.roots()
    merged = [np.bincount(root, weights=s, minlength=next_id) for s in sums]
    merged_boxes = _merge_boxes(boxes, root, height, width)
    keep = merged[0] >= min_area
    if edge_min_area_px is not None:
        b = merged_boxes
        on_edge = (b[:, 0] == 0) | (b[:, 1] == height) | (b[:, 2] == 0) | (b[:, 3] == width)
        keep |= on_edge & (merged[0] >= max(1, edge_min_area_px))
    keep[0] = False
    kept_roots = np.flatnonzero(keep)  # ascending = raster order of first pixels
    final = np.zeros(next_id, np.int32)
    final[kept_roots] = np.arange(1, kept_roots.size + 1, dtype=np.int32)
    lut = final[root]
    for a, b in strips:
        out[a:b, left:right] = lut[np.asarray(out[a:b, left:right])]
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
