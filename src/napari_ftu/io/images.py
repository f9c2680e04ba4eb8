"""Read images with their physical pixel size, and write TIFFs atomically.

Pixel size matters because the model expects a fixed µm/px: HuBMAP sources range from 0.23 to
6.3 µm/px and a model run at the wrong scale fails. We read it from OME metadata, Aperio's MPP
or the TIFF resolution tags, in that order.
"""

from __future__ import annotations

import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_ftu.atomic import atomic_path
from napari_ftu.errors import InputError
from napari_ftu.io.budget import check_memory

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8", ".scn")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def file_stem(path) -> str:
    """A file's name without its format suffix (``.ome.tif`` counts as one): the image id."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


@dataclass
class LoadedImage:
    data: np.ndarray
    um_per_px: float | None
    name: str
    path: Path


def read_image(path: str | Path, um_per_px: float | None = None) -> LoadedImage:
    """Read the full-resolution image of a TIFF/SVS/PNG/JPEG file and its pixel size (µm).

    The whole image is decoded, so what that needs is checked against the memory budget
    first (from the header: a 9 kB file can claim 40 000 x 40 000 pixels); damaged files
    (missing strips or tiles, PNG data cut short) are refused, never read as zeros. ``um_per_px`` overrides the file's
    pixel size (whose own is then not read)."""
    path = Path(path)
    suffix = image_suffix(path)
    with reading(path):
        data, um = _read_tiff(path, um_per_px) if suffix in TIFF_SUFFIXES else (read_raster(path), um_per_px)
    if data.size == 0 or data.ndim < 2:
        raise InputError(f"{path}: image has no pixels (shape {data.shape})")
    return LoadedImage(data, um, file_stem(path), path)


def assumed_pixel_size(name: str, um_per_px: float | None, fallback: float, whose: str,
                       setting: str) -> tuple[float, str | None]:
    """The pixel size to use and, when it is an assumption, the one line that says so: the CLI
    prints it and the docks show it, so a wrong scale is never silent.

    Parameters
    ----------
    name : str
        The image, as the user knows it (a file or layer name).
    um_per_px : float or None
        What the user or the file gave; None or 0 when neither did.
    fallback : float
        The value assumed then.
    whose : str
        Where the assumed value comes from ("the model's", "the default").
    setting : str
        The flag or field that sets it (``--um-per-px``, "the Load dock's µm/px").

    Returns
    -------
    (float, str or None)
    """
    if um_per_px:
        return float(um_per_px), None
    return float(fallback), f"{name} has no pixel size; assumed {fallback:g} µm/px ({whose}); set {setting}"


def image_suffix(path: Path) -> str:
    """The lower-case suffix of an image file we can read; a missing file or another type is
    refused naming the file (before any library sees it)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES + RASTER_SUFFIXES:
        raise InputError(f"{path}: unsupported file type {suffix!r}")
    return suffix


def reason(exc: BaseException) -> str:
    """A library's error as one short line: its type and first line (imageio appends install
    hints on the following lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if (lines and lines[0].startswith("Could not find a backend")  # imageio: no plugin decodes it
            or type(exc).__name__ == "UnidentifiedImageError"):  # Pillow, reading the header
        return "no decoder recognises its contents: damaged, or not the type its name says"
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def first_series(tif, path: Path):
    """The main image of a TIFF (SVS label/macro/thumbnail images are later series); a
    :class:`InputError` when there is none, as in a truncated file (tifffile then only logs)."""
    if not len(tif.pages) or not tif.series:
        size = path.stat().st_size if path.exists() else 0
        raise InputError(f"{path}: no readable image in this TIFF of {size} bytes (truncated or damaged)")
    return tif.series[0]


@contextmanager
def reading(path: Path):
    """Turn what tifffile, imageio and Pillow raise for a bad file into one line naming it."""
    try:
        yield
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: the image does not fit in memory") from None
    except Exception as exc:  # the libraries raise many types for corrupt files
        raise InputError(f"{path}: cannot read image ({reason(exc)})") from exc


def _read_tiff(path: Path, um_per_px: float | None = None):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = first_series(tif, path)
        check_tiff_data(series, path)
        page = series.keyframe
        largest = max(page.databytecounts, default=0)  # the compressed segment read in one go
        decoded = page.nbytes // max(1, len(page.databytecounts))  # and decoded before copying
        check_memory(series.nbytes + largest + decoded, path, "decoding", InputError)
        um = um_per_px or _pixel_size(tif, path)
        data = series.asarray()
        return data, um


def check_tiff_data(series, path: Path):
    """Refuse a damaged or truncated TIFF up front: strips or tiles that are missing (offset
    or byte count 0) would read as zeros, and data past the end would fail later, mid-pan."""
    size = path.stat().st_size
    for level in series.levels:
        for page in level.pages:
            if page is None:
                continue
            offsets, counts = page.dataoffsets, page.databytecounts
            if not offsets or len(offsets) != len(counts):
                raise InputError(f"{path}: file is damaged or truncated (its image data offsets are missing)")
            empty = sum(1 for o, n in zip(offsets, counts) if not n or not o)
            if empty:
                raise InputError(f"{path}: file is damaged ({empty} of {len(counts)} strips or tiles of page "
                                 f"{page.index} have no data)")
            if max(o + n for o, n in zip(offsets, counts)) > size:
                raise InputError(f"{path}: file is truncated (image data runs past its end, {size} bytes)")
            _check_segments(page, counts, path)


DEFLATE = (8, 32946)  # TIFF compression codes of zlib / deflate
DEFLATE_RATIO = 1032  # the most a deflate stream can inflate: 1032 bytes out per byte in, plus a few


def _check_segments(page, counts, path: Path):
    """One strip or tile is decoded whole (opening decodes the first): its size goes against the
    memory budget, and deflate data that claims more pixels than its bytes can inflate to is
    refused from the header (a 283-byte file claiming one 60 000 x 60 000 strip) instead of decoded."""
    if int(getattr(page, "compression", 1)) in DEFLATE and page.nbytes > DEFLATE_RATIO * sum(counts) + 2**16 * len(
            counts):
        raise InputError(f"{path}: file is damaged ({sum(counts)} compressed bytes claim {page.nbytes} bytes of "
                         f"pixels, more than deflate can hold)")
    check_memory(page.nbytes // max(1, len(counts)), path, "decoding one strip or tile", InputError)


# Pillow keeps 1, 2 or 4 bytes per pixel and band ("RGB" as 4) while numpy gets its own copy.
_PIL_BYTES = {"1": 1, "L": 1, "P": 4, "LA": 4, "RGB": 4, "RGBA": 4, "CMYK": 4, "YCbCr": 4, "I;16": 2, "I;16B": 2,
              "I": 4, "F": 4}
_NUMPY_BYTES = {"1": 1, "L": 1, "P": 4, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3, "I;16": 2, "I;16B": 2,
                "I": 4, "F": 4}


def raster_shape(path: Path) -> tuple[tuple[int, int], int]:
    """``((height, width), bytes)``: a PNG/JPEG/BMP's size from its header and the bytes a
    whole decode needs, without decoding."""
    from PIL import Image

    with Image.open(path) as im:
        (w, h), mode = im.size, im.mode
    return (h, w), h * w * (_PIL_BYTES.get(mode, 8) + _NUMPY_BYTES.get(mode, 8))


def read_raster(path: Path) -> np.ndarray:
    """A whole PNG/JPEG/BMP, checked against the memory budget and for truncated data first."""
    import imageio.v3 as iio

    path = Path(path)
    with reading(path):
        _, need = raster_shape(path)
        check_memory(need, path, "decoding", InputError)
        if path.suffix.lower() == ".png":
            check_png_data(path)
        return np.asarray(iio.imread(path))


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def check_png_data(path: Path):
    """Refuse a PNG whose image data inflates to fewer bytes than its size needs: Pillow
    fills the missing rows with zeros without a word. Inflated in 1 MB pieces, counted only."""
    import struct

    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return  # not a PNG inside: Pillow says what it is
        inflater, got, expected = zlib.decompressobj(), 0, None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IHDR":
                w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", fh.read(13))
                bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 4)
                passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
                expected = 0
                for x0, y0, dx, dy in passes:
                    pw, ph = -(-(w - x0) // dx), -(-(h - y0) // dy)
                    if pw > 0 and ph > 0:
                        expected += ph * (1 + (pw * bits + 7) // 8)
                fh.seek(length - 13 + 4, 1)
            elif kind == b"IDAT":
                data = fh.read(length)
                while data and got <= (expected or 0):
                    got += len(inflater.decompress(data, 2**20))
                    data = inflater.unconsumed_tail
                fh.seek(4, 1)
            elif kind == b"IEND":
                break
            else:
                fh.seek(length + 4, 1)
    if expected is not None and got < expected and not inflater.unconsumed_tail:
        got += len(inflater.flush())  # output zlib still held back
    if expected is not None and got < expected:
        raise InputError(f"{path}: image data is truncated ({got} of the {expected} bytes its size needs)")


def _pixel_size(tif, path=None) -> float | None:
    """The file's µm/px, or ``None`` when it states none. A stated size that is not a finite
    number > 0 (``PhysicalSizeX="-1"``, ``MPP = 0``, a zero resolution) is refused, naming the
    file: segmenting at a made-up scale would silently find nothing. ``--um-per-px`` skips it."""
    where = path or getattr(tif, "filename", "image")
    if tif.is_ome:
        m = re.search(r'PhysicalSizeX="([^"]*)"', tif.ome_metadata or "")
        if m:
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata or "")
            return _valid_size(m.group(1), where, "PhysicalSizeX", _unit_to_um(unit.group(1) if unit else "µm"))
    page = tif.pages[0]
    m = re.search(r"MPP\s*=\s*([^|\s]+)", page.description or "")
    if m:
        return _valid_size(m.group(1), where, "MPP")
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        per_um = {2: 25400.0, 3: 10000.0}.get(unit)
        if per_um and (num or den):
            return _valid_size(per_um * den / num if num else float("inf"), where, "XResolution")
    return None


def _valid_size(text, where, field: str, scale: float = 1.0) -> float:
    try:
        value = float(text) * scale
    except (TypeError, ValueError):
        value = float("nan")
    if not (value > 0 and np.isfinite(value)):
        raise InputError(f"{where}: invalid pixel size in the file's metadata ({field} {text!r}); "
                         "give the real one with --um-per-px (or the layer's µm/px)")
    return value


def _unit_to_um(unit: str) -> float:
    return {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit, 1.0)


def write_tiff(path: str | Path, data: np.ndarray, um_per_px: float | None = None, photometric=None) -> Path:
    """Write an image or label array as a compressed TIFF carrying its pixel size, atomically."""
    import tifffile

    path = Path(path)
    kwargs = {"compression": "zlib"}
    if um_per_px:
        kwargs.update(resolution=(1e4 / um_per_px, 1e4 / um_per_px), resolutionunit="CENTIMETER")
    if photometric:
        kwargs["photometric"] = photometric
    elif data.ndim == 3 and data.shape[-1] in (3, 4):
        kwargs["photometric"] = "rgb"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)
    return path


def write_probability(path: str | Path, prob: np.ndarray, um_per_px: float) -> Path:
    """A probability map as float32 TIFF (values 0-1; ``(C, H, W)`` is one page per class, a
    single class one page) with its pixel size, atomically: for debugging a model."""
    prob = np.asarray(prob, np.float32)
    if prob.ndim == 3 and prob.shape[0] == 1:
        prob = prob[0]
    return write_tiff(path, prob, um_per_px, photometric="minisblack")


PYRAMID_TILE = 512


def pyramid_downsamples(shape, tile: int = PYRAMID_TILE) -> list[int]:
    """1, 2, 4, ... until the smallest level fits in about one tile."""
    levels = [1]
    while max(shape[:2]) // (levels[-1] * 2) >= tile:
        levels.append(levels[-1] * 2)
    return levels


def write_pyramid(path, level_tiles, shape, dtype, um_per_px: float | None, downsamples: list[int]) -> Path:
    """Write a tiled pyramidal OME-TIFF, atomically, from ``level_tiles(downsample)``: an
    iterator of full ``512 x 512`` tiles of that level in row-major order. Nothing else of the
    image is held in memory. RGB images are JPEG-compressed, labels deflate (lossless)."""
    import tifffile

    path = Path(path)
    rgb = len(shape) == 3
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        for n, d in enumerate(downsamples):
            level_shape = (-(-shape[0] // d), -(-shape[1] // d)) + tuple(shape[2:])
            opts = dict(tile=(PYRAMID_TILE, PYRAMID_TILE), subfiletype=0 if n == 0 else 1)
            if um_per_px:
                opts.update(resolution=(1e4 / (um_per_px * d),) * 2, resolutionunit="CENTIMETER")
            if rgb:
                opts.update(photometric="rgb", compression="jpeg", compressionargs={"level": 90})
            else:
                opts.update(photometric="minisblack", compression="zlib")
            if n == 0:
                meta = {"axes": "YXS" if rgb else "YX"}
                if um_per_px:
                    meta.update(PhysicalSizeX=um_per_px, PhysicalSizeXUnit="µm",
                                PhysicalSizeY=um_per_px, PhysicalSizeYUnit="µm")
                opts.update(metadata=meta, subifds=len(downsamples) - 1)
            else:
                opts["metadata"] = None
            tif.write(level_tiles(d), shape=level_shape, dtype=dtype, **opts)
    return path


def write_labels_ome_tiff(path, labels, um_per_px: float | None = None, pyramid: bool | None = None) -> Path:
    """Label image as OME-TIFF with the physical pixel size; pyramidal (nearest-neighbour
    levels) when ``pyramid`` or when larger than 8192 px a side. ``labels`` may be any
    array-like (numpy, zarr, dask): it is read one tile at a time."""
    shape = tuple(labels.shape)
    if len(shape) != 2:
        raise InputError(f"{path}: labels must be 2-D, got shape {shape}")
    if pyramid is None:
        pyramid = max(shape) > 8192
    downsamples = pyramid_downsamples(shape) if pyramid else [1]
    t = PYRAMID_TILE
    dtype = np.dtype(labels.dtype)
    if dtype.kind not in "iub":
        raise InputError(f"{path}: labels must be integers, got {dtype}")
    dtype = np.dtype(np.uint8) if dtype.kind == "b" else dtype

    def tiles(d):
        h, w = -(-shape[0] // d), -(-shape[1] // d)
        for y in range(0, h, t):
            for x in range(0, w, t):
                block = np.asarray(labels[y * d : (y + t) * d : d, x * d : (x + t) * d : d]).astype(dtype)
                out = np.zeros((t, t), dtype)
                out[: block.shape[0], : block.shape[1]] = block
                yield out

    return write_pyramid(path, tiles, shape, dtype, um_per_px, downsamples)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """A (H, W, 3) uint8 view of common image layouts (gray, RGBA, 16-bit) for RGB models."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3:
        raise InputError(f"expected a 2-D colour or gray image, got shape {image.shape}")
    if image.shape[-1] not in (1, 3, 4) and image.shape[0] in (3, 4):
        image = np.moveaxis(image, 0, -1)  # channels-first
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.shape[-1] == 4:
        image = image[..., :3]
    if image.shape[-1] != 3:
        raise InputError(f"expected 1, 3 or 4 channels, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = image.astype(np.float32)
        lo, hi = float(image.min()), float(image.max())
        image = ((image - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8)
    return image
