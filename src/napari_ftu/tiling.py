"""Overlapping tile grids and weighted stitching.

Tiles overlap so that every output pixel away from the image border is predicted with context;
overlapping predictions are averaged with a taper window that favours tile centres, where a
convolutional network sees the most context.
"""

from __future__ import annotations

import numpy as np


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``[0, length)``; the last tile is flush with the end."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def tile_grid(shape: tuple[int, int], tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(y0, x0)`` of every tile over an image of ``shape``, row by row."""
    return [(y, x) for y in tile_starts(shape[0], tile, overlap) for x in tile_starts(shape[1], tile, overlap)]


def taper_window(tile: int, overlap: int) -> np.ndarray:
    """Weights rising linearly over ``overlap`` pixels from each edge; never zero."""
    ramp = np.minimum(np.arange(tile) + 1, np.arange(tile)[::-1] + 1) / (overlap + 1)
    ramp = np.minimum(ramp, 1.0)
    return np.outer(ramp, ramp)


def read_tile(image: np.ndarray, y0: int, x0: int, tile: int) -> np.ndarray:
    """A ``tile`` x ``tile`` crop, reflect-padded where the image is smaller than a tile."""
    crop = np.asarray(image[y0 : y0 + tile, x0 : x0 + tile])
    ph, pw = tile - crop.shape[0], tile - crop.shape[1]
    if ph or pw:
        pad = [(0, ph), (0, pw)] + [(0, 0)] * (crop.ndim - 2)
        crop = np.pad(crop, pad, mode="reflect" if min(crop.shape[:2]) > 1 else "edge")
    return crop


class Stitcher:
    """Accumulates weighted tile predictions ``(C, tile, tile)`` into a ``(C, H, W)`` average."""

    def __init__(self, shape: tuple[int, int], channels: int, tile: int, overlap: int):
        self.shape = tuple(shape)
        self.tile = tile
        self.window = taper_window(tile, overlap)
        self.total = np.zeros((channels, *self.shape), np.float64)
        self.weight = np.zeros(self.shape, np.float64)

    def add(self, y0: int, x0: int, pred: np.ndarray) -> None:
        h = min(self.tile, self.shape[0] - y0)
        w = min(self.tile, self.shape[1] - x0)
        win = self.window[:h, :w]
        self.total[:, y0 : y0 + h, x0 : x0 + w] += pred[:, :h, :w] * win
        self.weight[y0 : y0 + h, x0 : x0 + w] += win

    def result(self) -> np.ndarray:
        if (self.weight == 0).any():
            raise RuntimeError("some pixels were covered by no tile")
        return (self.total / self.weight).astype(np.float32)
