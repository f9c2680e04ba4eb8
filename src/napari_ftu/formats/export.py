"""One table of the label formats we write and read, used by the CLI, the Export dock and the
npe2 writers. Every format has a writer and the matching reader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from napari_ftu.errors import FormatError, InputError, OptionError
from napari_ftu.formats.annotations import Annotations, safe_id
from napari_ftu.formats.csv_formats import (
    read_hpa,
    read_hubmap,
    read_vasculature,
    write_hpa,
    write_hubmap,
    write_vasculature,
)
from napari_ftu.formats.json_formats import read_coco, read_geojson, write_coco, write_geojson


@dataclass(frozen=True)
class LabelFormat:
    """One label file format of the format table: its name, suffix and reader and writer.

    Parameters
    ----------
    title : str
        Shown in the docks' format choice.
    suffix : str
    write : callable
        ``write(path, [Annotations]) -> Path``.
    read : callable
        ``read(path, shape) -> [Annotations]``.
    multi_image : bool
        One file holds many images.
    """
    title: str
    suffix: str
    write: Callable  # (path, [Annotations]) -> Path
    read: Callable  # (path, shape) -> Annotations, one image at a time
    multi_image: bool = True  # one file holds many images


def _write_single(writer):
    def write(path, items):
        if len(items) != 1:
            raise FormatError(f"{Path(path).name}: this format holds one image, got {len(items)}")
        return writer(path, items[0])

    return write


def _write_ome(path, a: Annotations):
    from napari_ftu.io.images import write_labels_ome_tiff

    return write_labels_ome_tiff(path, a.labels, a.um_per_px)


def _read_ome(path, shape=None):
    from napari_ftu.io.images import read_image

    img = read_image(path)
    return [Annotations(img.name, img.data, um_per_px=img.um_per_px)]


FORMATS: dict[str, LabelFormat] = {
    "hubmap": LabelFormat("HuBMAP RLE CSV (id,rle)", ".csv", write_hubmap, lambda p, s=None: read_hubmap(p, s)),
    "hubmap-train": LabelFormat("HuBMAP train.csv (organ, pixel size, rle, ...)", ".csv",
                                lambda p, items: write_hubmap(p, items, full=True), lambda p, s=None: read_hubmap(p)),
    "hpa": LabelFormat("HPA / Open Images instance CSV", ".csv", write_hpa, lambda p, s=None: read_hpa(p)),
    "vasculature": LabelFormat("HuBMAP vasculature submission CSV", ".csv", write_vasculature,
                               lambda p, s=None: read_vasculature(p)),
    "coco": LabelFormat("COCO instance JSON", ".json", write_coco, lambda p, s=None: read_coco(p)),
    "geojson": LabelFormat("QuPath GeoJSON", ".geojson", _write_single(write_geojson),
                           lambda p, s=None: [read_geojson(p, s)], multi_image=False),
    "ome-tiff": LabelFormat("Label image OME-TIFF", ".ome.tif", _write_single(_write_ome), _read_ome,
                            multi_image=False),
}


def export_annotations(items, path, fmt: str, overwrite: bool = False) -> Path:
    """Write ``items`` in format ``fmt``, atomically; an existing file is replaced only with ``overwrite``.

    Parameters
    ----------
    items : Annotations, list or iterator of Annotations
        Labels of one or several images (single-image formats take one); an iterator (from
        :func:`import_annotations`) is written as it is read, one image at a time.
    path : str or Path
        File to write.
    fmt : str
        A key of :data:`FORMATS` (``hubmap``, ``coco``, ``geojson``, ``ome-tiff``, ...).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        The file written.
    """
    if fmt not in FORMATS:
        raise OptionError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    items = [items] if isinstance(items, Annotations) else items
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite to replace it")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a file")
    if not FORMATS[fmt].multi_image:
        items = list(items)  # one image (two are refused by the writer)
    return FORMATS[fmt].write(path, items)  # multi-image writers take a reader's generator: one image at a time


def import_annotations(path, fmt: str, shape=None, compact: bool = False) -> Iterator[Annotations]:
    """Read a file written in ``fmt``, one image at a time: the file is checked whole (a bad row
    or size fails at once, naming it), then each image is built when asked for, against the
    memory budget on its own; keep only what you need (``list()`` keeps them all).

    Parameters
    ----------
    path : str or Path
        The annotation file.
    fmt : str
        A key of :data:`FORMATS`; :func:`format_of` guesses it from the file.
    shape : tuple or dict, optional
        ``(height, width)`` of the image (GeoJSON needs it), or id -> shape for id/RLE CSVs.
    compact : bool
        HuBMAP masks as their uint8 decode instead of int32 labels (a quarter of the memory),
        for a caller that only writes them on.

    Returns
    -------
    iterator of Annotations
        One per image in the file.
    """
    if fmt not in FORMATS:
        raise OptionError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    if fmt == "geojson" and shape is None:
        raise FormatError("reading GeoJSON needs the image size")
    if compact and fmt in ("hubmap", "hubmap-train"):
        items = iter(read_hubmap(path, shape if fmt == "hubmap" else None, compact=True))
    else:
        items = iter(FORMATS[fmt].read(path, shape))
    box = [next(items, None)]  # the file's checks run now, not at the caller's first use

    def one_at_a_time():
        if box[0] is not None:
            yield box.pop()  # not kept here once handed over
        yield from items

    return one_at_a_time()


__all__ = ["FORMATS", "Annotations", "export_annotations", "import_annotations", "format_of", "safe_id"]


LABEL_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def format_of(path, default: str | None = None) -> str | None:
    """The label format of a file, from its name and, for an existing ``.json`` or ``.csv``, its
    first bytes; ``None`` for a folder or a plain label image. A new file (nothing to sniff) gets
    the suffix's usual format (COCO for ``.json``, HuBMAP for ``.csv``).

    Parameters
    ----------
    path : str or Path
    default : str, optional
        What an unknown suffix gives.

    Returns
    -------
    str or None
        A key of :data:`FORMATS`.

    Raises
    ------
    InputError, FormatError
        An unreadable file, a CSV of no known kind, or an unknown suffix without ``default``.
    """
    import csv

    path = Path(path)
    name = path.name.lower()
    if name.endswith((".ome.tif", ".ome.tiff")):
        return "ome-tiff"
    if path.is_dir() or name.endswith(LABEL_IMAGE_SUFFIXES):
        return None
    if name.endswith(".geojson"):
        return "geojson"
    if name.endswith(".json"):
        if not path.exists():
            return "coco"
        try:
            head = path.read_text(encoding="utf-8")[:4096]
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read ({exc})") from None
        return "coco" if '"images"' in head else "geojson"
    if name.endswith(".csv"):
        if not path.exists():
            return "hubmap"
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), [])
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise FormatError(f"{path}: cannot read CSV ({exc})") from None
        if "PredictionString" in header:
            return "hpa"
        if "prediction_string" in header:
            return "vasculature"
        if "rle" in header:
            return "hubmap-train" if "img_height" in header else "hubmap"
        raise FormatError(f"{path}: a CSV without rle, prediction_string or PredictionString column")
    if default:
        return default
    raise FormatError(f"{path}: cannot tell its format (label image, folder, .csv, .json, .geojson or .ome.tif)")
