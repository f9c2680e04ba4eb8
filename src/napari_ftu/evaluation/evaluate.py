"""Evaluate predictions against ground truth image by image: per-image rows, summaries per
class and per organ, CSV/JSON reports. Serves ``napari-ftu evaluate`` and the Debug dock."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ftu.atomic import write_text
from napari_ftu.errors import FormatError, InputError
from napari_ftu.evaluation.metrics import (
    Matching,
    Overlap,
    aggregated_jaccard,
    average_precision,
    match,
    overlap_table,
    panoptic,
)
from napari_ftu.formats.annotations import Annotations, image_key, instances_of
from napari_ftu.formats.export import LABEL_IMAGE_SUFFIXES, format_of, import_annotations

COLUMNS = ["image", "group", "class", "images", "n_pred", "n_truth", "dice", "iou", "tp", "fp", "fn",
           "precision", "recall", "f1", "ap", "pq", "sq", "rq", "aji"]


@dataclass
class ClassResult:
    table: Overlap
    counts: Matching  # at the F1 IoU threshold
    ranked: Matching  # at the AP IoU threshold, with confidences

    def row(self, image: str = "", group: str = "", name: str = "all") -> dict:
        return _row(image, group, name, 1, [self.table], [self.counts], [self.ranked])


@dataclass
class ImageResult:
    image_id: str
    group: str = ""
    classes: dict = field(default_factory=dict)  # "all" and each truth class -> ClassResult

    def rows(self) -> list[dict]:
        return [r.row(self.image_id, self.group, name) for name, r in self.classes.items()]


def _row(image, group, cls, n_images, tables, counts, ranked) -> dict:
    tp, fp, fn = (sum(getattr(m, k) for m in counts) for k in ("tp", "fp", "fn"))
    ap = average_precision(ranked)
    return {"image": image, "group": group, "class": cls, "images": n_images,
            "n_pred": sum(len(t.pred_ids) for t in tables), "n_truth": sum(len(t.truth_ids) for t in tables),
            "dice": float(np.mean([t.dice() for t in tables])), "iou": float(np.mean([t.iou() for t in tables])),
            "tp": tp, "fp": fp, "fn": fn, "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "ap": None if math.isnan(ap) else ap,
            **_instance_scores(tables)}


def _instance_scores(tables) -> dict:
    """PQ, SQ, RQ (matches at IoU > 0.5) and AJI: per image, and their means over images (as Dice)."""
    pan = [panoptic(t) for t in tables]
    return {"pq": float(np.mean([p.pq for p in pan])), "sq": float(np.mean([p.sq for p in pan])),
            "rq": float(np.mean([p.rq for p in pan])), "aji": float(np.mean([aggregated_jaccard(t) for t in tables]))}


def _ratio(a, b) -> float:
    return 1.0 if b == 0 else a / b


def evaluate_image(pred: Annotations, truth: Annotations, iou_threshold: float = 0.5, ap_iou: float = 0.6,
                   group: str = "") -> ImageResult:
    """Pixel and object metrics of one image, class-agnostic ("all") and per truth class when
    the prediction names classes too. Confidences come from ``pred.scores`` (default 1)."""
    if pred.shape != truth.shape:
        raise InputError(f"{truth.image_id}: prediction is {pred.shape[0]} x {pred.shape[1]}, "
                          f"ground truth {truth.shape[0]} x {truth.shape[1]}")
    table = overlap_table(pred.labels, truth.labels)
    scores = np.array([pred.score(i) for i in table.pred_ids], dtype=float)
    result = ImageResult(truth.image_id, group or str(truth.meta.get("organ", "")))
    result.classes["all"] = _class_result(table, scores, iou_threshold, ap_iou)
    if pred.classes:
        pred_cls = [set(pred.class_names(i)) for i in table.pred_ids]
        truth_cls = [set(truth.class_names(i)) for i in table.truth_ids]
        for name in sorted({n for s in truth_cls for n in s}, key=str):
            keep_p = np.array([name in s for s in pred_cls], bool)
            keep_t = np.array([name in s for s in truth_cls], bool)
            result.classes[str(name)] = _class_result(table.subset(keep_p, keep_t), scores[keep_p],
                                                      iou_threshold, ap_iou)
    return result


def _class_result(table, scores, iou_threshold, ap_iou) -> ClassResult:
    # Counting matches by IoU order, AP in COCO's confidence order.
    return ClassResult(table, match(table, iou_threshold), match(table, ap_iou, scores))


def summarize(results: list[ImageResult]) -> list[dict]:
    """Summary rows: over all images, then per group (organ) when there are several, for
    ``all`` and each class. Dice/IoU are means of the per-image values (the competition's
    score); TP/FP/FN are summed; AP ranks the detections of all images together (COCO)."""
    out = []
    groups = sorted({r.group for r in results if r.group})
    for group in ["all"] + (groups if len(groups) > 1 else []):
        chosen = [r for r in results if group == "all" or r.group == group]
        names = list(dict.fromkeys(n for r in chosen for n in r.classes))
        for name in names:
            parts = [r.classes[name] for r in chosen if name in r.classes]
            out.append(_row("(summary)", group, name, len(parts), [p.table for p in parts],
                            [p.counts for p in parts], [p.ranked for p in parts]))
    return out


# --- reports -----------------------------------------------------------------------------------


def report_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else round(v, 6) if isinstance(v, float) else v)
                         for k, v in row.items()})
    return buf.getvalue()


def write_report(path, image_rows: list[dict], summary_rows: list[dict]) -> Path:
    """CSV (image rows, then summary rows) or JSON (``{"images": ..., "summary": ...}``) by suffix, atomically."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return write_text(path, json.dumps({"images": image_rows, "summary": summary_rows}, indent=1))
    return write_text(path, report_csv(image_rows + summary_rows))


# --- reading predictions and truth ---------------------------------------------------------------

SEMANTIC_FORMATS = ("hubmap", "hubmap-train")  # one mask per image: objects are its components


def needs_shape(path: Path, fmt: str | None) -> bool:
    return (fmt or format_of(path)) in ("geojson", "hubmap")


def load_annotations(path, fmt: str | None = None, shapes: dict | None = None) -> list[Annotations]:
    """Annotations from a label image, a folder of label images, a dataset folder or an
    annotation file in any format we read. ``shapes`` (id -> (h, w)) sizes GeoJSON and RLE."""

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _load_folder(path)
    fmt = fmt or format_of(path)
    if fmt in (None, "ome-tiff"):
        return [_load_label_image(path)]
    shape = None
    if fmt in ("geojson", "hubmap"):
        if not shapes:
            raise FormatError(f"{path}: {fmt} needs the image size; give the other side as images or a sized format")
        shape = shapes if fmt == "hubmap" else next(iter(shapes.values()))
    return list(load_lazily(path, fmt, shape))


def load_lazily(path, fmt: str | None = None, shape=None):
    """The images of an annotation file one at a time (semantic masks split into their objects)."""
    fmt = fmt or format_of(path)
    for a in import_annotations(path, fmt, shape):
        if fmt in SEMANTIC_FORMATS:
            a.labels = instances_of(a.labels)
        yield a
        del a


def _load_label_image(path: Path) -> Annotations:
    from napari_ftu.formats.annotations import safe_id
    from napari_ftu.io.images import read_image

    loaded = read_image(path)
    return Annotations(safe_id(loaded.name), instances_of(loaded.data), um_per_px=loaded.um_per_px)


def _load_folder(path: Path) -> list[Annotations]:
    return [a for a in (load() for load in _folder_loaders(path).values()) if a is not None]


def evaluate_paths(pred, truth, pred_format=None, truth_format=None, iou_threshold=0.5, ap_iou=0.6):
    """Read both sides, pair images by :func:`image_key` (or the single image of each), evaluate.
    Returns ``(per-image rows, summary rows, ids without a prediction)``; a missing prediction
    counts as an empty one, as in the competitions. Images are read a pair at a time (a folder or
    dataset side by id, a file side in its order), so memory holds one image of each side; only
    when both sides are files, or a side needs the other's sizes, is the prediction side kept whole."""
    pred, truth = Path(pred), Path(truth)
    if needs_shape(truth, truth_format) or needs_shape(pred, pred_format):
        if needs_shape(truth, truth_format) and not needs_shape(pred, pred_format):
            preds = load_annotations(pred, pred_format)
            truths = load_annotations(truth, truth_format, _shapes(preds))
        else:
            truths = load_annotations(truth, truth_format)
            preds = load_annotations(pred, pred_format, _shapes(truths))
        if not truths:
            raise InputError(f"{truth}: no ground-truth images")
        pairs, missing = pair_by_id(truths, preds, pred)
        results = [evaluate_image(p, t, iou_threshold, ap_iou) for t, p in pairs]
    else:
        results, missing = [], []
        for t, p in _pairs(_Side(truth, truth_format), _Side(pred, pred_format), pred, missing):
            results.append(evaluate_image(p, t, iou_threshold, ap_iou))
            del t, p  # one pair in memory at a time
    image_rows = [row for r in results for row in r.rows()]
    return image_rows, summarize(results), missing


class _Side:
    """One side of an evaluation, read lazily: a folder (dataset layout or label images) or a
    label image by id (``keys``, ``get``); an annotation file image by image (``stream``)."""

    def __init__(self, path: Path, fmt: str | None):
        self.path, self.loaders, self.stream = path, None, None
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_dir():
            self.loaders = _folder_loaders(path)
        elif (fmt or format_of(path)) in (None, "ome-tiff"):
            self.loaders = {image_key(_label_image_id(path)): lambda: _load_label_image(path)}
        else:
            self.stream = load_lazily(path, fmt)

    def get(self, key: str) -> Annotations | None:
        """The image of ``key``, or None when this side has none (or no annotations for it)."""
        return self.loaders[key]() if key in self.loaders else None

    def items(self):
        """``(key, Annotations)`` in the side's order, one at a time."""
        if self.loaders is not None:
            for key, load in self.loaders.items():
                a = load()
                if a is not None:  # a dataset image without annotations
                    yield key, a
                del a
        else:
            for a in self.stream:
                yield image_key(a.image_id), a


def _pairs(truth: _Side, pred: _Side, where, missing: list):
    """``(truth, prediction)`` one pair at a time, in the truth's order when it is addressable;
    truth ids without a prediction are added to ``missing`` and paired with an empty one."""
    if pred.loaders is None and (truth.loaders is None or len(truth.loaders) == 1):  # the predictions are kept
        kept, loaders = {}, {}
        for key, a in pred.items():
            _no_duplicate(kept, key, a.image_id, where)
            kept[key], loaders[key] = a.image_id, (lambda a: lambda: a)(a)
        pred.loaders = loaders
    if pred.loaders is not None and len(pred.loaders) == 1:
        single = next(iter(pred.loaders.values()))
        if truth.loaders is not None and len(truth.loaders) == 1:  # one image each: paired whatever the ids
            pred.loaders = {next(iter(truth.loaders)): single}
    n_truth, found, first_pred = 0, 0, None
    if pred.loaders is not None:  # the truth drives, predictions read by id
        for key, t in truth.items():
            n_truth += 1
            p = pred.get(key)
            if p is None:
                missing.append(t.image_id)
                p = Annotations(t.image_id, np.zeros(t.shape, np.int32))
            else:
                found += 1
            yield t, p
            del t, p
        first_pred = next(iter(pred.loaders), None)
    else:  # the predictions (a file) drive, the truth (a folder) read by id
        seen = {}
        for key, p in pred.items():
            _no_duplicate(seen, key, p.image_id, where)
            seen[key] = p.image_id
            first_pred = first_pred or p.image_id
            t = truth.get(key)
            if t is not None:
                found += 1
                yield t, p
            del t, p
        for key in truth.loaders:
            n_truth += 1
            if key not in seen:
                t = truth.get(key)
                missing.append(t.image_id)
                yield t, Annotations(t.image_id, np.zeros(t.shape, np.int32))
                del t
    if n_truth == 0:
        raise InputError(f"{truth.path}: no ground-truth images")
    if found == 0 and first_pred is not None:
        raise InputError(f"{where}: no prediction matches a ground-truth id (e.g. {first_pred!r} vs "
                         f"{missing[0]!r})")


def _no_duplicate(seen: dict, key: str, image_id: str, where):
    """``seen`` maps image keys to the ids already read: two images of one side may not share a key."""
    if key in seen:
        raise InputError(f"{where}: images {seen[key]!r} and {image_id!r} both pair with image id {key!r}")


def _folder_loaders(path: Path) -> dict:
    """image key -> loader of a folder: a dataset layout's images with annotations, or its label images."""
    from napari_ftu.formats.datasets import open_dataset

    files = sorted(p for p in path.iterdir() if p.name.lower().endswith(LABEL_IMAGE_SUFFIXES))
    try:
        ds = open_dataset(path)
    except (InputError, FormatError):
        if not files:
            raise FormatError(f"{path}: neither a dataset layout nor a folder of label images") from None
        pairs = [(image_key(_label_image_id(p)), (lambda p: lambda: _load_label_image(p))(p)) for p in files]
    else:
        files = None
        pairs = [(image_key(i), (lambda k: lambda: ds.load(k).annotations)(k)) for k, i in enumerate(ds.ids)]
    seen, out = {}, {}
    for (key, load), name in zip(pairs, ds.ids if files is None else [p.name for p in files]):
        _no_duplicate(seen, key, name, path)
        seen[key], out[key] = name, load
    return out


def _label_image_id(path: Path) -> str:
    from napari_ftu.formats.annotations import safe_id
    from napari_ftu.io.images import file_stem

    return safe_id(file_stem(path))


def _shapes(items) -> dict:
    """id -> (h, w) for sizing RLE/GeoJSON files, under each id and its :func:`image_key`."""
    return {**{image_key(a.image_id): a.shape for a in items}, **{a.image_id: a.shape for a in items}}


def pair_by_id(truths: list[Annotations], preds: list[Annotations], where="prediction") -> tuple[list, list]:
    """``([(truth, prediction), ...], ids without a prediction)``: pairs by :func:`image_key`, or the
    single image of each side; a missing prediction is an empty one, as in the competitions."""
    if not truths:
        raise InputError("no ground-truth images")
    by_id = {}
    for a in preds:
        key = image_key(a.image_id)
        if key in by_id:
            raise InputError(f"{where}: predictions {by_id[key].image_id!r} and {a.image_id!r} pair with the same "
                             f"image {key!r}")
        by_id[key] = a
    if len(truths) == 1 and len(preds) == 1:
        by_id = {image_key(truths[0].image_id): preds[0]}
    pairs, missing = [], []
    for t in truths:
        p = by_id.get(image_key(t.image_id))
        if p is None:
            missing.append(t.image_id)
            p = Annotations(t.image_id, np.zeros(t.shape, np.int32))
        pairs.append((t, p))
    if len(missing) == len(truths) and preds:
        raise InputError(f"{where}: no prediction matches a ground-truth id (e.g. {preds[0].image_id!r} vs "
                         f"{truths[0].image_id!r})")
    return pairs, missing


# --- error views (for the Debug dock) ----------------------------------------------------------

TP, FP, FN = 1, 2, 3  # values of the error map


def error_map(pred: np.ndarray, truth: np.ndarray, matching: Matching | None = None) -> np.ndarray:
    """uint8 map of TP / FP / FN: per pixel without ``matching``; per object with it
    (matched predictions TP, unmatched predictions FP, unmatched truths FN, drawn on top)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    out = np.zeros(pred.shape, np.uint8)
    if matching is None:
        p, t = pred != 0, truth != 0
        out[p & t], out[p & ~t], out[t & ~p] = TP, FP, FN
        return out
    p = pred != 0
    out[p] = np.where(matching.pred_tp[np.searchsorted(matching.pred_ids, pred[p])], TP, FP)
    t = truth != 0
    missed = np.zeros(truth.shape, bool)
    missed[t] = ~matching.truth_tp[np.searchsorted(matching.truth_ids, truth[t])]
    out[missed] = FN
    return out


def centroids(labels: np.ndarray, ids) -> np.ndarray:
    """(n, 2) row/column centroids of the given ids (NaN for absent ones)."""
    from scipy import ndimage as ndi

    ids = np.asarray(ids)
    if ids.size == 0:
        return np.zeros((0, 2))
    return np.asarray(ndi.center_of_mass(np.ones(labels.shape, np.uint8), labels, ids), float).reshape(-1, 2)


def object_rows(pred: np.ndarray, truth: np.ndarray, table: Overlap, matching: Matching) -> list[dict]:
    """One row per FN, FP and TP object (``matching`` made from ``table``): kind, id, best IoU
    with any object of the other side, area, centroid (pixels)."""
    ious = table.pair_iou()
    best_p = np.zeros(len(table.pred_ids))
    best_t = np.zeros(len(table.truth_ids))
    np.maximum.at(best_p, table.pair_pred, ious)
    np.maximum.at(best_t, table.pair_truth, ious)
    rows = []
    for kind, labels, ids, areas, best, keep in (
            ("FN", truth, table.truth_ids, table.truth_areas, best_t, ~matching.truth_tp),
            ("FP", pred, table.pred_ids, table.pred_areas, best_p, ~matching.pred_tp),
            ("TP", pred, table.pred_ids, table.pred_areas, best_p, matching.pred_tp)):
        chosen = np.flatnonzero(keep)
        for k, (cy, cx) in zip(chosen, centroids(labels, ids[chosen])):
            rows.append({"kind": kind, "id": int(ids[k]), "iou": float(best[k]), "area_px": int(areas[k]),
                         "centroid_y": float(cy), "centroid_x": float(cx)})
    return rows
