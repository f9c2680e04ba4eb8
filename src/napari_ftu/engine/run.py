"""The one way to segment a slide: from a file (opened lazily), pyramid levels or an array.

``napari-ftu segment`` (one image or a batch), the batch workers and the Segment dock all call
:func:`segment_slide_steps`. It opens files with :func:`napari_ftu.io.slides.open_slide` (never
decoding a whole slide), resolves the options against the model card, applies the size rules
of :func:`napari_ftu.engine.options.plan_outputs` (memory or a zarr store, the image's size or
the model grid) and runs :func:`napari_ftu.engine.inference.segment_steps`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from napari_ftu.engine.options import READ_LEVEL_BELOW_BYTES, SegmentOptions, check_positive, plan_outputs
from napari_ftu.io.resample import zoom_shape

STORE_NAME = "segmentation.zarr"


def segment_slide_steps(source, model, options: SegmentOptions | None = None, *, um_per_px: float | None = None,
                        store: str | Path | None = None, pyramid_view: bool = False):
    """Segment ``source`` (a file path, an open :class:`~napari_ftu.io.slides.Slide`, a list of
    pyramid levels full resolution first, or one array), yielding the engine's progress events
    and returning its :class:`~napari_ftu.engine.inference.Segmentation`.

    ``um_per_px`` overrides the file's pixel size (a file whose own pixel size is invalid is
    refused unless it is given). ``store`` is where the zarr store goes when the size rules call
    for one (default: a new temporary folder; ``seg.store`` says where, and the caller deletes
    it). ``pyramid_view``: a viewer shows the pyramid and draws model-grid outputs lazily.

    Parameters
    ----------
    source : str, Path, Slide, list of array-like or array-like
        What to segment.
    model : FTUModel
    options : SegmentOptions, optional
        Defaults to the model card's settings.
    um_per_px : float, optional
        Overrides the file's pixel size.
    store : str or Path, optional
        Where the zarr outputs go when the size rules ask for a store.
    pyramid_view : bool
        A viewer draws model-grid outputs over the pyramid.

    Yields
    ------
    TileProgress, LabelProgress, Band

    Returns
    -------
    Segmentation

    Raises
    ------
    InputError
        An unreadable file, or one without a valid pixel size and no ``um_per_px``.
    """
    from napari_ftu.engine.inference import segment_steps
    from napari_ftu.io.slides import Slide, open_slide

    options = (options or SegmentOptions()).resolve(model.card)
    um_per_px = check_positive(um_per_px, "the given µm/px")
    slide = None
    if isinstance(source, (str, Path)):
        slide = open_slide(source, um_per_px=um_per_px)
    try:
        if isinstance(source, Slide) or slide is not None:
            opened = slide or source
            levels, um_per_px = opened.levels, um_per_px or opened.um_per_px
        else:
            levels = list(source) if isinstance(source, (list, tuple)) else [source]
        image_shape = tuple(int(n) for n in levels[0].shape[:2])
        factor = um_per_px / model.card.um_per_px if um_per_px else 1.0
        plan = plan_outputs(image_shape, zoom_shape(image_shape, factor), pyramid_view=pyramid_view)
        if plan.store and store is None:
            store = Path(tempfile.mkdtemp(prefix="napari-ftu-")) / STORE_NAME
        levels = _decode_small_level(levels, um_per_px, model.card.um_per_px)
        image = levels[0] if len(levels) == 1 and isinstance(levels[0], np.ndarray) else levels
        return (yield from segment_steps(image, model, options, um_per_px=um_per_px,
                                         store=store if plan.store else None,
                                         full_resolution=plan.full_resolution))
    finally:
        if slide is not None:
            slide.close()


def _decode_small_level(levels: list, um_per_px, model_um: float) -> list:
    """The levels, with the one the model reads decoded into memory when it is small: reading
    overlapping tiles from a compressed file decodes each stored tile many times (8 s instead
    of 0.1 s for a 2967 x 2220 SVS). Large levels stay lazy, so memory stays flat."""
    from napari_ftu.engine.tile_source import TileSource

    source = TileSource(levels, um_per_px, model_um)
    level = levels[source.level]
    if isinstance(level, np.ndarray) or np.prod(level.shape) * np.dtype(level.dtype).itemsize > READ_LEVEL_BELOW_BYTES:
        return levels
    return [np.asarray(lvl[...]) if k == source.level else lvl for k, lvl in enumerate(levels)]
