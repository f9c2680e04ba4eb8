"""Writers: HuBMAP RLE CSV and training tiles (image/mask pairs + manifest), all atomic."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from . import rle
from .atomic import atomic_path, write_text
from .tiling import tile_grid

# Real RLE fields run to megabytes, far past the csv module's default 128 KiB limit.
csv.field_size_limit(2**31 - 1)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ExportError(ValueError):
    """An export that cannot be written as asked, with the reason."""


def safe_id(image_id: str) -> str:
    """Refuse ids that would leave the output folder or break a CSV (``../x``, ``a/b``, ``,``)."""
    image_id = str(image_id)
    if not _SAFE_ID.match(image_id) or ".." in image_id:
        raise ExportError(f"image id {image_id!r} is not a safe file name (letters, digits, . _ - only)")
    return image_id


def write_rle_csv(path: str | Path, rows, overwrite: bool = True) -> Path:
    """Write ``id,rle`` rows (HuBMAP submission format) from ``(id, mask)`` pairs."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists; pass overwrite to replace it")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "rle"])
    for image_id, mask in rows:
        writer.writerow([safe_id(image_id), rle.encode(mask)])
    return write_text(path, buf.getvalue())


def read_rle_csv(path: str | Path, shapes: dict) -> dict:
    """Masks from an ``id,rle`` CSV; ``shapes`` maps each id to its ``(height, width)``."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"id", "rle"} <= set(reader.fieldnames):
            raise ExportError(f"{path}: needs columns id and rle, has {reader.fieldnames}")
        out = {}
        for n, row in enumerate(reader, start=2):
            if row["id"] not in shapes:
                raise ExportError(f"{path}, line {n}: no image size known for id {row['id']!r}")
            try:
                out[row["id"]] = rle.decode(row["rle"], shapes[row["id"]])
            except rle.RLEError as exc:
                raise ExportError(f"{path}, line {n}: {exc}") from None
    return out


def export_tiles(
    image: np.ndarray,
    labels: np.ndarray,
    folder: str | Path,
    name: str,
    tile: int = 512,
    overlap: int = 0,
    um_per_px: float | None = None,
    negative_fraction: float = 0.1,
    seed: int = 0,
    fmt: str = "png",
) -> list[dict]:
    """Write training tiles ``images/<name>_<y>_<x>.<fmt>`` with ``masks/`` beside, and a manifest.

    Tiles holding labelled objects are all kept; tiles without are kept with probability
    ``negative_fraction`` (seeded). Masks keep the instance ids (uint16/uint32 TIFF, uint16 PNG).
    The manifest CSV lists source, position, size, µm/px and object count per tile.
    """
    import imageio.v3 as iio

    from .slide_io import write_tiff

    if fmt not in ("png", "tif"):
        raise ExportError(f"tile format must be png or tif, got {fmt!r}")
    if image.shape[:2] != labels.shape:
        raise ExportError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    name = safe_id(name)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for y0, x0 in tile_grid(labels.shape, tile, overlap):
        lab = np.asarray(labels[y0 : y0 + tile, x0 : x0 + tile])
        n_obj = int(np.unique(lab[lab > 0]).size)
        if n_obj == 0 and rng.random() >= negative_fraction:
            continue
        img = np.asarray(image[y0 : y0 + tile, x0 : x0 + tile])
        stem = f"{name}_{y0}_{x0}"
        mask = lab.astype(np.uint16 if labels.max() < 65536 else np.uint32)
        for sub, data in (("images", img), ("masks", mask)):
            target = folder / sub / f"{stem}.{fmt}"
            if fmt == "tif":
                write_tiff(target, data, um_per_px)
            else:
                if data.dtype == np.uint32:
                    raise ExportError("more than 65535 objects: use fmt='tif' for the masks")
                with atomic_path(target) as tmp:
                    iio.imwrite(tmp, data, extension=".png")
        rows.append(
            {
                "image": f"images/{stem}.{fmt}",
                "mask": f"masks/{stem}.{fmt}",
                "source": name,
                "y": y0,
                "x": x0,
                "height": lab.shape[0],
                "width": lab.shape[1],
                "um_per_px": um_per_px if um_per_px else "",
                "n_objects": n_obj,
            }
        )
    buf = io.StringIO()
    fields = ["image", "mask", "source", "y", "x", "height", "width", "um_per_px", "n_objects"]
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(folder / "manifest.csv", buf.getvalue())
    return rows
