"""Competition CSV formats: HuBMAP RLE (submission and train.csv), HPA/OID instance CSV and the
vasculature submission. Each writer has the matching reader; all writes are atomic.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from napari_ftu.atomic import atomic_path
from napari_ftu.errors import FormatError
from napari_ftu.formats import rle
from napari_ftu.formats.annotations import Annotations, safe_id
from napari_ftu.formats.coco_rle import oid_decode, oid_encode
from napari_ftu.io.budget import check_memory

# Real RLE fields run to megabytes, far past the csv module's default 128 KiB limit.
csv.field_size_limit(2**31 - 1)

HUBMAP_TRAIN_COLUMNS = ["id", "organ", "data_source", "img_height", "img_width", "pixel_size",
                        "tissue_thickness", "rle", "age", "sex"]
HPA_COLUMNS = ["ImageID", "ImageWidth", "ImageHeight", "PredictionString"]
VASCULATURE_COLUMNS = ["id", "height", "width", "prediction_string"]


def _write_rows(path, columns, rows) -> Path:
    """Rows written as they come (``rows`` may be a generator building each from one image),
    into a temporary file that replaces ``path`` at the end."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(row)
    return Path(path)


def one_at_a_time(items):
    """``items`` (a list or a reader's generator) handed over so that the previous image is
    released before the next is built: a file of many images costs one image.

    Parameters
    ----------
    items : Annotations, list or iterator of Annotations

    Yields
    ------
    Annotations
    """
    if isinstance(items, Annotations):
        items = [items]
    it = iter(items)
    while (a := next(it, None)) is not None:
        yield a
        del a


def read_csv_rows(path, required) -> list[dict]:
    """Rows as dicts; a missing column, bad encoding or bad quoting is an FormatError naming the
    file. A UTF-8 byte-order mark (spreadsheets write one) is not part of the first column name.

    Parameters
    ----------
    path : str or Path
    required : iterable of str
        Column names that must be present.

    Returns
    -------
    list of dict

    Raises
    ------
    FormatError
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            missing = [c for c in required if c not in columns]
            if missing:
                raise FormatError(f"{path}: missing columns {missing} (has {columns})")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise FormatError(f"{path}: cannot read CSV ({type(exc).__name__}: {str(exc)[:200]})") from None


def _size(row, path, n, hkey, wkey) -> tuple[int, int]:
    """A row's image size, refused before any allocation when impossible or too large."""
    try:
        h, w = int(row[hkey]), int(row[wkey])
    except (TypeError, ValueError):
        raise FormatError(f"{path}, line {n}: image size {str(row.get(hkey))[:40]!r} x "
                          f"{str(row.get(wkey))[:40]!r} is not a number") from None
    if h <= 0 or w <= 0:
        raise FormatError(f"{path}, line {n}: image size must be positive, got {h} x {w}")
    try:
        return rle.check_size((h, w), 4, "image")
    except FormatError as exc:
        raise FormatError(f"{path}, line {n}: {exc}") from None


def _pixel_size(text, where: str) -> float | None:
    if text is None or not str(text).strip():
        return None
    try:
        um = float(text)
    except ValueError:
        um = float("nan")
    if not (np.isfinite(um) and um > 0):
        raise FormatError(f"{where}: pixel_size {str(text)[:40]!r} is not a positive number")
    return um


# --- HuBMAP ---------------------------------------------------------------------------------


def write_hubmap(path, items: list[Annotations], full: bool = False) -> Path:
    """``id,rle`` (submission) or, with ``full``, the competition's ``train.csv`` columns.

    Parameters
    ----------
    path : str or Path
        Written atomically.
    items : list of Annotations
    full : bool
        Also the metadata columns (organ, size, pixel size), so the file reads back alone.

    Returns
    -------
    Path
    """
    if not full:
        rows = ([a.image_id, rle.encode_bands(a.labels)] for a in one_at_a_time(items))
        return _write_rows(path, ["id", "rle"], rows)

    def rows():
        for a in one_at_a_time(items):
            meta = {"pixel_size": a.um_per_px or "", **a.meta}
            yield [a.image_id, meta.get("organ", ""), meta.get("data_source", ""), a.shape[0], a.shape[1],
                   meta.get("pixel_size", ""), meta.get("tissue_thickness", ""), rle.encode_bands(a.labels),
                   meta.get("age", ""), meta.get("sex", "")]

    return _write_rows(path, HUBMAP_TRAIN_COLUMNS, rows())


def read_hubmap(path, shapes=None, compact: bool = False) -> Iterator[Annotations]:
    """Masks (one object each, label 1) from ``id,rle`` or ``train.csv``, one row at a time; the
    sizes come from ``img_height``/``img_width`` columns, else from ``shapes``: one ``(height,
    width)`` for every row or a dict id -> ``(height, width)``. Every row's size is checked before
    the first mask is decoded; each row against the memory budget on its own, as the caller keeps
    one image at a time.

    Parameters
    ----------
    path : str or Path
        A submission (``id,rle``) or ``train.csv``.
    shapes : tuple or dict, optional
        Image sizes for files without size columns.
    compact : bool
        Labels as the uint8 decode (the one object is label 1) instead of an int32 copy, four
        times smaller: for converters that only write them on (``napari-ftu export``).

    Yields
    ------
    Annotations

    Raises
    ------
    FormatError
        A bad row, a missing size, or a row over the memory budget, naming file and line.
    """
    rows = read_csv_rows(path, ["id", "rle"])
    if shapes is not None and not isinstance(shapes, dict):
        shapes = {row["id"]: tuple(shapes) for row in rows}
    sized = []
    for n, row in enumerate(rows, start=2):
        image_id = row["id"]
        if "img_height" in row and "img_width" in row:
            shape = _size(row, path, n, "img_height", "img_width")
        elif shapes and image_id in shapes:
            try:
                shape = rle.check_size(shapes[image_id], 4, "image")
            except FormatError as exc:
                raise FormatError(f"{path}, line {n}: {exc}") from None
        else:
            raise FormatError(f"{path}, line {n}: no image size for id {image_id!r} (no img_height/img_width)")
        sized.append((n, row, shape))
    for n, row, shape in sized:
        # one row at a time: its int32 label image, its uint8 decode and its parsed runs
        check_memory(5 * shape[0] * shape[1] + RLE_COST_PER_CHAR * len(row["rle"] or ""), f"{path}, line {n}",
                     "reading its labels", FormatError)
        try:
            mask = rle.decode(row["rle"], shape)
        except FormatError as exc:
            raise FormatError(f"{path}, line {n}: {exc}") from None
        meta = {k: v for k, v in row.items() if k not in ("id", "rle", "img_height", "img_width") and k is not None}
        um = _pixel_size(meta.get("pixel_size"), f"{path}, line {n}")
        labels = mask if compact else mask.astype(np.int32)
        del mask
        yield Annotations(row["id"], labels, um_per_px=um, meta=meta, default_class=meta.get("organ") or "FTU")
        del labels  # not kept while the next row is read


RLE_COST_PER_CHAR = 24  # int64 starts, lengths, ends and run counts: at most one number per 2 characters


# --- HPA / Open Images instance CSV --------------------------------------------------------


def _prediction_string(a: Annotations, class_ids) -> str:
    parts = []
    for obj_id, box, sub in a.objects():
        full = np.zeros(a.shape, dtype=np.uint8)
        full[box] = sub
        encoded = oid_encode(full)
        for name in a.class_names(obj_id):
            parts += [str(class_ids(name)), f"{a.score(obj_id):.6g}", encoded]
    return " ".join(parts)


# The HPA single-cell competition's 19 labels; the CSV holds their index.
HPA_LABELS = ("nucleoplasm", "nuclear membrane", "nucleoli", "nucleoli fibrillar center", "nuclear speckles",
              "nuclear bodies", "endoplasmic reticulum", "golgi apparatus", "intermediate filaments",
              "actin filaments", "microtubules", "mitotic spindle", "centrosome", "plasma membrane",
              "mitochondria", "aggresome", "cytosol", "vesicles and punctate cytosolic patterns", "negative")


def hpa_label(name) -> int:
    """A class as the CSV's integer label: an integer as it is, an HPA label name as its index.

    Parameters
    ----------
    name : int or str
        A label index, or one of ``HPA_LABELS`` (case and underscores ignored).

    Returns
    -------
    int

    Raises
    ------
    FormatError
        For any other name: the CSV has integer labels only.
    """
    try:
        return int(name)
    except (TypeError, ValueError):
        key = str(name).strip().lower().replace("_", " ")
        if key in HPA_LABELS:
            return HPA_LABELS.index(key)
        raise FormatError(f"OID/HPA class labels must be integers or HPA label names "
                          f"({', '.join(HPA_LABELS[:3])}, ...), got {name!r}") from None


def write_hpa(path, items: list[Annotations]) -> Path:
    """``ImageID,ImageWidth,ImageHeight,PredictionString``: ``label confidence mask`` triples,
    repeated per class for a mask with several classes.

    Parameters
    ----------
    path : str or Path
        Written atomically.
    items : list of Annotations
        Scores become the confidence of each triple (1 where unknown).

    Returns
    -------
    Path
    """
    rows = ([a.image_id, a.shape[1], a.shape[0], _prediction_string(a, hpa_label)]
            for a in one_at_a_time(items))
    return _write_rows(path, HPA_COLUMNS, rows)


def _parse_triples(text: str, shape, where: str):
    """Yield ``(label, score, mask)`` one at a time: a row of many masks never holds them all."""
    tokens = (text or "").split()
    if len(tokens) % 3:
        raise FormatError(f"{where}: prediction string has {len(tokens)} fields, not triples of label score mask")
    for k in range(0, len(tokens), 3):
        label, score, mask = tokens[k : k + 3]
        try:
            value = float(score)
        except ValueError:
            raise FormatError(f"{where}: score {score[:40]!r} is not a number") from None
        if not np.isfinite(value):  # NaN or infinity would sort first or last and distort AP
            raise FormatError(f"{where}: score {score[:40]!r} is not a finite number")
        score = value
        try:
            decoded = oid_decode(mask, *shape)
        except MemoryError:
            raise FormatError(f"{where}: a {shape[0]} x {shape[1]} mask does not fit in memory") from None
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None
        yield label, score, decoded


def _instances(image_id, shape, triples, um=None) -> Annotations:
    """Merge triples into instances: the same mask listed under several labels is one object
    (recognised by a digest of its runs: keeping each mask's RLE text could cost megabytes per mask)."""
    labels = np.zeros(shape, np.int32)
    classes, scores, seen = {}, {}, {}
    for label, score, mask in triples:
        key = hashlib.blake2b(rle.encode_pairs(mask).data, digest_size=20).digest()
        if key not in seen:
            seen[key] = len(seen) + 1
            labels[mask.view(bool)] = seen[key]
            classes[seen[key]] = []
            scores[seen[key]] = score
        classes[seen[key]].append(label)
    return Annotations(image_id, labels, classes, scores, um)


def _read_instance_csv(path, columns, id_col, h_col, w_col, pred_col) -> Iterator[Annotations]:
    """Every row's size is checked before the first mask is decoded; then one row at a time,
    its label image against the memory budget (each mask checks its own decode)."""
    rows = [(n, row, _size(row, path, n, h_col, w_col)) for n, row in enumerate(read_csv_rows(path, columns), start=2)]
    for n, row, shape in rows:
        check_memory(4 * shape[0] * shape[1], f"{path}, line {n}", "reading its labels", FormatError)
        yield _instances(row[id_col], shape, _parse_triples(row[pred_col], shape, f"{path}, line {n}"))


def read_hpa(path) -> Iterator[Annotations]:
    """Instances per image from an HPA ``PredictionString`` CSV (sizes from its width/height columns).

    Parameters
    ----------
    path : str or Path
        An HPA single-cell CSV.

    Yields
    ------
    Annotations
        One per image, read when asked for, each class of a mask as a class name of its object.

    Raises
    ------
    FormatError
        A missing column, a bad size or mask string, naming the line.
    """
    return _read_instance_csv(path, HPA_COLUMNS, "ImageID", "ImageHeight", "ImageWidth", "PredictionString")


# --- HuBMAP vasculature 2023 submission ---------------------------------------------------


def write_vasculature(path, items: list[Annotations]) -> Path:
    """``id,height,width,prediction_string`` with ``0 score mask`` per blood-vessel instance.

    Parameters
    ----------
    path : str or Path
        Written atomically.
    items : list of Annotations
        Every object is written as class 0 (blood vessel).

    Returns
    -------
    Path
    """
    rows = ([a.image_id, a.shape[0], a.shape[1], _prediction_string(a, lambda name: 0)]
            for a in one_at_a_time(items))
    return _write_rows(path, VASCULATURE_COLUMNS, rows)


def read_vasculature(path) -> Iterator[Annotations]:
    """Blood-vessel instances per image from a vasculature ``prediction_string`` CSV.

    Parameters
    ----------
    path : str or Path
        A vasculature 2023 submission CSV.

    Yields
    ------
    Annotations
        Every object of class ``blood_vessel``, with its score.

    Raises
    ------
    FormatError
        As for :func:`read_hpa`.
    """
    for a in _read_instance_csv(path, VASCULATURE_COLUMNS, "id", "height", "width", "prediction_string"):
        a.classes = {i: ["blood_vessel"] for i in a.classes}
        yield a
        del a  # not kept while the next row is read


__all__ = ["HPA_LABELS", "hpa_label", "write_hubmap", "read_hubmap", "write_hpa", "read_hpa", "write_vasculature",
           "read_vasculature", "safe_id"]
