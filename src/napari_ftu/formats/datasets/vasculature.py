"""The HuBMAP vasculature 2023 layout: ``polygons.jsonl`` beside ``train/<id>.tif``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_ftu.errors import FormatError, InputError
from napari_ftu.formats.annotations import Annotations
from napari_ftu.formats.csv_formats import read_csv_rows
from napari_ftu.formats.datasets.base import Dataset, Item, _find_image
from napari_ftu.io.budget import check_memory
from napari_ftu.io.slides import open_slide


class Vasculature2023(Dataset):
    """``polygons.jsonl`` (one tile per line: id, annotations of type blood_vessel /
    glomerulus / unsure with [x, y] rings) with ``train/<id>.tif`` and ``tile_meta.csv``.

    Parameters
    ----------
    root : Path

    Raises
    ------
    FormatError, InputError
        A malformed or unreadable ``polygons.jsonl``, naming the line.
    """

    layout = "HuBMAP vasculature 2023"

    def __init__(self, root: Path):
        self.jsonl = Path(root) / "polygons.jsonl"
        self.tiles = {}
        try:
            lines = self.jsonl.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{self.jsonl}: cannot read ({exc})") from None
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                tile = json.loads(line)
                annotations = tile.get("annotations", [])
                self.tiles[str(tile["id"])] = annotations
            except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
                raise FormatError(f"{self.jsonl}, line {n}: not a JSON object with an id") from None
            if not isinstance(annotations, list):
                raise FormatError(f"{self.jsonl}, line {n}: 'annotations' must be a list")
        meta = Path(root) / "tile_meta.csv"
        self.meta = {r["id"]: r for r in read_csv_rows(meta, ["id"])} if meta.is_file() else {}
        super().__init__(root, list(self.tiles))

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "polygons.jsonl").is_file()

    def load(self, index: int) -> Item:
        from napari_ftu.formats.polygons import paint, paint_cost

        tile_id = self.ids[index]
        slide = open_slide(_find_image(self.root / "train", tile_id))
        h, w = slide.size
        objects, largest = [], 0
        for k, ann in enumerate(self.tiles[tile_id], start=1):
            where = f"{self.jsonl}, tile {tile_id}, annotation {k}"
            try:
                rings = [np.asarray(r, dtype=float).reshape(-1, 2) for r in ann["coordinates"]]
                kind = str(ann["type"])
            except (KeyError, TypeError, ValueError, OverflowError):
                raise FormatError(f"{where}: needs a type and [[x, y], ...] coordinates") from None
            _check_inside(rings, (h, w), where)
            try:
                largest = max(largest, paint_cost([rings], (h, w)))
            except ValueError as exc:
                raise FormatError(f"{where}: {exc}") from None
            objects.append((rings, kind))
        check_memory(4 * h * w + largest, f"{self.jsonl}, tile {tile_id}", "reading its labels", FormatError)
        labels = np.zeros((h, w), np.int32)
        classes = {}
        for k, (rings, kind) in enumerate(objects, start=1):
            paint(labels, [rings], k)
            classes[k] = [kind]
        info = {k: v for k, v in self.meta.get(tile_id, {}).items() if k != "id"}
        return Item(slide, Annotations(tile_id, labels, classes), info)


def _check_inside(rings, shape, where: str):
    h, w = shape
    for ring in rings:
        if not np.isfinite(ring).all():
            raise FormatError(f"{where}: polygon coordinates must be finite numbers")
        if ring.size and ((ring[:, 0] < -1) | (ring[:, 0] > w + 1) | (ring[:, 1] < -1) | (ring[:, 1] > h + 1)).any():
            raise FormatError(f"{where}: polygon reaches outside the {w} x {h} image")
