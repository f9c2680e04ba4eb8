"""Simulated users for the benchmark and the tests, as micro-sam evaluates its prompts.

A careful user's stroke (:func:`strokes`) is a 20-pixel-long piece of the medial axis (skeleton)
of a ground-truth object, or of the background eroded away from the objects; a quick user's
(:func:`quick_strokes`) is a short straight dab anywhere inside its region, off-centre, with a
wide brush. A click is an object's innermost pixel (maximum of its distance transform).
Everything is seeded, so a figure can be reproduced.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

STROKE_PX = 20
QUICK_PX, QUICK_BRUSH = 12, 10  # a short dab with napari's default 10-px brush


def _piece(skeleton: np.ndarray, start: tuple[int, int], length: int) -> np.ndarray:
    """Skeleton pixels within ``length`` steps of ``start`` along the skeleton (breadth first)."""
    h, w = skeleton.shape
    seen = {start}
    frontier = [start]
    for _ in range(length - 1):
        nxt = []
        for y, x in frontier:
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (y + dy, x + dx)
                    if 0 <= q[0] < h and 0 <= q[1] < w and q not in seen and skeleton[q]:
                        seen.add(q)
                        nxt.append(q)
        if not nxt or len(seen) >= length:
            break
        frontier = nxt
    return np.array(sorted(seen))


def strokes(truth: np.ndarray, n_ftu: int = 3, n_background: int = 3, seed: int = 0, length: int = STROKE_PX,
            background_margin: int = 5, brush: int = 1) -> np.ndarray:
    """Scribbles (uint8: 0 unlabelled, 1 background, 2 FTU) from an instance or binary ground
    truth: FTU strokes go round-robin over the objects, largest first; background strokes are
    spread at random over the skeleton of the background eroded by ``background_margin`` px.
    ``brush`` is the painted width in px (a disk along the piece, kept inside its region), as a
    user paints with napari's brush; 1 paints the medial axis only."""
    from skimage.morphology import skeletonize

    rng = np.random.default_rng(seed)
    lab, n = ndi.label(truth > 0) if truth.dtype == bool or truth.max() <= 1 else (truth, int(truth.max()))
    out = np.zeros(truth.shape, np.uint8)
    ids = [i for i in np.argsort(-np.bincount(lab.ravel(), minlength=n + 1)[1:]) + 1
           if (lab == i).any()]
    skeletons = {i: skeletonize(lab == i) for i in ids}
    for k in range(n_ftu if ids else 0):
        sk = skeletons[ids[k % len(ids)]] & (out == 0)
        pts = np.argwhere(sk)
        if len(pts) == 0:
            continue
        start = tuple(pts[rng.integers(len(pts))])
        _paint(out, _piece(sk, start, length), brush, lab == ids[k % len(ids)], 2)
    bg = ndi.binary_erosion(truth == 0, iterations=background_margin, border_value=1)
    sk = skeletonize(bg)
    for _ in range(n_background):
        pts = np.argwhere(sk & (out == 0))
        if len(pts) == 0:
            break
        start = tuple(pts[rng.integers(len(pts))])
        _paint(out, _piece(sk & (out == 0), start, length), brush, truth == 0, 1)
    return out


def quick_strokes(truth: np.ndarray, n_ftu: int = 3, n_background: int = 3, seed: int = 0,
                  length: int = QUICK_PX, brush: int = QUICK_BRUSH, background_margin: int = 5) -> np.ndarray:
    """Scribbles as :func:`strokes` gives them, as a hurried user paints them: each stroke a
    straight ``length``-px dab in a random direction from a random pixel of its object (or of the
    background eroded by ``background_margin``), painted ``brush`` px wide and kept inside its
    region; often near an edge, so it teaches the classifier the rim as well as the core."""
    rng = np.random.default_rng(seed)
    lab, n = ndi.label(truth > 0) if truth.dtype == bool or truth.max() <= 1 else (truth, int(truth.max()))
    out = np.zeros(truth.shape, np.uint8)
    ids = [i for i in np.argsort(-np.bincount(lab.ravel(), minlength=n + 1)[1:]) + 1 if (lab == i).any()]
    bg = ndi.binary_erosion(truth == 0, iterations=background_margin, border_value=1)
    jobs = [(lab == ids[k % len(ids)], lab == ids[k % len(ids)], 2) for k in range(n_ftu if ids else 0)]
    jobs += [(bg, truth == 0, 1)] * n_background
    for where, region, value in jobs:
        pts = np.argwhere(where & (out == 0))
        if len(pts) == 0:
            continue
        start = pts[rng.integers(len(pts))]
        angle = rng.uniform(0, np.pi)
        t = np.arange(length)[:, None] - length // 2
        line = np.rint(start + t * [np.sin(angle), np.cos(angle)]).astype(int)
        line = line[((line >= 0) & (line < truth.shape)).all(1)]
        _paint(out, line, brush, region, value)
    return out


def _paint(out: np.ndarray, pts: np.ndarray, brush: int, region: np.ndarray, value: int) -> None:
    line = np.zeros(out.shape, bool)
    line[tuple(pts.T)] = True
    if brush > 1:
        r = brush // 2
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        line = ndi.binary_dilation(line, yy**2 + xx**2 <= r * r)
    out[line & region & (out == 0)] = value


def clicks(truth: np.ndarray) -> list[tuple[int, int, int]]:
    """(y, x, id) per object: its innermost pixel."""
    from napari_ftu.annotate.outline import innermost

    lab = truth if truth.dtype != bool else ndi.label(truth)[0]
    out = []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        y, x = innermost(lab[sl] == i)
        out.append((y + sl[0].start, x + sl[1].start, i))
    return out


def class_strokes(instances: np.ndarray, classes: dict, n_per_class: int = 3, n_background: int = 3, seed: int = 0,
                  length: int = STROKE_PX, brush: int = 1) -> np.ndarray:
    """Scribbles for several classes: ``classes`` maps an instance id to its scribble value (2, 3,
    ...); each value gets ``n_per_class`` strokes over the objects of that class (as
    :func:`strokes`), the background ``n_background``."""
    out = strokes(instances, 0, n_background, seed=seed, length=length, brush=brush)
    lut = np.zeros(int(instances.max()) + 1, np.int64)
    for i, v in classes.items():
        lut[int(i)] = int(v)
    per_object = lut[instances]
    for k, value in enumerate(sorted(set(lut[1:].tolist()) - {0})):
        own = np.where(per_object == value, instances, 0)
        s = strokes(own, n_per_class, 0, seed=seed + 1 + k, length=length, brush=brush)
        out[(s == 2) & (out == 0)] = value
    return out
