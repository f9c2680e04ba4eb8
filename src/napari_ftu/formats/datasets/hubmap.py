"""The HuBMAP competition layouts: 2022 (``train.csv`` with organ and pixel size) and 2021 (kidney)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ftu.errors import FormatError
from napari_ftu.formats import rle
from napari_ftu.formats.annotations import Annotations, instances_of
from napari_ftu.formats.csv_formats import read_csv_rows
from napari_ftu.formats.datasets.base import Dataset, Item, _check_mask_memory, _check_size, _find_image
from napari_ftu.io.slides import open_slide


class Hubmap2022(Dataset):
    """``train.csv`` (id, organ, data_source, img_height, img_width, pixel_size, rle, ...) with
    ``train_images/<id>.tiff``; also ``test.csv`` + ``test_images`` (no masks).

    Parameters
    ----------
    root : Path
    split : str
        ``"train"`` or ``"test"``.

    Raises
    ------
    FormatError
        A malformed ``train.csv`` row, naming the line.
    """

    layout = "HuBMAP + HPA 2022"

    def __init__(self, root: Path, split: str = "train"):
        self.csv = Path(root) / f"{split}.csv"
        self.images = Path(root) / f"{split}_images"
        needed = ["id", "organ", "img_height", "img_width", "pixel_size"] + (["rle"] if split == "train" else [])
        self.rows = read_csv_rows(self.csv, needed)
        super().__init__(root, [r["id"] for r in self.rows])

    @staticmethod
    def detect(root: Path) -> str | None:
        """The split found: ``train`` (with masks) or ``test`` (images only).

        Parameters
        ----------
        root : Path
            A folder that may hold a HuBMAP 2022 layout.

        Returns
        -------
        str or None
            None when the folder is not this layout.
        """
        for split in ("train", "test"):
            if (root / f"{split}_images").is_dir() and (root / f"{split}.csv").is_file():
                return split
        return None

    def load(self, index: int) -> Item:
        row = self.rows[index]
        where = f"{self.csv}, line {index + 2} (id {row['id']})"
        if None in row.values():
            raise FormatError(f"{where}: the row has fewer fields than the header")
        slide = open_slide(_find_image(self.images, row["id"]))
        try:
            shape = int(row["img_height"]), int(row["img_width"])
            um = float(row["pixel_size"])
        except ValueError:
            raise FormatError(f"{where}: img_height, img_width and pixel_size must be numbers") from None
        if not (np.isfinite(um) and um > 0):
            raise FormatError(f"{where}: pixel_size must be a positive number, got {row['pixel_size']!r}")
        _check_size(slide, shape, where)
        slide.um_per_px = um
        info = {k: row.get(k) for k in ("organ", "data_source", "pixel_size", "tissue_thickness", "age", "sex")}
        annotations = None
        if "rle" in row:
            _check_mask_memory(shape, row["rle"], where)
            try:
                mask = rle.decode(row["rle"], shape)
            except FormatError as exc:
                raise FormatError(f"{where}: {exc}") from None
            annotations = Annotations(row["id"], instances_of(mask), um_per_px=um, meta=info,
                                      default_class=f"{row['organ']} FTU")
        return Item(slide, annotations, info)


class Hubmap2021(Dataset):
    """The 2021 kidney layout: ``train.csv`` (id, encoding) with ``train/<id>.tiff``.

    Parameters
    ----------
    root : Path
        The folder holding ``train.csv``.

    Raises
    ------
    FormatError
        A mask that does not decode, naming the line.
    """

    layout = "HuBMAP 2021 kidney"

    def __init__(self, root: Path):
        self.csv = Path(root) / "train.csv"
        self.rows = read_csv_rows(self.csv, ["id", "encoding"])
        super().__init__(root, [r["id"] for r in self.rows])

    @staticmethod
    def detect(root: Path) -> bool:
        if not ((root / "train").is_dir() and (root / "train.csv").is_file()):
            return False
        with open(root / "train.csv", encoding="utf-8", errors="replace") as fh:
            return "encoding" in fh.readline()

    def load(self, index: int) -> Item:
        row = self.rows[index]
        slide = open_slide(_find_image(self.root / "train", row["id"]))
        _check_mask_memory(slide.size, row["encoding"], f"{self.csv}, line {index + 2} (id {row['id']})")
        try:
            mask = rle.decode(row["encoding"], slide.size)
        except FormatError as exc:
            raise FormatError(f"{self.csv}, line {index + 2} (id {row['id']}): {exc}") from None
        return Item(slide, Annotations(row["id"], instances_of(mask), um_per_px=slide.um_per_px,
                                       default_class="glomerulus"), {"organ": "kidney"})
