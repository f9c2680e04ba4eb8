"""The Review dock on large slides: a pyramidal label store shown read-only, and full-resolution
windows of it copied into an editable layer and written back (:mod:`napari_ftu.review.label_store`).
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from napari.utils.notifications import show_info

from napari_ftu._qt.review_edits import ERRORS
from napari_ftu.boxes import corners, from_corners, overlaps, size
from napari_ftu.errors import InputError
from napari_ftu.review.autosave import pending_windows
from napari_ftu.review.label_store import LabelStore

MAX_WINDOW = 4096  # full-resolution pixels per side of an editable window


class SlideWindows:
    """Large-slide windows of :class:`~napari_ftu._qt.review.ReviewWidget`, which it mixes in."""

    def open_store(self, path, image=None):
        """Show a pyramidal label store (zarr) as multiscale labels over ``image`` (read-only view)."""
        try:
            self.store = LabelStore.open(path)
        except InputError as exc:
            return self._fail(exc)
        image = image or next((lyr for lyr in self._viewer.layers if isinstance(lyr, napari.layers.Image)), None)
        kw = {"scale": image.scale[-2:], "translate": image.translate[-2:]} if image is not None else {}
        meta = {"label_store": str(path), "um_per_px": image.metadata.get("um_per_px") if image else None,
                "source": image.name if image else None}
        name = f"{Path(path).stem} (store)"
        layer = self._viewer.add_labels(self.store.levels, name=name, multiscale=True, opacity=0.5, metadata=meta, **kw)
        return layer

    def edit_window(self, box=None):
        """Copy a full-resolution window of the label store into an editable Labels layer:
        ``box`` (a :data:`~napari_ftu.boxes.Box`), else the last rectangle of the "FTU box" layer, else the view."""
        store_layer = next((lyr for lyr in self._viewer.layers if lyr.metadata.get("label_store")), None)
        if store_layer is None or self.store is None:
            return self._fail("open a label store first (multiscale labels of a large slide)")
        self.save_now()  # the open window's edits count as pending below
        try:
            box = box if box is not None else self._pending_or(self._window_box(store_layer), store_layer)
            h, w = size(box)
            if h > MAX_WINDOW or w > MAX_WINDOW:
                raise ValueError(f"the window is {h} × {w} px; zoom in or draw a box of at most "
                                 f"{MAX_WINDOW} × {MAX_WINDOW} full-resolution pixels")
            window = self.store.read_window(box)
        except ERRORS as exc:
            return self._fail(exc)
        if self.window is not None and self.window[0] in self._viewer.layers:
            self._viewer.layers.remove(self.window[0])
        scale = np.asarray(store_layer.scale[-2:], float)
        y, x = corners(box)[:2]
        translate = np.asarray(store_layer.translate[-2:], float) + np.array([y, x]) * scale
        meta = {**store_layer.metadata, "window_offset": (y, x)}
        meta.pop("label_store", None)
        layer = self._viewer.add_labels(window, name=f"{store_layer.name} window", scale=scale, translate=translate,
                                        metadata=meta, opacity=0.6)
        self.window = (layer, box)
        self.labels_layer.value = layer
        self.bind(layer)
        return layer

    def _pending_or(self, box, store_layer):
        """``box``, or the window overlapping it whose edits are not in the label store yet: two
        overlapping windows edited apart would each undo the other's pixels when saved."""
        for pending in pending_windows(self._session_folder(store_layer), f"{store_layer.name} window"):
            if pending != box and overlaps(pending, box):
                (py, px), (ph, pw) = corners(pending)[:2], size(pending)
                show_info(f"reopened the window at ({py}, {px}), {ph} × {pw}: its edits are not in the label store "
                          f"yet (Save window to label store, then edit elsewhere)")
                return pending
        return box

    def _window_box(self, store_layer):
        H, W = self.store.shape
        if "FTU box" in self._viewer.layers and len(self._viewer.layers["FTU box"].data):
            box_layer = self._viewer.layers["FTU box"]
            corners = np.array([store_layer.world_to_data(box_layer.data_to_world(v))
                                for v in np.asarray(box_layer.data[-1])])[:, -2:]
            y0, x0 = np.floor(corners.min(axis=0)).astype(int)
            y1, x1 = np.ceil(corners.max(axis=0)).astype(int)
        else:
            centre = np.asarray(store_layer.world_to_data(self._viewer.scene.camera.center))[-2:]
            size = np.asarray(self._viewer.canvas.size, float)
            half = size / 2 / self._viewer.scene.camera.zoom / np.abs(np.asarray(store_layer.scale[-2:], float))
            (y0, x0), (y1, x1) = np.floor(centre - half).astype(int), np.ceil(centre + half).astype(int)
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(H, y1), min(W, x1)
        if y1 <= y0 or x1 <= x0:
            raise ValueError("the view or box lies outside the slide")
        return from_corners(y0, x0, y1, x1)

    def save_window(self):
        """Write the edited window back into the label store (and its lower levels)."""
        if self.window is None or self.store is None:
            return self._fail("open a full-resolution window first")
        layer, box = self.window
        try:
            regions = self.store.write_window(box, layer.data)
        except ERRORS as exc:
            return self._fail(exc)
        for lyr in self._viewer.layers:
            if lyr.metadata.get("label_store"):
                lyr.refresh()
        if self.autosaver is not None and self.layer is layer:  # the session records what the store holds
            self.autosaver.meta["in_store_generation"] = self.session.generation
            self._save(lambda: self.autosaver.save_now(force=True))
        else:
            self.save_now()
        show_info(f"saved the {layer.data.shape[0]} × {layer.data.shape[1]} window into the label store")
        return regions
