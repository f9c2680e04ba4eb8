"""Per-object measurements: morphometry, position and stain, one object at a time.

What QuPath calls "detection measurements". Each object's bounding box is found by scanning the
labels block by block, then the object is cut out of the labels (and of the image, when given)
and measured by :func:`skimage.measure.regionprops` on that crop alone, so a slide of any size is
measured with one block and one object in memory, and every value equals regionprops on the
whole label image. Lengths are converted with the pixel size (isotropic, µm per pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from napari_ftu.errors import InputError, OptionError

BLOCK = 2048  # label pixels per side of a block when scanning for bounding boxes

# Colour-deconvolution matrices (Ruifrok & Johnston, as scikit-image ships them): the stain
# names, in the order of the matrix's outputs, and the scikit-image matrix.
STAINS = {
    "H&E": (("hematoxylin", "eosin", "dab"), "hed_from_rgb"),
    "H-PAS": (("hematoxylin", "pas", "residual"), "hpx_from_rgb"),
    "H-DAB": (("hematoxylin", "dab", "residual"), "hdx_from_rgb"),
}

# Every column and what it means (the docs' table is built from this).
COLUMNS = {
    "id": "object id (its value in the label image)",
    "class": "class name (from the review table or the layer's features; the default class otherwise)",
    "status": "review status: unreviewed, accepted or edited (rejected objects have no pixels)",
    "confidence": "the model's confidence of the object, empty when unknown (drawn objects)",
    "centroid_y_px": "centroid row, label pixels",
    "centroid_x_px": "centroid column, label pixels",
    "centroid_y_um": "centroid row, µm from the image's top edge",
    "centroid_x_um": "centroid column, µm from the image's left edge",
    "bbox_y0_px": "bounding box: first row (label pixels)",
    "bbox_x0_px": "bounding box: first column",
    "bbox_y1_px": "bounding box: row after the last",
    "bbox_x1_px": "bounding box: column after the last",
    "bbox_y0_um": "bounding box top, µm",
    "bbox_x0_um": "bounding box left, µm",
    "bbox_height_um": "bounding box height, µm",
    "bbox_width_um": "bounding box width, µm",
    "area_px": "pixels of the object",
    "area_um2": "area, µm² (pixels × pixel size²)",
    "perimeter_um": "perimeter, µm (regionprops' 4-connected contour length × pixel size)",
    "equivalent_diameter_um": "diameter of the disc of the same area, µm",
    "major_axis_um": "major axis of the ellipse with the same second moments, µm",
    "minor_axis_um": "minor axis of that ellipse, µm",
    "eccentricity": "eccentricity of that ellipse: 0 a circle, towards 1 elongated",
    "solidity": "area / area of the convex hull: 1 convex, lower for lobed or notched outlines",
    "circularity": "4π·area / perimeter²: 1 for a disc, lower for irregular outlines (can exceed 1 slightly for "
                   "small objects, whose digital perimeter is short)",
    "border": "1 when the object touches the image's edge (cut by it: its size is a lower bound), else 0",
    "stain_matrix": "the colour-deconvolution matrix of the stain columns (H&E, H-PAS or H-DAB)",
    "<stain>_mean": "mean optical density of a deconvolved stain inside the object (hematoxylin, eosin, pas, "
                    "dab, residual)",
    "<stain>_sd": "standard deviation of that stain inside the object",
    "<channel>_mean": "for fluorescence or grey images: mean intensity of each channel inside the object",
    "<channel>_sd": "standard deviation of each channel inside the object",
}
MORPHOLOGY = ["id", "class", "status", "confidence", "centroid_y_px", "centroid_x_px", "centroid_y_um",
              "centroid_x_um", "bbox_y0_px", "bbox_x0_px", "bbox_y1_px", "bbox_x1_px", "bbox_y0_um", "bbox_x0_um",
              "bbox_height_um", "bbox_width_um", "area_px", "area_um2", "perimeter_um", "equivalent_diameter_um",
              "major_axis_um", "minor_axis_um", "eccentricity", "solidity", "circularity", "border"]


@dataclass
class ObjectInfo:
    """What the review knows of an object besides its pixels."""

    cls: str = "FTU"
    status: str = "unreviewed"
    confidence: float = math.nan


@dataclass
class Measurement:
    """A measurement run's inputs that are not pixels.

    Parameters
    ----------
    um_per_px : float, optional
        Pixel size of the labels; None measures in pixels (µm columns then equal pixels) and
        ``assumed`` says so.
    info : dict
        Object id -> :class:`ObjectInfo`.
    default : ObjectInfo
        For objects ``info`` does not hold.
    stain : str
        A key of :data:`STAINS`, ``"channels"`` (mean per channel) or ``"none"``; ``"auto"``
        picks H&E for RGB images and channels otherwise.
    """

    um_per_px: float | None = None
    info: dict = field(default_factory=dict)
    default: ObjectInfo = field(default_factory=ObjectInfo)
    stain: str = "auto"

    @property
    def scale(self) -> float:
        return float(self.um_per_px) if self.um_per_px else 1.0

    @property
    def assumed(self) -> str:
        """A note when the pixel size is unknown (µm columns are then pixels), else ''."""
        return "" if self.um_per_px else "no pixel size given: 1 µm/px assumed (µm columns are pixels)"


def find_boxes(labels, block: int = BLOCK) -> dict:
    """Bounding boxes of every object, scanning ``labels`` block by block.

    Parameters
    ----------
    labels : array-like
        2-D integer labels: an ndarray, a zarr array, a lazy TIFF level.
    block : int
        Block side; memory holds one block.

    Returns
    -------
    dict
        Object id -> ``[y0, x0, y1, x1]`` (end exclusive), ids ascending.
    """
    from scipy import ndimage as ndi

    h, w = labels.shape[:2]
    boxes: dict = {}
    for by in range(0, h, block):
        for bx in range(0, w, block):
            chunk = np.asarray(labels[by : by + block, bx : bx + block])
            if not chunk.any():
                continue
            if chunk.dtype.kind not in "iu":
                raise InputError(f"labels must be integers, got {chunk.dtype}")
            ids = np.unique(chunk)
            ids = ids[ids > 0]
            # find_objects lists every id up to the largest: renumber the block's ids to 1..n first.
            dense = np.searchsorted(ids, chunk) + 1
            dense[chunk == 0] = 0
            for obj, sl in zip(ids, ndi.find_objects(dense)):
                if sl is None:
                    continue
                y0, y1, x0, x1 = by + sl[0].start, by + sl[0].stop, bx + sl[1].start, bx + sl[1].stop
                old = boxes.get(int(obj))
                boxes[int(obj)] = [y0, x0, y1, x1] if old is None else [
                    min(old[0], y0), min(old[1], x0), max(old[2], y1), max(old[3], x1)]
    return dict(sorted(boxes.items()))


def measure_objects(labels, image=None, how: Measurement | None = None, boxes: dict | None = None,
                    max_object_px: int = 64 * 2**20):
    """Measurements of every object, one row (a dict, :data:`MORPHOLOGY` then stain columns) at a time.

    Parameters
    ----------
    labels : array-like
        2-D integer labels (lazy arrays are read one bounding box at a time).
    image : ImageSource, optional
        The image, for stain or intensity columns (see :class:`ImageSource`).
    how : Measurement, optional
        Pixel size, classes/statuses/confidences and the stain.
    boxes : dict, optional
        From :func:`find_boxes`, when already known.
    max_object_px : int
        An object whose bounding box holds more pixels is refused (a label image that is one
        object, not FTUs).

    Yields
    ------
    dict
        One row per object, ids ascending.

    Raises
    ------
    InputError
        Non-integer labels, or an object too large to measure.
    """
    from skimage.measure import regionprops

    how = how or Measurement()
    s = how.scale
    h, w = labels.shape[:2]
    boxes = find_boxes(labels) if boxes is None else boxes
    for obj, (y0, x0, y1, x1) in boxes.items():
        if (y1 - y0) * (x1 - x0) > max_object_px:
            raise InputError(f"object {obj} spans {y1 - y0} × {x1 - x0} px: too large to measure as one FTU")
        mask = np.asarray(labels[y0:y1, x0:x1]) == obj
        p = regionprops(mask.astype(np.uint8))[0]
        info = how.info.get(obj, how.default)
        cy, cx = p.centroid
        perimeter = float(p.perimeter)
        row = {"id": obj, "class": info.cls, "status": info.status,
               "confidence": None if info.confidence is None or math.isnan(info.confidence) else info.confidence,
               "centroid_y_px": y0 + cy, "centroid_x_px": x0 + cx, "centroid_y_um": (y0 + cy) * s,
               "centroid_x_um": (x0 + cx) * s, "bbox_y0_px": y0, "bbox_x0_px": x0, "bbox_y1_px": y1,
               "bbox_x1_px": x1, "bbox_y0_um": y0 * s, "bbox_x0_um": x0 * s, "bbox_height_um": (y1 - y0) * s,
               "bbox_width_um": (x1 - x0) * s, "area_px": int(p.area), "area_um2": float(p.area) * s * s,
               "perimeter_um": perimeter * s, "equivalent_diameter_um": float(p.equivalent_diameter_area) * s,
               "major_axis_um": float(p.axis_major_length) * s, "minor_axis_um": float(p.axis_minor_length) * s,
               "eccentricity": float(p.eccentricity), "solidity": float(p.solidity),
               "circularity": 4 * math.pi * float(p.area) / perimeter**2 if perimeter > 0 else math.nan,
               "border": int(y0 == 0 or x0 == 0 or y1 == h or x1 == w)}
        if image is not None:
            row.update(image.measure((y0, x0, y1, x1), mask, how.stain))
        yield row


class ImageSource:
    """The image an object's stain is read from, one bounding box at a time.

    The labels may be at another resolution than the image (a batch writes them on the model's
    grid): a label pixel reads the image pixel under its centre, from the coarsest pyramid level
    still at least as fine as the labels.

    Parameters
    ----------
    slide : napari_ftu.io.slides.Slide
        Opened lazily.
    labels_shape : tuple of int
        ``(height, width)`` of the labels.
    """

    def __init__(self, slide, labels_shape):
        self.slide = slide
        self.kind = slide.kind
        h, w = slide.size
        factor = h / labels_shape[0]  # image pixels per label pixel
        if abs(w / labels_shape[1] - factor) > 0.02 * factor + 1 / labels_shape[1]:
            raise InputError(f"{slide.path}: the image is {h} × {w} px, the labels {labels_shape[0]} × "
                             f"{labels_shape[1]}: not the same picture at another scale")
        fine = [k for k, d in enumerate(slide.downsamples) if d <= factor * 1.001]
        self.level = fine[-1] if fine else 0
        self.array = slide.levels[self.level]
        self.step = factor / slide.downsamples[self.level]  # level pixels per label pixel
        self.channel_first = self.kind == "channels" and slide.channel_axis == 0
        names = slide.channel_names or []
        n = self.array.shape[0] if self.channel_first else (self.array.shape[2] if self.array.ndim == 3 else 1)
        self.channels = [_column_name(names[i] if i < len(names) else f"channel {i}") for i in range(n)]

    def pixels(self, box) -> np.ndarray:
        """``(h, w, channels)`` image values at the label pixels of ``box`` (``y0, x0, y1, x1``)."""
        y0, x0, y1, x1 = box
        ys = np.minimum(((np.arange(y0, y1) + 0.5) * self.step).astype(np.int64), self._size(0) - 1)
        xs = np.minimum(((np.arange(x0, x1) + 0.5) * self.step).astype(np.int64), self._size(1) - 1)
        if self.channel_first:
            window = np.moveaxis(np.asarray(self.array[:, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]), 0, -1)
        else:
            window = np.asarray(self.array[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1])
        if window.ndim == 2:
            window = window[..., None]
        return window[np.ix_(ys - ys[0], xs - xs[0])]

    def _size(self, axis: int) -> int:
        return int(self.array.shape[axis + 1 if self.channel_first else axis])

    def measure(self, box, mask: np.ndarray, stain: str = "auto") -> dict:
        """Stain (or channel) mean and SD inside ``mask`` (the object in ``box``)."""
        stain = resolve_stain(stain, self.kind)
        if stain == "none":
            return {}
        values = self.pixels(box)[mask]
        if stain in STAINS:
            names, matrix = STAINS[stain]
            ods = stain_densities(values[:, :3], stain)
            out = {"stain_matrix": stain}
            for k, name in enumerate(names):
                out[f"{name}_mean"] = float(ods[:, k].mean())
                out[f"{name}_sd"] = float(ods[:, k].std())
            return out
        values = values.astype(np.float64)
        out = {}
        for k, name in enumerate(self.channels):
            out[f"{name}_mean"] = float(values[:, k].mean())
            out[f"{name}_sd"] = float(values[:, k].std())
        return out


def resolve_stain(stain: str, kind: str) -> str:
    """The stain a run uses: ``auto`` is H&E for RGB images, per-channel means otherwise.

    Parameters
    ----------
    stain : str
        ``auto``, ``none``, ``channels`` or a key of :data:`STAINS`.
    kind : str
        The slide's kind (``rgb``, ``gray``, ``channels``).

    Returns
    -------
    str

    Raises
    ------
    OptionError
        An unknown stain, or a deconvolution asked of an image without RGB.
    """
    if stain not in ("auto", "none", "channels", *STAINS):
        raise OptionError(f"unknown stain {stain!r}; one of auto, none, channels, {', '.join(STAINS)}")
    if stain == "auto":
        return "H&E" if kind == "rgb" else "channels"
    if stain in STAINS and kind != "rgb":
        raise OptionError(f"colour deconvolution ({stain}) needs an RGB image; this one is {kind}")
    return stain


def stain_densities(rgb: np.ndarray, stain: str) -> np.ndarray:
    """Per-pixel stain optical densities (``(..., 3)``) of RGB values by colour deconvolution.

    Parameters
    ----------
    rgb : ndarray
        ``(..., 3)`` uint8 (or 0..1 floats).
    stain : str
        A key of :data:`STAINS`.

    Returns
    -------
    ndarray
        ``(..., 3)`` float, the stains in :data:`STAINS` order.
    """
    import skimage.color

    matrix = getattr(skimage.color, STAINS[stain][1])
    flat = np.asarray(rgb).reshape(-1, 1, 3)
    return skimage.color.separate_stains(flat, matrix).reshape(np.shape(rgb))


def _column_name(name: str) -> str:
    import re

    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_") or "channel"
