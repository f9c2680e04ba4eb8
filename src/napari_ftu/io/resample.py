"""Resampling between pixel sizes: images linearly (anti-aliased when shrinking), labels by
nearest neighbour, so ids survive."""

from __future__ import annotations

import numpy as np


def zoom_shape(shape, factor: float) -> tuple[int, int]:
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def resample_image(array: np.ndarray, shape, anti_alias: bool = False) -> np.ndarray:
    """``array`` (H, W[, C]) resized to ``shape`` (H', W'); uint8 stays uint8, the rest float32."""
    from skimage.transform import resize

    out = resize(array, tuple(shape) + array.shape[2:], order=1, anti_aliasing=anti_alias, preserve_range=True)
    return np.rint(out).astype(np.uint8) if array.dtype == np.uint8 else out.astype(np.float32)


def resample_pair(image: np.ndarray, labels: np.ndarray, factor: float):
    """An image and its labels zoomed by ``factor`` (> 1 enlarges); labels keep their dtype."""
    from skimage.transform import resize

    shape = zoom_shape(labels.shape, factor)
    image = resample_image(image, shape, anti_alias=factor < 1)
    labels = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True).astype(labels.dtype)
    return image, labels


def resample_matrix(start: int, count: int, ratio: float, src_length: int) -> tuple[int, np.ndarray]:
    """Linear weights mapping source pixels to output pixels ``start .. start+count`` of a grid
    ``ratio`` source pixels per output pixel (a triangle filter as wide as the ratio when
    shrinking, so it anti-aliases). Returns ``(first source index, matrix (count, n_src))``.

    Each output pixel depends only on its global index, so tiles cut from the same grid agree
    exactly where they overlap.
    """
    centres = (np.arange(start, start + count) + 0.5) * ratio - 0.5
    half = max(1.0, ratio)
    lo = max(0, int(np.floor(centres[0] - half)))
    hi = min(src_length - 1, int(np.ceil(centres[-1] + half)))
    src = np.arange(lo, hi + 1)
    weights = np.maximum(0.0, 1.0 - np.abs(src[None, :] - np.clip(centres, 0, src_length - 1)[:, None]) / half)
    weights /= weights.sum(axis=1, keepdims=True)
    return lo, weights.astype(np.float32)
