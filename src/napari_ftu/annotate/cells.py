"""Fluorescence cells (the HPA single-cell task): instances from nuclei and the pixel classifier.

The image has HPA's four channels in order red (microtubules), green (protein), blue (nuclei),
yellow (ER). Nuclei come from the blue channel alone (Otsu threshold, split where the distance
transform has several peaks); each nucleus seeds a watershed on the classifier's foreground
probability (1 - background), limited to where that probability passes the threshold, so a
cell grows from its nucleus until the cytoplasm ends or meets its neighbour's (a compact
watershed: between touching cells, the border lies about halfway between their nuclei). Each cell then
gets the class whose mean probability over its pixels is highest, and that mean as confidence
(a cell's class -- e.g. where its green signal sits -- shows in its pixels taken together).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_ftu.errors import InputError, ModelError

BLUE = 2  # HPA channel order: red, green, blue, yellow
N_CHANNELS = 4
# Nuclei stand out of the blue channel's background: the two sides of its Otsu split differ by this
# many standard deviations of the darker side (synthetic cells 14-17; pure noise 2.6-2.8; the red
# microtubule channel 4-6), whatever the bit depth and exposure
MIN_NUCLEUS_SEPARATION = 5.0
NUCLEUS_SIGMA = 1.5  # px, smoothing of the blue channel before thresholding
MIN_NUCLEUS_PX = 40  # smaller bright specks are not nuclei (debris, noise)
# The classifier: cells cover much of a field, so no prior that unpainted pixels are background
# (the FTU default); and a small MLP head, because a cell's class is a conjunction (green AND
# blue: nucleoplasm; green AND NOT blue: cytosol) a linear head cannot draw.
HIDDEN = 16
SPLIT_H = 2.0
# Compact watershed: inside the cytoplasm the foreground is a flat plateau, and a plain watershed
# leaves touching cells' border to flooding order; the compact one puts it where the two nuclei's
# distances meet (AP@0.5 on 4 development images: 0.60 plain, 1.00 compact)
COMPACTNESS = 1e-3  # px: distance-transform peaks must rise this much to seed a nucleus of their own


def channels_last(image, source: str = "image") -> np.ndarray:
    """An (H, W, 4) view of a four-channel image given channels-last or channels-first
    (HPA composites opened by the Load dock are (4, H, W)); anything else is refused."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] == N_CHANNELS and a.shape[-1] != N_CHANNELS:
        a = np.moveaxis(a, 0, -1)
    if a.ndim != 3 or a.shape[-1] != N_CHANNELS:
        raise InputError(f"{source}: cells need a 4-channel image (red, green, blue = nuclei, yellow), "
                         f"got shape {tuple(np.shape(image))}")
    return a


def composite(planes: dict) -> np.ndarray:
    """One (H, W, C) image from the channel layers napari shows a multichannel image as
    (``{layer name: 2-D data}``, as the Load dock adds them: ``<image> red``, ... ``<image> yellow``).
    Names ending in HPA's channel names are put in HPA order, others keep their order."""
    from napari_ftu.io.synthetic_cells import CHANNELS

    names = list(planes)
    rank = {n: next((k for k, c in enumerate(CHANNELS) if n.lower().endswith(c)), None) for n in names}
    if all(r is not None for r in rank.values()) and len(set(rank.values())) == len(names):
        names.sort(key=rank.get)
    arrays = [np.asarray(planes[n]) for n in names]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 2:
        raise InputError(f"channel layers {names} differ in size or are not 2-D ({[a.shape for a in arrays]})")
    return np.stack(arrays, -1)


def read_cell_image(path, um_per_px: float | None = None):
    """``(image (H, W, 4), µm/px or None, image id)`` of a four-channel TIFF (channels last or
    first), or of an HPA image named by one of its channel files (``<id>_red.png`` with its green,
    blue and yellow siblings)."""
    from pathlib import Path

    from napari_ftu.formats.datasets.hpa import hpa_channel_id, read_hpa_channels
    from napari_ftu.io.images import read_image

    path = Path(path)
    hpa = hpa_channel_id(path)
    if hpa is not None:
        return channels_last(read_hpa_channels(*hpa), str(path)), um_per_px, hpa[1]
    loaded = read_image(path, um_per_px)
    return channels_last(loaded.data, str(path)), loaded.um_per_px, loaded.name


def nuclei(image, source: str = "image", min_area_px: int = MIN_NUCLEUS_PX) -> np.ndarray:
    """Nucleus instance labels (int32) from the blue channel of an (H, W, 4) image; an image
    whose blue channel shows no nuclei is refused with :class:`InputError`."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    from napari_ftu.models.features import to_unit

    a = channels_last(image, source)
    blue = ndi.gaussian_filter(to_unit(a[..., BLUE])[..., 0], NUCLEUS_SIGMA)
    if float(blue.max()) - float(blue.min()) < 1e-6:
        raise InputError(f"{source}: the blue (nuclei) channel is empty: no nuclei to seed cells")
    threshold = threshold_otsu(blue)
    above, below = blue[blue > threshold], blue[blue <= threshold]
    separation = (above.mean() - below.mean()) / max(float(below.std()), 1e-6)
    if separation < MIN_NUCLEUS_SEPARATION:
        raise InputError(f"{source}: the blue (nuclei) channel shows no nuclei (they would stand "
                         f"{separation:.1f} background deviations out, at least {MIN_NUCLEUS_SEPARATION:g} needed)")
    mask = ndi.binary_fill_holes(blue > threshold)
    lab, _ = ndi.label(mask)
    mask &= (np.bincount(lab.ravel()) >= min_area_px)[lab] & (lab > 0)
    if not mask.any():
        raise InputError(f"{source}: no nuclei in the blue channel (none of {min_area_px} px or more)")
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(mask), 1.0)
    markers, _ = ndi.label(h_maxima(dist, SPLIT_H) & mask)
    return watershed(-dist, markers, mask=mask).astype(np.int32)


def cells_from_probability(prob, nucleus_labels, threshold: float = 0.5, class_names=None,
                           um_per_px: float | None = None):
    """Cells from the classifier's (K, H, W) class probabilities and nucleus labels.

    Returns ``(labels int32, table)``; the table has the engine's object rows (id, area, centroid,
    box) with ``cls`` (argmax of the mean class probability over the cell) and ``confidence``
    (that mean). A cell always holds its nucleus, even where the classifier is unsure there."""
    from skimage.segmentation import watershed

    from napari_ftu.engine.postprocess import object_table, relabel_sequential

    prob = np.asarray(prob, np.float32)
    if prob.ndim == 2:
        prob = prob[None]
    nucleus_labels = np.asarray(nucleus_labels)
    if prob.shape[1:] != nucleus_labels.shape:
        raise InputError(f"probability {prob.shape[1:]} and nuclei {nucleus_labels.shape} differ in size")
    fg = np.clip(prob.sum(0), 0, 1)
    mask = (fg >= threshold) | (nucleus_labels > 0)
    labels = watershed(1 - fg, nucleus_labels, mask=mask, compactness=COMPACTNESS)
    labels = relabel_sequential(labels.astype(np.int32))
    ids = np.unique(labels)
    ids = ids[ids > 0]
    table = object_table(labels, None, um_per_px)
    if ids.size:
        means = np.stack([ndi.mean(p, labels, ids) for p in prob])  # (K, n)
        if len(prob) == 1:
            best, conf = np.zeros(ids.size, int), means[0]
        else:
            best = means.argmax(0)
            conf = means.max(0)
        names = [class_names[k] if class_names and k < len(class_names) else f"class {k + 2}"
                 for k in range(len(prob))]
        for row, k, c in zip(table, best, conf):
            row["cls"], row["confidence"] = names[int(k)], float(c)
    return labels, table


def cells_from_scribbles(image, scribbles, um_per_px: float = 1.0, classes: list | None = None,
                         threshold: float = 0.5, source: str = "scribbles", image_source: str = "image"):
    """Train the pixel classifier on the scribbles of a four-channel image and return
    ``(cell labels, table, classifier)``; see :func:`cell_steps`."""
    from napari_ftu.steps import drain

    return drain(cell_steps(image, scribbles, um_per_px, classes, threshold, source, image_source))


def cell_steps(image, scribbles, um_per_px: float = 1.0, classes: list | None = None, threshold: float = 0.5,
               source: str = "scribbles", image_source: str = "image"):
    """Generator (``("step", i, 4)``) returning ``(labels, table, classifier)``: the image's
    channels, the scribbles and the nuclei are checked before training. ``classes`` names the
    scribble values 2, 3, ... in order (values not painted are simply absent from the result)."""
    from napari_ftu.annotate import pixels

    a = channels_last(image, image_source)
    painted = pixels.check_scribbles(a.shape, scribbles, source)
    if classes:
        unnamed = [v for v in painted if v - 2 >= len(classes)]
        if unnamed:
            raise InputError(f"{source}: scribble value {unnamed[0]} has no class name ({len(classes)} names for "
                             f"values 2..{len(classes) + 1})")
        classes = [classes[v - 2] for v in painted]
    nuc = nuclei(a, image_source)
    yield ("step", 1, 4)
    clf = pixels.train(a, scribbles, um_per_px, classes=classes, hidden=HIDDEN, unlabelled=0, source=source)
    yield ("step", 2, 4)
    prob = clf.probability(a)
    yield ("step", 3, 4)
    labels, table = cells_from_probability(prob, nuc, threshold, clf.classes, um_per_px)
    yield ("step", 4, 4)
    return labels, table, clf


def apply_steps(image, clf, um_per_px: float = 1.0, threshold: float = 0.5, image_source: str = "image"):
    """Generator (``("step", i, 3)``) returning ``(labels, table)``: the cells of a four-channel
    image (this field or another one) from an already trained classifier, as :func:`cell_steps`
    makes them after training. The image, its nuclei and the classifier's channels are checked
    before the first step."""
    a = channels_last(image, image_source)
    if clf.in_channels != N_CHANNELS:
        raise ModelError(f"the classifier takes {clf.in_channels}-channel images; cells need one trained on the "
                         f"{N_CHANNELS} channels (with --cells, or the Annotate dock's 'cells')")
    nuc = nuclei(a, image_source)
    yield ("step", 1, 3)
    prob = clf.probability(a)
    yield ("step", 2, 3)
    labels, table = cells_from_probability(prob, nuc, threshold, clf.classes, um_per_px)
    yield ("step", 3, 3)
    return labels, table


def to_annotations(image_id: str, labels, table, um_per_px: float | None = None):
    """The cells as :class:`~napari_ftu.formats.annotations.Annotations` (class and confidence per
    cell), ready for ``export_annotations(..., "hpa")``."""
    from napari_ftu.formats.annotations import Annotations

    return Annotations(image_id, labels, {r["id"]: [r["cls"]] for r in table},
                       {r["id"]: r["confidence"] for r in table}, um_per_px)
