"""Editing operations on instance label arrays, as pure functions that return patches.

Every operation reads ``labels`` and returns an :class:`Edit`: the bounding boxes it changes
and their new contents, without touching ``labels``. The caller applies the edit through
:class:`napari_ftu.review.undo.History`, which keeps the old contents of exactly those boxes, so
every operation is undoable and memory stays proportional to what changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from napari_ftu.boxes import Box, from_corners, grow
from napari_ftu.errors import EditError


@dataclass
class Patch:
    """New contents ``after`` of the box ``box`` (2-D slices into the label array).

    Parameters
    ----------
    box : Box
        Where, in the label array.
    after : ndarray
        The box's new contents, of its size.
    """

    box: Box
    after: np.ndarray


@dataclass
class Edit:
    """What an operation changes, and the ids it created (new objects) or removed.

    Parameters
    ----------
    name : str
        Shown in the undo history.
    patches : list of Patch
    created, removed : list of int
        Ids of new objects and of objects gone, so the review table follows.
    mapping : dict
        Old id -> new id (merge, relabel), so renumbered objects keep their review.
    """

    name: str
    patches: list[Patch] = field(default_factory=list)
    created: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    mapping: dict[int, int] = field(default_factory=dict)  # old id -> new id (merge, relabel)

    @property
    def empty(self) -> bool:
        return not self.patches


def _check(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise EditError(f"labels must be 2-D, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise EditError(f"labels must be integers, got {labels.dtype}")
    return labels


def next_free_id(labels, reserved=()) -> int:
    """The smallest id above every id in use (and above ``reserved``, e.g. rejected objects).

    Parameters
    ----------
    labels : array-like
    reserved : iterable of int
        Ids taken elsewhere (rejected objects keep theirs for undo).

    Returns
    -------
    int
    """
    labels = _check(labels)
    top = int(labels.max()) if labels.size else 0
    return max([top, *[int(r) for r in reserved]]) + 1


def bbox_of(labels, ids, pad: int = 0) -> Box | None:
    """Smallest box holding every pixel of ``ids`` (grown by ``pad`` inside the image), or None.

    Parameters
    ----------
    labels : array-like
    ids : iterable of int
    pad : int
        Pixels to grow the box by on every side, for operations that reach past the object.

    Returns
    -------
    Box or None
        None when none of ``ids`` is in the image.
    """
    labels = _check(labels)
    mask = np.isin(labels, list(ids))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return grow(from_corners(rows[0], cols[0], rows[-1] + 1, cols[-1] + 1), pad, labels.shape)


def _require(labels, ids) -> Box:
    ids = [int(i) for i in ids]
    if not ids or any(i <= 0 for i in ids):
        raise EditError(f"choose one or more objects (ids > 0), got {ids}")
    box = bbox_of(labels, ids)
    missing = [i for i in ids if bbox_of(labels[box], [i]) is None] if box is not None else ids
    if missing:
        raise EditError(f"object(s) {missing} are not in the label image")
    return box


def object_at(labels, point) -> int:
    """The id under ``(row, col)``; 0 for background or outside.

    Parameters
    ----------
    labels : array-like
    point : tuple of float
        ``(row, col)``, rounded to the nearest pixel (a click's position).

    Returns
    -------
    int
    """
    labels = _check(labels)
    r, c = (int(round(v)) for v in point)
    if 0 <= r < labels.shape[0] and 0 <= c < labels.shape[1]:
        return int(labels[r, c])
    return 0


def merge(labels, ids) -> Edit:
    """Give every object in ``ids`` the smallest of their ids.

    Parameters
    ----------
    labels : array-like
        Not changed: the edit says what to write.
    ids : iterable of int
        Two or more objects.

    Returns
    -------
    Edit
        One patch over the objects' common box.

    Raises
    ------
    EditError
        Fewer than two objects, or one not in the image.
    """
    ids = sorted({int(i) for i in ids})
    if len(ids) < 2:
        raise EditError("select at least two objects to merge")
    box = _require(labels, ids)
    crop = np.asarray(labels[box]).copy()
    crop[np.isin(crop, ids[1:])] = ids[0]
    return Edit("merge", [Patch(box, crop)], removed=ids[1:], mapping={i: ids[0] for i in ids[1:]})


def delete(labels, ids) -> Edit:
    """Remove objects (their pixels become background).

    Parameters
    ----------
    labels : array-like
    ids : iterable of int
        The objects to remove.

    Returns
    -------
    Edit
        One patch; ``removed`` lists the ids, so the table drops their rows.

    Raises
    ------
    EditError
        No object chosen, or one not in the image.
    """
    ids = sorted({int(i) for i in ids})
    box = _require(labels, ids)
    crop = np.asarray(labels[box]).copy()
    crop[np.isin(crop, ids)] = 0
    return Edit("delete", [Patch(box, crop)], removed=ids)


def _split_parts(labels, obj: int, box: Box, parts: np.ndarray, name: str, reserved=()) -> Edit:
    """Turn ``parts`` (0 outside the object, 1..n inside) into ids: the largest part keeps ``obj``."""
    n = int(parts.max())
    if n < 2:
        raise EditError(f"{name}: object {obj} is not cut into two or more parts")
    sizes = np.bincount(parts.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes, kind="stable") + 1
    crop = np.asarray(labels[box]).copy()
    new = next_free_id(labels, reserved)
    created = []
    for k, part in enumerate(order):
        value = obj if k == 0 else new + k - 1
        crop[parts == part] = value
        if k:
            created.append(value)
    return Edit(name, [Patch(box, crop)], created=created)


def split_by_line(labels, obj: int | None, line, reserved=()) -> Edit:
    """Cut an object along a polyline ``[(row, col), ...]``; the cut pixels join the nearest part.

    ``obj`` None takes the object the line crosses most.

    Parameters
    ----------
    labels : array-like
    obj : int or None
        The object to cut.
    line : sequence of tuple
        Two or more ``(row, col)`` points.
    reserved : iterable of int
        Ids the new parts must not take (:func:`next_free_id`).

    Returns
    -------
    Edit
        The largest part keeps ``obj``; the others are in ``created``.

    Raises
    ------
    EditError
        A line that crosses no object or does not cut it in two.
    """
    from skimage.draw import line as draw_line
    from skimage.segmentation import expand_labels

    labels = _check(labels)
    pts = np.asarray(line, dtype=float)
    if pts.ndim != 2 or len(pts) < 2:
        raise EditError("split: draw a line of at least two points across the object")
    cut = np.zeros(labels.shape, bool)
    h, w = labels.shape
    for (r0, c0), (r1, c1) in zip(pts[:-1], pts[1:]):
        rr, cc = draw_line(int(round(r0)), int(round(c0)), int(round(r1)), int(round(c1)))
        keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        cut[rr[keep], cc[keep]] = True
    if obj is None:
        hit = labels[cut]
        hit = hit[hit > 0]
        if hit.size == 0:
            raise EditError("split: the line crosses no object")
        obj = int(np.bincount(hit).argmax())
    box = _require(labels, [obj])
    mask = np.asarray(labels[box]) == obj
    # A diagonal 1-pixel line leaves 8-connected gaps: thicken it so the parts separate.
    thick = ndi.binary_dilation(cut[box], structure=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool))
    parts, _ = ndi.label(mask & ~thick)
    parts = expand_labels(parts, distance=3) * mask  # the cut pixels go to the nearest part
    leftovers = mask & (parts == 0)
    if leftovers.any():
        parts = expand_labels(parts, distance=max(mask.shape)) * mask
    return _split_parts(labels, obj, box, parts, "split by line", reserved)


def split_watershed(labels, seeds, obj: int | None = None, reserved=()) -> Edit:
    """Split one object by a watershed of its distance map from two or more seed points.

    Parameters
    ----------
    labels : array-like
    seeds : sequence of tuple
        Two or more ``(row, col)`` points inside the object, one per part.
    obj : int, optional
        The object (default: the one under the seeds).
    reserved : iterable of int
        As for :func:`split_by_line`.

    Returns
    -------
    Edit
        One part per seed, ids as for :func:`split_by_line`.

    Raises
    ------
    EditError
        Seeds outside one object, or fewer than two distinct ones.
    """
    from skimage.segmentation import watershed

    labels = _check(labels)
    seeds = [tuple(int(round(v)) for v in p) for p in seeds]
    if len(seeds) < 2:
        raise EditError("watershed split: click two or more seeds inside one object")
    under = {object_at(labels, p) for p in seeds}
    if obj is None:
        if len(under) != 1 or 0 in under:
            raise EditError(f"watershed split: the seeds must all lie inside one object (they hit {sorted(under)})")
        obj = under.pop()
    elif under != {obj}:
        raise EditError(f"watershed split: every seed must lie inside object {obj}")
    box = _require(labels, [obj])
    mask = np.asarray(labels[box]) == obj
    markers = np.zeros(mask.shape, np.int32)
    for k, (r, c) in enumerate(seeds, start=1):
        markers[r - box[0].start, c - box[1].start] = k
    if len({(r, c) for r, c in seeds}) < 2:
        raise EditError("watershed split: the seeds must be at different places")
    distance = ndi.distance_transform_edt(mask)
    # A little compactness: seeds clicked off-centre still get their own part, and the cut
    # still follows the neck between touching objects.
    parts = watershed(-distance, markers, mask=mask, compactness=0.2)
    return _split_parts(labels, obj, box, parts, "split (watershed)", reserved)


def fill_holes(labels, ids=None) -> Edit:
    """Fill background holes inside objects (all objects when ``ids`` is None).

    Parameters
    ----------
    labels : array-like
    ids : iterable of int, optional

    Returns
    -------
    Edit
        One patch per object that had a hole; empty when none had.

    Raises
    ------
    EditError
        No objects, or an object not in the image.
    """
    labels = _check(labels)
    ids = sorted({int(i) for i in ids}) if ids is not None else [int(i) for i in np.unique(labels) if i]
    if not ids:
        raise EditError("fill holes: there are no objects")
    boxes = ndi.find_objects(labels) if len(ids) > 1 else None
    patches = []
    for i in ids:
        box = (boxes[i - 1] if boxes is not None and i - 1 < len(boxes) else None) or bbox_of(labels, [i])
        if box is None:
            raise EditError(f"fill holes: object {i} is not in the label image")
        crop = np.asarray(labels[box])
        filled = ndi.binary_fill_holes(crop == i) & (crop == 0)
        if filled.any():
            out = crop.copy()
            out[filled] = i
            patches.append(Patch(box, out))
    return Edit("fill holes", patches)


def remove_small(labels, min_pixels: int) -> Edit:
    """Remove every object smaller than ``min_pixels`` (one patch per removed object).

    Parameters
    ----------
    labels : array-like
    min_pixels : int
        The size below which an object goes (a speck left by painting or thresholding).

    Returns
    -------
    Edit
        ``removed`` lists the objects taken out.

    Raises
    ------
    EditError
        ``min_pixels`` below 1.
    """
    labels = _check(labels)
    if min_pixels < 1:
        raise EditError(f"remove small: the size must be at least 1 pixel, got {min_pixels}")
    sizes = np.bincount(labels.ravel())
    small = [i for i in np.flatnonzero((sizes > 0) & (sizes < min_pixels)) if i]
    boxes = ndi.find_objects(labels)
    patches = []
    for i in small:
        box = boxes[i - 1]
        crop = np.asarray(labels[box]).copy()
        crop[crop == i] = 0
        patches.append(Patch(box, crop))
    return Edit("remove small", patches, removed=[int(i) for i in small])


def dilate(labels, obj: int, pixels: int = 1) -> Edit:
    """Grow one object by ``pixels`` into the background (never over other objects).

    Parameters
    ----------
    labels : array-like
    obj : int
        The object to grow.
    pixels : int
        How far; the box grows as much, so the edit covers the new pixels.

    Returns
    -------
    Edit
        One patch over the grown box.

    Raises
    ------
    EditError
        ``pixels`` below 1, or no such object.
    """
    if pixels < 1:
        raise EditError("dilate: grow by at least 1 pixel")
    box = grow(_require(labels, [obj]), pixels, np.shape(labels))
    crop = np.asarray(labels[box]).copy()
    grown = ndi.binary_dilation(crop == obj, iterations=pixels) & (crop == 0)
    crop[grown] = obj
    return Edit("dilate", [Patch(box, crop)])


def erode(labels, obj: int, pixels: int = 1) -> Edit:
    """Shrink one object by ``pixels``; refuses to erase it completely.

    Parameters
    ----------
    labels : array-like
    obj : int
        Its rim of ``pixels`` goes.
    pixels : int
        How far; the image border does not count as background.

    Returns
    -------
    Edit
        One patch over the object's box.

    Raises
    ------
    EditError
        ``pixels`` below 1, or the object would vanish (delete it instead).
    """
    if pixels < 1:
        raise EditError("erode: shrink by at least 1 pixel")
    box = _require(labels, [obj])
    crop = np.asarray(labels[box]).copy()
    mask = np.pad(crop == obj, 1)  # the image border does not erode
    kept = ndi.binary_erosion(mask, iterations=pixels)[1:-1, 1:-1]
    if not kept.any():
        raise EditError(f"erode: object {obj} would disappear; delete it instead")
    crop[(crop == obj) & ~kept] = 0
    return Edit("erode", [Patch(box, crop)])


def draw_polygon(labels, vertices, value: int | None = None, overwrite: bool = False, reserved=()) -> Edit:
    """A new object from a polygon ``[(row, col), ...]`` with the next free id (or ``value``);
    existing objects are kept unless ``overwrite``.

    Parameters
    ----------
    labels : array-like
    vertices : sequence of tuple
        Three or more ``(row, col)`` points.
    value : int, optional
        The new object's id.
    overwrite : bool
        Draw over existing objects too.
    reserved : iterable of int
        As for :func:`split_by_line`.

    Returns
    -------
    Edit
        The new id in ``created``.

    Raises
    ------
    EditError
        Fewer than three points, or nothing left to draw.
    """
    from skimage.draw import polygon

    labels = _check(labels)
    pts = np.asarray(vertices, dtype=float)
    if pts.ndim != 2 or len(pts) < 3:
        raise EditError("draw: a polygon needs at least three points")
    rr, cc = polygon(pts[:, 0], pts[:, 1], shape=labels.shape)
    if rr.size == 0:
        raise EditError("draw: the polygon lies outside the image")
    value = value or next_free_id(labels, reserved)
    box = from_corners(rr.min(), cc.min(), rr.max() + 1, cc.max() + 1)
    crop = np.asarray(labels[box]).copy()
    inside = np.zeros(crop.shape, bool)
    inside[rr - box[0].start, cc - box[1].start] = True
    if not overwrite:
        inside &= crop == 0
    if not inside.any():
        raise EditError("draw: the polygon covers only existing objects")
    crop[inside] = value
    return Edit("draw", [Patch(box, crop)], created=[value])


def add_mask(labels, box: Box, mask: np.ndarray, value: int | None = None, reserved=(),
             name: str = "add") -> Edit:
    """A new object from a boolean ``mask`` of ``box`` (an accepted possible miss, a traced
    outline), on background pixels only; the new id in ``created``.

    Parameters
    ----------
    labels : numpy.ndarray
    box : Box
        Where ``mask`` lies in ``labels``.
    mask : numpy.ndarray
        Boolean, the shape of ``box``.
    value : int, optional
        The new object's id (default: the next free one).
    reserved : iterable of int
        Ids not to give (rows kept for undo).
    name : str
        The edit's name in the undo history.

    Returns
    -------
    Edit

    Raises
    ------
    EditError
        The mask covers only existing objects.
    """
    labels = _check(labels)
    crop = np.asarray(labels[box]).copy()
    inside = np.asarray(mask, bool) & (crop == 0)
    if not inside.any():
        raise EditError(f"{name}: the object lies only on existing objects")
    value = value or next_free_id(labels, reserved)
    crop[inside] = value
    return Edit(name, [Patch(box, crop)], created=[value])


def renumber(labels) -> Edit:
    """Renumber objects 1..n in order of their ids, as an undoable edit (one patch per renumbered
    object); :func:`napari_ftu.engine.postprocess.relabel_sequential` renumbers a whole array.

    Parameters
    ----------
    labels : array-like

    Returns
    -------
    Edit
        Empty when the ids are 1..n already; ``mapping`` says old -> new.
    """
    labels = _check(labels)
    ids = [int(i) for i in np.unique(labels) if i]
    mapping = {old: new for new, old in enumerate(ids, start=1) if old != new}
    if not mapping:
        return Edit("relabel")
    # Boxes of different objects may overlap, so every patch is the remapped *original* crop:
    # applying them in any order gives the same result.
    boxes = ndi.find_objects(labels)
    patches = []
    for old in mapping:
        crop = np.asarray(labels[boxes[old - 1]])
        values, inverse = np.unique(crop, return_inverse=True)
        table = np.array([mapping.get(int(v), int(v)) for v in values], dtype=crop.dtype)
        patches.append(Patch(boxes[old - 1], table[inverse].reshape(crop.shape)))
    return Edit("relabel", patches, mapping=mapping)
