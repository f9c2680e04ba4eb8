"""The ``napari-ftu annotate`` work: scribbles or clicks in, instance labels out (the same core
functions the Annotate dock calls)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from napari_ftu.annotate.pixels import AnnotateError

MAX_CLICKS = 100_000


def read_clicks(path: str | Path) -> list[tuple[float, float]]:
    """(y, x) rows of a CSV with columns ``y,x`` (full-resolution pixels, one object per row)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"y", "x"} <= {f.strip().lower() for f in reader.fieldnames}:
                raise AnnotateError(f"{path}: needs columns y,x (got {reader.fieldnames})")
            rows = []
            for n, row in enumerate(reader, start=2):
                row = {k.strip().lower(): v for k, v in row.items() if k}
                try:
                    rows.append((float(row["y"]), float(row["x"])))
                except (TypeError, ValueError):
                    raise AnnotateError(f"{path}: line {n}: y,x must be numbers, got {row.get('y')!r},{row.get('x')!r}") from None
                if len(rows) > MAX_CLICKS:
                    raise AnnotateError(f"{path}: more than {MAX_CLICKS} clicks")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotateError(f"{path}: cannot read clicks ({exc})") from None
    if not rows:
        raise AnnotateError(f"{path}: no clicks (one y,x row per object)")
    if not all(np.isfinite(v) for r in rows for v in r):
        raise AnnotateError(f"{path}: y,x must be finite numbers")
    return rows


def labels_from_scribbles(image: np.ndarray, scribbles: np.ndarray, um_per_px: float = 1.0,
                          min_object_um2: float = 0.0, source: str = "scribbles"):
    """Train on the scribbles, predict the image, return (labels, objects table, classifier)."""
    from napari_ftu.annotate import pixels
    from napari_ftu.annotate.objects import objects_from_probability

    clf = pixels.train(image, scribbles, um_per_px, source=source)
    labels, table = objects_from_probability(clf.probability(image), 0.5, int(min_object_um2 / um_per_px**2),
                                             um_per_px=um_per_px, class_names=clf.classes)
    return labels, table, clf


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
