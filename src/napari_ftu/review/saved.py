"""Saved reviews read back, for headless use: one session file's contents (:func:`read_session`,
without the lock the dock's writer holds), the session files of a slide (:func:`saved_sessions`)
and those reviews kept in a new prediction (:func:`keep_saved_reviews`). The writer, its lock and
the session folders are :mod:`napari_ftu.review.autosave`.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ftu.boxes import from_corners
from napari_ftu.errors import SessionError
from napari_ftu.review.session import ReviewSession
from napari_ftu.review.table import Review

SUFFIX = ".session.npz"
MAX_TEXT_BYTES = 256 * 2**20  # the review table and metadata of a session file (JSON)


class _Mismatch(SessionError):
    pass


@dataclass
class Saved:
    """What a session file restores.

    Parameters
    ----------
    labels : ndarray
    review : Review
    offset : tuple of int
        Where the window starts in the slide.
    meta : dict
        ``saved_at``, ``generation``, ``in_store_generation``, the writer, ...
    """

    labels: np.ndarray
    review: Review
    offset: tuple[int, int]
    meta: dict
    rejected: np.ndarray | None = None  # rejected objects' pixels (what training learns as background)
    done: list = field(default_factory=list)  # regions marked "nothing else here"

    def into(self, session: ReviewSession) -> ReviewSession:
        """Give a session restored from this file what the review knows beyond its labels.

        Parameters
        ----------
        session : ReviewSession
            Built on :attr:`labels` and :attr:`review`; gets the rejected pixels and done regions.

        Returns
        -------
        ReviewSession
            The same session.
        """
        session.rejected, session.done = self.rejected, list(self.done)
        return session

    @property
    def in_store(self) -> bool:
        """Every edit of this (window) session was written into the label store when it was saved."""
        generation = self.meta.get("generation")
        return generation is not None and self.meta.get("in_store_generation") == generation


def read_session(path: str | Path, shape: tuple[int, int] | None = None) -> Saved:
    """A session file's contents, without taking its lock (headless training reads what the
    dock saved). A damaged file (or, with ``shape``, one of another shape) raises
    :class:`SessionError`; nothing is allocated before the label image's size is checked.

    Parameters
    ----------
    path : str or Path
        A ``.session.npz`` file.
    shape : tuple of int, optional
        The label image's expected shape.

    Returns
    -------
    Saved
    """
    from napari_ftu.formats.rle import check_size

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            with zf.open("labels.npy") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                saved_shape, _, dtype = read_header(fh)
            if len(saved_shape) != 2 or dtype.kind not in "iu":
                raise ValueError(f"the labels are {dtype} {saved_shape}, not a 2-D integer image")
            if shape is not None and tuple(saved_shape) != tuple(shape):
                raise _Mismatch(f"{path}: the saved session is {saved_shape[0]} × {saved_shape[1]}, "
                                f"the layer {shape[0]} × {shape[1]}")
            check_size(saved_shape, dtype.itemsize, "saved label image")
            for name in ("review.npy", "meta.npy"):
                if zf.getinfo(name).file_size > MAX_TEXT_BYTES:
                    raise ValueError(f"{name} is over {MAX_TEXT_BYTES >> 20} MB")
        with np.load(path, allow_pickle=False) as data:
            labels = data["labels"]
            review = Review.from_dict(json.loads(bytes(data["review"]).decode()))
            meta = json.loads(bytes(data["meta"]).decode())
            rejected = data["rejected"] if "rejected" in data.files else None
        if rejected is not None and (rejected.shape != labels.shape or rejected.dtype.kind not in "iu"):
            raise ValueError(f"the rejected objects are {rejected.dtype} {rejected.shape}, not like the labels")
        if not isinstance(meta, dict):
            raise ValueError("the metadata is not a JSON object")
        offset = tuple(int(v) for v in meta.get("offset", (0, 0)))
        if len(offset) != 2:
            raise ValueError(f"offset {offset} is not two numbers")
        if not isinstance(meta.get("done", []), list) or any(len(c) != 4 for c in meta.get("done", [])):
            raise ValueError("a done region is not four numbers")
        done = [from_corners(*(int(v) for v in c)) for c in meta.get("done", [])]
        if not isinstance(meta.get("saved_at"), (int, float)) or not np.isfinite(meta["saved_at"]):
            meta["saved_at"] = os.stat(path).st_mtime
    except _Mismatch:
        raise
    except Exception as exc:  # an untrusted file: zip, zlib, npy, JSON and table errors of every kind
        raise SessionError(f"{path}: cannot read the saved session ({type(exc).__name__}: {exc})") from exc
    return Saved(labels, review, offset, meta, rejected, done)


def saved_sessions(path: str | Path) -> list[tuple[Path, Path | None]]:
    """``[(session file, slide or None), ...]`` of a slide (its ``<slide>.ftu/`` folder), a
    ``.ftu`` folder or one session file; the slide is None when it is not beside the folder.

    Parameters
    ----------
    path : str or Path
        A slide, its ``.ftu`` folder or one session file.

    Returns
    -------
    list of (Path, Path or None)

    Raises
    ------
    SessionError
        A slide with no saved review beside it.
    """
    path = Path(path)
    if path.is_file() and path.name.endswith(SUFFIX):
        folder, files = path.parent, [path]
    elif path.is_dir() and path.name.endswith(".ftu"):
        folder, files = path, sorted(path.glob("*" + SUFFIX))
    else:
        folder = path.with_name(path.name + ".ftu")
        files = sorted(folder.glob("*" + SUFFIX)) if folder.is_dir() else []
        if not files:
            raise SessionError(f"{path}: no saved review beside it (expected {folder.name}/*{SUFFIX}; "
                               "the Review dock writes it)")
    slide = folder.with_name(folder.name[: -len(".ftu")]) if folder.name.endswith(".ftu") else None
    return [(f, slide if slide is not None and slide.exists() else None) for f in files]


def keep_saved_reviews(labels, slide: str | Path, downsample: float = 1.0, next_id: int = 1) -> tuple[int, int]:
    """Put the saved reviews of ``slide`` into a new prediction ``labels`` (numpy or zarr, the
    slide's pixels divided by ``downsample``), window by window: reviewed objects keep their
    outlines (with fresh ids from ``next_id``), predicted objects falling mostly on a reviewed,
    rejected or done place are dropped, the rest keep their ids. Returns ``(reviewed objects
    kept, predicted objects dropped)``.

    Parameters
    ----------
    labels : numpy.ndarray or zarr.Array
        The new prediction, written in place.
    slide : str or Path
        The slide whose saved reviews are kept (:func:`saved_sessions`).
    downsample : float
        Slide pixels per pixel of ``labels``.
    next_id : int
        The first id given to a kept reviewed object.

    Returns
    -------
    tuple of int
    """
    from skimage.transform import resize

    from napari_ftu.review.session import keep_reviewed

    kept_n = dropped = 0
    for file, _ in saved_sessions(slide):
        saved = read_session(file)
        (oy, ox), (h, w) = saved.offset, saved.labels.shape
        y0, x0 = int(oy // downsample), int(ox // downsample)
        y1, x1 = min(labels.shape[0], int(np.ceil((oy + h) / downsample))), min(labels.shape[1],
                                                                               int(np.ceil((ox + w) / downsample)))
        if y1 <= y0 or x1 <= x0:
            continue
        region = np.asarray(labels[y0:y1, x0:x1])

        def fit(a):
            if a is None or downsample == 1.0:
                return None if a is None else a[: y1 - y0, : x1 - x0]
            return resize(a, (y1 - y0, x1 - x0), order=0, anti_aliasing=False, preserve_range=True).astype(a.dtype)

        done = [from_corners(int(b[0].start // downsample), int(b[1].start // downsample),
                             int(np.ceil(b[0].stop / downsample)), int(np.ceil(b[1].stop / downsample)))
                for b in saved.done]
        statuses = {i: r.status for i, r in saved.review.rows.items()}
        reviewed = fit(saved.labels)
        kept = [i for i in np.unique(reviewed) if i and statuses.get(int(i)) in ("accepted", "edited")]
        fresh = {int(i): next_id + k for k, i in enumerate(kept)}
        next_id += len(kept)
        renumbered = np.zeros(reviewed.shape, np.int64)
        for i, j in fresh.items():
            renumbered[reviewed == i] = j
        merged, placed = keep_reviewed(renumbered, {j: statuses[i] for i, j in fresh.items()} |
                                       {i: s for i, s in statuses.items() if s == "rejected"}, fit(saved.rejected),
                                       done, region, None)
        before = {int(i) for i in np.unique(region) if i}
        kept_n += len(kept)
        dropped += len(before - set(placed))
        labels[y0:y1, x0:x1] = merged.astype(labels.dtype)
    return kept_n, dropped
