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
