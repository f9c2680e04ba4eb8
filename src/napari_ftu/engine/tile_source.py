"""A slide seen at the model's pixel size, read one tile at a time.

The engine works on the *model grid*: the slide resampled to the µm/px the model was trained
at. Tiles of that grid are read from the coarsest pyramid level that is still at least as fine
as the model needs, and resampled with separable weights that depend only on global pixel
positions, so neighbouring tiles agree. Nothing but the tile's source window is ever read.
"""

from __future__ import annotations

import numpy as np

from napari_ftu.engine.tiling import pad_tile
from napari_ftu.errors import InputError
from napari_ftu.io.images import to_rgb
from napari_ftu.io.resample import resample_matrix

THUMB_MAX = 1024  # longest side of the overview used for tissue detection (0.1 s at this size)


class TileSource:
    """Levels (full resolution first, each ``(H, W)`` or ``(H, W, C)``) at ``um_per_px``
    (of level 0; ``None`` means the slide is already at the model's scale).

    Parameters
    ----------
    levels : list of array-like
        The pyramid; tiles are read from the level closest to the model's scale.
    um_per_px : float, optional
        Pixel size of level 0.
    model_um : float
        The model's pixel size.
    """

    def __init__(self, levels, um_per_px: float | None, model_um: float):
        levels = list(levels) if isinstance(levels, (list, tuple)) else [levels]
        if not levels:
            raise InputError("no image data to segment")
        for lvl in levels:
            if len(lvl.shape) not in (2, 3) or (len(lvl.shape) == 3 and lvl.shape[-1] > 4):
                raise InputError(f"expected (H, W) or (H, W, channels) image levels, got shape {tuple(lvl.shape)}")
        self.levels = levels
        h0, w0 = (int(n) for n in levels[0].shape[:2])
        self.full_shape = (h0, w0)
        self.um_per_px = um_per_px
        factor = um_per_px / model_um if um_per_px else 1.0  # model px per level-0 px
        self.factor = factor
        self.shape = (max(1, round(h0 * factor)), max(1, round(w0 * factor)))
        self.level = 0
        if um_per_px:
            for k, lvl in enumerate(levels):
                if lvl.shape[0] >= self.shape[0] * 0.99 and lvl.shape[1] >= self.shape[1] * 0.99:
                    self.level = k  # coarsest level still at least as fine as the model grid
        src = levels[self.level]
        self.src = src
        self.ratio = (src.shape[0] / self.shape[0], src.shape[1] / self.shape[1])
        self.exact = self.ratio == (1.0, 1.0)
        self._range = None if src.dtype == np.uint8 else _value_range(levels[-1])

    def read(self, y: int, x: int, tile: int, edge: str = "reflect") -> np.ndarray:
        """The model-grid tile at ``(y, x)`` as ``(tile, tile, 3)`` uint8, reflect-padded past the edge.

        Parameters
        ----------
        y, x : int
            Top-left pixel on the model grid.
        tile : int
            Tile size in model pixels.
        edge : str
            ``"reflect"``: a tile within the image, padded at its bottom and right only when the
            image is smaller; ``"symmetric"``: the tile may start before or end past any edge
            (negative ``y``, ``x``), and the image is mirrored there (edge pixels repeated).

        Returns
        -------
        ndarray
        """
        if y < 0 or x < 0 or y + tile > self.shape[0] or x + tile > self.shape[1]:
            if edge == "symmetric":  # past every edge: the image mirrored, so a cut object looks whole
                rows, cols = _mirrored(y, tile, self.shape[0]), _mirrored(x, tile, self.shape[1])
                y0, x0 = int(rows.min()), int(cols.min())
                h, w = int(rows.max()) + 1 - y0, int(cols.max()) + 1 - x0
                block = self.read(y0, x0, max(h, w))[:h, :w]
                return block[np.ix_(rows - y0, cols - x0)]
        h = min(tile, self.shape[0] - y)
        w = min(tile, self.shape[1] - x)
        if self.exact:
            crop = self._rgb(np.asarray(self.src[y : y + h, x : x + w]))
        else:
            y0, my = resample_matrix(y, h, self.ratio[0], self.src.shape[0])
            x0, mx = resample_matrix(x, w, self.ratio[1], self.src.shape[1])
            window = self._rgb(np.asarray(self.src[y0 : y0 + my.shape[1], x0 : x0 + mx.shape[1]]))
            # two matrix products per channel (75x faster than the same einsum), in float64 so
            # that tiles of different sizes round every shared pixel to the same uint8
            planes = window.transpose(2, 0, 1).astype(np.float64)
            out = (my.astype(np.float64) @ (planes @ mx.T.astype(np.float64))).transpose(1, 2, 0)
            crop = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return pad_tile(crop, tile)

    def thumbnail(self) -> tuple[np.ndarray, float]:
        """An RGB overview and its size relative to the model grid (thumbnail px per model px)."""
        lvl = self.levels[-1]
        step = max(1, int(np.ceil(max(lvl.shape[:2]) / THUMB_MAX)))
        thumb = self._rgb(np.asarray(lvl[::step, ::step]))
        return thumb, thumb.shape[0] / self.shape[0]

    def _rgb(self, block: np.ndarray) -> np.ndarray:
        if self._range is not None:  # one scaling for the whole slide, not per tile
            lo, hi = self._range
            block = np.clip((block.astype(np.float32) - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
        return to_rgb(block)


def _value_range(level) -> tuple[float, float]:
    step = max(1, int(np.ceil(max(level.shape[:2]) / THUMB_MAX)))
    sample = np.asarray(level[::step, ::step], dtype=np.float32)
    return float(np.percentile(sample, 0.5)), float(np.percentile(sample, 99.5))


def _mirrored(start: int, n: int, length: int) -> np.ndarray:
    """Indices ``start .. start + n`` into an axis of ``length`` mirrored at both ends, edge
    pixels repeated (numpy's ``symmetric`` padding)."""
    i = np.arange(start, start + n) % (2 * length)
    return np.where(i < length, i, 2 * length - 1 - i)
