"""Undo/redo for label edits as bounding-box deltas, compressed, with a step and a memory cap.

A step keeps, for each box it changed, the box's contents before and after (zlib-compressed:
label crops are mostly runs, so a step on a big label image costs kilobytes, not a copy of the
image). Our own operations (:mod:`napari_ftu.review.editing`) and napari's painting (its ``paint``
event's history atoms, converted by :func:`paint_delta`) go into one history, so Ctrl+Z undoes
both in the order they happened. Each step can carry an opaque ``state`` pair (the review
statuses before and after) for the caller to restore.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass, field
from functools import reduce

import numpy as np

from napari_ftu.boxes import Box, from_corners, shift, union
from napari_ftu.review.editing import Edit

DEFAULT_STEPS = 100
DEFAULT_BYTES = 256 * 2**20


def _pack(a: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(a).tobytes(), 1)


@dataclass
class _Box:
    box: Box
    shape: tuple
    dtype: np.dtype
    before: bytes
    after: bytes

    def crop(self, which: str) -> np.ndarray:
        raw = zlib.decompress(self.before if which == "before" else self.after)
        return np.frombuffer(raw, dtype=self.dtype).reshape(self.shape).copy()


@dataclass
class Step:
    """One undoable change: the boxes it touched and the caller's state before and after.

    Parameters
    ----------
    name : str
    boxes : list
        What it changed, compressed.
    state_before, state_after : object
        The caller's state (the review rows), restored with the pixels.
    """

    name: str
    boxes: list[_Box] = field(default_factory=list)
    state_before: object = None
    state_after: object = None

    @property
    def nbytes(self) -> int:
        return sum(len(b.before) + len(b.after) for b in self.boxes)

    @property
    def region(self) -> Box | None:
        """The union of the step's boxes."""
        return reduce(union, (b.box for b in self.boxes)) if self.boxes else None


class History:
    """Linear undo/redo history of label edits, capped at ``max_steps`` and ``max_bytes``
    (the oldest steps go first; the newest step is always kept).

    Parameters
    ----------
    max_steps : int
    max_bytes : int
        Compressed bytes of all steps.

    Raises
    ------
    ValueError
        ``max_steps`` below 1.
    """

    def __init__(self, max_steps: int = DEFAULT_STEPS, max_bytes: int = DEFAULT_BYTES):
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.max_steps, self.max_bytes = max_steps, max_bytes
        self._undo: deque[Step] = deque()
        self._redo: deque[Step] = deque()

    # --- recording -------------------------------------------------------------------------
    def apply(self, labels, edit: Edit, state_before=None, state_after=None) -> Step | None:
        """Write ``edit``'s patches into ``labels`` and record them; None for an empty edit.

        Parameters
        ----------
        labels : array-like
            Written in place.
        edit : Edit
        state_before, state_after : object
            The caller's state to restore on undo and redo.

        Returns
        -------
        Step or None
        """
        if edit.empty:
            return None
        step = Step(edit.name, state_before=state_before, state_after=state_after)
        for patch in edit.patches:
            before = np.array(labels[patch.box], copy=True)
            if before.shape != patch.after.shape:
                raise ValueError(f"{edit.name}: patch of shape {patch.after.shape} for box of shape {before.shape}")
            labels[patch.box] = patch.after
            step.boxes.append(_Box(patch.box, before.shape, before.dtype, _pack(before), _pack(patch.after)))
        self._push(step)
        return step

    def record(self, name: str, labels, box: Box, before: np.ndarray, after: np.ndarray,
               state_before=None, state_after=None) -> Step:
        """Record a change made outside the history (napari's painting): ``after`` is written
        into ``labels`` (again, if it is there already) and ``before`` kept for undo.

        Parameters
        ----------
        name : str
        labels : array-like
        box : Box
        before, after : ndarray
            The box's pixels.
        state_before, state_after : object

        Returns
        -------
        Step
        """
        labels[box] = after
        step = Step(name, [_Box(box, before.shape, before.dtype, _pack(before), _pack(after))],
                    state_before, state_after)
        self._push(step)
        return step

    def push_state(self, name: str, state_before, state_after) -> Step:
        """Record a change of the caller's state only (accept, set class): no pixels.

        Parameters
        ----------
        name : str
        state_before, state_after : object

        Returns
        -------
        Step
        """
        step = Step(name, [], state_before, state_after)
        self._push(step)
        return step

    def _push(self, step: Step) -> None:
        self._undo.append(step)
        self._redo.clear()
        self._trim()

    def _trim(self) -> None:
        while len(self._undo) > self.max_steps:
            self._undo.popleft()
        while len(self._undo) > 1 and self.nbytes > self.max_bytes:
            self._undo.popleft()

    # --- replay ----------------------------------------------------------------------------
    def undo(self, labels) -> Step | None:
        """Restore the boxes of the last step (newest box first); returns the step or None.

        Parameters
        ----------
        labels : array-like
            Written in place.

        Returns
        -------
        Step or None
            None when there is nothing to undo.
        """
        if not self._undo:
            return None
        step = self._undo.pop()
        for b in reversed(step.boxes):
            labels[b.box] = b.crop("before")
        self._redo.append(step)
        return step

    def redo(self, labels) -> Step | None:
        """Write the next undone step again; returns it, or None when there is none.

        Parameters
        ----------
        labels : array-like
            The label image the step was undone on.

        Returns
        -------
        Step or None
            The step written again; None after a new edit or at the newest step.
        """
        if not self._redo:
            return None
        step = self._redo.pop()
        for b in step.boxes:
            labels[b.box] = b.crop("after")
        self._undo.append(step)
        self._trim()
        return step

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._undo) + sum(s.nbytes for s in self._redo)

    def __len__(self) -> int:
        return len(self._undo)

    def names(self) -> list[str]:
        return [s.name for s in self._undo]


def paint_delta(data, atoms) -> tuple[Box, np.ndarray, np.ndarray] | None:
    """``(box, before, after)`` of a napari paint event from the history atoms napari emits in
    ``layer.events.paint`` (``value``): mask atoms (``slice_key, mask, old_values, new_value``) or
    ``(indices, old_values, new_values)`` tuples.

    napari emits the event before writing a single click's pixels but after a drag stroke's, so
    ``after`` is rebuilt by replaying the atoms forward on the current box and ``before`` by
    replaying them backward: both are right whichever way round the data are.

    Parameters
    ----------
    data : array-like
        The layer's labels.
    atoms : list
        The ``value`` of napari's paint event.

    Returns
    -------
    tuple or None
        None when the event painted no pixel.
    """
    boxes = []
    for atom in atoms:
        if hasattr(atom, "slice_key"):
            boxes.append(tuple(atom.slice_key[-2:]))
        else:
            idx = atom[0][-2:]
            if idx[0].size:
                boxes.append(from_corners(idx[0].min(), idx[1].min(), idx[0].max() + 1, idx[1].max() + 1))
    if not boxes:
        return None
    box = reduce(union, boxes)
    y0, x0 = box[0].start, box[1].start
    after = np.array(data[box], copy=True)
    atoms = list(atoms)
    for atom in atoms:
        _replay(after, atom, y0, x0, forward=True)
    before = after.copy()
    for atom in reversed(atoms):
        _replay(before, atom, y0, x0, forward=False)
    return box, before, after


def _replay(crop: np.ndarray, atom, y0: int, x0: int, forward: bool) -> None:
    """Apply one napari history atom to ``crop`` (box-local coordinates), forward or backward."""
    if hasattr(atom, "slice_key"):
        region = crop[shift(tuple(atom.slice_key[-2:]), -y0, -x0)]
        if atom.mask is None:
            region[...] = atom.new_value if forward else np.asarray(atom.old_values).reshape(region.shape)
        else:
            region[np.asarray(atom.mask).reshape(region.shape)] = atom.new_value if forward else atom.old_values
    else:
        idx = atom[0][-2:]
        if idx[0].size:
            crop[idx[0] - y0, idx[1] - x0] = atom[2] if forward else atom[1]
