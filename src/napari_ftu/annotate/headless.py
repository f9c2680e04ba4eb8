"""The ``napari-ftu annotate`` work: scribbles or clicks in, instance labels out (the same core
functions the Annotate dock calls)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_ftu.errors import InputError

MAX_CLICKS = 100_000


@dataclass(frozen=True)
class ScribbleOptions:
    """Options of the scribble pipeline that ``napari-ftu annotate`` and the Annotate dock share
    (see :func:`scribble_steps`); :data:`SCRIBBLE_DEFAULTS` holds the ones both start from."""

    encoder_features: bool = False
    shape: str = ""  # one of objects.SHAPES
    min_object_fraction: float = 0.0  # objects under this share of the expected FTU's disc are dropped

    def min_object_um2(self, diameter_um: float | None = None) -> float:
        """The smallest object kept, in µm², for FTUs of ``diameter_um`` (default: a glomerulus)."""
        from napari_ftu.annotate.clicks import DIAMETER_UM

        return float(self.min_object_fraction * np.pi * ((diameter_um or DIAMETER_UM) / 2) ** 2)


# the best mean Dice over simulated careful and quick users (bench/annotate.py --only settings;
# the share is objects.MIN_FRACTION, not imported so that the command line starts without scipy)
SCRIBBLE_DEFAULTS = ScribbleOptions(encoder_features=True, shape="outline", min_object_fraction=1 / 8)


def read_clicks(path: str | Path) -> list[tuple[float, float]]:
    """(y, x) rows of a CSV with columns ``y,x`` (full-resolution pixels, one object per row)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"y", "x"} <= {f.strip().lower() for f in reader.fieldnames}:
                raise InputError(f"{path}: needs columns y,x (got {reader.fieldnames})")
            rows = []
            for n, row in enumerate(reader, start=2):
                row = {k.strip().lower(): v for k, v in row.items() if k}
                try:
                    rows.append((float(row["y"]), float(row["x"])))
                except (TypeError, ValueError):
                    raise InputError(f"{path}: line {n}: y,x must be numbers, "
                                     f"got {row.get('y')!r},{row.get('x')!r}") from None
                if len(rows) > MAX_CLICKS:
                    raise InputError(f"{path}: more than {MAX_CLICKS} clicks")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read clicks ({exc})") from None
    if not rows:
        raise InputError(f"{path}: no clicks (one y,x row per object)")
    if not all(np.isfinite(v) for r in rows for v in r):
        raise InputError(f"{path}: y,x must be finite numbers")
    return rows


def labels_from_scribbles(image: np.ndarray, scribbles: np.ndarray, um_per_px: float = 1.0,
                          min_object_um2: float | None = None, source: str = "scribbles",
                          classes: list | None = None,
                          encoder_features: bool = SCRIBBLE_DEFAULTS.encoder_features,
                          shape: str = SCRIBBLE_DEFAULTS.shape, diameter_um: float | None = None):
    """Train on the scribbles, predict the image, return (labels, objects table, classifier);
    ``classes`` names the scribble values 2, 3, ... (:func:`scribble_steps` drained)."""
    from napari_ftu.steps import drain

    return drain(scribble_steps(image, scribbles, um_per_px, classes, min_object_um2, source, encoder_features,
                                shape, diameter_um))


def labels_from_clicks(image: np.ndarray, points, um_per_px: float = 1.0, diameter_um: float | None = None,
                       source: str = "clicks") -> np.ndarray:
    """One object per click (later clicks do not overwrite earlier objects)."""
    from napari_ftu.annotate import clicks

    labels = np.zeros(np.shape(image)[:2], np.int32)
    for n, point in enumerate(points, start=1):
        mask = clicks.object_at(image, point, um_per_px, diameter_um or clicks.DIAMETER_UM,
                                source=f"{source}: row {n}")
        labels[mask & (labels == 0)] = n
    return labels


def scribble_steps(image: np.ndarray, scribbles: np.ndarray, um_per_px: float = 1.0, classes: list | None = None,
                   min_object_um2: float | None = None, source: str = "scribbles",
                   encoder_features: bool = SCRIBBLE_DEFAULTS.encoder_features, shape: str = SCRIBBLE_DEFAULTS.shape,
                   diameter_um: float | None = None):
    """Scribbles -> objects as a generator for the dock's worker: yields ``("step", i, 3)`` and
    returns ``(labels, table, classifier)``; scribbles are checked before any work.

    ``encoder_features`` adds the pretrained EfficientNet-Lite0 stages to the filter bank (context
    that tells a glomerulus from a tubule; slower, RGB only). ``shape`` reshapes the objects, whose
    pale rim the strokes do not reach: ``convex`` hulls, or ``outline``: grown to the edge that
    encloses them (Bowman's capsule), searched within FTUs of ``diameter_um``. Objects under
    ``min_object_um2`` are dropped (None: :data:`SCRIBBLE_DEFAULTS`' share of an FTU's disc)."""
    from napari_ftu.annotate import clicks, pixels
    from napari_ftu.annotate.objects import objects_from_probability, reshaper
    from napari_ftu.models.features import DEEP_STAGES

    pixels.check_scribbles(np.shape(image), scribbles, source)
    if min_object_um2 is None:
        min_object_um2 = SCRIBBLE_DEFAULTS.min_object_um2(diameter_um)
    yield ("step", 0, 3)
    clf = pixels.train(image, scribbles, um_per_px, classes=classes, source=source,
                       deep=DEEP_STAGES if encoder_features else 0)
    yield ("step", 1, 3)
    prob = clf.probability(image)
    yield ("step", 2, 3)
    reshape = reshaper(shape, image, (diameter_um or clicks.DIAMETER_UM) / um_per_px / 2)
    labels, table = objects_from_probability(prob, 0.5, int(min_object_um2 / um_per_px**2), um_per_px=um_per_px,
                                             class_names=clf.classes, reshape=reshape)
    yield ("step", 3, 3)
    return labels, table, clf


def click_edit(labels: np.ndarray, mask: np.ndarray, mode: str = "new", selected: int = 0):
    """The review :class:`~napari_ftu.review.editing.Edit` of a click: ``new`` paints the mask as a
    new object on free pixels, ``add`` grows object ``selected`` by it, ``remove`` takes it away."""
    from napari_ftu.review import editing

    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise InputError("the click outlined no pixels")
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    crop, m = labels[box].copy(), mask[box]
    if mode == "new":
        new_id = editing.next_free_id(labels)
        crop[m & (crop == 0)] = new_id
        return editing.Edit("click: new object", [editing.Patch(box, crop)], created=[new_id])
    if not selected:
        raise InputError("select an object first (Shift+click adds to it, Alt+click removes from it)")
    if mode == "add":
        crop[m & (crop == 0)] = selected
    else:
        crop[m & (crop == selected)] = 0
    return editing.Edit(f"click: {mode}", [editing.Patch(box, crop)])
