"""npe2 reader and the one place that turns a read image into napari layer data.

Layers carry the physical pixel size twice: as ``scale`` (so rulers and overlays are in µm)
and as ``metadata["um_per_px"]`` (so the engine can resample to the model's µm/px).
"""

from __future__ import annotations

from pathlib import Path

from .slide_io import RASTER_SUFFIXES, TIFF_SUFFIXES, LoadedImage, read_image


def image_layer_data(loaded: LoadedImage, um_per_px: float | None = None) -> tuple:
    """``(data, kwargs, "image")`` for an image, scaled in µm when the pixel size is known."""
    um = um_per_px or loaded.um_per_px
    kwargs = {
        "name": loaded.name,
        "metadata": {"um_per_px": um, "path": str(loaded.path)},
        "rgb": loaded.data.ndim == 3 and loaded.data.shape[-1] in (3, 4),
    }
    if um:
        kwargs["scale"] = (um, um)
        kwargs["units"] = ("µm", "µm")
    return (loaded.data, kwargs, "image")


def get_reader(path):
    """npe2 reader contribution: our reader for slide and image files (pixel size applied)."""
    if isinstance(path, list) or not str(path).lower().endswith(TIFF_SUFFIXES + RASTER_SUFFIXES):
        return None
    return read_layers


def read_layers(path) -> list:
    return [image_layer_data(read_image(Path(path)))]
