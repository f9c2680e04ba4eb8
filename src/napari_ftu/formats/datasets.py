"""Competition and folder datasets: a list of images, each loaded with its instance labels.

:func:`open_dataset` recognises a folder's layout (HuBMAP 2022 and 2021, vasculature 2023
jsonl or COCO, HPA single-cell channels, image/mask pairs, and the output folder of a
``napari-ftu segment`` batch: its predictions, paged like a dataset) and returns a :class:`Dataset`
whose :meth:`~Dataset.load` gives the slide, the :class:`Annotations` and per-image facts.
Every problem is an :class:`FormatError` or :class:`InputError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ftu.engine.postprocess import label_areas
from napari_ftu.errors import FormatError, InputError
from napari_ftu.formats import rle
from napari_ftu.formats.annotations import Annotations, image_key, instances_of, layer_features, safe_id
from napari_ftu.formats.csv_formats import RLE_COST_PER_CHAR, read_csv_rows
from napari_ftu.io.budget import check_memory
from napari_ftu.io.images import raster_shape, read_raster, reading
from napari_ftu.io.slides import Slide, open_slide

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
HPA_CHANNELS = ("red", "green", "blue", "yellow")
DONE = "done.json"  # a batch output's per-slide marker (written last, so a rerun trusts it)
SUMMARY = "summary.csv"  # a batch output's table of slides


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


def open_dataset(path: str | Path) -> Dataset:
    """Recognise the layout of a dataset folder (or its CSV/JSON/JSONL file).

    Parameters
    ----------
    path : str or Path
        A dataset folder (HuBMAP 2022/2021, vasculature 2023, COCO, HPA, ``images/`` + ``masks/``,
        a batch output folder) or its annotation file.

    Returns
    -------
    Dataset
        Its ``ids``, ``layout`` and ``load(index)`` giving the lazily opened slide and its labels.

    Raises
    ------
    InputError, FormatError
        No such folder, or not a layout we know; a malformed file of the layout, named.
    """
    if "\x00" in str(path):
        raise InputError(f"{str(path)!r}: a path cannot hold a NUL character")
    root = Path(path)
    if root.is_file():
        if root.suffix == ".json":
            return CocoFolder(root.parent, root)
        root = root.parent
    if not root.is_dir():
        raise InputError(f"{path}: no such folder")
    if BatchOutput.detect(root):
        return BatchOutput(root)
    split = Hubmap2022.detect(root)
    if split:
        return Hubmap2022(root, split)
    if Hubmap2021.detect(root):
        return Hubmap2021(root)
    if Vasculature2023.detect(root):
        return Vasculature2023(root)
    coco = CocoFolder.find(root)
    if coco is not None:
        return CocoFolder(root, coco)
    if HpaCells.detect(root):
        return HpaCells(root)
    if ImageMaskFolder.detect(root):
        return ImageMaskFolder(root)
    raise FormatError(f"{root}: not a dataset layout we know (HuBMAP 2022/2021 train.csv, polygons.jsonl, "
                      "COCO JSON, HPA *_red.png ... *_yellow.png, images/ + masks/, or a batch output)")



def labels_layer_data(a: Annotations, slide: Slide, info: dict | None = None) -> tuple:
    """``(labels, kwargs, "labels")`` with per-object class/score/area in the layer's features.

    Parameters
    ----------
    a : Annotations
    slide : Slide
        The image, for scale and the layer's source.
    info : dict, optional
        Item info (pixel size, organ) for the layer's metadata.

    Returns
    -------
    tuple
        napari's layer data tuple.
    """
    ids = a.ids()
    areas = label_areas(a.labels, ids)
    um = a.um_per_px or slide.um_per_px  # batch labels of a banded slide lie on the model's coarser grid
    features = layer_features(ids, [a.class_names(i) for i in ids], [a.scores.get(int(i)) for i in ids],
                              area_um2=[float(x * um * um) if um else np.nan for x in areas])
    kwargs = {"name": f"{slide.name} labels", "features": features, "opacity": 0.5,
              "metadata": {"um_per_px": um, "source": slide.name, **(info or {})}}
    if um:
        kwargs["scale"] = (um, um)
        kwargs["units"] = ("µm", "µm")
    return (a.labels, kwargs, "labels")
