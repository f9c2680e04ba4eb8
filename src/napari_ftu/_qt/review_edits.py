"""The Review dock's corrections: merge, delete, fill, grow and shrink, split, new objects,
napari's own paint tools and undo, each one undoable step of the shared
:class:`~napari_ftu.review.session.ReviewSession` (the operations are :mod:`napari_ftu.review.editing`).
"""

from __future__ import annotations

import math

import numpy as np
from napari.utils.notifications import show_info

from napari_ftu._qt.state import mark_edited
from napari_ftu.errors import EditError, InputError
from napari_ftu.review import editing
from napari_ftu.review.undo import paint_delta

ERRORS = (EditError, InputError, KeyError, ValueError, OSError)  # what a correction raises: shown, not raised


class EditActions:
    """The editing buttons of :class:`~napari_ftu._qt.review.ReviewWidget`, which it mixes in."""

    def _edit(self, make):
        return self._run(lambda: self.session.apply(make(self.session.labels)))

    def merge(self):
        return self._edit(lambda lab: editing.merge(lab, self._need(2)))

    def delete(self):
        return self._edit(lambda lab: editing.delete(lab, self._need()))

    def fill_holes(self):
        return self._edit(lambda lab: editing.fill_holes(lab, self.current() or None))

    def remove_small(self):
        um = self.session.review.um_per_px if self.session else None
        pixels = max(1, int(math.ceil(self.min_area.value / ((um or 1.0) ** 2))))
        return self._edit(lambda lab: editing.remove_small(lab, pixels))

    def grow(self, sign: int):
        op = editing.dilate if sign > 0 else editing.erode
        return self._edit(lambda lab: op(lab, self._need()[0], self.grow_px.value))

    def relabel(self):
        return self._edit(editing.renumber)

    def _helper(self, kind: str, name: str, mode: str):
        """The helper Shapes/Points layer drawn on for splits, aligned with the labels layer."""
        if name in self._viewer.layers:
            return self._viewer.layers[name]
        kw = {"name": name, "scale": self.layer.scale, "translate": self.layer.translate}
        if kind == "shapes":
            helper = self._viewer.add_shapes(edge_color="white", edge_width=2 * float(self.layer.scale[-1]), **kw)
        else:
            helper = self._viewer.add_points(face_color="magenta", size=8 * float(self.layer.scale[-1]), **kw)
        helper.mode = mode
        return helper

    def split_by_line(self):
        """Split the object the drawn line crosses (draw in the "FTU cut" layer, then press again)."""
        if self.session is None:
            return self._fail("choose a Labels layer to review")
        helper = self._helper("shapes", "FTU cut", "add_line")
        if len(helper.data) == 0:
            self._viewer.layers.selection.active = helper
            show_info("draw a line across the object in the 'FTU cut' layer, then press Split by line again")
            return None
        line = np.asarray(helper.data[-1])[:, -2:]
        target = self.current()
        result = self._edit(lambda lab: editing.split_by_line(lab, target[0] if len(target) == 1 else None, line,
                                                              self.session.reserved()))
        if result is not None:
            helper.data = []
        return result

    def split_watershed(self):
        """Split one object by watershed from the seeds clicked in the "FTU seeds" layer."""
        if self.session is None:
            return self._fail("choose a Labels layer to review")
        helper = self._helper("points", "FTU seeds", "add")
        if len(helper.data) < 2:
            self._viewer.layers.selection.active = helper
            show_info("click two or more seeds inside the object in the 'FTU seeds' layer, then press again")
            return None
        seeds = np.asarray(helper.data)[:, -2:]
        result = self._edit(lambda lab: editing.split_watershed(lab, seeds, reserved=self.session.reserved()))
        if result is not None:
            helper.data = np.empty((0, 2))
        return result

    def new_object(self, mode: str):
        """Paint (brush) or draw (polygon) a new object with the next free id; undoable like the rest."""
        if self.session is None:
            return self._fail("choose a Labels layer to review")
        self.layer.selected_label = self.session.next_free_id()
        self.layer.mode = mode
        self._viewer.layers.selection.active = self.layer
        return self.layer.selected_label

    def _on_paint(self, event):
        """napari's paint / fill / erase / polygon: record it in our history and the review table."""
        if self.session is None:
            return
        delta = paint_delta(self.layer.data, event.value)
        if delta is None:
            return
        self.session.record_paint(*delta, name=f"napari {self.layer.mode}")
        mark_edited(self.layer)
        if hasattr(self.layer, "_reset_history"):
            self.layer._reset_history()  # our history holds it now; napari's copy would only cost memory
        self.refresh()

    def undo(self):
        return self._run(self.session.undo if self.session else lambda: None)

    def redo(self):
        return self._run(self.session.redo if self.session else lambda: None)
