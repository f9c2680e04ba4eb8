"""npe2 writers: File > Save Selected Layers on a Labels layer, in each of our formats."""

from __future__ import annotations

import numpy as np

from napari_ftu.formats.annotations import Annotations
from napari_ftu.formats.export import export_annotations
from napari_ftu.io.images import file_stem
from napari_ftu.measure.run import feature_measurements


def _write(fmt: str, path: str, data, meta: dict) -> list[str]:
    name = file_stem(path)
    image_id = str((meta.get("metadata") or {}).get("source") or name).split(" ")[0]
    if meta.get("multiscale"):
        data = data[0]
    a = Annotations.from_layer(image_id, np.asarray(data), meta.get("features"), meta.get("metadata"),
                               default_class=(meta.get("metadata") or {}).get("class", "FTU"))
    a.meta["measurements"] = feature_measurements(meta.get("features"))  # the Measurements dock's columns
    # napari asks before replacing a file in its save dialog.
    return [str(export_annotations(a, path, fmt, overwrite=True))]


def write_hubmap(path: str, data, meta: dict) -> list[str]:
    return _write("hubmap", path, data, meta)


def write_coco(path: str, data, meta: dict) -> list[str]:
    return _write("coco", path, data, meta)


def write_geojson(path: str, data, meta: dict) -> list[str]:
    return _write("geojson", path, data, meta)


def write_ome_tiff(path: str, data, meta: dict) -> list[str]:
    return _write("ome-tiff", path, data, meta)
