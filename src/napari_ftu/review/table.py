"""The review queue: one row per object (id, class, area, confidence, status), kept in step
with the label image as it is edited, with sorting, filtering, counts and next/previous.

Rejected objects leave the label image but keep their row, so that "37 / 120 reviewed"
counts them and an undo can bring them back with their status.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from napari_ftu.boxes import Box, corners, from_corners, union

STATUSES = ("unreviewed", "accepted", "rejected", "edited")
SORTS = {
    "id": lambda r: r.id,
    "low confidence first": lambda r: (math.inf if math.isnan(r.confidence) else r.confidence, r.id),
    "small first": lambda r: (r.area_um2, r.id),
    "large first": lambda r: (-r.area_um2, r.id),
    "status": lambda r: (STATUSES.index(r.status), r.id),
    "class": lambda r: (r.cls, r.id),
    "most doubtful first": None,  # confidence nearest the threshold first (review.active), set per table
    "by position": lambda r: (round(r.centroid[0]) // 256, r.centroid[1], r.id),
}


@dataclass
class Row:
    """One object of the review queue.

    Parameters
    ----------
    id : int
    cls : str
        Class name.
    area_px, area_um2 : int, float
    confidence : float
        NaN when unknown (drawn or unsegmented objects).
    status : str
        One of :data:`STATUSES`.
    box : Box
        Full-image pixels; written to session files as corners ``(y0, x0, y1, x1)``.
    centroid : tuple of float
        ``(row, col)``.
    """
    id: int
    cls: str
    area_px: int
    area_um2: float
    confidence: float  # NaN when unknown (drawn or unsegmented objects)
    status: str
    box: Box  # full-image pixels; saved as corners (y0, x0, y1, x1)
    centroid: tuple  # (row, col)


class Review:
    """Rows keyed by object id; ``um_per_px`` converts areas (None: µm² = px²).

    Parameters
    ----------
    um_per_px : float, optional
    default_class : str
        The class of objects nobody has classified.
    """

    def __init__(self, um_per_px: float | None = None, default_class: str = "FTU"):
        self.um_per_px = um_per_px
        self.default_class = default_class
        self.rows: dict[int, Row] = {}
        self.threshold = 0.5  # the model's, for "most doubtful first"
        self.agreement: dict[int, float] = {}  # id -> overlap with the previous model's objects (1: same)

    # --- building and updating --------------------------------------------------------------
    @classmethod
    def from_labels(cls, labels, um_per_px=None, features=None, default_class="FTU") -> Review:
        """Rows for every object; class and confidence from napari-style ``features``
        (columns ``index``, ``class``, ``confidence``) when given.

        Parameters
        ----------
        labels : array-like
            2-D instance labels.
        um_per_px : float, optional
        features : DataFrame or dict, optional
            The labels layer's features.
        default_class : str

        Returns
        -------
        Review
            Every object "unreviewed".
        """
        review = cls(um_per_px, default_class)
        labels = np.asarray(labels)
        known = _features_by_id(features, default_class)
        boxes = ndi.find_objects(labels)
        for i, box in enumerate(boxes, start=1):
            if box is None:
                continue
            row = review._measure(labels, i, box, None)
            if row is not None:
                cls_, conf = known.get(i, (default_class, math.nan))
                row.cls, row.confidence = cls_, conf
                review.rows[i] = row
        return review

    def _measure(self, labels, obj: int, box, old: Row | None) -> Row | None:
        mask = np.asarray(labels[box]) == obj
        n = int(mask.sum())
        if n == 0:
            return None
        rr, cc = np.nonzero(mask)
        y0, x0 = int(box[0].start or 0), int(box[1].start or 0)
        scale = (self.um_per_px or 1.0) ** 2
        return Row(obj, old.cls if old else self.default_class, n, n * scale,
                   old.confidence if old else math.nan, old.status if old else "unreviewed",
                   from_corners(y0 + rr.min(), x0 + cc.min(), y0 + rr.max() + 1, x0 + cc.max() + 1),
                   (y0 + float(rr.mean()), x0 + float(cc.mean())))

    def update(self, labels, ids, region, status: str | None = "edited") -> None:
        """Re-measure ``ids`` after a change inside ``region`` (a box): objects that changed get
        ``status``, new ones appear, vanished ones go (rejected rows stay).

        Parameters
        ----------
        labels : array-like
            The labels after the change.
        ids : iterable of int
            Every id the change touched, before and after.
        region : Box
            Where pixels changed; old rows' boxes are added, so a shrunk object is measured whole.
        status : str or None
            For changed objects (None keeps theirs).
        """
        for obj in sorted({int(i) for i in ids if i}):
            old = self.rows.get(obj)
            box = union(old.box, region) if old is not None and old.status != "rejected" else region
            row = self._measure(labels, obj, box, old if old is not None and old.status != "rejected" else None)
            if row is None:
                if old is not None and old.status != "rejected":
                    del self.rows[obj]
                continue
            if old is None or old.status == "rejected" or (row.area_px, row.box) != (old.area_px, old.box):
                if status is not None:
                    row.status = status
                self.rows[obj] = row

    def adopt(self, features=None, um_per_px: float | None = None) -> bool:
        """Take what a segmentation wrote on its labels layer after the queue was built (a dock
        opened before the run sees the objects before their features): the pixel size, which
        re-measures every area in µm², and the class and confidence of objects nobody has
        reviewed yet. Reviewed objects keep their class.

        Parameters
        ----------
        features : DataFrame or dict, optional
            The labels layer's features (columns ``index``, ``class``, ``confidence``).
        um_per_px : float, optional
            The labels' pixel size; None keeps the table's.

        Returns
        -------
        bool
            Whether any row changed.
        """
        changed = False
        if um_per_px and um_per_px != self.um_per_px:
            self.um_per_px = float(um_per_px)
            for r in self.rows.values():
                r.area_um2 = r.area_px * self.um_per_px ** 2
            changed = True
        from napari_ftu.formats.annotations import features_by_id

        for i, (classes, conf) in features_by_id(features).items():
            row = self.rows.get(i)
            if row is None:
                continue
            if conf is not None and not math.isnan(conf) and conf != row.confidence \
                    and (math.isnan(row.confidence) or row.status == "unreviewed"):
                row.confidence, changed = float(conf), True
            if classes is not None and row.status == "unreviewed" and ", ".join(classes) != row.cls:
                row.cls, changed = ", ".join(classes), True
        return changed

    def snapshot(self, ids) -> dict:
        """Copies of the rows of ``ids`` (None where absent), to restore on undo.

        Parameters
        ----------
        ids : iterable of int

        Returns
        -------
        dict
            Id -> copy of its row, or None.
        """
        return {int(i): (replace(self.rows[i]) if i in self.rows else None) for i in ids}

    def restore(self, snapshot: dict) -> None:
        """Put back the rows of a :meth:`snapshot` (None removes the row).

        Parameters
        ----------
        snapshot : dict
        """
        for i, row in snapshot.items():
            if row is None:
                self.rows.pop(i, None)
            else:
                self.rows[i] = replace(row)

    def set_status(self, ids, status: str) -> None:
        """Give objects a review status.

        Parameters
        ----------
        ids : iterable of int
        status : str
            One of :data:`STATUSES`.

        Raises
        ------
        ValueError, KeyError
            An unknown status, or an id without a row.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {STATUSES}")
        for i in ids:
            if i not in self.rows:
                raise KeyError(f"object {i} is not in the review table")
            self.rows[i].status = status

    def set_class(self, ids, cls: str) -> None:
        """Give objects a class name.

        Parameters
        ----------
        ids : iterable of int
        cls : str
            Not empty; surrounding spaces are dropped.

        Raises
        ------
        ValueError, KeyError
            An empty name, or an id the table does not hold.
        """
        if not cls or not str(cls).strip():
            raise ValueError("a class name cannot be empty")
        for i in ids:
            if i not in self.rows:
                raise KeyError(f"object {i} is not in the review table")
            self.rows[i].cls = str(cls).strip()

    # --- queries ------------------------------------------------------------------------------
    def counts(self) -> dict:
        out = {s: 0 for s in STATUSES}
        for r in self.rows.values():
            out[r.status] += 1
        out["total"] = len(self.rows)
        out["reviewed"] = out["total"] - out["unreviewed"]
        return out

    def summary(self) -> str:
        c = self.counts()
        return (f"{c['reviewed']} / {c['total']} reviewed — {c['accepted']} accepted, {c['rejected']} rejected, "
                f"{c['edited']} edited")

    def table(self, sort: str = "id", status: str | None = None, max_confidence: float | None = None) -> list[Row]:
        """Rows filtered by status (None: all) and confidence (NaN passes), sorted by ``sort``.

        Parameters
        ----------
        sort : str
            A key of :data:`SORTS`.
        status : str, optional
        max_confidence : float, optional

        Returns
        -------
        list of Row

        Raises
        ------
        ValueError
            An unknown sort or status.
        """
        if sort not in SORTS:
            raise ValueError(f"unknown sort {sort!r}; one of {list(SORTS)}")
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {STATUSES}")
        rows = [r for r in self.rows.values() if status is None or r.status == status]
        if max_confidence is not None:
            rows = [r for r in rows if math.isnan(r.confidence) or r.confidence <= max_confidence]
        if sort == "most doubtful first":
            from napari_ftu.review.active import doubt

            return sorted(rows, key=lambda r: (doubt(r.confidence, self.threshold, self.agreement.get(r.id, 1.0)),
                                               r.id))
        return sorted(rows, key=SORTS[sort])

    def next_unreviewed(self, current: int | None, order: list[int], step: int = 1) -> int | None:
        """The next (``step`` 1) or previous (-1) unreviewed id in ``order`` after ``current``,
        wrapping around; None when every object is reviewed.

        Parameters
        ----------
        current : int or None
            The selected object.
        order : list of int
            The ids as the table shows them.
        step : int
            1 or -1.

        Returns
        -------
        int or None
        """
        todo = [i for i in order if i in self.rows and self.rows[i].status == "unreviewed"]
        if not todo:
            return None
        if current not in order:
            return todo[0] if step > 0 else todo[-1]
        pos = order.index(current)
        n = len(order)
        for k in range(1, n + 1):
            cand = order[(pos + step * k) % n]
            if cand in self.rows and self.rows[cand].status == "unreviewed":
                return cand
        return None

    def features(self) -> dict:
        """The objects in the labels (rejected ones are not) as a napari layer's ``features``
        (:func:`~napari_ftu.formats.annotations.layer_features`), so the Export dock writes the
        classes and confidences shown here."""
        from napari_ftu.formats.annotations import layer_features

        rows = [r for _, r in sorted(self.rows.items()) if r.status != "rejected"]
        return layer_features([r.id for r in rows], [r.cls for r in rows],
                              [None if math.isnan(r.confidence) else r.confidence for r in rows])

    @property
    def max_id(self) -> int:
        return max(self.rows, default=0)

    # --- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        rows = []
        for r in self.rows.values():
            d = asdict(r)
            d["confidence"] = None if math.isnan(r.confidence) else r.confidence
            d["box"] = corners(r.box)
            rows.append(d)
        return {"um_per_px": self.um_per_px, "default_class": self.default_class, "rows": rows}

    @classmethod
    def from_dict(cls, data: dict) -> Review:
        """A table read back from :meth:`to_dict` (a session file): boxes from corners.

        Parameters
        ----------
        data : dict
            Parsed from the session file's JSON, untrusted.

        Returns
        -------
        Review

        Raises
        ------
        ValueError
            A malformed table (the session file is then set aside).
        """
        try:
            review = cls(data.get("um_per_px"), data.get("default_class", "FTU"))
            for d in data["rows"]:
                if d["status"] not in STATUSES:
                    raise ValueError(f"unknown status {d['status']!r}")
                conf = math.nan if d.get("confidence") is None else float(d["confidence"])
                review.rows[int(d["id"])] = Row(int(d["id"]), str(d["cls"]), int(d["area_px"]), float(d["area_um2"]),
                                                conf, d["status"], from_corners(*d["box"]), tuple(d["centroid"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"review state is malformed: {exc!r}") from exc
        return review


def _features_by_id(features, default_class: str) -> dict:
    """{id: (class, confidence)} from a napari features table (pandas) or a dict of columns."""
    from napari_ftu.formats.annotations import features_by_id

    return {i: (", ".join(c) if c is not None else default_class, s if s is not None else math.nan)
            for i, (c, s) in features_by_id(features).items()}
