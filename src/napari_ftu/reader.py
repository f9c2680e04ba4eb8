"""npe2 reader: slides open lazily (pyramids as multiscale layers) with their pixel size.

Layers carry the physical pixel size twice: as ``scale`` (so rulers and overlays are in µm)
and as ``metadata["um_per_px"]`` (so the engine can resample to the model's µm/px).
"""

from __future__ import annotations

from .slide_io import RASTER_SUFFIXES, TIFF_SUFFIXES
from .slides import open_slide, slide_layer_data


def get_reader(path):
    """Our reader for slide and image files; napari falls back to others for the rest."""
    if isinstance(path, list) or not str(path).lower().endswith(TIFF_SUFFIXES + RASTER_SUFFIXES):
        return None
    return read_layers


def read_layers(path) -> list:
    return [slide_layer_data(open_slide(path))]
