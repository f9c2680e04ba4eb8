"""COCO instance JSON and QuPath-compatible GeoJSON, with their readers.

Polygons are exact pixel-edge outlines (see :mod:`polygons`) in full-resolution pixel
coordinates, x = column. COCO polygons cannot express holes, so an object with a hole is
written as a compressed COCO RLE instead.
"""

from __future__ import annotations

import colorsys
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ftu.atomic import write_text
from napari_ftu.errors import FormatError
from napari_ftu.formats.annotations import Annotations, label_canvas, object_id, safe_id
from napari_ftu.formats.coco_rle import COST_PER_COUNT, mask_to_coco, paint_coco
from napari_ftu.formats.polygons import mask_to_polygons, paint, paint_cost
from napari_ftu.formats.rle import check_size
from napari_ftu.io.budget import check_memory
from napari_ftu.io.images import file_stem


def class_colour(name: str) -> list[int]:
    """A stable, distinct RGB colour per class name (QuPath shows it).

    Parameters
    ----------
    name : str

    Returns
    -------
    list of int
        ``[r, g, b]``.
    """
    hue = (zlib.crc32(str(name).encode()) % 360) / 360
    return [int(round(255 * v)) for v in colorsys.hsv_to_rgb(hue, 0.75, 0.9)]


def _object_polygons(box, sub) -> list[list[np.ndarray]]:
    offset = np.array([box[1].start, box[0].start])
    return [[ring + offset for ring in poly] for poly in mask_to_polygons(sub)]


def _read_json(path):
    """The parsed document; every failure (unreadable, not UTF-8, bad syntax, an integer of
    thousands of digits, nesting deeper than Python's recursion limit) is an FormatError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError covers JSONDecodeError and Unicode
        raise FormatError(f"{path}: cannot read JSON ({type(exc).__name__}: {str(exc)[:200]})") from None


def _list(value, where: str, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FormatError(f"{where}: {what} must be a list, got {type(value).__name__}")
    return value


def _dict(value, where: str, what: str) -> dict:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: {what} must be a JSON object, got {type(value).__name__}")
    return value


def _key(value, where: str, what: str):
    """An id used to join images, annotations and categories: a number or text."""
    if isinstance(value, (dict, list)):
        raise FormatError(f"{where}: {what} must be a number or text, got {type(value).__name__}")
    return value


def _score(value, where: str) -> float:
    """A finite score: NaN or infinity would sort first or last and distort AP."""
    try:
        score = float(value)
    except (TypeError, ValueError, OverflowError):
        raise FormatError(f"{where}: score {str(value)[:40]!r} is not a number") from None
    if not np.isfinite(score):
        raise FormatError(f"{where}: score {str(value)[:40]!r} is not a finite number")
    return score


def _shape(shape, where: str) -> tuple[int, int]:
    """An image size checked (positive, not absurd, within the memory budget) without allocating."""
    try:
        return check_size(shape, 4, "image")
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None


def _pixel_size(value, where: str):
    if value is None:
        return None
    try:
        um = float(value)
    except (TypeError, ValueError, OverflowError):
        um = float("nan")
    if not (np.isfinite(um) and um > 0):
        raise FormatError(f"{where}: um_per_px {str(value)[:40]!r} is not a positive number")
    return um


# --- COCO -----------------------------------------------------------------------------------


def write_coco(path, items: list[Annotations]) -> Path:
    """One COCO instance JSON for all ``items``: polygons where exact, RLE for objects with holes.

    Parameters
    ----------
    path : str or Path
        The ``.json`` file, replaced in one step (never left half-written).
    items : list of Annotations
        One image each; class names become COCO categories.

    Returns
    -------
    Path
    """
    from napari_ftu.formats.csv_formats import one_at_a_time

    images, anns = [], []
    for img_id, a in enumerate(one_at_a_time(items), start=1):  # one image at a time: its annotations are kept
        images.append({"id": img_id, "file_name": a.image_id, "height": a.shape[0], "width": a.shape[1],
                       **({"um_per_px": a.um_per_px} if a.um_per_px else {})})
        for obj_id, box, sub in a.objects():
            polys = _object_polygons(box, sub)
            if any(len(p) > 1 for p in polys):
                full = np.zeros(a.shape, np.uint8)
                full[box] = sub
                seg = mask_to_coco(full)
            else:
                seg = [p[0].astype(float).ravel().tolist() for p in polys]
            ys, xs = box
            for name in a.class_names(obj_id):
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": name,
                             "segmentation": seg, "area": int(sub.sum()), "iscrowd": 0,
                             "bbox": [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start],
                             "score": a.score(obj_id), "object_id": int(obj_id)})
        del a
    cat_id = {n: k for k, n in enumerate(sorted({ann["category_id"] for ann in anns}, key=str), start=1)}
    for ann in anns:
        ann["category_id"] = cat_id[ann["category_id"]]
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": k, "name": str(n)} for n, k in cat_id.items()]}
    return write_text(path, json.dumps(doc))


@dataclass
class CocoImage:
    """One image of a COCO file, checked but not yet drawn: ``anns`` holds
    ``(where, segmentation, object id, score, class name, bytes to draw it)``.

    Parameters
    ----------
    name : str
        The image's ``file_name``.
    shape : tuple of int
    um_per_px : float, optional
    where : str
        File and image, for error messages.
    anns : list of tuple
    """

    name: str
    shape: tuple[int, int]
    um_per_px: float | None
    where: str
    anns: list = field(default_factory=list)

    def cost(self) -> int:
        """Peak bytes of :meth:`build`: the int32 label image and the largest object's decode."""
        return 4 * self.shape[0] * self.shape[1] + max((a[-1] for a in self.anns), default=0)

    def build(self) -> Annotations:
        a = Annotations(self.name, label_canvas(self.shape, self.where), um_per_px=self.um_per_px)
        for where, seg, obj, score, category, _ in self.anns:
            _paint_segmentation(a.labels, seg, obj, where)
            a.scores[obj] = score
            a.classes.setdefault(obj, []).append(category)
        return a


def parse_coco(path) -> list[CocoImage]:
    """Every image and annotation of a COCO file validated and costed, no pixel drawn yet.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    list of CocoImage

    Raises
    ------
    FormatError
        Malformed JSON or annotations, or more than the memory budget, naming the annotation.
    """
    doc = _read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise FormatError(f"{path}: not a COCO file (needs 'images' with ids)")
    cats = {}
    for c in _list(doc.get("categories"), str(path), "'categories'"):
        c = _dict(c, str(path), "a category")
        if "id" not in c or "name" not in c:
            raise FormatError(f"{path}: a category needs 'id' and 'name'")
        cats[_key(c["id"], str(path), "a category id")] = str(c["name"])
    out, top = {}, {}  # top: the largest object id per image, so ids without object_id are new ones
    for im in doc["images"]:
        im = _dict(im, str(path), "an image entry")
        if "id" not in im:
            raise FormatError(f"{path}: an image entry has no 'id'")
        where = f"{path}, image {str(im['id'])[:40]!r}"
        img_id = _key(im["id"], where, "the image id")
        try:
            h, w = int(im["height"]), int(im["width"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise FormatError(f"{where}: needs integer height and width") from None
        name = Path(str(im.get("file_name", img_id))).name
        if Path(name).suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".svs"):
            name = Path(name).stem
        try:
            safe_id(name)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None
        out[img_id] = CocoImage(name, _shape((h, w), where), _pixel_size(im.get("um_per_px"), where), where)
    for k, ann in enumerate(_list(doc.get("annotations"), str(path), "'annotations'")):
        ann = _dict(ann, f"{path}, annotation {k}", "an annotation")
        where = f"{path}, annotation {str(ann.get('id', k))[:40]}"
        image_key = _key(ann.get("image_id"), where, "image_id")
        image = out.get(image_key)
        if image is None:
            raise FormatError(f"{where}: refers to unknown image {str(ann.get('image_id'))[:40]!r}")
        seg = ann.get("segmentation")
        cost = _segmentation_cost(seg, image.shape, where)
        obj = object_id(ann.get("object_id") or top.get(image_key, 0) + 1, where)
        top[image_key] = max(top.get(image_key, 0), obj)
        score = _score(ann.get("score", 1.0), where)
        category = _key(ann.get("category_id"), where, "category_id")
        image.anns.append((where, seg, obj, score, cats.get(category, str(category)), cost))
    return list(out.values())


def read_coco(path) -> Iterator[Annotations]:
    """Instances per image, one image at a time; polygons are united (COCO semantics), RLE
    decoded exactly. The whole file is validated first; each image's label image and largest
    object are checked against the memory budget on their own, as the caller keeps one at a time.

    Parameters
    ----------
    path : str or Path
        A COCO instance JSON.

    Yields
    ------
    Annotations
        One per image of the file, in file order.

    Raises
    ------
    FormatError
        As for :func:`parse_coco`, or when one image's labels would not fit in memory.
    """
    images = parse_coco(path)
    while images:
        image = images.pop(0)  # its polygons are freed with it
        check_memory(image.cost(), image.where, "reading its labels", FormatError)
        yield image.build()


def _coco_polygons(seg) -> list:
    rings = []
    for p in seg:
        ring = np.asarray(p, dtype=float)
        if ring.size % 2 or not (ring.ndim == 1 or (ring.ndim == 2 and ring.shape[1] == 2)):
            raise ValueError("a COCO polygon is a list [x1, y1, x2, y2, ...]")
        rings.append([ring.reshape(-1, 2)])
    return rings


def _segmentation_cost(seg, shape, where) -> int:
    """Bytes that drawing one segmentation takes (polygons: their boxes and row crossings; RLE:
    a full mask and the counts), refusing malformed polygons before anything is drawn."""
    try:
        if isinstance(seg, dict):
            counts = seg.get("counts")
            return shape[0] * shape[1] + COST_PER_COUNT * (len(counts) if isinstance(counts, (str, bytes, list)) else 0)
        if isinstance(seg, list) and seg:
            return paint_cost(_coco_polygons(seg), shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise FormatError(f"{where}: {exc}") from None
    raise FormatError(f"{where}: segmentation must be a polygon list or an RLE dict")


def _paint_segmentation(labels, seg, obj, where) -> None:
    try:
        if isinstance(seg, dict):
            paint_coco(labels, seg, obj)
        else:
            paint(labels, _coco_polygons(seg), obj)
    except (FormatError, ValueError, TypeError, OverflowError) as exc:
        raise FormatError(f"{where}: {exc}") from None


# --- QuPath GeoJSON -------------------------------------------------------------------------


def write_geojson(path, a: Annotations) -> Path:
    """A FeatureCollection of annotation objects (Polygon or MultiPolygon with holes) with
    classification name and colour, as QuPath imports and exports them.

    Parameters
    ----------
    path : str or Path
        Written atomically.
    a : Annotations
        One image (GeoJSON has no image list).

    Returns
    -------
    Path
    """
    features = []
    for obj_id, box, sub in a.objects():
        polys = [[ring.astype(float).tolist() + [ring[0].astype(float).tolist()] for ring in p]
                 for p in _object_polygons(box, sub)]
        geometry = ({"type": "Polygon", "coordinates": polys[0]} if len(polys) == 1
                    else {"type": "MultiPolygon", "coordinates": polys})
        name = a.class_names(obj_id)[0]
        props = {"objectType": "annotation", "classification": {"name": str(name), "color": class_colour(name)},
                 "name": f"{name} {obj_id}", "ftu_id": int(obj_id)}
        measurements = {"Area px": int(sub.sum())}
        if a.um_per_px:
            measurements["Area µm^2"] = float(sub.sum() * a.um_per_px**2)
        if obj_id in a.scores:
            measurements["Confidence"] = a.score(obj_id)
        measurements.update(a.meta.get("measurements", {}).get(int(obj_id), {}))  # napari_ftu.measure's columns
        props["measurements"] = measurements
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    return write_text(path, json.dumps({"type": "FeatureCollection", "features": features}))


def read_geojson(path, shape, image_id: str | None = None, um_per_px: float | None = None) -> Annotations:
    """Rasterise annotations (FeatureCollection, list of Features or one Feature) onto an image
    of ``shape``; objects keep ``ftu_id`` when present, else are numbered in file order. The
    label image and the largest feature's drawing are checked against the memory budget first.

    Parameters
    ----------
    path : str or Path
    shape : tuple of int
        The image's ``(height, width)``: GeoJSON does not say.
    image_id : str, optional
        Default: the file's stem.
    um_per_px : float, optional

    Returns
    -------
    Annotations

    Raises
    ------
    FormatError
    """
    doc = _read_json(path)
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = _list(doc.get("features"), str(path), "'features'")
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, list):
        feats = doc
    else:
        raise FormatError(f"{path}: not GeoJSON (expected a FeatureCollection or Features)")
    shape = _shape(shape, str(path))
    objects, largest = [], 0
    for k, feat in enumerate(feats):
        where = f"{path}, feature {k}"
        try:
            geom, props = feat["geometry"], feat.get("properties") or {}
            kind, coords = geom["type"], geom["coordinates"]
        except (KeyError, TypeError, AttributeError):
            raise FormatError(f"{where}: needs a geometry with type and coordinates") from None
        props = _dict(props, where, "'properties'")
        if kind == "Polygon":
            polys = [coords]
        elif kind == "MultiPolygon":
            polys = _list(coords, where, "MultiPolygon coordinates")
        else:
            continue  # points and lines are not regions
        try:
            rings = [[np.asarray(r, dtype=float)[:, :2] for r in p] for p in polys]
            largest = max(largest, paint_cost(rings, shape))
        except (ValueError, IndexError, TypeError, OverflowError) as exc:
            raise FormatError(f"{where}: bad polygon coordinates ({exc})") from None
        obj = object_id(props.get("ftu_id") or k + 1, where)
        measurements = props.get("measurements")
        conf = measurements.get("Confidence") if isinstance(measurements, dict) else None
        score = None if conf is None else _score(conf, where)
        cls = props.get("classification") or {}
        name = str(cls.get("name", "FTU")) if isinstance(cls, dict) else str(cls)
        objects.append((rings, obj, score, name))
    check_memory(4 * shape[0] * shape[1] + largest, path, "reading its labels", FormatError)
    labels = label_canvas(shape, str(path))
    classes, scores = {}, {}
    for rings, obj, score, name in objects:
        paint(labels, rings, obj)
        if score is not None:
            scores[obj] = score
        classes[obj] = [name]
    return Annotations(image_id or file_stem(path), labels, classes, scores, um_per_px)
