"""Tile-wise segmentation as a generator, so that any caller can show progress and cancel.

``segment_steps`` yields ``("tile", done, total)`` after each batch of tiles and returns a
:class:`Segmentation`. The Segment dock runs it in napari's ``thread_worker`` (quitting the
worker stops it at the next yield, i.e. within one batch); the CLI and tests drain it with
:func:`segment`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .models import FTUModel
from .postprocess import instances, object_table
from .resample import resample_image, zoom_shape
from .slide_io import to_rgb
from .steps import drain
from .tiling import Stitcher, read_tile, tile_grid


@dataclass
class Segmentation:
    probability: np.ndarray  # (H, W) float32 for one class, (C, H, W) for several
    labels: np.ndarray  # (H, W) int32 instances of the first class
    objects: list = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0
    n_tiles: int = 0
    threshold: float = 0.5


def segment_steps(
    image: np.ndarray,
    model: FTUModel,
    um_per_px: float | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    threshold: float | None = None,
    batch_size: int = 4,
):
    """Segment ``image`` tile by tile; yields progress, returns a :class:`Segmentation`.

    The image is resampled to the model's µm/px when its own pixel size is known, tiled with
    overlap, predicted in batches, blended, resampled back and turned into instances.
    """
    start = time.perf_counter()
    card = model.card
    tile = int(tile_size or card.tile_size)
    overlap = int(card.overlap if overlap is None else overlap)
    threshold = float(card.threshold if threshold is None else threshold)
    rgb = to_rgb(image)
    full_shape = rgb.shape[:2]
    factor = (um_per_px / card.um_per_px) if um_per_px else 1.0
    work = (resample_image(rgb, zoom_shape(full_shape, factor), anti_alias=factor < 1)
            if abs(factor - 1) > 1e-3 else rgb)

    grid = tile_grid(work.shape[:2], tile, overlap)
    stitcher = Stitcher(work.shape[:2], len(card.classes), tile, overlap)
    yield ("tile", 0, len(grid))
    for i in range(0, len(grid), batch_size):
        batch = grid[i : i + batch_size]
        tiles = np.stack([read_tile(work, y, x, tile) for y, x in batch])
        for (y, x), pred in zip(batch, model.predict(tiles)):
            stitcher.add(y, x, pred)
        yield ("tile", min(i + batch_size, len(grid)), len(grid))

    prob = stitcher.result()
    if work is not rgb:
        prob = np.stack([resample_image(p, full_shape) for p in prob])
    pixel_area = (um_per_px or card.um_per_px) ** 2
    labels = instances(prob[0], threshold, int(card.min_object_um2 / pixel_area))
    prob = prob[0] if prob.shape[0] == 1 else prob
    objects = object_table(labels, prob if prob.ndim == 2 else prob[0], um_per_px)
    return Segmentation(
        probability=prob,
        labels=labels,
        objects=objects,
        device=str(model.device),
        seconds=time.perf_counter() - start,
        n_tiles=len(grid),
        threshold=threshold,
    )


def segment(image: np.ndarray, model: FTUModel, progress=None, **kwargs) -> Segmentation:
    """Run :func:`segment_steps` to the end; ``progress(done, total)`` is called per batch."""
    report = None if progress is None else (lambda event: progress(event[1], event[2]))
    return drain(segment_steps(image, model, **kwargs), report)
