"""Grow an object out to the edge that encloses it: Bowman's capsule beyond the pale Bowman's
space, a vessel's wall round its lumen.

Strokes and clicks find an FTU's dense core (the glomerular tuft), while its outline in the ground
truth, as a pathologist draws it, is the capsule beyond the pale space. That capsule is the first
bright-to-dark step met on the way out from the core. The outline is one closed, smooth contour
r(θ) around the object's innermost pixel, found by dynamic programming over a polar resampling
(as the classic polar active contours for round cells and nuclei): it maximises the radial
bright-to-dark step, less a small cost per unit of radius (the nearest enclosing edge wins over a
tubule wall further out), never cuts into the object, and changes radius by at most two samples
from one angle to the next. The polar grid is scaled to the expected FTU radius, so the same
constants hold at any µm/px.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_ftu.boxes import box_at, grow

ANGLES = 72  # 5° steps
SAMPLES = 33  # radial samples per expected radius (about 1 px per sample for a glomerulus at 3 µm/px)
REACH = 1.6  # the outline stays within this many expected radii of the object's centre
STEP = 2  # samples: the bright-to-dark step is measured between r - STEP and r + STEP
JUMP = 2  # samples the radius may change between neighbouring angles
JUMP_COST = 0.02  # brightness (0..1) per sample of radius change: smooth rather than jagged
RADIUS_COST = 0.012  # brightness per sample of radius: the nearest enclosing edge wins
SIGMA_PX = 2.0  # smoothing of the brightness before sampling (nuclei and noise are not edges)
CUT = -1e3  # score of a radius inside the object (finite: a path always exists)


def innermost(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of ``mask`` farthest from its border (a click's simulated position)."""
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dist)), dist.shape))


def enclosing_outline(image: np.ndarray, mask: np.ndarray, center, radius_px: float) -> np.ndarray:
    """``mask`` (image-sized, bool) grown out to the bright-to-dark edge that encloses it, seen
    from ``center`` (y, x); ``radius_px`` is the expected FTU radius in pixels. Returns a new
    image-sized mask that holds all of ``mask``; only a window of the outline's reach is read."""
    from skimage.draw import polygon

    from napari_ftu.models.features import to_unit

    h, w = mask.shape
    y, x = int(center[0]), int(center[1])
    scale = max(radius_px, 1.0) / SAMPLES  # px per radial sample
    n = int(REACH * SAMPLES) + 1
    radii = np.arange(n + STEP) * scale
    box = grow(box_at(y, x, 1, 1), int(radii[-1] + 4 * SIGMA_PX) + 2, (h, w))
    crop = to_unit(np.asarray(image[box]))
    gray = ndi.gaussian_filter(crop.mean(-1) if crop.ndim == 3 else crop, SIGMA_PX)
    theta = np.linspace(0, 2 * np.pi, ANGLES, endpoint=False)
    ys = (y - box[0].start) + np.outer(np.sin(theta), radii)
    xs = (x - box[1].start) + np.outer(np.cos(theta), radii)
    bright = ndi.map_coordinates(gray, [ys, xs], order=1, mode="nearest")
    score = np.zeros((ANGLES, n))
    score[:, STEP:] = np.clip(bright[:, : n - STEP] - bright[:, 2 * STEP :], 0, None)
    score -= RADIUS_COST * np.arange(n)
    yi, xi = ys + box[0].start, xs + box[1].start
    on_image = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
    score[~on_image[:, :n]] = 0.0  # past the image border every radius is as good: the object is cut there
    inside = ndi.map_coordinates(mask[box].astype(np.uint8), [ys[:, :n], xs[:, :n]], order=0, mode="constant")
    reach = np.array([np.flatnonzero(row).max() if row.any() else 0 for row in inside])
    score[np.arange(n)[None, :] < np.minimum(reach, n - 1)[:, None]] = CUT  # never cut into the object
    r = _closed_path(score) * scale
    region = mask[box].copy()
    rr, cc = polygon((y - box[0].start) + r * np.sin(theta), (x - box[1].start) + r * np.cos(theta), region.shape)
    region[rr, cc] = True
    out = mask.copy()
    out[box] = ndi.binary_fill_holes(region)
    return out


def _closed_path(score: np.ndarray) -> np.ndarray:
    """Radius index per angle maximising the summed score less :data:`JUMP_COST` per change, with
    at most :data:`JUMP` per angle; closed by running three laps and keeping the middle one."""
    laps = np.concatenate([score] * 3)
    n_angles, n = laps.shape
    idx = np.arange(n)
    total = laps[0].copy()
    back = np.zeros(laps.shape, np.intp)
    for a in range(1, n_angles):
        best = np.full(n, -np.inf)
        arg = np.zeros(n, np.intp)
        for d in range(-JUMP, JUMP + 1):
            src = np.clip(idx + d, 0, n - 1)
            v = total[src] - JUMP_COST * abs(d)
            better = v > best
            best[better], arg[better] = v[better], src[better]
        total = best + laps[a]
        back[a] = arg
    path = np.zeros(n_angles, np.intp)
    path[-1] = int(np.argmax(total))
    for a in range(n_angles - 1, 0, -1):
        path[a - 1] = back[a, path[a]]
    return path[len(score) : 2 * len(score)]


def outline_objects(image: np.ndarray, labels: np.ndarray, radius_px: float) -> np.ndarray:
    """Each object of ``labels`` grown to its enclosing outline (:func:`enclosing_outline` from
    its innermost pixel), on pixels no other object holds."""
    out = labels.copy()
    margin = int(REACH * radius_px + 4 * SIGMA_PX) + 4
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        box = grow(sl, margin, labels.shape)
        mask = labels[box] == i
        grown = enclosing_outline(image[box], mask, innermost(mask), radius_px)
        crop = out[box]
        crop[grown & (crop == 0)] = i
    return out
