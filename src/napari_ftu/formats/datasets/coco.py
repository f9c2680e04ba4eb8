"""A COCO instance JSON beside its images, as a dataset."""

from __future__ import annotations

import json
from pathlib import Path

from napari_ftu.errors import FormatError, InputError
from napari_ftu.formats.datasets.base import Dataset, Item, _check_size
from napari_ftu.io.budget import check_memory
from napari_ftu.io.slides import open_slide


class CocoFolder(Dataset):
    """A COCO instance JSON beside its images (in the folder or a ``tiles``/``images`` folder).

    Parameters
    ----------
    root : Path
    json_path : Path
        The COCO file.

    Raises
    ------
    FormatError
    """

    layout = "COCO instances"

    def __init__(self, root: Path, json_path: Path):
        from napari_ftu.formats.json_formats import parse_coco

        self.json = json_path
        try:
            doc = json.loads(json_path.read_text(encoding="utf-8-sig"))
            self.files = {Path(im["file_name"]).stem: _relative_name(im["file_name"], json_path)
                          for im in doc.get("images", [])}
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as exc:
            raise FormatError(f"{json_path}: not a COCO file with image file names ({exc})") from None
        self.items = {image.name: image for image in parse_coco(json_path)}  # drawn one at a time in load
        super().__init__(root, sorted(self.items))

    @staticmethod
    def find(root: Path) -> Path | None:
        """The COCO instance JSON of a folder, if it holds one beside its images.

        Parameters
        ----------
        root : Path

        Returns
        -------
        Path or None
        """
        for p in sorted(root.glob("*.json")):
            try:
                head = p.read_text(encoding="utf-8")[:4096]
            except (OSError, UnicodeDecodeError):
                continue
            if '"images"' in head:
                return p
        return None

    def load(self, index: int) -> Item:
        image = self.items[self.ids[index]]
        check_memory(image.cost(), image.where, "reading its labels", FormatError)
        a = image.build()
        name = self.files.get(a.image_id, a.image_id)
        for folder in (self.root, self.root / "tiles", self.root / "images"):
            if (folder / name).is_file():
                slide = open_slide(folder / name)
                break
        else:
            raise InputError(f"{self.root}: image {name!r} of {self.json.name} not found")
        _check_size(slide, a.shape, f"{self.json}, image {name}")
        return Item(slide, a, {})


def _relative_name(name, json_path: Path) -> str:
    """A COCO ``file_name`` that stays inside the dataset folder (no absolute path, ``..`` or NUL)."""
    if not isinstance(name, str):
        raise FormatError(f"{json_path}: file_name {name!r} is not text")
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts or "\x00" in name:
        raise FormatError(f"{json_path}: file_name {name[:80]!r} points outside the dataset folder")
    return name
