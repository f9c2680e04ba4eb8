"""A review session: one label image, its review table and one undo history, kept consistent.

Every change goes through here (our operations, napari's painting, accept/reject/class), so
the statuses follow the pixels and Ctrl+Z undoes pixels and statuses together. The Review
dock is a thin view on this object; the autosave writes it out (see :mod:`napari_ftu.review.autosave`).
"""

from __future__ import annotations

import numpy as np

from napari_ftu.boxes import Box
from napari_ftu.errors import EditError
from napari_ftu.review import editing
from napari_ftu.review.editing import Edit
from napari_ftu.review.table import Review
from napari_ftu.review.undo import History, Step


class ReviewSession:
    """One image under review: its labels, the per-object table and one undo history.

    Parameters
    ----------
    labels : ndarray
        2-D integer labels, edited in place (share it with the napari layer).
    review : Review, optional
        The per-object table (status, class, confidence, area); measured from ``labels`` if absent.
    history : History, optional
        Undo history to continue (a restored session's).
    offset : tuple of int
        Where this window of a large slide starts, in full-resolution pixels.
    um_per_px : float, optional
        Pixel size, for areas in µm².
    """

    def __init__(self, labels: np.ndarray, review: Review | None = None, history: History | None = None,
                 offset: tuple[int, int] = (0, 0), um_per_px: float | None = None):
        if labels.ndim != 2 or labels.dtype.kind not in "iu":
            raise EditError(f"a review needs a 2-D integer label image, got {labels.dtype} {labels.shape}")
        self.labels = labels
        self.review = review if review is not None else Review.from_labels(labels, um_per_px)
        self.history = history or History()
        self.offset = tuple(int(v) for v in offset)
        self.generation = 0  # bumped by every change; the autosave compares it
        # What a review knows beyond the labels (sparse training labels, see training.sparse):
        # the pixels of rejected objects (by id; only rows still "rejected" count) and the
        # regions the reviewer marked "nothing else here".
        self.rejected: np.ndarray | None = None
        self.done: list[Box] = []

    # --- pixel edits -------------------------------------------------------------------------
    def apply(self, edit: Edit, status: str | None = "edited") -> Step | None:
        """Apply an edit, re-measure the objects it touched and record it for undo.

        Parameters
        ----------
        edit : Edit
            From :mod:`napari_ftu.review.editing` (merge, split, delete, fill, grow, draw, renumber).
        status : str or None
            Review status of the touched objects (``None`` keeps theirs).

        Returns
        -------
        Step or None
            The recorded step (``None`` when the edit changed nothing).
        """
        if edit.empty:
            return None
        ids = set(edit.created) | set(edit.removed) | set(edit.mapping) | set(edit.mapping.values())
        for patch in edit.patches:
            ids |= _ids(self.labels[patch.box]) | _ids(patch.after)
        before = self.review.snapshot(ids)
        step = self.history.apply(self.labels, edit)
        self.review.update(self.labels, ids, step.region, status)
        if edit.name == "relabel":  # renumbered objects keep class, confidence and status
            for old, new in edit.mapping.items():
                if before.get(old) is not None and new in self.review.rows:
                    row = self.review.rows[new]
                    row.cls, row.confidence, row.status = before[old].cls, before[old].confidence, before[old].status
        return self._changed(step, before, ids)

    def record_paint(self, box: Box, before: np.ndarray, after: np.ndarray, name: str = "paint") -> Step:
        """Record napari's painting of ``box`` (``before`` → ``after``, see :func:`undo.paint_delta`).

        Parameters
        ----------
        box : Box
        before, after : ndarray
            The box's pixels before and after the stroke.
        name : str
            The step's name in the history.

        Returns
        -------
        Step
        """
        ids = _ids(before) | _ids(after)
        state_before = self.review.snapshot(ids)
        step = self.history.record(name, self.labels, box, before, after)
        self.review.update(self.labels, ids, box, "edited")
        return self._changed(step, state_before, ids)

    def replace(self, labels: np.ndarray, classes: dict | None = None, name: str = "replace") -> Step:
        """Replace every object by those of ``labels`` (a new prediction) as one undo step.

        The new objects are "unreviewed" with the class and confidence of ``classes``
        (``{id: (class, confidence)}``), so the Review dock shows the prediction's own class; undo
        brings back the old pixels and rows, rejected ones included. Rows are measured in one pass
        (not object by object over the whole image), so thousands of cells cost one labelling.

        Parameters
        ----------
        labels : ndarray
            Same shape as the session's labels; cast to their dtype.
        classes : dict, optional
            Object id -> (class name, confidence); others get the table's default class.
        name : str
            The step's name in the history.

        Returns
        -------
        Step
        """
        from napari_ftu.review.table import Review

        labels = np.asarray(labels)
        if labels.shape != self.labels.shape:
            raise EditError(f"replace: labels {labels.shape} differ from the session's {self.labels.shape}")
        if labels.size and int(labels.max()) > np.iinfo(self.labels.dtype).max:
            raise EditError(f"replace: ids up to {int(labels.max())} do not fit the layer's {self.labels.dtype}")
        fresh = Review.from_labels(labels, self.review.um_per_px, None, self.review.default_class)
        for i, (cls, conf) in (classes or {}).items():
            row = fresh.rows.get(int(i))
            if row is not None:
                row.cls, row.confidence = str(cls), float("nan") if conf is None else float(conf)
        ids = set(self.review.rows) | set(fresh.rows)
        before = self.review.snapshot(ids)
        whole = (slice(0, labels.shape[0]), slice(0, labels.shape[1]))
        step = self.history.record(name, self.labels, whole, self.labels.copy(), labels.astype(self.labels.dtype))
        self.review.rows.clear()
        self.review.rows.update(fresh.rows)
        return self._changed(step, before, ids)

    # --- review decisions ----------------------------------------------------------------------
    def _state_change(self, name, ids, change) -> Step:
        ids = [int(i) for i in ids]
        if not ids:
            raise EditError(f"{name}: select an object first")
        before = self.review.snapshot(ids)
        change(ids)
        return self._changed(self.history.push_state(name, None, None), before, ids)

    def _changed(self, step: Step, before: dict, ids) -> Step:
        """Give ``step`` the rows of ``ids`` before and after (undo restores them with the pixels)
        and count the change for the autosave."""
        step.state_before, step.state_after = before, self.review.snapshot(ids)
        self.generation += 1
        return step

    def accept(self, ids) -> Step:
        """Mark objects accepted (undoable).

        Parameters
        ----------
        ids : iterable of int
            The selected objects.

        Returns
        -------
        Step

        Raises
        ------
        EditError
            No object chosen.
        """
        return self._state_change("accept", ids, lambda i: self.review.set_status(i, "accepted"))

    def set_class(self, ids, cls: str) -> Step:
        """Give objects the class ``cls`` (undoable).

        Parameters
        ----------
        ids : iterable of int
        cls : str

        Returns
        -------
        Step
        """
        return self._state_change("set class", ids, lambda i: self.review.set_class(i, cls))

    def reject(self, ids) -> Step:
        """Remove the objects from the labels and keep their rows as "rejected".

        Parameters
        ----------
        ids : iterable of int
            Their rows stay, so "n / N reviewed" counts them.

        Returns
        -------
        Step
            Undo brings the pixels and the rows back.

        Raises
        ------
        EditError
            No object selected.
        """
        ids = sorted({int(i) for i in ids})
        if not ids:
            raise EditError("reject: select an object first")
        edit = editing.delete(self.labels, ids)
        self._keep_rejected(ids)
        before = self.review.snapshot(ids)
        step = self.history.apply(self.labels, edit)
        for i in ids:
            if i in self.review.rows:
                self.review.rows[i].status = "rejected"
        return self._changed(step, before, ids)

    def _keep_rejected(self, ids) -> None:
        """Remember the pixels of objects about to be rejected: a rejected object is background
        the reviewer looked at, what a model must learn not to find."""
        if self.rejected is None:
            self.rejected = np.zeros(self.labels.shape, self.labels.dtype)
        for i in ids:
            row = self.review.rows.get(i)
            box = row.box if row is not None else (slice(0, self.labels.shape[0]), slice(0, self.labels.shape[1]))
            self.rejected[self.rejected == i] = 0
            self.rejected[box][self.labels[box] == i] = i

    def mark_done(self, box: Box) -> Step:
        """Mark a region "nothing else here" (undoable): its pixels outside objects are background
        for training, and it counts as reviewed.

        Parameters
        ----------
        box : Box
            In label coordinates; clipped to the image.
        """
        from napari_ftu.boxes import corners, from_corners

        y0, x0, y1, x1 = corners(box)
        h, w = self.labels.shape
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
        if y1 <= y0 or x1 <= x0:
            raise EditError("done: the view does not show the image")
        before = {"done": list(self.done)}
        self.done.append(from_corners(y0, x0, y1, x1))
        step = self.history.push_state("nothing else here", before, {"done": list(self.done)})
        self.generation += 1
        return step

    def repredict(self, labels: np.ndarray, classes: dict | None = None, name: str = "new prediction") -> Step:
        """Take a new model's objects for the *unreviewed* part only, as one undo step: reviewed
        objects (accepted, edited, rejected) keep their pixels, ids and rows; unreviewed ones are
        replaced by the new objects that do not fall mostly on a reviewed object, a rejected
        object or a region marked done (:func:`keep_reviewed`).

        Parameters
        ----------
        labels : ndarray
            The new prediction, same shape as the session's labels.
        classes : dict, optional
            New id -> (class, confidence).
        """
        from napari_ftu.review.table import Review

        labels = np.asarray(labels)
        if labels.shape != self.labels.shape:
            raise EditError(f"new prediction: labels {labels.shape} differ from the session's {self.labels.shape}")
        rows = self.review.rows
        merged, placed = keep_reviewed(self.labels, {i: r.status for i, r in rows.items()}, self.rejected, self.done,
                                       labels, self.next_free_id())
        unreviewed = [i for i, r in rows.items() if r.status == "unreviewed" and not (merged[r.box] == i).any()]
        ids = set(unreviewed) | set(placed.values())
        before = self.review.snapshot(ids)
        whole = (slice(0, labels.shape[0]), slice(0, labels.shape[1]))
        step = self.history.record(name, self.labels, whole, self.labels.copy(), merged.astype(self.labels.dtype))
        for i in unreviewed:
            self.review.rows.pop(i, None)
        new_ids = list(placed.values())
        measured = Review.from_labels(np.where(np.isin(merged, new_ids), merged, 0), self.review.um_per_px,
                                      None, self.review.default_class)
        back = {v: k for k, v in placed.items()}
        for i, row in measured.rows.items():
            cls, conf = (classes or {}).get(back[i], (self.review.default_class, None))
            row.cls, row.confidence = str(cls), float("nan") if conf is None else float(conf)
            self.review.rows[i] = row
        return self._changed(step, before, ids)

    # --- history ---------------------------------------------------------------------------------
    def undo(self) -> Step | None:
        """Undo the last step, pixels and review rows; None when there is nothing to undo."""
        step = self.history.undo(self.labels)
        return self._replayed(step, step.state_before if step is not None else None)

    def redo(self) -> Step | None:
        """Redo the last undone step; None when there is nothing to redo."""
        step = self.history.redo(self.labels)
        return self._replayed(step, step.state_after if step is not None else None)

    def _replayed(self, step: Step | None, rows: dict | None) -> Step | None:
        """After the history rewrote the pixels of ``step``: put its review ``rows`` back."""
        if step is not None:
            rows = dict(rows or {})
            done = rows.pop("done", None)
            if done is not None:
                self.done = list(done)
            self.review.restore(rows)
            self.generation += 1
        return step

    # --- helpers -----------------------------------------------------------------------------------
    def next_free_id(self) -> int:
        """Above every id in the image and every id in the table (rejected ones too)."""
        return editing.next_free_id(self.labels, [self.review.max_id])

    def reserved(self) -> list[int]:
        return [self.review.max_id]


def _ids(a) -> set[int]:
    return {int(i) for i in np.unique(np.asarray(a)) if i}


def keep_reviewed(labels: np.ndarray, statuses: dict, rejected, done, new: np.ndarray, first_id: int | None):
    """``(merged labels, {new id: id in merged})``: the reviewed objects of ``labels`` (accepted,
    edited) as they are, plus the objects of ``new`` that do not fall mostly (half or more) on a
    reviewed object, a rejected object or a region marked done, clipped to the rest and numbered
    from ``first_id`` (``None``: they keep their ids). Unreviewed objects of ``labels`` are
    replaced by ``new``'s, except those lying mostly in a region marked done: the reviewer saw
    them there and said nothing else was, so they stay.

    Parameters
    ----------
    labels : numpy.ndarray
        The reviewed labels.
    statuses : dict
        Object id -> review status.
    rejected : numpy.ndarray or None
        The rejected objects' pixels, by id.
    done : list of Box
        Regions marked "nothing else here".
    new : numpy.ndarray
        The new prediction.
    first_id : int or None
        The first id of the new objects kept (None: they keep their ids).

    Returns
    -------
    tuple
    """
    from scipy import ndimage as ndi

    from napari_ftu.boxes import corners

    kept = [i for i, s in statuses.items() if s in ("accepted", "edited")]
    in_done = np.zeros(labels.shape, bool)
    for b in done:
        y0, x0, y1, x1 = corners(b)
        in_done[y0:y1, x0:x1] = True
    if done:  # unreviewed objects the reviewer left in a view marked done stay as they were
        unreviewed = np.where(np.isin(labels, [i for i, s in statuses.items() if s == "unreviewed"]), labels, 0)
        for k, box in enumerate(ndi.find_objects(unreviewed), start=1):
            if box is not None and in_done[box][unreviewed[box] == k].mean() >= 0.5:
                kept.append(k)
    merged = np.where(np.isin(labels, kept), labels, 0).astype(np.int64)
    blocked = (merged > 0) | in_done
    rej = [i for i, s in statuses.items() if s == "rejected"]
    if rejected is not None and rej:
        blocked |= np.isin(rejected, rej)
    placed, next_id = {}, first_id
    for k, box in enumerate(ndi.find_objects(np.asarray(new)), start=1):
        if box is None:
            continue
        obj = np.asarray(new[box]) == k
        if not obj.any() or blocked[box][obj].mean() >= 0.5:
            continue  # the reviewer has already decided on this place
        merged[box][obj & ~blocked[box]] = k if next_id is None else next_id
        placed[k] = k if next_id is None else next_id
        next_id = None if next_id is None else next_id + 1
    return merged, placed
