"""Open slides lazily: pyramid levels as array-likes read tile by tile, never the whole image.

One function opens every slide, trying the readers in order: tifffile (TIFF, SVS, NDPI,
OME-TIFF), then wsidicom (a DICOM WSI folder or file), then OpenSlide (MRXS, BIF, SCN, VMS/VMU,
Philips TIFF, ...). A multi-level slide becomes napari multiscale data. A large flat TIFF
gets lazy strided levels so that it still opens without decoding everything, and
:func:`pyramid_steps` can write a real pyramid next to it for smooth viewing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ftu.errors import InputError
from napari_ftu.io.backends import (
    OPENSLIDE_SUFFIXES,
    OPENSLIDE_VENDORS,
    is_dicom_file,
    is_dicom_folder,
    open_dicom,
    open_openslide,
    openslide_vendor,
)
from napari_ftu.io.budget import check_memory
from napari_ftu.io.images import (
    RASTER_SUFFIXES,
    TIFF_SUFFIXES,
    _pixel_size,
    check_png_data,
    check_tiff_data,
    file_stem,
    first_series,
    image_suffix,
    raster_shape,
    read_raster,
    reading,
    reason,
)
from napari_ftu.steps import TileProgress

FLAT_PYRAMID_MIN = 8192  # a flat image larger than this (either side) gets lazy levels
COLOURS = ["red", "green", "blue", "yellow", "magenta", "cyan", "gray", "gray"]  # HPA order first


@dataclass
class Slide:
    """Levels (full resolution first) as array-likes, the pixel size and how to show it."""

    levels: list
    um_per_px: float | None
    name: str
    path: Path
    kind: str  # "rgb", "gray" or "channels"
    channel_axis: int | None = None
    channel_names: list | None = None
    flat: bool = False  # a large image without a stored pyramid
    handle: object = field(default=None, repr=False)  # keeps the file open while levels are used
    backend: str = "tifffile"  # which reader opened it: tifffile, dicom, openslide or raster
    note: str = ""  # what was left out (further optical paths, focal planes, pyramids)

    @property
    def shape(self) -> tuple:
        return tuple(self.levels[0].shape)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the full-resolution level."""
        shape = self.shape
        if self.kind == "channels" and self.channel_axis == 0:
            return shape[1], shape[2]
        return shape[0], shape[1]

    @property
    def downsamples(self) -> list[float]:
        h = self.size[0]
        return [h / (lvl.shape[1] if self.kind == "channels" and self.channel_axis == 0 else lvl.shape[0])
                for lvl in self.levels]

    def read(self, level: int = 0) -> np.ndarray:
        """One whole level in memory, refused before decoding when over the memory budget."""
        array = self.levels[level]
        need = int(np.prod(array.shape, dtype=np.float64)) * np.dtype(array.dtype).itemsize
        check_memory(need, self.path, f"reading level {level} whole" if level else "reading it whole", InputError)
        return np.asarray(array[...])

    def close(self):
        if self.handle is not None:
            self.handle.close()
            self.handle = None


BACKENDS = ("tifffile", "dicom", "openslide", "raster")
SLIDE_SUFFIXES = TIFF_SUFFIXES + RASTER_SUFFIXES + (".dcm",) + OPENSLIDE_SUFFIXES  # files any backend opens


def open_slide(path: str | Path, um_per_px: float | None = None, backend: str | None = None) -> Slide:
    """Open a slide lazily (a PNG/JPEG in memory); errors name the file. ``um_per_px``
    overrides the file's pixel size (whose own is then not read); ``backend`` forces a reader."""
    path = Path(path)
    if backend not in (None, *BACKENDS):
        raise InputError(f"{path}: unknown slide backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    backend = backend or _backend(path)
    try:
        if backend == "tifffile":
            slide = _open_tiff(path, um_per_px)
        elif backend == "raster":
            slide = _open_raster(path)
        else:
            slide = _open_tiled(path, backend)
        slide.um_per_px = um_per_px or slide.um_per_px
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: the image does not fit in memory") from None
    except Exception as exc:  # the libraries raise many types for corrupt files
        raise InputError(f"{path}: cannot read image ({reason(exc)})") from exc
    if any(int(n) == 0 for n in slide.shape):
        slide.close()
        raise InputError(f"{path}: image has no pixels (shape {slide.shape})")
    return slide


def is_slide_path(path: Path) -> bool:
    """A file with a slide suffix or a DICOM WSI folder: what batch folders and globs take."""
    return is_dicom_folder(path) if path.is_dir() else path.suffix.lower() in SLIDE_SUFFIXES


def _backend(path: Path) -> str:
    """The reader for a path, from what it is (checked before any library parses it)."""
    if path.is_dir():
        if not is_dicom_folder(path):
            raise InputError(f"{path}: a folder without DICOM files is not a slide")
        return "dicom"
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".dcm" or is_dicom_file(path):
        return "dicom"
    if suffix in OPENSLIDE_SUFFIXES:
        return "openslide"
    if suffix in TIFF_SUFFIXES:
        return "openslide" if openslide_vendor(path) in OPENSLIDE_VENDORS else "tifffile"
    image_suffix(path)  # refuses other types, naming the file
    return "raster"


def _open_tiled(path: Path, backend: str) -> Slide:
    opener = open_dicom if backend == "dicom" else open_openslide
    levels, um, handle, note = opener(path)
    if not levels:
        handle.close()
        raise InputError(f"{path}: no pyramid levels to show")
    kind, axis = _kind(levels[0].shape, None)
    name = path.name if path.is_dir() else file_stem(path)
    slide = Slide(levels, um, name, path, kind, axis, handle=handle, backend=backend, note=note)
    if kind == "channels":
        slide.channel_names = [f"channel {i}" for i in range(levels[0].shape[axis])]
    return slide


def check_slide(path: str | Path, um_per_px: float | None = None) -> float | None:
    """What :func:`open_slide` checks before reading pixels (the header, damaged or missing data,
    sizes against the memory budget), from the header alone and without zarr: an entry point
    calls it before loading torch and a model, so a bad file is refused in a fraction of a second.
    Returns ``um_per_px`` when given (the file's own is then not read, as in :func:`open_slide`),
    else the file's pixel size (µm/px), None when it has none."""
    import tifffile

    path = Path(path)
    if _backend(path) in ("dicom", "openslide"):  # their libraries read headers only when opening
        slide = open_slide(path, um_per_px)
        slide.close()
        return slide.um_per_px
    suffix = image_suffix(path)
    with reading(path):
        if suffix not in TIFF_SUFFIXES:
            _, need = raster_shape(path)
            check_memory(need, path, "decoding", InputError)
            if suffix == ".png":
                check_png_data(path)
            return um_per_px
        with tifffile.TiffFile(path) as tif:
            series = first_series(tif, path)
            if any(int(n) == 0 for n in series.shape):
                raise InputError(f"{path}: image has no pixels (shape {series.shape})")
            check_tiff_data(series, path)
            return um_per_px or _pixel_size(tif, path)


def _open_raster(path: Path) -> Slide:
    data = read_raster(path)
    kind, axis = _kind(data.shape, None)
    names = [f"channel {i}" for i in range(data.shape[axis])] if kind == "channels" else None
    return Slide([data], None, file_stem(path), path, kind, axis, channel_names=names, backend="raster")


def _open_tiff(path: Path, um_per_px: float | None = None) -> Slide:
    import tifffile
    import zarr

    tif = tifffile.TiffFile(path)
    try:
        series = first_series(tif, path)
        if any(int(n) == 0 for n in series.shape):
            raise InputError(f"{path}: image has no pixels (shape {series.shape})")
        check_tiff_data(series, path)
        store = series.aszarr()
        root = zarr.open(store, mode="r")
        levels = [root[str(i)] for i in range(len(series.levels))] if hasattr(root, "keys") else [root]
        levels[0][(0,) * len(levels[0].shape)]  # decode one chunk now: a corrupt file fails here
        um = um_per_px or _pixel_size(tif, path)
        kind, axis = _kind(levels[0].shape, series.axes)
        slide = Slide(levels, um, file_stem(path), path, kind, axis, handle=tif)
        if kind == "channels":
            slide.channel_names = [f"channel {i}" for i in range(levels[0].shape[axis])]
        if len(levels) == 1 and max(slide.size) > FLAT_PYRAMID_MIN:
            slide.levels = _strided_levels(levels[0], axis)
            slide.flat = True
        return slide
    except Exception:
        tif.close()
        raise



def _kind(shape, axes: str | None):
    """(kind, channel axis) from a shape and, for TIFF, its axes string."""
    if len(shape) == 2:
        return "gray", None
    if len(shape) == 3:
        if (axes and axes.endswith("S") and shape[-1] in (3, 4)) or (axes is None and shape[-1] in (3, 4)):
            return "rgb", None
        if shape[0] <= 8 and shape[0] < shape[-1]:
            return "channels", 0
        if shape[-1] <= 8:
            return "channels", 2
    raise InputError(f"images of shape {shape} (axes {axes}) are not supported: expected 2-D gray, RGB(A) "
                     "or up to 8 channels")


def _strided_levels(level0, axis: int | None) -> list:
    """Lazy 1/2, 1/4, ... views of a flat image (dask; each reads only what it shows)."""
    import dask.array as da

    base = da.from_zarr(level0)
    levels = [level0]
    step = 2
    while max(base.shape[:2] if axis != 0 else base.shape[1:]) // step >= 512:
        sl = (slice(None, None, step), slice(None, None, step))
        levels.append(base[(slice(None),) + sl] if axis == 0 else base[sl])
        step *= 2
    return levels


def slide_layer_data(slide: Slide, um_per_px: float | None = None) -> tuple:
    """``(data, kwargs, "image")`` for napari: multiscale when there are levels, µm scale,
    RGB shown as colour, channels split into additive layers with their own colormaps."""
    um = um_per_px or slide.um_per_px
    data = slide.levels if len(slide.levels) > 1 else slide.levels[0]
    kwargs = {
        "name": slide.name,
        "metadata": {"um_per_px": um, "path": str(slide.path), "flat": slide.flat},
        "multiscale": len(slide.levels) > 1,
    }
    if slide.kind == "rgb":
        kwargs["rgb"] = True
    elif slide.kind == "channels":
        n = slide.shape[slide.channel_axis]
        names = slide.channel_names or [f"channel {i}" for i in range(n)]
        kwargs["channel_axis"] = slide.channel_axis
        kwargs["name"] = [f"{slide.name} {c}" for c in names]
        kwargs["colormap"] = [c if c in COLOURS else COLOURS[i] for i, c in enumerate(names)]
        kwargs["blending"] = "additive"
    if um:
        kwargs["scale"] = (um, um)
        kwargs["units"] = ("µm", "µm")
    return (data, kwargs, "image")


def pyramid_steps(slide: Slide, out: str | Path):
    """Write a tiled pyramidal OME-TIFF of a flat slide, yielding :class:`~napari_ftu.steps.TileProgress`.

    Each level is built from full-resolution tiles by block means, one tile at a time.
    Closing the generator (Cancel) stops the writing and leaves no partial file.
    """
    from napari_ftu.io.images import PYRAMID_TILE, pyramid_downsamples, write_pyramid

    if slide.kind == "channels":
        raise InputError(f"{slide.path}: writing pyramids of multichannel images is not supported")
    level0 = slide.levels[0]
    h, w = slide.size
    samples = tuple(slide.shape[2:3])
    if samples == (4,):
        samples = (3,)  # RGBA: JPEG keeps the colour, the alpha of a slide is not needed
    downsamples = pyramid_downsamples((h, w))
    t = PYRAMID_TILE
    total = sum(-(-(-(-h // d)) // t) * -(-(-(-w // d)) // t) for d in downsamples)

    def run(tick):
        def tiles(d):
            lh, lw = -(-h // d), -(-w // d)
            for y in range(0, lh, t):
                for x in range(0, lw, t):
                    tile = np.zeros((t, t) + samples, level0.dtype)
                    # One output row at a time: a coarse tile never needs its whole source area.
                    for r in range(min(t, lh - y)):
                        src = np.asarray(level0[(y + r) * d : (y + r + 1) * d, x * d : (x + t) * d])
                        row = _block_mean(src, d)[0] if d > 1 else src[0]
                        tile[r, : row.shape[0]] = row[..., : samples[0]] if samples else row
                    tick()
                    yield tile

        return write_pyramid(out, tiles, (h, w) + samples, np.dtype(level0.dtype), slide.um_per_px, downsamples)

    done = 0
    yield TileProgress(0, total)
    for _ in _paced(run):
        done += 1
        yield TileProgress(done, total)
    return Path(out)


class _Cancelled(Exception):
    pass


def _paced(run):
    """Run ``run(tick)`` in a helper thread and yield after each ``tick()`` it makes, so that
    blocking library code (tifffile's writer) reports progress; closing this generator
    makes the next ``tick()`` raise, which stops the work."""
    import threading
    from queue import Empty, Queue

    ticks: Queue = Queue(maxsize=1)
    stop = threading.Event()
    box: dict = {}

    def tick():
        if stop.is_set():
            raise _Cancelled()
        ticks.put(True)

    def work():
        try:
            box["value"] = run(tick)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc
        finally:
            ticks.put(None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while ticks.get() is not None:
            yield
    finally:
        stop.set()
        while thread.is_alive():
            try:
                ticks.get(timeout=0.05)
            except Empty:
                pass
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _block_mean(block: np.ndarray, d: int) -> np.ndarray:
    """Means of ``d x d`` blocks (partial blocks at the edges average what they have)."""
    h, w = block.shape[:2]
    ph, pw = -h % d, -w % d
    data = block.astype(np.float64)
    if ph or pw:
        pad = [(0, ph), (0, pw)] + [(0, 0)] * (block.ndim - 2)
        weight = np.pad(np.ones((h, w)), pad[:2])
        data = np.pad(data, pad)
    else:
        weight = np.ones((h, w))
    shape = ((h + ph) // d, d, (w + pw) // d, d)
    total = data.reshape(shape + block.shape[2:]).sum(axis=(1, 3))
    count = weight.reshape(shape).sum(axis=(1, 3))
    mean = total / (count[..., None] if block.ndim > 2 else count)
    return np.rint(mean).astype(block.dtype) if block.dtype.kind in "iub" else mean.astype(block.dtype)
