"""One measurement run for the CLI, the batch and the dock: find the labels (and the image) of
a slide, a label image, a label store, a saved review session or a batch output folder, measure
every object and write the CSVs (atomically, streamed row by row)."""

from __future__ import annotations

import contextlib
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ftu.atomic import atomic_path
from napari_ftu.errors import InputError
from napari_ftu.measure.objects import MORPHOLOGY, ImageSource, Measurement, ObjectInfo, measure_objects
from napari_ftu.measure.summary import SUMMARY_COLUMNS, summarize, tissue_area_mm2

SESSION_SUFFIX = ".session.npz"


@dataclass
class Item:
    """One slide to measure: its labels (lazy), its image (optional) and what the review knows."""

    name: str
    labels: object
    how: Measurement
    slide: object = None  # napari_ftu.io.slides.Slide of the image, for stain and tissue area
    closers: list = field(default_factory=list)

    def close(self):
        for close in self.closers:
            with contextlib.suppress(Exception):
                close()


def info_from_review(review) -> dict:
    """Object id -> :class:`ObjectInfo` from a review table (:class:`napari_ftu.review.table.Review`)."""
    return {i: ObjectInfo(r.cls, r.status, r.confidence) for i, r in review.rows.items()}


def info_from_features(features, default_class: str = "FTU") -> dict:
    """Object id -> :class:`ObjectInfo` from a napari layer's features (``index``, ``class``, ``confidence``)."""
    from napari_ftu.formats.annotations import features_by_id

    return {i: ObjectInfo(", ".join(c) if c else default_class, "unreviewed",
                          math.nan if s is None else float(s)) for i, (c, s) in features_by_id(features).items()}


def _open_image(path, um_per_px=None):
    from napari_ftu.io.slides import open_slide

    return open_slide(path, um_per_px)


def _session_files(slide_path: Path) -> list[Path]:
    folder = slide_path.with_name(slide_path.name + ".ftu")
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(SESSION_SUFFIX) and "@" not in p.name)


def _from_session(path: Path, um_per_px):
    from napari_ftu.review.autosave import SessionStore

    saved = SessionStore(path.parent, path.name[: -len(SESSION_SUFFIX)]).load()
    if saved is None:
        raise InputError(f"{path}: no saved review session")
    um = um_per_px or saved.review.um_per_px
    return saved.labels, info_from_review(saved.review), um


def open_items(path, image=None, labels=None, um_per_px: float | None = None, stain: str = "auto"):
    """The slides a path holds, one :class:`Item` at a time (close each after use).

    Parameters
    ----------
    path : str or Path
        A slide (its review session ``<slide>.ftu/*.session.npz`` gives labels and statuses), a
        label image, a label store (zarr folder), a ``.session.npz`` file, or a batch output folder.
    image : str or Path, optional
        The image of a label image or store (stain columns and tissue area).
    labels : str or Path, optional
        The labels of the slide ``path`` (instead of its review session).
    um_per_px : float, optional
        Overrides the files' pixel size.
    stain : str
        See :class:`~napari_ftu.measure.objects.Measurement`.

    Yields
    ------
    Item

    Raises
    ------
    InputError
        A path that holds no labels, naming it and what was expected.
    """
    from napari_ftu.formats.datasets.batch_output import DONE

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir() and not _is_label_store(path):
        markers = sorted(path.glob(f"*/{DONE}"))
        if not markers:
            raise InputError(f"{path}: neither a label store nor a batch output folder (no */{DONE})")
        for marker in markers:
            yield _batch_item(marker, um_per_px, stain)
        return
    if labels is not None:
        yield _item(path.stem, Path(labels), path, um_per_px, stain)
    elif path.name.endswith(SESSION_SUFFIX):
        arr, info, um = _from_session(path, um_per_px)
        slide = _open_image(image, um_per_px) if image else None
        yield Item(path.name[: -len(SESSION_SUFFIX)], arr, Measurement(um or (slide and slide.um_per_px), info,
                   stain=stain), slide, [slide.close] if slide else [])
    else:
        yield _item(path.stem, path, Path(image) if image else None, um_per_px, stain)


def _is_label_store(path: Path) -> bool:
    return path.is_dir() and ((path / "0" / "zarr.json").exists() or (path / "0" / ".zarray").exists())


def _item(name: str, labels_path: Path, image_path: Path | None, um_per_px, stain) -> Item:
    """Labels from a label image or store; a slide given as labels uses its review session."""
    closers, info = [], {}
    if _is_label_store(labels_path):
        from napari_ftu.review.label_store import LabelStore

        arr, um = LabelStore.open(labels_path, "r").levels[0], None
    else:
        lab = _open_image(labels_path)
        closers.append(lab.close)
        if lab.kind != "gray" or lab.levels[0].dtype.kind not in "iu":
            sessions = _session_files(labels_path)
            lab.close()
            if not sessions:
                raise InputError(f"{labels_path}: a {lab.kind} image, not labels, and no saved review session "
                                 f"beside it ({labels_path.name}.ftu/); give its labels with --labels")
            if image_path is None:
                image_path = labels_path
            arr, info, um = _from_session(sessions[0], um_per_px)
            closers = []
        else:
            arr, um = _components_if_binary(lab.levels[0]), lab.um_per_px
    slide = None
    if image_path is not None:
        slide = _open_image(image_path, None)
        closers.append(slide.close)
        if um is None and slide.um_per_px:
            um = slide.um_per_px * slide.size[0] / arr.shape[0]
    um = um_per_px or um
    return Item(labels_path.stem if not name else name, arr, Measurement(um, info, stain=stain), slide, closers)


BINARY_CHECK_PX = 2**26  # label images up to this size are checked for being a binary mask


def _components_if_binary(labels):
    """A binary mask (one value besides 0) becomes one object per connected component, as
    ``napari-ftu evaluate`` reads it; instance labels, and images too large to hold, stay lazy."""
    if int(np.prod(labels.shape[:2])) > BINARY_CHECK_PX:
        return labels
    from napari_ftu.formats.annotations import instances_of

    array = np.asarray(labels)
    return instances_of(array) if np.unique(array).size <= 2 else array


def _batch_item(marker: Path, um_per_px, stain) -> Item:
    folder = marker.parent
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        row = record["row"]
        if not isinstance(row, dict):
            raise TypeError("its row is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{marker}: not a batch marker ({exc})") from exc
    labels = folder / f"{folder.name}_labels.ome.tif"
    if not labels.exists():
        raise InputError(f"{folder}: no {labels.name} (run the batch with --formats labels to measure it)")
    source = Path(str(record.get("source") or row.get("source") or ""))
    um = um_per_px or row.get("labels_um_per_px")
    return _item(folder.name, labels, source if source.is_file() else None, um, stain)


def measure_item(item: Item, with_image: bool = True):
    """The measurement rows of one item, streamed (stain columns when it has an image)."""
    image = ImageSource(item.slide, item.labels.shape[:2]) if item.slide is not None and with_image else None
    for row in measure_objects(item.labels, image, item.how):
        yield row


def tissue_of(item: Item) -> float | None:
    """Tissue area of the item's image in mm² (None without an image); an unknown pixel size is
    the labels' assumed one (see :attr:`Measurement.assumed`)."""
    if item.slide is None:
        return None
    um = item.slide.um_per_px or item.how.scale * item.labels.shape[0] / item.slide.size[0]
    return tissue_area_mm2(item.slide, um)


def measure_to_csv(path, out, summary_out=None, image=None, labels=None, um_per_px=None, stain="auto",
                   progress=None) -> dict:
    """Measure every slide of ``path`` into ``out`` (one row per object, column ``slide`` first)
    and, with ``summary_out``, one summary row per slide. Both written atomically.

    Parameters
    ----------
    path, image, labels, um_per_px, stain
        As :func:`open_items`.
    out : str or Path
        The measurements CSV.
    summary_out : str or Path, optional
        The summary CSV.
    progress : callable, optional
        Called with each slide's summary row.

    Returns
    -------
    dict
        ``{"slides": [summary rows], "objects": n, "notes": [...]}``.
    """
    summaries, notes, n = [], [], 0
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = None
        for item in open_items(path, image, labels, um_per_px, stain):
            try:
                rows = []
                for row in measure_item(item):
                    row = {"slide": item.name, **row}
                    if writer is None:
                        writer = csv.DictWriter(fh, list(row), lineterminator="\n", extrasaction="ignore")
                        writer.writeheader()
                    writer.writerow({k: _cell(v) for k, v in row.items()})
                    rows.append({k: row[k] for k in ("class", "status", "border", "area_um2",
                                                     "equivalent_diameter_um")})
                    n += 1
                if item.how.assumed:
                    notes.append(f"{item.name}: {item.how.assumed}")
                summary = {"slide": item.name, **summarize(rows, tissue_of(item), item.how.assumed)}
            finally:
                item.close()
            summaries.append(summary)
            if progress:
                progress(summary)
        if writer is None:
            csv.DictWriter(fh, ["slide", *MORPHOLOGY], lineterminator="\n").writeheader()
    if summary_out is not None:
        with atomic_path(summary_out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, ["slide", *SUMMARY_COLUMNS], lineterminator="\n")
            writer.writeheader()
            for s in summaries:
                writer.writerow({k: _cell(v) for k, v in s.items()})
    return {"slides": summaries, "objects": n, "notes": notes}


def _cell(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return round(v, 6)
    return v


GEOJSON_SKIP = ("id", "class", "status", "confidence", "stain_matrix")


def geojson_measurements(rows) -> dict:
    """Object id -> its numeric measurements under the CSV's column names, for the GeoJSON
    writer's ``measurements`` (``Annotations.meta["measurements"]``), which QuPath lists."""
    return {int(r["id"]): {k: (float(v) if isinstance(v, float) else int(v)) for k, v in r.items()
                           if k not in GEOJSON_SKIP and isinstance(v, (int, float)) and v == v}
            for r in rows}


def summary_of_labels(labels, um_per_px: float | None, scores: dict | None = None, slide_path=None,
                      default_class: str = "FTU", rows_out: list | None = None) -> dict:
    """The per-slide summary of a label image (the batch's summary row): objects measured one at
    a time, tissue area from the slide's overview when ``slide_path`` opens.

    Parameters
    ----------
    labels : array-like
        2-D labels (lazy arrays are read block by block).
    um_per_px : float, optional
        Of the labels.
    scores : dict, optional
        Object id -> confidence.
    slide_path : str or Path, optional
        The slide the labels belong to.
    default_class : str
    rows_out : list, optional
        Receives every object's measurement row (for the GeoJSON's measurements).

    Returns
    -------
    dict
        The keys of :data:`~napari_ftu.measure.summary.SUMMARY_COLUMNS`.
    """
    info = {int(i): ObjectInfo(default_class, "unreviewed", math.nan if c is None else float(c))
            for i, c in (scores or {}).items()}
    how = Measurement(um_per_px, info, ObjectInfo(default_class))
    rows = []
    for r in measure_objects(labels, None, how):
        if rows_out is not None:
            rows_out.append(r)
        rows.append({k: r[k] for k in ("class", "status", "border", "area_um2", "equivalent_diameter_um")})
    tissue = None
    if slide_path is not None and um_per_px:
        slide = None
        try:
            slide = _open_image(slide_path)
            tissue = tissue_area_mm2(slide, um_per_px * labels.shape[0] / slide.size[0])
        except InputError:
            tissue = None
        finally:
            if slide is not None:
                slide.close()
    return summarize(rows, tissue, how.assumed)


def as_features(rows) -> dict:
    """Measurement rows as a napari Labels layer's ``features`` columns: ``index``, ``class``,
    ``confidence`` (the convention of :func:`~napari_ftu.formats.annotations.layer_features`)
    followed by every measurement, so napari's features table shows them.

    Parameters
    ----------
    rows : list of dict

    Returns
    -------
    dict
        Column name -> list.
    """
    from napari_ftu.formats.annotations import layer_features

    rows = list(rows)
    columns = layer_features([r["id"] for r in rows], [r["class"] for r in rows],
                             [r["confidence"] for r in rows])
    for key in (rows[0] if rows else {}):
        if key not in ("id", "class", "confidence"):
            columns[key] = [r.get(key) for r in rows]
    return columns


def feature_measurements(features) -> dict:
    """Object id -> numeric measurement columns of a layer's features (those :func:`as_features`
    wrote), for the GeoJSON writer; {} when the features hold none.

    Parameters
    ----------
    features : DataFrame or dict, optional

    Returns
    -------
    dict
    """
    if features is None or len(features) == 0 or "index" not in features or "area_um2" not in features:
        return {}
    ids = [int(i) for i in features["index"]]
    rows = [{"id": i} for i in ids]
    for key in features:
        if key in ("index", "class", "confidence") or key in GEOJSON_SKIP:
            continue
        for row, v in zip(rows, list(features[key])):
            row[key] = v.item() if hasattr(v, "item") else v
    return geojson_measurements(rows)
