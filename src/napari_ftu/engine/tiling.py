"""Overlapping tile grids and seamless, streamed stitching.

Tiles overlap so that every output pixel away from the image border is predicted with context.
A network's receptive field is far larger than the overlap, so neighbouring tiles disagree where
the model is unsure; giving each pixel to one tile only turns that disagreement into straight
lines. Each tile's prediction is therefore weighted by a window that stays positive across the
whole overlap and falls towards inner tile edges: a cosine ramp over the actual overlap with each
neighbour (``taper``, 1 in the middle and at the image border), or MONAI's Gaussian with
sigma = tile / 8 (``gaussian``). Overlapping predictions are averaged with these weights, so the
result moves smoothly from one tile to the next. How visible seams remain is measured by
:func:`seam_ratio` (``bench/seams.py`` prints it against overlap and time).

:class:`Stitcher` keeps only one band of tile rows in memory: when the grid moves to the next
tile row, the rows above it are final and go to a sink (a zarr array, a numpy array, ...).
"""

from __future__ import annotations

import functools

import numpy as np

BLENDS = ("taper", "gaussian")
FLUSH_COLUMNS = 4096


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``[0, length)``; the last tile is flush with the end.

    Parameters
    ----------
    length : int
        Image size along the axis.
    tile, overlap : int
        Tile size and overlap in pixels (``0 <= overlap < tile``).

    Returns
    -------
    list of int

    Raises
    ------
    ValueError
        Impossible tile or overlap.
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def tile_grid(shape: tuple[int, int], tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(y0, x0)`` of every tile over an image of ``shape``, row by row.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)``.
    tile, overlap : int
        As for :func:`tile_starts`.

    Returns
    -------
    list of tuple of int
    """
    return [(y, x) for y in tile_starts(shape[0], tile, overlap) for x in tile_starts(shape[1], tile, overlap)]


def window_1d(start: int, tile: int, length: int, overlap: int, blend: str = "taper") -> np.ndarray:
    """Weights along one axis of the tile at ``start`` (of ``length`` pixels, clipped to the image).

    Parameters
    ----------
    start : int
        The tile's first pixel.
    tile, overlap : int
        Tile size and overlap.
    length : int
        Image size along the axis: tiles at the border keep full weight there.
    blend : str
        ``"taper"`` or ``"gaussian"`` (:data:`BLENDS`).

    Returns
    -------
    ndarray
        float weights, positive everywhere, so every pixel a tile covers is defined.
    """
    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}; use one of {BLENDS}")
    return _window(int(start), int(tile), int(length), int(overlap), blend)[: max(0, min(tile, length - start))]


@functools.lru_cache(maxsize=4096)
def _window(start: int, tile: int, length: int, overlap: int, blend: str) -> np.ndarray:
    pos = np.arange(tile, dtype=np.float64)
    if blend == "gaussian":  # as MONAI: sigma = tile / 8, floored so that no weight is 0
        w = np.exp(-0.5 * ((pos - (tile - 1) / 2) / (tile / 8)) ** 2)
        w = np.maximum(w, 1e-3)
    else:  # a cosine ramp across the real overlap with each neighbour (the last tile overlaps more)
        starts = tile_starts(length, tile, overlap)
        w = np.ones(tile)
        if start in starts:
            i = starts.index(start)
            before = starts[i - 1] + tile - start if i > 0 else 0
            after = start + tile - starts[i + 1] if i + 1 < len(starts) else 0
        else:  # a tile off this grid: the nominal overlap on each inner side
            before, after = overlap * (start > 0), overlap * (start + tile < length)
        w *= _ramp(pos, before) * _ramp(pos[::-1], after)
    w.setflags(write=False)
    return w


def _ramp(pos: np.ndarray, width: int) -> np.ndarray:
    """sin² from near 0 at ``pos`` 0 to 1 at ``width``: with the neighbour's mirrored ramp the
    weights sum to 1 across the overlap, and no pixel has weight 0."""
    if width <= 0:
        return np.ones_like(pos)
    return np.where(pos < width, np.sin(0.5 * np.pi * (pos + 0.5) / width) ** 2, 1.0)


def read_tile(image: np.ndarray, y0: int, x0: int, tile: int) -> np.ndarray:
    """A ``tile`` x ``tile`` crop, reflect-padded where the image is smaller than a tile.

    Parameters
    ----------
    image : array-like
        ``(H, W)`` or ``(H, W, C)``.
    y0, x0 : int
        Top-left pixel.
    tile : int
        Tile size.

    Returns
    -------
    ndarray
    """
    crop = np.asarray(image[y0 : y0 + tile, x0 : x0 + tile])
    return pad_tile(crop, tile)


def pad_tile(crop: np.ndarray, tile: int) -> np.ndarray:
    """``crop`` reflect-padded at its bottom and right to ``tile × tile`` (edge-padded when one pixel wide).

    Parameters
    ----------
    crop : ndarray
        ``(h, w, ...)`` with ``h, w <= tile``.
    tile : int

    Returns
    -------
    ndarray
    """
    ph, pw = tile - crop.shape[0], tile - crop.shape[1]
    if ph or pw:
        pad = [(0, ph), (0, pw)] + [(0, 0)] * (crop.ndim - 2)
        crop = np.pad(crop, pad, mode="reflect" if min(crop.shape[:2]) > 1 else "edge")
    return crop


class Stitcher:
    """Blends ``(C, tile, tile)`` predictions, added row by row, into a ``(C, H, W)`` average.

    ``sink(y0, x0, block)`` receives each finished band of rows in column chunks, ``block``
    float32 ``(C, rows, columns)``, over the columns that tiles covered only: pixels no tile
    covered (skipped glass) are never written: outputs start at 0.
    ``done(y0, y1)`` is told when rows ``y0:y1`` are final.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the output.
    channels : int
        Channels of each prediction.
    tile, overlap : int
        The tiling the predictions come from.
    sink : callable
        ``sink(y0, x0, block)``, receives finished rows: memory holds one band, not the image.
    blend : str
        As for :func:`window_1d`.
    done : callable, optional
        ``done(y0, y1)``, called once per finished band, in order, covering every row.
    """

    def __init__(self, shape, channels: int, tile: int, overlap: int, sink, blend: str = "taper", done=None):
        self.shape = tuple(int(n) for n in shape)
        self.tile, self.overlap, self.blend, self.sink, self.done = tile, overlap, blend, sink, done
        rows = min(tile, self.shape[0])
        self.total = np.zeros((channels, rows, self.shape[1]), np.float32)
        self.weight = np.zeros((rows, self.shape[1]), np.float32)
        self._lo = np.full(rows, self.shape[1], np.int64)  # per band row: the columns tiles covered
        self._hi = np.zeros(rows, np.int64)
        self._blended = np.empty((channels, rows, min(tile, self.shape[1])), np.float32)  # one tile's product
        self._windows: dict = {}
        self.y = 0  # image row of the band's first row
        self._row_starts = tile_starts(self.shape[0], tile, overlap) + [self.shape[0]]
        self._last_x = tile_starts(self.shape[1], tile, overlap)[-1]

    def add(self, y0: int, x0: int, pred: np.ndarray) -> None:
        """Blend one tile's prediction in; rows before ``y0`` are finished and go to the sink.

        Parameters
        ----------
        y0, x0 : int
            The tile's top-left pixel; tiles come row by row, top to bottom.
        pred : ndarray
            ``(C, tile, tile)``.

        Raises
        ------
        ValueError
            A tile above the current row.
        """
        if y0 < self.y:
            raise ValueError("tiles must be added row by row, top to bottom")
        if y0 > self.y:
            self._flush(y0)
        win = self._window(y0, x0)
        h, w = win.shape
        part = pred[:, :h, :w]  # float32 from a model: multiplied into a buffer, not a new array per tile
        blended = np.multiply(part, win, out=self._blended[:, :h, :w]) if part.dtype == np.float32 else part * win
        self.total[:, :h, x0 : x0 + w] += blended
        self.weight[:h, x0 : x0 + w] += win
        np.minimum(self._lo[:h], x0, out=self._lo[:h])
        np.maximum(self._hi[:h], x0 + w, out=self._hi[:h])
        if x0 == self._last_x:  # a row of tiles is complete: rows above the next row are final
            self._flush(next(y for y in self._row_starts if y > y0))

    def _window(self, y0: int, x0: int) -> np.ndarray:
        """The 2-D float32 weights, kept per distinct pair of 1-D windows (a handful: border,
        inner and last tiles), so a tile costs no outer product."""
        wy = window_1d(y0, self.tile, self.shape[0], self.overlap, self.blend)
        wx = window_1d(x0, self.tile, self.shape[1], self.overlap, self.blend)
        key = (wy.tobytes(), wx.tobytes())
        win = self._windows.get(key)
        if win is None:
            win = self._windows[key] = np.outer(wy, wx).astype(np.float32)
        return win

    def finish(self) -> None:
        self._flush(self.shape[0])

    def _flush(self, until: int) -> None:
        until = min(until, self.shape[0])
        rows = self.weight.shape[0]
        n = until - self.y
        if n <= 0:
            return
        if n > rows:  # whole tile rows were skipped: the band, then rows nothing covered
            self._flush(self.y + rows)
            n = until - self.y
        else:
            covered = np.flatnonzero(self._hi[:n] > self._lo[:n])  # rows some tile covered
            if covered.size:
                a, b = int(covered[0]), int(covered[-1]) + 1
                lo, hi = int(self._lo[a:b].min()), int(self._hi[a:b].max())
                for x in range(lo, hi, FLUSH_COLUMNS):  # column chunks keep temporaries small
                    weight = self.weight[a:b, x : min(x + FLUSH_COLUMNS, hi)]
                    total = self.total[:, a:b, x : min(x + FLUSH_COLUMNS, hi)]
                    self.sink(self.y + a, x, np.divide(total, weight, out=np.zeros_like(total), where=weight > 0))
            self._shift(n)
        if self.done is not None:
            self.done(self.y, self.y + n)
        self.y += n

    def _shift(self, n: int) -> None:
        """Move the band up by ``n`` rows, touching only the columns tiles covered."""
        lo, hi = int(self._lo.min()), int(self._hi.max())
        keep = self._lo.size - n
        if lo < hi:
            for arr in (self.total, self.weight):
                if keep > 0:
                    arr[..., :keep, lo:hi] = arr[..., n:, lo:hi].copy()
                arr[..., max(keep, 0) :, lo:hi] = 0
        for arr, empty in ((self._lo, self.shape[1]), (self._hi, 0)):
            if keep > 0:
                arr[:keep] = arr[n:].copy()
            arr[max(keep, 0) :] = empty


def seam_ratio(tiled: np.ndarray, untiled: np.ndarray, stride: int, axis: int = 1) -> float:
    """How much more the tiled probability changes at one phase of the tile stride than a single
    untiled pass does (about 1: no visible seams; real edges cancel out).

    Along ``axis`` (1: columns, 0: rows), g(x) = mean over the other axis of |p(x) - p(x-1)|;
    each map scores the largest mean of g over one phase of ``stride``, divided by the mean of g;
    the ratio is the tiled score over the untiled one.

    Parameters
    ----------
    tiled, untiled : ndarray
        2-D probabilities of the same image, tiled and in one pass.
    stride : int
        The tile stride (tile - overlap).
    axis : int
        1: seams between columns of tiles, 0: between rows.

    Returns
    -------
    float
    """

    def score(p):
        g = np.abs(np.diff(np.asarray(p, np.float64), axis=axis)).mean(axis=1 - axis)
        phase = np.arange(1, len(g) + 1) % stride
        count = np.bincount(phase, minlength=stride)
        mean = np.bincount(phase, weights=g, minlength=stride)[count > 0] / count[count > 0]
        return mean.max() / max(g.mean(), 1e-12)

    return float(score(tiled) / score(untiled))


def predict_untiled(model, image: np.ndarray, multiple: int = 32) -> np.ndarray:
    """One forward pass of ``model`` over the whole ``(H, W, 3)`` uint8 image, reflect-padded to a
    multiple of the network's stride: the reference that tiling should not visibly change.

    Parameters
    ----------
    model : FTUModel
    image : ndarray
        ``(H, W, 3)`` uint8, small enough for one pass.
    multiple : int
        The network's stride.

    Returns
    -------
    ndarray
        ``(C, H, W)`` probability.
    """
    h, w = image.shape[:2]
    side = (-h % multiple, -w % multiple)
    padded = np.pad(image, [(0, side[0]), (0, side[1]), (0, 0)], mode="reflect") if any(side) else image
    return model.predict(padded[None])[0, :, :h, :w]
