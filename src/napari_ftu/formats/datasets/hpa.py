"""HPA single-cell: four channel PNGs per image, masks from an Open Images CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ftu.errors import InputError
from napari_ftu.formats.datasets.base import Dataset, Item, _check_size
from napari_ftu.io.budget import check_memory
from napari_ftu.io.images import raster_shape, read_raster, reading
from napari_ftu.io.slides import Slide

HPA_CHANNELS = ("red", "green", "blue", "yellow")


def hpa_channel_id(path) -> tuple[Path, str] | None:
    """Which HPA image a channel file belongs to, so that any of its four files opens the image.

    Parameters
    ----------
    path : str or Path
        A file such as ``<id>_red.png`` (or ``_green``, ``_blue``, ``_yellow``).

    Returns
    -------
    (Path, str) or None
        ``(folder, image id)``, or ``None`` for any other file name.
    """
    path = Path(path)
    for c in HPA_CHANNELS:
        if path.name.lower().endswith(f"_{c}.png"):
            return path.parent, path.name[: -len(f"_{c}.png")]
    return None


def read_hpa_channels(root, image_id: str) -> np.ndarray:
    """The four channel planes of one HPA image, checked against the memory budget before decoding.

    Parameters
    ----------
    root : str or Path
        The folder holding ``<id>_{red,green,blue,yellow}.png``.
    image_id : str
        The image id (file name without the channel suffix).

    Returns
    -------
    numpy.ndarray
        ``(4, H, W)`` in red, green, blue, yellow order.

    Raises
    ------
    InputError
        A channel file is missing, or the planes together exceed the memory budget.
    """
    root = Path(root)
    paths = [root / f"{image_id}_{c}.png" for c in HPA_CHANNELS]
    sizes = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: missing (an HPA image is four files {image_id}_{{red,green,blue,yellow}}.png)")
        with reading(path):
            sizes.append(raster_shape(path))
    # the planes decoded one after another and kept, then stacked (up to 2 bytes a pixel)
    need = sum(n for _, n in sizes) + sum(2 * h * w for (h, w), _ in sizes)
    check_memory(need, f"{root}, image {image_id}", "reading its 4 channels", InputError)
    planes = []
    for path in paths:
        plane = read_raster(path)
        planes.append(plane if plane.ndim == 2 else plane[..., 0])
    if len({p.shape for p in planes}) != 1:
        raise InputError(f"{root}: the channels of {image_id} differ in size {[p.shape for p in planes]}")
    return np.stack(planes)


class HpaCells(Dataset):
    """HPA single-cell: ``<id>_{red,green,blue,yellow}.png`` as one 4-channel image, with
    instance masks from an Open Images CSV (``ImageID, ..., PredictionString``) if present.

    Parameters
    ----------
    root : Path
    """

    layout = "HPA single-cell"

    def __init__(self, root: Path):
        from napari_ftu.formats.csv_formats import read_hpa

        root = Path(root)
        ids = sorted(p.name[: -len("_red.png")] for p in root.glob("*_red.png"))
        self.ids_complete = [i for i in ids if all((root / f"{i}_{c}.png").is_file() for c in HPA_CHANNELS)]
        self.masks = {}
        for p in sorted(root.glob("*.csv")):
            with open(p, encoding="utf-8", errors="replace") as fh:
                if "PredictionString" in fh.readline():
                    self.masks.update({a.image_id: a for a in read_hpa(p)})
        super().__init__(root, self.ids_complete)

    @staticmethod
    def detect(root: Path) -> bool:
        return any(root.glob("*_yellow.png"))

    def load(self, index: int) -> Item:
        image_id = self.ids[index]
        data = read_hpa_channels(self.root, image_id)
        slide = Slide([data], None, image_id, self.root / f"{image_id}_red.png", "channels", 0,
                      channel_names=list(HPA_CHANNELS))
        a = self.masks.get(image_id)
        if a is not None:
            _check_size(slide, a.shape, f"{self.root}, masks of {image_id}")
        return Item(slide, a, {})
