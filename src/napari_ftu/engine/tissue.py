"""Which tiles hold tissue, judged on a low-resolution overview.

Bright-field glass is bright and grey; stained tissue is darker or coloured. The rule is
deliberately cautious (a tile is skipped only when its whole footprint, grown by a margin, is
glass): skipping a tile with tissue loses objects, computing a glass tile only costs time.
Dark-background images (fluorescence) have no bright glass, so nothing is skipped there.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from napari_ftu.engine.components import enclosed

MIN_SATURATION = 12  # max - min over RGB, 0..255
MAX_GLASS_GRAY = 200


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean mask of tissue in an RGB (or grey) uint8 overview.

    Parameters
    ----------
    rgb : ndarray
        ``(H, W, 3)`` or ``(H, W)`` uint8.

    Returns
    -------
    ndarray
        bool ``(H, W)``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    channels = [rgb[..., i] for i in range(min(3, rgb.shape[-1]))]  # per channel: reducing an axis of 3 is slow
    sat = functools.reduce(np.maximum, channels).astype(np.int16) - functools.reduce(np.minimum, channels)
    total = channels[0].astype(np.float64 if channels[0].dtype.kind in "biu" else channels[0].dtype)
    for c in channels[1:]:
        total = total + c
    gray = total / len(channels)  # the same sums, in the same order, as rgb.mean(-1)
    mask = (sat >= MIN_SATURATION) | (gray <= MAX_GLASS_GRAY)
    return _fill_holes(_opening(mask))  # dust and noise out, holes in


def _opening(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_opening(mask)`` (a cross, outside pixels off) by shifted slices, several times faster."""
    p = np.pad(mask, 1)
    eroded = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    q = np.pad(eroded, 1)
    return q[1:-1, 1:-1] | q[:-2, 1:-1] | q[2:, 1:-1] | q[1:-1, :-2] | q[1:-1, 2:]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes(mask)``: background components off the border are holes. One
    labelling instead of a dilation repeated until nothing changes."""
    if mask.size == 0:
        return mask
    labels, n = ndi.label(~mask)
    return mask | enclosed(labels, n)[labels]


def tissue_fraction(rgb: np.ndarray) -> float:
    """Share of an image (a tile, a window) that is tissue by :func:`tissue_mask`.

    Parameters
    ----------
    rgb : ndarray
        A tile or window, RGB or grey uint8 (as :func:`tissue_mask` takes).

    Returns
    -------
    float
        From 0 (glass) to 1 (all tissue).
    """
    return float(tissue_mask(rgb).mean()) if np.asarray(rgb).size else 0.0


def tiles_with_tissue(mask: np.ndarray, scale: float, grid, tile: int, margin_px: int = 16) -> np.ndarray:
    """For each ``(y, x)`` tile of the model grid, whether its footprint (grown by ``margin_px``
    model pixels) touches tissue; ``scale`` is overview pixels per model pixel.

    Parameters
    ----------
    mask : ndarray
        Tissue mask of an overview (:func:`tissue_mask`).
    scale : float
        Overview pixels per model pixel.
    grid : list of tuple of int
        ``(y, x)`` tile starts on the model grid.
    tile : int
        Tile size in model pixels.
    margin_px : int
        Growth of each footprint, so tiles at a tissue edge still run.

    Returns
    -------
    ndarray
        bool, one per tile.
    """
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    keep = np.empty(len(grid), bool)
    for i, (y, x) in enumerate(grid):
        y0 = int(np.clip(np.floor((y - margin_px) * scale), 0, h))
        x0 = int(np.clip(np.floor((x - margin_px) * scale), 0, w))
        y1 = int(np.clip(np.ceil((y + tile + margin_px) * scale), y0 + 1, h))
        x1 = int(np.clip(np.ceil((x + tile + margin_px) * scale), x0 + 1, w))
        y0, x0 = min(y0, h - 1), min(x0, w - 1)
        keep[i] = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0] > 0
    return keep
