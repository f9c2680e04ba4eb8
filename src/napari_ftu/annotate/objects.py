"""From a classifier's probability to instance objects, with the engine's own post-processing
(threshold, fill holes, remove small, optional split), so scribble results look like a model's."""

from __future__ import annotations

import numpy as np

from napari_ftu.engine.postprocess import instances, object_table, relabel_sequential, split_touching

MIN_FRACTION = 1 / 8  # objects under this share of the expected FTU's area are noise, not FTUs


def min_area_px(diameter_um: float, um_per_px: float, fraction: float = MIN_FRACTION) -> int:
    """Smallest object kept, in px: ``fraction`` of a disc of the expected FTU diameter."""
    return int(fraction * np.pi * (diameter_um / um_per_px / 2) ** 2)


def convex_objects(labels: np.ndarray) -> np.ndarray:
    """Each object replaced by its convex hull, on pixels no other object holds: a shape prior for
    compact FTUs (glomeruli, vessels), whose strokes teach the classifier the dense core, not the
    pale rim (Bowman's space, a lumen) the ground truth includes."""
    from scipy import ndimage as ndi
    from skimage.morphology import convex_hull_image

    out = labels.copy()
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        hull = convex_hull_image(labels[sl] == i)
        crop = out[sl]
        crop[hull & (crop == 0)] = i
    return out


SHAPES = ("", "convex", "outline")  # as predicted, convex hulls, grown to the enclosing edge


def reshaper(shape: str, image: np.ndarray, radius_px: float):
    """The labels -> labels function of an object ``shape`` (one of :data:`SHAPES`), or None:
    ``convex`` (:func:`convex_objects`), ``outline`` (:func:`~napari_ftu.annotate.outline.outline_objects`
    on ``image``, whose FTUs are about ``radius_px`` in radius)."""
    from napari_ftu.annotate.outline import outline_objects

    if shape not in SHAPES:
        raise ValueError(f"object shape {shape!r}: one of {', '.join(s for s in SHAPES if s)}")
    if shape == "convex":
        return convex_objects
    if shape == "outline":
        return lambda labels: outline_objects(image, labels, radius_px)
    return None


def objects_from_probability(prob: np.ndarray, threshold: float = 0.5, min_area_px: int = 0,
                             split_min_distance_px: float | None = None, um_per_px: float | None = None,
                             class_names: list | None = None, reshape=None):
    """``prob`` (K, H, W) per FTU class -> (labels int32, object table with class and confidence).
    A pixel belongs to the most probable class when that class passes ``threshold``; ``reshape``
    (labels -> labels, see :func:`reshaper`) then changes each class's objects' shapes."""
    prob = np.asarray(prob, np.float32)
    if prob.ndim == 2:
        prob = prob[None]
    best = prob.argmax(0) if len(prob) > 1 else np.zeros(prob.shape[1:], np.intp)
    top = np.take_along_axis(prob, best[None], 0)[0]
    labels = np.zeros(top.shape, np.int32)
    table = []
    for k in range(len(prob)):
        p = np.where(best == k, top, 0.0).astype(np.float32)
        lab = instances(p, threshold, min_area_px)
        if reshape is not None:
            lab = reshape(lab)
        rows = object_table(lab, p, um_per_px)
        if split_min_distance_px:
            rows = split_touching(lab, p, rows, split_min_distance_px, um_per_px=um_per_px)
        offset = int(labels.max())
        lab = relabel_sequential(lab)
        labels = np.where(lab > 0, lab + offset, labels)
        name = class_names[k] if class_names and k < len(class_names) else f"class {k + 2}"
        table += [dict(r, cls=name) for r in object_table(np.where(lab > 0, lab + offset, 0), p, um_per_px)]
    return labels, table
