"""A pyramid level as a lazy array read tile by tile, for slide libraries that hand out tiles
(wsidicom, OpenSlide) rather than arrays: indexing decodes only the tiles a window touches and
keeps recent ones, so napari and the engine read slides of any size with flat memory."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

CACHE_BYTES = 256 * 2**20  # decoded tiles kept per slide (all its levels together)


class TileCache:
    """Recently decoded tiles of one slide, least recently used dropped first; thread-safe
    because napari loads multiscale tiles from worker threads."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.tiles: OrderedDict = OrderedDict()
        self.lock = threading.RLock()

    def get(self, key, read):
        with self.lock:
            tile = self.tiles.get(key)
            if tile is not None:
                self.tiles.move_to_end(key)
                return tile
            tile = read()  # under the lock: the libraries' file handles are not shared safely
            self.tiles[key] = tile
            self.bytes += tile.nbytes
            while self.bytes > self.max_bytes and len(self.tiles) > 1:
                _, old = self.tiles.popitem(last=False)
                self.bytes -= old.nbytes
            return tile

    def clear(self):
        with self.lock:
            self.tiles.clear()
            self.bytes = 0


class TiledLevel:
    """``(H, W)`` or ``(H, W, C)`` array-like whose ``__getitem__`` reads the covering tiles.

    ``read_tile(row, col)`` returns tile ``(row, col)`` as an array (edge tiles may be smaller
    or larger than the level; they are cropped). ``reads`` counts the tiles decoded.
    """

    def __init__(self, shape: tuple, dtype, tile: tuple[int, int], read_tile, cache: TileCache, key=0):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.tile = (int(tile[0]), int(tile[1]))
        self._read_tile = read_tile
        self._cache = cache
        self._key = key
        self.reads = 0

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def __repr__(self) -> str:
        return f"TiledLevel(shape={self.shape}, dtype={self.dtype}, tile={self.tile})"

    def __getitem__(self, key) -> np.ndarray:
        key = _expand(key, self.ndim)
        spatial, rest = key[:2], key[2:]
        bounds, steps, drop = [], [], []
        for axis, k in enumerate(spatial):
            n = self.shape[axis]
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step < 0:
                    raise IndexError("negative steps are not supported on a tiled slide level")
                stop = max(start, stop)
                drop.append(False)
            else:
                start = int(k) + n if int(k) < 0 else int(k)
                if not 0 <= start < n:
                    raise IndexError(f"index {k} is out of bounds for axis {axis} with size {n}")
                stop, step = start + 1, 1
                drop.append(True)
            bounds.append((start, stop))
            steps.append(step)
        window = self._window(bounds)
        window = window[:: steps[0], :: steps[1]]
        if drop[0] or drop[1]:
            window = window[(0 if drop[0] else slice(None), 0 if drop[1] else slice(None))]
        return window[(Ellipsis, *rest)] if rest else window

    def _window(self, bounds) -> np.ndarray:
        (y0, y1), (x0, x1) = bounds
        out = np.empty((y1 - y0, x1 - x0) + self.shape[2:], self.dtype)
        if out.size == 0:
            return out
        th, tw = self.tile
        for row in range(y0 // th, (y1 - 1) // th + 1):
            for col in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self._cache.get((self._key, row, col), lambda r=row, c=col: self._tile(r, c))
                ty, tx = row * th, col * tw
                sy0, sy1 = max(y0, ty), min(y1, ty + th)
                sx0, sx1 = max(x0, tx), min(x1, tx + tw)
                out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        return out

    def _tile(self, row: int, col: int) -> np.ndarray:
        self.reads += 1
        th, tw = self.tile
        want = (min(th, self.shape[0] - row * th), min(tw, self.shape[1] - col * tw))
        tile = np.asarray(self._read_tile(row, col))
        if tile.shape[0] < want[0] or tile.shape[1] < want[1]:
            raise ValueError(f"tile ({row}, {col}) has shape {tile.shape[:2]}, expected at least {want}")
        return np.ascontiguousarray(tile[: want[0], : want[1]], dtype=self.dtype)


def _expand(key, ndim: int) -> tuple:
    """An index as one entry per axis (Ellipsis expanded, missing axes as full slices)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is None for k in key):
        raise IndexError("new axes are not supported on a tiled slide level")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices for an array of {ndim} dimensions")
    return key + (slice(None),) * (ndim - len(key))
