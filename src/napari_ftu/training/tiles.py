"""Training tiles: image/mask pairs plus a manifest, from slides of any size.

Image and labels may be any array-like (numpy, zarr from a pyramidal TIFF, dask): only one
window is read at a time. Tiles can be resampled to a target µm/px, limited to tiles with
objects (or with tissue) plus a seeded fraction of the others, and capped per class so that
rare classes are not drowned.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np

from napari_ftu.atomic import atomic_path, write_text
from napari_ftu.engine.tiling import tile_grid
from napari_ftu.engine.tissue import tissue_fraction
from napari_ftu.errors import InputError, OptionError
from napari_ftu.formats.annotations import safe_id
from napari_ftu.io.resample import resample_pair

MANIFEST_COLUMNS = ["image", "mask", "source", "y", "x", "height", "width", "um_per_px", "source_um_per_px",
                    "n_objects", "classes"]



def export_tiles(
    image,
    labels,
    folder: str | Path,
    name: str,
    tile: int = 512,
    overlap: int = 0,
    um_per_px: float | None = None,
    target_um_per_px: float | None = None,
    keep: str = "objects",
    negative_fraction: float = 0.1,
    classes: dict | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    fmt: str = "png",
) -> list[dict]:
    """Write ``images/<name>_<y>_<x>.<fmt>`` and ``masks/…`` (instance ids) and ``manifest.csv``.

    ``keep="objects"`` keeps every tile holding an object, ``"tissue"`` every tile at least a
    quarter tissue; other tiles are kept with probability ``negative_fraction``. With
    ``max_per_class``, at most that many tiles are kept per class (``classes`` maps object id to
    class name), rarest class first. Positions in the manifest are full-resolution pixels.
    """
    if fmt not in ("png", "tif"):
        raise OptionError(f"tile format must be png or tif, got {fmt!r}")
    if keep not in ("objects", "tissue"):
        raise OptionError(f"keep must be 'objects' or 'tissue', got {keep!r}")
    if tuple(image.shape[:2]) != tuple(labels.shape):
        raise InputError(f"image {tuple(image.shape[:2])} and labels {tuple(labels.shape)} differ in size")
    name = safe_id(name)
    factor = 1.0
    if target_um_per_px:
        if not um_per_px:
            raise InputError("a target µm/px needs the image's own pixel size")
        factor = target_um_per_px / um_per_px
    window = max(1, round(tile * factor))
    step_overlap = min(window - 1, round(overlap * factor))
    rng = np.random.default_rng(seed)
    classes = classes or {}

    candidates = []
    for y0, x0 in tile_grid(labels.shape, window, step_overlap):
        lab = np.asarray(labels[y0 : y0 + window, x0 : x0 + window])
        ids = np.unique(lab[lab > 0])
        if ids.size:
            wanted = True
        elif keep == "tissue":
            wanted = tissue_fraction(image[y0 : y0 + window, x0 : x0 + window]) >= 0.25
        else:
            wanted = False
        if not wanted and rng.random() >= negative_fraction:
            continue
        counts = Counter(str(classes.get(int(i), "FTU")) for i in ids)
        candidates.append((y0, x0, counts))
    if max_per_class:
        candidates = _cap_per_class(candidates, max_per_class, rng)

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for y0, x0, counts in candidates:
        img = np.asarray(image[y0 : y0 + window, x0 : x0 + window])
        lab = np.asarray(labels[y0 : y0 + window, x0 : x0 + window])
        if factor != 1.0:
            img, lab = resample_pair(img, lab, 1 / factor)
        stem = f"{name}_{y0}_{x0}"
        _write_pair(folder, stem, fmt, img, lab, target_um_per_px or um_per_px)
        rows.append({
            "image": f"images/{stem}.{fmt}", "mask": f"masks/{stem}.{fmt}", "source": name, "y": y0, "x": x0,
            "height": lab.shape[0], "width": lab.shape[1], "um_per_px": target_um_per_px or um_per_px or "",
            "source_um_per_px": um_per_px or "", "n_objects": sum(counts.values()),
            "classes": ";".join(f"{k}:{v}" for k, v in sorted(counts.items())),
        })
    buf = io.StringIO()
    writer = csv.DictWriter(buf, MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(folder / "manifest.csv", buf.getvalue())
    return rows


def _cap_per_class(candidates, cap, rng):
    """Keep at most ``cap`` tiles per class, choosing for the rarest classes first."""
    totals = Counter(c for _, _, counts in candidates for c in counts)
    chosen, per_class = set(), Counter()
    for cls, _ in sorted(totals.items(), key=lambda kv: (kv[1], kv[0])):
        pool = [k for k, (_, _, counts) in enumerate(candidates) if cls in counts and k not in chosen]
        room = max(0, cap - per_class[cls])
        for k in rng.permutation(pool)[:room]:
            chosen.add(int(k))
            per_class.update(candidates[int(k)][2].keys())
    negatives = [k for k, (_, _, counts) in enumerate(candidates) if not counts]
    return [candidates[k] for k in sorted(chosen | set(negatives))]


def _write_pair(folder: Path, stem: str, fmt: str, img, lab, um):
    import imageio.v3 as iio

    from napari_ftu.io.images import write_tiff

    if lab.max(initial=0) >= 65536 and fmt == "png":
        from napari_ftu.engine.postprocess import relabel_sequential

        lab = relabel_sequential(lab)  # PNG holds 16 bits; a tile never holds 65535 objects
    mask = lab.astype(np.uint16) if lab.max(initial=0) < 65536 else lab.astype(np.uint32)
    for sub, data in (("images", img), ("masks", mask)):
        target = folder / sub / f"{stem}.{fmt}"
        if fmt == "tif":
            write_tiff(target, data, um)
        else:
            with atomic_path(target) as tmp:
                iio.imwrite(tmp, data, extension=".png")
