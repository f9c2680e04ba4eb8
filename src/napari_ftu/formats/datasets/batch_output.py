"""The output folder of a ``napari-ftu segment`` batch, paged like a dataset."""

from __future__ import annotations

import json
from pathlib import Path

from napari_ftu.errors import FormatError, InputError
from napari_ftu.formats.annotations import Annotations
from napari_ftu.formats.datasets.base import Dataset, Item
from napari_ftu.io.slides import open_slide

DONE = "done.json"  # a batch output's per-slide marker (written last, so a rerun trusts it)
SUMMARY = "summary.csv"  # a batch output's table of slides


class BatchOutput(Dataset):
    """A batch output folder (``<out>/<id>/done.json`` + ``summary.csv``) as a dataset: each
    segmented slide with its predicted labels, to page through, review or evaluate.

    Parameters
    ----------
    root : str or Path
        The batch's ``--out`` folder.

    Raises
    ------
    FormatError
        No finished slide in it.
    """

    layout = "napari-ftu batch output"

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / SUMMARY).is_file() and any(root.glob(f"*/{DONE}"))

    def __init__(self, root):
        root = Path(root)
        self.markers = {}
        for marker in sorted(root.glob(f"*/{DONE}")):
            try:
                data = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError):
                continue  # a malformed marker is a slide not done: not listed
            if isinstance(data, dict) and isinstance(data.get("row"), dict) and isinstance(data.get("source"), str):
                self.markers[marker.parent.name] = data
        if not self.markers:
            raise FormatError(f"{root}: no readable {DONE} marker in its slide folders")
        super().__init__(root, list(self.markers))

    def load(self, index: int) -> Item:
        from napari_ftu.io.images import read_image

        image_id = self.ids[index]
        row, source = self.markers[image_id]["row"], self.markers[image_id]["source"]
        slide = open_slide(source)
        slide.um_per_px = row.get("um_per_px") or slide.um_per_px
        labels_file = self.root / image_id / f"{image_id}_labels.ome.tif"
        if not labels_file.is_file():
            raise InputError(f"{labels_file}: no label image (run the batch with the labels output)")
        labels_um = row.get("labels_um_per_px")
        info = {"objects": row.get("n_objects"), "seconds": row.get("seconds"), "labels_um_per_px": labels_um}
        return Item(slide, Annotations(image_id, read_image(labels_file).data, um_per_px=labels_um), info)
