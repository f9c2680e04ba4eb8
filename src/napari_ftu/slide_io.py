"""Read images with their physical pixel size, and write TIFFs atomically.

Pixel size matters because the model expects a fixed µm/px: HuBMAP sources range from 0.23 to
6.3 µm/px and a model run at the wrong scale fails. We read it from OME metadata, Aperio's MPP
or the TIFF resolution tags, in that order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8", ".scn")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class SlideError(ValueError):
    """An image file that cannot be read, with the file and the reason in the message."""


@dataclass
class LoadedImage:
    data: np.ndarray
    um_per_px: float | None
    name: str
    path: Path


def read_image(path: str | Path) -> LoadedImage:
    """Read the full-resolution image of a TIFF/SVS/PNG/JPEG file and its pixel size (µm)."""
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            data, um = _read_tiff(path)
        elif suffix in RASTER_SUFFIXES:
            import imageio.v3 as iio

            data, um = np.asarray(iio.imread(path)), None
        else:
            raise SlideError(f"{path}: unsupported file type {suffix!r}")
    except SlideError:
        raise
    except Exception as exc:  # tifffile/imageio raise many types for corrupt files
        raise SlideError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    if data.size == 0 or data.ndim < 2:
        raise SlideError(f"{path}: image has no pixels (shape {data.shape})")
    return LoadedImage(data, um, path.name.split(".")[0], path)


def _read_tiff(path: Path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]  # SVS label/macro/thumbnail images are later series
        data = series.asarray()
        return data, _pixel_size(tif)


def _pixel_size(tif) -> float | None:
    if tif.is_ome:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata or "")
        if m:
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata or "")
            return float(m.group(1)) * _unit_to_um(unit.group(1) if unit else "µm")
    page = tif.pages[0]
    m = re.search(r"MPP\s*=\s*([0-9.]+)", page.description or "")
    if m:
        return float(m.group(1))
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        per_um = {2: 25400.0, 3: 10000.0}.get(unit)
        if per_um and num and den:
            return per_um * den / num
    return None


def _unit_to_um(unit: str) -> float:
    return {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit, 1.0)


def write_tiff(path: str | Path, data: np.ndarray, um_per_px: float | None = None) -> Path:
    """Write an image or label array as a compressed TIFF carrying its pixel size, atomically."""
    import tifffile

    path = Path(path)
    kwargs = {"compression": "zlib"}
    if um_per_px:
        kwargs.update(resolution=(1e4 / um_per_px, 1e4 / um_per_px), resolutionunit="CENTIMETER")
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        kwargs["photometric"] = "rgb"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)
    return path


def to_rgb(image: np.ndarray) -> np.ndarray:
    """A (H, W, 3) uint8 view of common image layouts (gray, RGBA, 16-bit) for RGB models."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3:
        raise SlideError(f"expected a 2-D colour or gray image, got shape {image.shape}")
    if image.shape[-1] not in (1, 3, 4) and image.shape[0] in (3, 4):
        image = np.moveaxis(image, 0, -1)  # channels-first
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.shape[-1] == 4:
        image = image[..., :3]
    if image.shape[-1] != 3:
        raise SlideError(f"expected 1, 3 or 4 channels, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = image.astype(np.float32)
        lo, hi = float(image.min()), float(image.max())
        image = ((image - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8)
    return image
