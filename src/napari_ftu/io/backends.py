"""Slides that tifffile cannot read: DICOM WSI through wsidicom and the vendor formats (MRXS,
BIF, SCN, VMS/VMU, Philips TIFF, ...) through OpenSlide. Both give the same lazy levels as
TIFF slides (:class:`~napari_ftu.io.tiled.TiledLevel`), so every entry point opens them through
:func:`napari_ftu.io.slides.open_slide` alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ftu.errors import InputError
from napari_ftu.io.tiled import TileCache, TiledLevel

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".vmu", ".bif", ".svslide")
OPENSLIDE_VENDORS = ("ventana", "leica", "philips")  # TIFF layouts tifffile reads unfaithfully
OPENSLIDE_TILE = 512  # read_region size for formats without a natural tile


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in a folder (a DICOM WSI series is stored flat)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix.lower() == ".dcm" or is_dicom_file(p)))


def is_dicom_folder(path: Path) -> bool:
    """A folder holding a DICOM series: one slide to every command, never a batch of files."""
    if not path.is_dir():
        return False
    return any(p.is_file() and (p.suffix.lower() == ".dcm" or is_dicom_file(p)) for p in path.iterdir())


def openslide_vendor(path: Path) -> str | None:
    """The format OpenSlide recognises in a file, or None (also when it is not installed)."""
    try:
        import openslide

        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001 - any failure means OpenSlide does not take it
        return None


# --- DICOM WSI -------------------------------------------------------------------------------
def open_dicom(path: Path):
    """``(levels, um_per_px, handle, note)`` of a DICOM WSI: a folder, or one file of a series
    (the other files of its series are taken from the same folder)."""
    import pydicom
    from wsidicom import WsiDicom

    files = _series_files(path, pydicom)
    wsi = WsiDicom.open(files)
    try:
        notes = []
        if len(getattr(wsi, "pyramids", [None])) > 1:
            notes.append(f"{len(wsi.pyramids)} pyramids: showing the first")
        base = wsi.levels[0]
        paths, planes = sorted(base.optical_paths), sorted(base.focal_planes)  # the first whatever the file order
        path_id, z = paths[0], planes[0]
        if len(paths) > 1:
            notes.append(f"{len(paths)} optical paths: showing the first ({path_id})")
        if len(planes) > 1:
            notes.append(f"{len(planes)} focal planes: showing the first (z = {z:g} µm)")
        cache = TileCache()
        levels = []
        for level in wsi.levels:
            if path_id not in level.optical_paths or z not in level.focal_planes:
                continue
            channels = _dicom_channels(level)
            shape = (level.size.height, level.size.width) + ((channels,) if channels > 1 else ())

            def read(row, col, n=level.level, c=channels):
                tile = np.asarray(wsi.read_tile(n, (col, row), z=z, path=path_id))
                return tile[..., :c] if c > 1 and tile.ndim == 3 else tile

            levels.append(TiledLevel(shape, np.uint8, (level.tile_size.height, level.tile_size.width), read, cache,
                                     key=level.level))
        um = float(base.mpp.width) if base.mpp is not None and base.mpp.width > 0 else None
        _check_corners(levels)
        return levels, um, _Closer(wsi, cache), "; ".join(notes)
    except Exception:
        wsi.close()
        raise


def _series_files(path: Path, pydicom) -> list[Path]:
    """The files of the WSI series at ``path``; other series in the folder are left out, and a
    non-WSI DICOM, a folder without DICOM files or a series with gaps is refused."""
    candidates = dicom_files(path) if path.is_dir() else [path]
    if not candidates:
        raise InputError(f"{path}: no DICOM files in this folder")
    headers = {}
    for file in candidates:
        try:
            headers[file] = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
            raise InputError(f"{file}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    wsi = {f: h for f, h in headers.items() if str(h.get("SOPClassUID", "")) == WSI_SOP_CLASS}
    if not wsi:
        first = next(iter(headers.values()))
        kind = getattr(first.get("SOPClassUID", None), "name", None) or "unknown SOP class"
        raise InputError(f"{path}: a DICOM {first.get('Modality', '')} image ({kind}), not a whole-slide image "
                         "(VL Whole Slide Microscopy)".replace("  ", " "))
    series = str(next(iter(wsi.values())).SeriesInstanceUID)
    if not path.is_dir():  # one file given: its series, from its folder
        wsi = {f: h for f in dicom_files(path.parent) if (h := _header(f, pydicom)) is not None
               and str(h.get("SOPClassUID", "")) == WSI_SOP_CLASS and str(h.SeriesInstanceUID) == series}
    else:
        wsi = {f: h for f, h in wsi.items() if str(h.SeriesInstanceUID) == series}
    _check_complete(path, wsi)
    return sorted(wsi)


def _header(file: Path, pydicom):
    try:
        return pydicom.dcmread(file, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - unreadable neighbours are not part of the series
        return None


def _check_complete(path: Path, headers: dict):
    """Refuse a series with instances missing: a series' instances are numbered consecutively,
    and a level split into parts (a concatenation) states how many parts it has."""
    numbers = sorted(int(h.InstanceNumber) for h in headers.values() if h.get("InstanceNumber") is not None)
    if numbers:
        gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        if gaps:
            raise InputError(f"{path}: DICOM WSI series has instances missing (numbers {', '.join(map(str, gaps))} "
                             f"of {numbers[0]}–{numbers[-1]})")
    parts: dict = {}
    for h in headers.values():
        if h.get("ConcatenationUID") is not None:
            parts.setdefault(str(h.ConcatenationUID), [int(h.get("InConcatenationTotalNumber", 0)), 0])[1] += 1
    for total, found in parts.values():
        if total and found < total:
            raise InputError(f"{path}: DICOM WSI series has instances missing ({found} of {total} parts of a level)")


def _dicom_channels(level) -> int:
    samples = level.default_instance.dataset.samples_per_pixel if hasattr(level, "default_instance") else 3
    return int(samples)


class _Closer:
    """Closes the library's slide and drops the tile cache when the Slide is closed."""

    def __init__(self, handle, cache: TileCache):
        self.handle, self.cache = handle, cache

    def close(self):
        self.cache.clear()
        self.handle.close()


# --- OpenSlide --------------------------------------------------------------------------------
def open_openslide(path: Path):
    """``(levels, um_per_px, handle, note)`` of a slide OpenSlide reads; RGBA regions become RGB
    composited over the slide's background colour (white when it names none)."""
    import openslide

    if openslide.OpenSlide.detect_format(str(path)) is None:
        raise InputError(f"{path}: not a slide format OpenSlide recognises (damaged, or not the type its name says)")
    slide = openslide.OpenSlide(str(path))
    try:
        props = slide.properties
        background = _background(props.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR))
        cache = TileCache()
        levels = []
        for k, ((w, h), down) in enumerate(zip(slide.level_dimensions, slide.level_downsamples)):
            th = int(props.get(f"openslide.level[{k}].tile-height", 0)) or OPENSLIDE_TILE
            tw = int(props.get(f"openslide.level[{k}].tile-width", 0)) or OPENSLIDE_TILE
            th, tw = th * max(1, OPENSLIDE_TILE // th), tw * max(1, OPENSLIDE_TILE // tw)  # fewer, larger calls

            def read(row, col, k=k, down=down, th=th, tw=tw, w=w, h=h):
                size = (min(tw, w - col * tw), min(th, h - row * th))
                origin = (int(round(col * tw * down)), int(round(row * th * down)))
                return _rgb(np.asarray(slide.read_region(origin, k, size)), background)

            levels.append(TiledLevel((h, w, 3), np.uint8, (th, tw), read, cache, key=k))
        mpp = props.get(openslide.PROPERTY_NAME_MPP_X)
        um = float(mpp) if mpp and float(mpp) > 0 else None
        _check_corners(levels)
        return levels, um, _Closer(slide, cache), ""
    except Exception:
        slide.close()
        raise


def _background(value: str | None) -> np.ndarray:
    try:
        return np.array([int(value[i : i + 2], 16) for i in (0, 2, 4)], np.float32)
    except (TypeError, ValueError):
        return np.full(3, 255, np.float32)


def _rgb(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Premultiplied RGBA over the background colour (OpenSlide leaves unscanned areas transparent)."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if alpha.min(initial=255) == 255:
        return rgb
    out = rgb.astype(np.float32) + (255 - alpha.astype(np.float32)) / 255 * background
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _check_corners(levels: list):
    """Decode the first and last tile of every level now: a truncated file fails at opening,
    not mid-pan (its last tiles are usually the ones cut off)."""
    for level in levels:
        level[0, 0]
        level[level.shape[0] - 1, level.shape[1] - 1]
