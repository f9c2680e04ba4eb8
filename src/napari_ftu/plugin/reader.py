"""npe2 reader: slides open lazily (pyramids as multiscale layers) with their pixel size.

Layers carry the physical pixel size twice: as ``scale`` (so rulers and overlays are in µm)
and as ``metadata["um_per_px"]`` (so the engine can resample to the model's µm/px).
"""

from __future__ import annotations

from pathlib import Path

from napari_ftu.io.backends import is_dicom_folder
from napari_ftu.io.slides import SLIDE_SUFFIXES, open_slide, slide_layer_data


def get_reader(path):
    """Our reader for slide files, DICOM WSI folders and dataset folders; napari falls back to
    others otherwise."""
    if isinstance(path, list):
        return None
    if is_dicom_folder(Path(path)):
        return read_layers
    if Path(path).is_dir():
        from napari_ftu.formats.datasets import open_dataset

        try:
            open_dataset(path)
        except (ValueError, OSError):
            return None  # not a layout we know: let other readers try
        return read_dataset
    if not str(path).lower().endswith(SLIDE_SUFFIXES):
        return None
    return read_layers


def read_layers(path) -> list:
    return [slide_layer_data(open_slide(path))]


def read_dataset(path) -> list:
    """A dropped dataset folder: its first image with labels (the Load dock browses the rest)."""
    from napari_ftu.formats.datasets import labels_layer_data, open_dataset

    item = open_dataset(path).load(0)
    layers = [slide_layer_data(item.slide)]
    if item.annotations is not None:
        layers.append(labels_layer_data(item.annotations, item.slide, item.info))
    return layers
