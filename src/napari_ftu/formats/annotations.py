"""The in-memory form every writer takes and every reader returns: one image's instances."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from napari_ftu.errors import FormatError

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_ID_LENGTH = 200  # ids become file names with suffixes; most file systems stop at 255 bytes
MAX_OBJECT_ID = 2**31 - 1  # labels are int32


_KEY_PREFIX = re.compile(r"^(slide|image|img|mask|label|labels)[_-]", re.IGNORECASE)
_KEY_SUFFIX = re.compile(r"[_-](mask|masks|label|labels|gt)$", re.IGNORECASE)


def image_key(name) -> str:
    """The id that pairs an image with its truth and its predictions: the name without a
    ``slide_``/``mask_``-style prefix or a ``_mask``/``_labels`` suffix. Dataset readers and
    evaluate's pairing both use it, so our own outputs evaluate against the data they came from.

    Parameters
    ----------
    name : str or Path
        A file stem or an id (``slide_O27_10``, ``mask_O27_10``, ``O27_10_labels``).

    Returns
    -------
    str
        The shared key (``O27_10``).
    """
    return _KEY_SUFFIX.sub("", _KEY_PREFIX.sub("", str(name)))


def safe_id(image_id) -> str:
    """Refuse ids that could leave an output folder or break a CSV (``../x``, ``a/b``, ``,``,
    a trailing newline, NUL) or be too long for a file name.

    Parameters
    ----------
    image_id : object
        An image id from a file or a user; it names output files.

    Returns
    -------
    str

    Raises
    ------
    FormatError
    """
    image_id = str(image_id)
    if not _SAFE_ID.fullmatch(image_id) or ".." in image_id:
        raise FormatError(f"image id {image_id[:80]!r} is not a safe file name (letters, digits, . _ - only)")
    if len(image_id) > MAX_ID_LENGTH:
        raise FormatError(f"image id {image_id[:40]!r}... is {len(image_id)} characters long (at most {MAX_ID_LENGTH})")
    return image_id


def object_id(value, where: str) -> int:
    """An object id from a file: an integer in 1 .. 2**31 - 1 (labels are int32).

    Parameters
    ----------
    value : object
        The id as the file gives it.
    where : str
        ``file, line N``: the error names it.

    Returns
    -------
    int
        Fits an int32 label image.

    Raises
    ------
    FormatError
    """
    try:
        number = float(value)
        obj = int(value) if not isinstance(value, float) else int(number)
    except (TypeError, ValueError, OverflowError):
        raise FormatError(f"{where}: object id {str(value)[:40]!r} is not an integer") from None
    if number != obj or not 1 <= obj <= MAX_OBJECT_ID:
        raise FormatError(f"{where}: object id {str(value)[:40]!r} must be an integer from 1 to {MAX_OBJECT_ID}")
    return obj


def label_canvas(shape, where: str) -> np.ndarray:
    """An empty int32 label image of ``shape``, refused before allocating when the size is
    impossible or does not fit in memory (a tiny file can claim any size).

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` as the file claims it.
    where : str
        File and line, for the error message.

    Returns
    -------
    ndarray
        int32 zeros, to paint objects into.

    Raises
    ------
    FormatError
    """
    from napari_ftu.formats.rle import check_size

    try:
        return np.zeros(check_size(shape, 4, "image"), np.int32)
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None
    except MemoryError:
        raise FormatError(f"{where}: an image of {shape[0]} x {shape[1]} does not fit in memory") from None


@dataclass
class Annotations:
    """Instances of one image: a label array (0 = background) with per-object class and score.

    ``classes`` maps an object id to its class names (HPA cells may carry several);
    ``meta`` holds per-image fields such as HuBMAP's organ or data source.

    Parameters
    ----------
    image_id : str
    labels : ndarray
        2-D integer instance labels.
    classes : dict
        Object id -> list of class names (absent: ``default_class``).
    scores : dict
        Object id -> confidence (absent: unknown).
    um_per_px : float, optional
        Pixel size, carried into formats that store it.
    meta : dict
        Per-image fields (organ, data source).
    default_class : str
    """

    image_id: str
    labels: np.ndarray
    classes: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    um_per_px: float | None = None
    meta: dict = field(default_factory=dict)
    default_class: str = "FTU"

    def __post_init__(self):
        self.image_id = safe_id(self.image_id)
        self.labels = np.asarray(self.labels)
        if self.labels.ndim != 2:
            raise FormatError(f"{self.image_id}: labels must be 2-D, got shape {self.labels.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.labels.shape)

    def ids(self) -> np.ndarray:
        ids = np.unique(self.labels)
        return ids[ids > 0]

    def class_names(self, object_id: int) -> list:
        """The class names of an object (``default_class`` when it has none).

        Parameters
        ----------
        object_id : int
            An id of :attr:`labels`.

        Returns
        -------
        list of str
        """
        names = self.classes.get(int(object_id), self.default_class)
        return list(names) if isinstance(names, (list, tuple)) else [names]

    def score(self, object_id: int) -> float:
        """An object's confidence, 1.0 where the source gave none (ground truth).

        Parameters
        ----------
        object_id : int
            Any id; one without a score is taken as certain.

        Returns
        -------
        float
        """
        return float(self.scores.get(int(object_id), 1.0))

    def objects(self):
        """``(id, bounding-box slices, mask within the box)`` per object, cheaply."""
        from scipy import ndimage as ndi

        lab = self.labels
        boxes = ndi.find_objects(lab.astype(np.int64, copy=False)) if lab.size else []
        for i, box in enumerate(boxes, start=1):
            if box is not None:
                yield i, box, lab[box] == i

    @classmethod
    def from_layer(cls, image_id: str, data, features=None, metadata=None, default_class: str = "FTU"):
        """From a napari Labels layer's data, features table (``index``, ``class``, ``confidence``)
        and metadata (``um_per_px``).

        Parameters
        ----------
        image_id : str
        data : array-like
            The layer's labels.
        features : DataFrame or dict, optional
            The layer's features (:func:`layer_features`).
        metadata : dict, optional
            The layer's metadata.
        default_class : str
            For objects the features do not classify.

        Returns
        -------
        Annotations
        """
        known = features_by_id(features)
        classes = {i: c for i, (c, _) in known.items() if c is not None}
        scores = {i: s for i, (_, s) in known.items() if s is not None and s == s}
        meta = metadata or {}
        return cls(image_id, np.asarray(data), classes, scores, meta.get("um_per_px"), default_class=default_class)


def instances_of(mask: np.ndarray) -> np.ndarray:
    """Binary masks become one instance per connected component; instance labels stay.

    Parameters
    ----------
    mask : ndarray
        Binary (0/1 or bool) or instance labels.

    Returns
    -------
    ndarray
        int32 instance labels.
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if np.unique(mask).size <= 2:
        return ndi.label(mask != 0)[0].astype(np.int32)
    return mask.astype(np.int32)


def layer_features(ids, classes, confidences, **extra) -> dict:
    """The per-object table a napari Labels layer carries (its ``features``), one convention for
    every writer (the reader, the Load and Segment docks): ``index``, ``class`` (several names
    joined by ", "), ``confidence`` (NaN when unknown) and ``extra`` columns such as areas.

    Parameters
    ----------
    ids : sequence of int
    classes : sequence
        Per id: a name, a list of names, or None.
    confidences : sequence
        Per id: a float or None.
    **extra
        Further columns, one value per id.

    Returns
    -------
    dict
        Column name -> list.
    """
    names = [c if isinstance(c, str) else ", ".join(map(str, c)) for c in classes]
    return {"index": [int(i) for i in ids], "class": names,
            "confidence": [float("nan") if c is None else float(c) for c in confidences],
            **{k: list(v) for k, v in extra.items()}}


def features_by_id(features) -> dict:
    """``{id: (class names or None, confidence or None)}`` from a layer's features (a pandas
    table or a dict of columns, see :func:`layer_features`); ``None`` where a column is absent.

    Parameters
    ----------
    features : DataFrame or dict, optional

    Returns
    -------
    dict
    """
    if features is None or len(features) == 0 or "index" not in features:
        return {}
    ids = [int(i) for i in features["index"]]
    classes = ([[c.strip() for c in str(v).split(",")] for v in features["class"]] if "class" in features
               else [None] * len(ids))
    confs = [float(c) for c in features["confidence"]] if "confidence" in features else [None] * len(ids)
    return {i: (c, s) for i, c, s in zip(ids, classes, confs)}
