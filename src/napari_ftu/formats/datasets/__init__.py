"""Competition and folder datasets: a list of images, each loaded with its instance labels.

:func:`open_dataset` recognises a folder's layout (HuBMAP 2022 and 2021, vasculature 2023
jsonl or COCO, HPA single-cell channels, image/mask pairs, and the output folder of a
``napari-ftu segment`` batch: its predictions, paged like a dataset) and returns a :class:`Dataset`
whose :meth:`~Dataset.load` gives the slide, the :class:`Annotations` and per-image facts.
Every problem is an :class:`FormatError` or :class:`InputError` naming the file. Each layout lives
in a module of its own (``hubmap``, ``vasculature``, ``coco``, ``hpa``, ``image_masks``,
``batch_output``), on the :class:`~.base.Dataset` of :mod:`.base`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ftu.engine.postprocess import label_areas
from napari_ftu.errors import FormatError, InputError
from napari_ftu.formats.annotations import Annotations, layer_features
from napari_ftu.formats.datasets.base import Dataset
from napari_ftu.formats.datasets.batch_output import BatchOutput
from napari_ftu.formats.datasets.coco import CocoFolder
from napari_ftu.formats.datasets.hpa import HpaCells
from napari_ftu.formats.datasets.hubmap import Hubmap2021, Hubmap2022
from napari_ftu.formats.datasets.image_masks import ImageMaskFolder
from napari_ftu.formats.datasets.vasculature import Vasculature2023
from napari_ftu.io.slides import Slide


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
