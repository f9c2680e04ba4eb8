"""Images with mask files beside them: ``images/`` + ``masks/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ftu.errors import FormatError
from napari_ftu.formats.annotations import Annotations, image_key, instances_of
from napari_ftu.formats.csv_formats import read_csv_rows
from napari_ftu.formats.datasets.base import IMAGE_SUFFIXES, Dataset, Item, _check_size
from napari_ftu.io.slides import open_slide


class ImageMaskFolder(Dataset):
    """Images with mask files beside them: ``images/`` + ``masks/`` (names matched after
    dropping ``slide_``/``mask_``-style prefixes and ``_mask`` suffixes), binary or instance.

    Parameters
    ----------
    root : Path
        The folder holding ``images/`` and ``masks/``.

    Raises
    ------
    FormatError
        A bad ``manifest.csv`` pixel size.
    """

    layout = "image/mask pairs"

    def __init__(self, root: Path):
        root = Path(root)
        images, masks = ({image_key(p.stem): p for p in sorted((root / sub).iterdir())
                          if p.suffix.lower() in IMAGE_SUFFIXES} for sub in ("images", "masks"))
        self.pairs = {k: (images[k], masks[k]) for k in sorted(images) if k in masks}
        self.um = {}  # our tile export records each tile's µm/px in manifest.csv
        if (root / "manifest.csv").is_file():
            for row in read_csv_rows(root / "manifest.csv", ["image", "um_per_px"]):
                if row["um_per_px"]:
                    try:
                        um = float(row["um_per_px"])
                    except ValueError:
                        um = float("nan")
                    if not (np.isfinite(um) and um > 0):
                        raise FormatError(f"{root / 'manifest.csv'}: um_per_px {row['um_per_px']!r} of "
                                          f"{row['image']} is not a positive number")
                    self.um[image_key(Path(str(row["image"])).stem)] = um
        super().__init__(root, list(self.pairs))

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "images").is_dir() and (root / "masks").is_dir()

    def load(self, index: int) -> Item:
        image_path, mask_path = self.pairs[self.ids[index]]
        slide = open_slide(image_path)
        mask_slide = open_slide(mask_path)
        mask = mask_slide.read()
        mask_slide.close()
        if mask.ndim == 3:
            mask = mask[..., 0]
        _check_size(slide, mask.shape, str(mask_path))
        slide.um_per_px = slide.um_per_px or self.um.get(self.ids[index])
        return Item(slide, Annotations(self.ids[index], instances_of(mask), um_per_px=slide.um_per_px), {})
