"""What a dataset is (a named list of image ids and a loader) and the checks every layout shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from napari_ftu.errors import FormatError, InputError
from napari_ftu.formats.annotations import Annotations, safe_id
from napari_ftu.formats.csv_formats import RLE_COST_PER_CHAR
from napari_ftu.io.budget import check_memory
from napari_ftu.io.slides import Slide

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


@dataclass
class Item:
    """One image of a dataset, opened lazily, with its annotations if the layout has them.

    Parameters
    ----------
    slide : Slide
    annotations : Annotations or None
    info : dict
        Organ, data source, pixel size, ... for display.
    """
    slide: Slide
    annotations: Annotations | None
    info: dict = field(default_factory=dict)  # organ, data source, pixel size, ... for display


class Dataset:
    """A named list of image ids and a loader; subclasses know one layout each.

    Parameters
    ----------
    root : Path
        The dataset folder.
    ids : list of str
        Image ids, in display order.

    Raises
    ------
    FormatError
        No images.
    """

    layout = "dataset"

    def __init__(self, root: Path, ids: list[str]):
        self.root = Path(root)
        self.ids = ids
        if not ids:
            raise FormatError(f"{root}: the {self.layout} layout lists no images")

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def detect(root: Path) -> bool:
        """Whether ``root`` holds this layout (:func:`open_dataset` asks each layout in turn).

        Parameters
        ----------
        root : Path
            The folder the user opened (most folders are no dataset: say so quickly).

        Returns
        -------
        bool
        """
        raise NotImplementedError

    def load(self, index: int) -> Item:
        """Open image ``index`` (lazily) with its annotations, checked against the image.

        Parameters
        ----------
        index : int
            Position in :attr:`ids`.

        Returns
        -------
        Item

        Raises
        ------
        InputError, FormatError
            A missing or unreadable image, or a mask that does not fit it.
        """
        raise NotImplementedError


def _find_image(folder: Path, stem: str) -> Path:
    """The image of an id from a CSV or JSON file; ids that are not plain file names
    (``../x``, ``/abs``, NUL) are refused, so a dataset file cannot point outside its folder."""
    try:
        safe_id(stem)
    except FormatError as exc:
        raise FormatError(f"{folder}: {exc}") from None
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    raise InputError(f"{folder}: no image file for id {stem!r}")



def _check_mask_memory(shape, rle_text, where: str):
    """A whole-image RLE mask is decoded (1 byte per pixel), sorted for its values (1), made
    boolean (1) and labelled (4): refused before decoding when over the memory budget."""
    h, w = shape
    check_memory(7 * h * w + RLE_COST_PER_CHAR * len(rle_text or ""), where, "reading its mask", FormatError)


def _check_size(slide: Slide, shape, what: str):
    if tuple(slide.size) != tuple(shape):
        raise FormatError(f"{what}: mask size {tuple(shape)} differs from image {slide.path.name} {slide.size}")
