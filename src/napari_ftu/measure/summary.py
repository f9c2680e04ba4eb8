"""Per-slide summary of measured objects: counts, tissue area, density, size distribution.

The questions a pathologist asks of a biopsy: how many FTUs (adequacy criteria count
glomeruli), how dense per mm² of tissue, how large, how many cut by the edge. The tissue area
comes from the same tissue mask the engine uses to skip glass, on the slide's smallest level.
"""

from __future__ import annotations

import math

import numpy as np

from napari_ftu.engine.tissue import tissue_mask

THUMB_MAX = 2048  # longest side of the overview the tissue area is measured on
STATUSES = ("unreviewed", "accepted", "edited")

SUMMARY_COLUMNS = {
    "n_objects": "objects in the labels (rejected ones have no pixels and are not counted)",
    "classes": "objects per class, as class=count separated by semicolons",
    "n_unreviewed": "objects not yet reviewed",
    "n_accepted": "objects accepted in review",
    "n_edited": "objects whose pixels were edited in review",
    "n_border": "objects touching the image's edge (their size is a lower bound)",
    "tissue_area_mm2": "tissue area, mm², from the tissue mask of the slide's overview (empty without an image)",
    "density_per_mm2": "objects per mm² of tissue",
    "ftu_fraction": "summed object area / tissue area",
    "area_median_um2": "median object area, µm²",
    "area_q1_um2": "first quartile of the object areas, µm²",
    "area_q3_um2": "third quartile of the object areas, µm²",
    "area_iqr_um2": "interquartile range of the object areas, µm²",
    "diameter_median_um": "median equivalent diameter, µm",
    "pixel_size_note": "what was assumed when the labels carried no pixel size",
}


def tissue_area_mm2(slide, um_per_px: float | None) -> float | None:
    """Tissue area of a slide in mm², from :func:`~napari_ftu.engine.tissue.tissue_mask` of an
    overview read from its smallest level (never the whole slide).

    Parameters
    ----------
    slide : napari_ftu.io.slides.Slide
    um_per_px : float, optional
        Of level 0; None gives None.

    Returns
    -------
    float or None
    """
    if not um_per_px:
        return None
    level = slide.levels[-1]
    channel_first = slide.kind == "channels" and slide.channel_axis == 0
    h = level.shape[1] if channel_first else level.shape[0]
    w = level.shape[2] if channel_first else level.shape[1]
    step = max(1, math.ceil(max(h, w) / THUMB_MAX))
    thumb = np.asarray(level[:, ::step, ::step] if channel_first else level[::step, ::step])
    if channel_first:
        thumb = np.moveaxis(thumb, 0, -1)
    if thumb.ndim == 3 and thumb.shape[-1] not in (1, 3):
        thumb = thumb[..., :3]
    if thumb.dtype != np.uint8:
        lo, hi = np.percentile(thumb, (0.5, 99.5))
        thumb = np.clip((thumb.astype(np.float32) - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
    mask = tissue_mask(thumb)
    px_um = um_per_px * slide.size[0] / mask.shape[0]  # one overview pixel, µm
    return float(mask.sum()) * px_um * px_um / 1e6


def summarize(rows, tissue_mm2: float | None = None, note: str = "") -> dict:
    """One summary row of a slide's measured objects.

    Parameters
    ----------
    rows : iterable of dict
        From :func:`napari_ftu.measure.objects.measure_objects`.
    tissue_mm2 : float, optional
        From :func:`tissue_area_mm2`.
    note : str
        What was assumed (the pixel size), carried into the row.

    Returns
    -------
    dict
        The keys of :data:`SUMMARY_COLUMNS`.
    """
    rows = list(rows)
    areas = np.array([r["area_um2"] for r in rows], float)
    classes: dict = {}
    for r in rows:
        classes[r["class"]] = classes.get(r["class"], 0) + 1
    q1, med, q3 = np.percentile(areas, (25, 50, 75)) if len(areas) else (math.nan,) * 3
    out = {"n_objects": len(rows), "classes": ";".join(f"{k}={v}" for k, v in sorted(classes.items()))}
    for status in STATUSES:
        out[f"n_{status}"] = sum(r["status"] == status for r in rows)
    out["n_border"] = sum(int(r["border"]) for r in rows)
    out["tissue_area_mm2"] = None if tissue_mm2 is None else _num(tissue_mm2)
    out["density_per_mm2"] = _num(len(rows) / tissue_mm2) if tissue_mm2 else None
    out["ftu_fraction"] = _num(float(areas.sum()) / (tissue_mm2 * 1e6)) if tissue_mm2 else None
    out.update({"area_median_um2": _num(med), "area_q1_um2": _num(q1), "area_q3_um2": _num(q3),
                "area_iqr_um2": _num(q3 - q1),
                "diameter_median_um": _num(np.median([r["equivalent_diameter_um"] for r in rows]) if rows
                                           else math.nan),
                "pixel_size_note": note})
    return out


def _num(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else round(v, 6)
