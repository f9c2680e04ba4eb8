"""COCO instance JSON and QuPath-compatible GeoJSON, with their readers.

Polygons are exact pixel-edge outlines (see :mod:`polygons`) in full-resolution pixel
coordinates, x = column. COCO polygons cannot express holes, so an object with a hole is
written as a compressed COCO RLE instead.
"""

from __future__ import annotations

import colorsys
import json
import zlib
from pathlib import Path

import numpy as np

from .annotations import Annotations, ExportError
from .atomic import write_text
from .coco_rle import coco_to_mask, mask_to_coco
from .polygons import mask_to_polygons, rasterize
from .rle import RLEError


def class_colour(name: str) -> list[int]:
    """A stable, distinct RGB colour per class name (QuPath shows it)."""
    hue = (zlib.crc32(str(name).encode()) % 360) / 360
    return [int(round(255 * v)) for v in colorsys.hsv_to_rgb(hue, 0.75, 0.9)]


def _object_polygons(box, sub) -> list[list[np.ndarray]]:
    offset = np.array([box[1].start, box[0].start])
    return [[ring + offset for ring in poly] for poly in mask_to_polygons(sub)]


def _read_json(path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot read JSON ({exc})") from None


# --- COCO -----------------------------------------------------------------------------------


def write_coco(path, items: list[Annotations]) -> Path:
    names = sorted({n for a in items for i in a.ids() for n in a.class_names(i)}, key=str)
    cat_id = {n: k for k, n in enumerate(names, start=1)}
    images, anns = [], []
    for img_id, a in enumerate(items, start=1):
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
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_id[name],
                             "segmentation": seg, "area": int(sub.sum()), "iscrowd": 0,
                             "bbox": [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start],
                             "score": a.score(obj_id), "object_id": int(obj_id)})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": k, "name": str(n)} for n, k in cat_id.items()]}
    return write_text(path, json.dumps(doc))


def read_coco(path) -> list[Annotations]:
    """Instances per image; polygons are united (COCO semantics), RLE decoded exactly."""
    doc = _read_json(path)
    try:
        images = {im["id"]: im for im in doc["images"]}
        cats = {c["id"]: c["name"] for c in doc.get("categories", [])}
        anns = doc.get("annotations", [])
    except (KeyError, TypeError):
        raise ExportError(f"{path}: not a COCO file (needs 'images' with ids)") from None
    out = {}
    for im in images.values():
        try:
            h, w = int(im["height"]), int(im["width"])
        except (KeyError, TypeError, ValueError):
            raise ExportError(f"{path}: image {im.get('id')!r} needs integer height and width") from None
        name = Path(str(im.get("file_name", im["id"]))).name
        if Path(name).suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".svs"):
            name = Path(name).stem
        out[im["id"]] = Annotations(name, np.zeros((h, w), np.int32), um_per_px=im.get("um_per_px"))
    for k, ann in enumerate(anns):
        where = f"{path}, annotation {ann.get('id', k)}"
        a = out.get(ann.get("image_id"))
        if a is None:
            raise ExportError(f"{where}: refers to unknown image {ann.get('image_id')!r}")
        mask = _coco_segmentation(ann.get("segmentation"), a.shape, where)
        try:
            obj = int(ann.get("object_id") or a.labels.max() + 1)
            a.scores[obj] = float(ann.get("score", 1.0))
        except (TypeError, ValueError):
            raise ExportError(f"{where}: object_id and score must be numbers") from None
        a.labels[mask] = obj
        a.classes.setdefault(obj, []).append(cats.get(ann.get("category_id"), str(ann.get("category_id"))))
    return list(out.values())


def _coco_segmentation(seg, shape, where) -> np.ndarray:
    try:
        if isinstance(seg, dict):
            return coco_to_mask(seg).astype(bool)
        if isinstance(seg, list) and seg:
            rings = [np.asarray(p, dtype=float).reshape(-1, 2) for p in seg]
            return rasterize([[r] for r in rings], shape)
    except (RLEError, ValueError) as exc:
        raise ExportError(f"{where}: {exc}") from None
    raise ExportError(f"{where}: segmentation must be a polygon list or an RLE dict")


# --- QuPath GeoJSON -------------------------------------------------------------------------


def write_geojson(path, a: Annotations) -> Path:
    """A FeatureCollection of annotation objects (Polygon or MultiPolygon with holes) with
    classification name and colour, as QuPath imports and exports them."""
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
        props["measurements"] = measurements
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    return write_text(path, json.dumps({"type": "FeatureCollection", "features": features}))


def read_geojson(path, shape, image_id: str | None = None, um_per_px: float | None = None) -> Annotations:
    """Rasterise annotations (FeatureCollection, list of Features or one Feature) onto an image
    of ``shape``; objects keep ``ftu_id`` when present, else are numbered in file order."""
    doc = _read_json(path)
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features", [])
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, list):
        feats = doc
    else:
        raise ExportError(f"{path}: not GeoJSON (expected a FeatureCollection or Features)")
    labels = np.zeros(shape, np.int32)
    classes, scores = {}, {}
    for k, feat in enumerate(feats):
        where = f"{path}, feature {k}"
        try:
            geom, props = feat["geometry"], feat.get("properties") or {}
            kind, coords = geom["type"], geom["coordinates"]
        except (KeyError, TypeError):
            raise ExportError(f"{where}: needs a geometry with type and coordinates") from None
        if kind == "Polygon":
            polys = [coords]
        elif kind == "MultiPolygon":
            polys = coords
        else:
            continue  # points and lines are not regions
        try:
            mask = rasterize([[np.asarray(r, dtype=float)[:, :2] for r in p] for p in polys], shape)
        except (ValueError, IndexError, TypeError) as exc:
            raise ExportError(f"{where}: bad polygon coordinates ({exc})") from None
        try:
            obj = int(props.get("ftu_id") or k + 1)
            conf = (props.get("measurements") or {}).get("Confidence") if isinstance(props.get("measurements"), dict) else None
            if conf is not None:
                scores[obj] = float(conf)
        except (TypeError, ValueError):
            raise ExportError(f"{where}: ftu_id and Confidence must be numbers") from None
        labels[mask] = obj
        cls = props.get("classification") or {}
        classes[obj] = [cls.get("name", "FTU") if isinstance(cls, dict) else str(cls)]
    return Annotations(image_id or Path(path).name.split(".")[0], labels, classes, scores, um_per_px)
