"""Annotate dock: label FTUs without a model, from scribbles or clicks.

A thin view on :mod:`napari_ftu.annotate`: a scribbles Labels layer (1 = background, 2.. = FTU
classes), *Train* in a worker (``_qt/jobs.start_job``) that fills an "objects" instance Labels
layer ready for Review, Export and Train, *Save classifier* as a model folder the Segment dock
loads, and clicks: with *click to add objects* on, a click on an FTU adds its mask as a new object,
Shift+click adds it to the selected object, Alt+click removes it; each click is one undo step of
the objects layer's :class:`~napari_ftu.review.session.ReviewSession`, the one the Review dock
shows (``_qt/state.session_of``), so Ctrl+Z, the Review dock's Undo and *Undo click* walk one
history. *Apply to slide* runs the classifier over the whole image (pyramids included) through
the engine, with the Segment dock's result layers (``_qt/common.EngineRunDock``).

With *cells (fluorescence)* on (the default for a four-channel image such as an HPA composite),
*Train* makes cells instead (:func:`napari_ftu.annotate.cells.cell_steps`, as ``napari-ftu annotate
--cells``): one per nucleus of the blue channel, each with a class and confidence, so the Export
dock writes them as an HPA CSV; *Apply to slide* then makes the cells of the chosen image (this
field or another) with that classifier.
"""

from __future__ import annotations

from collections import Counter

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    create_widget,
)
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer

from napari_ftu._qt.common import EngineRunDock, level0, probability_colormap, status_line
from napari_ftu._qt.jobs import start_job
from napari_ftu._qt.state import announce_edit, session_of, share_session
from napari_ftu.annotate import clicks, headless
from napari_ftu.annotate.cells import N_CHANNELS, cell_steps
from napari_ftu.annotate.cells import apply_steps as apply_cells_steps
from napari_ftu.annotate.live import LiveClassifier, live_steps, view_of, view_scribbles
from napari_ftu.annotate.pixels import BACKGROUND
from napari_ftu.boxes import corners, from_corners
from napari_ftu.engine.options import SegmentOptions
from napari_ftu.errors import InputError, ModelError, OptionError
from napari_ftu.io.images import assumed_pixel_size
from napari_ftu.models.features import DEEP_STAGES
from napari_ftu.review.editing import EditError
from napari_ftu.review.session import ReviewSession

SCRIBBLES = "scribbles"
OBJECTS = "objects"
LIVE = "live prediction"
SHAPE_CHOICES = [("as predicted", ""), ("convex hull", "convex"), ("enclosing outline (capsule)", "outline")]
LIVE_DELAY_MS = 300  # after the last stroke, so a burst of strokes retrains once


class AnnotateWidget(EngineRunDock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self._init_run()
        self.classifier = None
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.um_per_px = FloatSpinBox(label="µm/px", value=1.0, min=0.01, max=100.0, step=0.05)
        self.um_per_px.native.setDecimals(4)  # a slide's 0.499 shown as 0.50 would resample every tile
        self.classes = LineEdit(label="FTU classes", value="glomerulus", tooltip="comma separated: labels 2, 3, ...")
        defaults = headless.SCRIBBLE_DEFAULTS  # the command's defaults too
        self.diameter = FloatSpinBox(label="FTU diameter µm", value=clicks.DIAMETER_UM, min=1.0, max=1e4)
        self.min_um2 = FloatSpinBox(label="min object µm²", value=defaults.min_object_um2(self.diameter.value),
                                    min=0.0, max=1e7, step=100.0,
                                    tooltip="follows the FTU diameter (a share of its disc); 0 keeps all objects")
        self.cells = CheckBox(text="cells (fluorescence): one cell per nucleus of the blue channel", value=False,
                              tooltip="for 4-channel images (HPA red, green, blue = nuclei, yellow); classes as "
                                      "HPA label names (nucleoplasm, cytosol, ...) export as an HPA CSV")
        self.encoder_features = CheckBox(text="encoder features (ImageNet EfficientNet-Lite0: context; slower)",
                                         value=defaults.encoder_features,
                                         tooltip="tells glomeruli from tubules better; the view's "
                                                 "features take several times longer (RGB only)")
        self.shape = ComboBox(label="object shape", value=defaults.shape, choices=SHAPE_CHOICES,
                              tooltip="strokes find an FTU's dense core: convex hulls, or the outline grown out "
                                      "to the edge that encloses it (Bowman's capsule; FTUs of the diameter above)")
        self.add_button = PushButton(text="Add scribbles layer")
        self.train_button = PushButton(text="Train")
        self.live = CheckBox(text="live: retrain on every stroke, predict the visible region", value=True)
        self.clicking = CheckBox(text="click to add objects (Shift: add to selected, Alt: remove)", value=False)
        self.undo_button = PushButton(text="Undo click")
        self.model_dir = FileEdit(label="save to", mode="d", value="scribble_classifier")
        self.save_button = PushButton(text="Save classifier", enabled=False)
        self.apply_button = PushButton(text="Apply to slide", enabled=False,
                                       tooltip="run the classifier over the whole image through the tile engine")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.bar = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = status_line("paint 1 = background, 2.. = FTUs, then Train")
        self.status.native.setMinimumHeight(2 * self.status.native.fontMetrics().lineSpacing() + 4)
        self.scale_note = status_line()  # says when the image's pixel size is assumed
        self.scale_note.visible = False
        self.extend([self.image, self.um_per_px, self.classes, self.cells, self.min_um2, self.diameter,
                     self.encoder_features, self.shape, self.add_button, self.live, self.train_button, self.clicking,
                     self.undo_button, self.model_dir, self.save_button,
                     Container(layout="horizontal", widgets=[self.apply_button, self.cancel_button], labels=False),
                     self.bar, self.scale_note, self.status])
        self.add_button.changed.connect(self.add_scribbles)
        self.train_button.changed.connect(self.train)
        self.save_button.changed.connect(self.save)
        self.undo_button.changed.connect(self.undo)
        self.apply_button.changed.connect(self.apply)
        self.cancel_button.changed.connect(self.cancel)
        self.image.changed.connect(self._image_changed)
        self.encoder_features.changed.connect(self._new_live_model)
        self.diameter.changed.connect(lambda d: setattr(self.min_um2, "value", defaults.min_object_um2(d)))
        viewer.layers.events.inserted.connect(self._layer_inserted)
        self._image_changed()
        viewer.mouse_drag_callbacks.append(self._on_click)
        self._new_live_model()
        self.live_worker = None
        self._live_timer = QTimer()
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self.live_update)
        self._training_cells = False
        self._cells_classifier = False  # the classifier was trained for cells: Apply makes cells

    def _new_live_model(self, *_):
        """The live classifier starts afresh when its features change."""
        self._live_model = LiveClassifier(deep=DEEP_STAGES if self.encoder_features.value else 0)

    def _image_changed(self, *_):
        layer = self.image.value
        if layer is not None and layer.metadata.get("um_per_px"):
            self.um_per_px.value = float(layer.metadata["um_per_px"])
        note = None
        if layer is not None and not layer.metadata.get("um_per_px"):
            _, note = assumed_pixel_size(layer.name, None, self.um_per_px.value, "this dock's", "µm/px above")
        self.scale_note.value, self.scale_note.visible = note or "", bool(note)
        self.cells.value = layer is not None and self._channels(layer) == N_CHANNELS

    def _layer_inserted(self, event):
        """A channel of the chosen image arrived after it (napari adds a composite's channels one
        by one): count its channels again."""
        layer = self.image.value
        if layer is not None and event.value is not layer and event.value in self._siblings(layer):
            self._image_changed()

    def _siblings(self, layer) -> list:
        """The channel layers of a multichannel image (an HPA composite): one layer per channel,
        all from the same file."""
        path = layer.metadata.get("path")
        return [lay for lay in self._viewer.layers if isinstance(lay, napari.layers.Image) and not lay.rgb
                and path and lay.metadata.get("path") == path]

    def _channels(self, layer) -> int:
        """How many fluorescence channels the image has (0 for RGB: a colour image, not channels)."""
        siblings = self._siblings(layer)
        if len(siblings) > 1:
            return len(siblings)
        shape = level0(layer).shape
        if layer.rgb:
            return 0
        return N_CHANNELS if len(shape) == 3 and N_CHANNELS in (shape[0], shape[-1]) else 1

    def _pixels(self) -> np.ndarray:
        layer = self.image.value
        if layer is None:
            raise InputError("open an image first")
        siblings = self._siblings(layer)
        if len(siblings) > 1:
            from napari_ftu.annotate.cells import composite

            return composite({lay.name: level0(lay) for lay in siblings})
        return np.asarray(level0(layer))

    def add_scribbles(self, *_) -> napari.layers.Labels:
        image = self.image.value
        if image is None:
            return self._fail("open an image first")
        if SCRIBBLES in self._viewer.layers:
            return self._viewer.layers[SCRIBBLES]
        layer = self._viewer.add_labels(np.zeros(level0(image).shape[:2], np.uint8), name=SCRIBBLES, opacity=0.8,
                                        scale=image.scale[-2:], translate=image.translate[-2:])
        layer.brush_size, layer.selected_label = 5, 2
        layer.mode = "paint"
        layer.events.paint.connect(self._stroke)
        return layer

    # --- live: every stroke retrains, the visible region is predicted ------------------------------
    def _stroke(self, *_):
        """A stroke: (re)start the debounce timer, so a burst of strokes retrains once."""
        if self.live.value:
            self._live_timer.start()

    def visible_box(self) -> tuple[int, int, int, int]:
        """The image's visible region (y0, y1, x0, x1) in full-resolution pixels, from the
        camera and the canvas size (clipped to the image by the caller)."""
        layer = self.image.value
        camera = self._viewer.scene.camera if hasattr(self._viewer, "scene") else self._viewer.camera
        half = np.asarray(self._viewer.canvas.size, float) / 2 / camera.zoom
        centre = np.asarray(camera.center[-2:], float)
        corners = [np.asarray(layer.world_to_data(c))[-2:] for c in (centre - half, centre + half)]
        (y0, x0), (y1, x1) = np.minimum(*corners), np.maximum(*corners)
        return int(np.floor(y0)), int(np.ceil(y1)), int(np.floor(x0)), int(np.ceil(x1))

    def live_update(self, *_):
        """Retrain on the strokes in view and predict the view, in a worker; a newer stroke
        cancels a run still going. Returns the worker (None when there is nothing to do)."""
        layer = self.image.value
        if layer is None or SCRIBBLES not in self._viewer.layers or self.worker is not None:
            return None
        y0, y1, x0, x1 = self.visible_box()
        view = view_of(from_corners(y0, x0, y1, x1), level0(layer).shape)
        scribbles = view_scribbles(self._viewer.layers[SCRIBBLES].data, view)  # a copy: painting goes on
        values = set(np.unique(scribbles).tolist())
        if BACKGROUND not in values or not values - {0, BACKGROUND}:
            self.status.value = "live: paint background (1) and FTU (2..) strokes in view"
            return None
        if self.live_worker is not None:
            self.live_worker.quit()
        levels = list(layer.data) if layer.multiscale else [layer.data]
        steps = live_steps(self._live_model, levels, scribbles, view, self.um_per_px.value, self._names(),
                           image_id=id(layer))
        self.status.value = "live: retraining…"
        worker = start_job(steps, "Annotate: live", on_done=self._show_live, on_error=self._live_failed)
        worker.finished.connect(lambda: self._live_finished(worker))
        self.live_worker = worker
        return worker

    def _live_finished(self, worker):
        if self.live_worker is worker:
            self.live_worker = None

    def _live_failed(self, exc):
        self.status.value = f"live: {exc}"

    def _show_live(self, result):
        """The view's FTU probability in the "live prediction" layer, placed over the view."""
        view, prob, clf = result
        layer = self.image.value
        self.classifier, self._cells_classifier = clf, False
        self._set_running(self.worker is not None)
        self.save_button.enabled = True
        shown = prob[0] if len(prob) == 1 else prob.sum(0)
        scale = np.asarray(layer.scale[-2:]) * view.step
        translate = np.asarray(layer.translate[-2:]) + np.asarray(corners(view.box)[:2]) * np.asarray(layer.scale[-2:])
        if LIVE in self._viewer.layers:
            live = self._viewer.layers[LIVE]
            live.data, live.scale, live.translate = shown, scale, translate
        else:
            live = self._viewer.add_image(shown, name=LIVE, scale=scale, translate=translate,
                                          colormap=probability_colormap(), blending="translucent", opacity=0.6,
                                          contrast_limits=(0, 1))
        live.metadata.update({"view": corners(view.box), "step": view.step, "um_per_px": clf.um_per_px})
        self.status.value = (f"live: {int((shown > 0.5).sum())} FTU px of {shown.size} in view "
                             f"(grid {view.step}× coarser)")

    def _names(self) -> list[str]:
        return [c.strip() for c in self.classes.value.split(",") if c.strip()]

    def _objects(self) -> napari.layers.Labels:
        """The objects layer (made on first use) with its session registered for the Review dock."""
        if OBJECTS not in self._viewer.layers:
            layer = self._viewer.add_labels(np.zeros(self._pixels().shape[:2], np.int32), name=OBJECTS, opacity=0.5,
                                            metadata={"um_per_px": self.um_per_px.value,
                                                      "source": getattr(self.image.value, "name", None)})
            for key, action in (("Control-Z", self.undo), ("Control-Shift-Z", self.redo)):
                layer.bind_key(key, lambda _layer, act=action: act(), overwrite=True)
        return self._viewer.layers[OBJECTS]

    @property
    def session(self) -> ReviewSession | None:
        """The objects layer's review session, shared with the Review dock (one undo history)."""
        if OBJECTS not in self._viewer.layers:
            return None
        layer = self._viewer.layers[OBJECTS]
        session = session_of(layer)
        if session is None and isinstance(layer.data, np.ndarray):
            session = ReviewSession(layer.data, um_per_px=self.um_per_px.value)
            share_session(layer, session)
        return session

    def train(self, *_):
        """Train on the scribbles and replace the objects layer (one clear message on bad input)."""
        try:
            image = self._pixels()
            if SCRIBBLES not in self._viewer.layers:
                raise InputError("no scribbles layer: press 'Add scribbles layer' and paint")
            scribbles = np.asarray(self._viewer.layers[SCRIBBLES].data)
            if self.cells.value:  # the image, scribbles and nuclei are checked before the first step
                steps, total = cell_steps(image, scribbles, self.um_per_px.value, self._names(), source=SCRIBBLES,
                                          image_source=self.image.value.name), 4
            else:
                steps, total = headless.scribble_steps(image, scribbles, self.um_per_px.value, self._names(),
                                                       self.min_um2.value, encoder_features=self.encoder_features.value,
                                                       shape=self.shape.value, diameter_um=self.diameter.value), 3
            next(steps)  # checks the input here, so bad input never starts a worker
        except InputError as exc:
            self._fail(str(exc))
            return None
        self._training_cells = self.cells.value
        self._set_running(True)
        self.status.value = "training..."
        self.worker = start_job(steps, "Annotate: train", on_done=self._trained, on_error=self._failed,
                                on_finished=self._finished, bar=self.bar, total=total)
        return self.worker

    def _trained(self, result, on: str | None = None):
        """The objects (or cells) replace those of the objects layer as one undo step of its
        session, with their class and confidence (the Review dock's rows, the layer's features).
        ``on`` names the image when an already trained classifier made them (cells' Apply)."""
        labels, table, clf = result
        self.classifier = clf
        self._cells_classifier = self._training_cells
        layer = self._objects()
        session = self.session
        if session is None or layer.data.shape != labels.shape or layer.data.dtype != labels.dtype:
            layer.data = np.zeros(labels.shape, labels.dtype)  # another image: start this layer afresh
            session = self.session
        what = "cells" if self._training_cells else "objects"
        session.replace(labels, {r["id"]: (r["cls"], r.get("confidence")) for r in table}, name=f"train: {what}")
        layer.metadata["objects"] = table
        self._announce(layer, session)
        self.save_button.enabled = self.apply_button.enabled = True
        counts = Counter(r["cls"] for r in table)
        detail = ", ".join(f"{n} {c}" for c, n in counts.items())
        where = f"on {on}" if on else "from the scribbles"
        self.status.value = f"{len(table)} {what} {where}" + (f": {detail}" if len(counts) > 1 else "")

    def _announce(self, layer, session):
        layer.features = session.review.features()  # what the Export dock writes follows every step
        layer.refresh()
        announce_edit(self._viewer, layer, session)

    def _failed(self, exc):
        self._fail(f"training failed: {exc}")

    def _finished(self):
        self.worker = None
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.train_button.enabled = not running
        self.apply_button.enabled = not running and self.classifier is not None
        self.cancel_button.enabled = running

    def apply(self, *_):
        """Run the classifier over the whole image layer (every pyramid level the engine needs)
        like a model: the Segment dock's result layers, progress, cancel, bounded memory. A
        classifier trained for cells makes cells instead, into the objects layer as Train does."""
        layer = self.image.value
        if layer is None or self.classifier is None:
            return self._fail("open an image and train the classifier first")
        if self.worker is not None:
            return None
        if self._cells_classifier:
            return self._apply_cells(layer)
        try:
            model = self.classifier.model(min_object_um2=self.min_um2.value)
            options = SegmentOptions(threshold=0.5)
            options.resolve(model.card)
        except (ModelError, OptionError, ValueError) as exc:
            return self._fail(exc)
        return self.start_run(layer, model, options, self.um_per_px.value, f"Annotate: apply to {layer.name}")

    def _apply_cells(self, layer):
        """One cell per nucleus of the image layer's blue channel (this field or another one),
        classed by the trained classifier: one undo step of the objects layer."""
        name = layer.name
        try:
            steps = apply_cells_steps(self._pixels(), self.classifier, self.um_per_px.value, image_source=name)
            next(steps)  # the channels and nuclei are checked here: bad input never starts a worker
        except InputError as exc:
            return self._fail(str(exc))
        self._set_running(True)
        self.status.value = f"cells on {name}..."
        clf = self.classifier
        self.worker = start_job(steps, f"Annotate: cells on {name}",
                                on_done=lambda result: self._trained((*result, clf), on=name),
                                on_error=lambda exc: self._fail(f"cells on {name} failed: {exc}"),
                                on_finished=self._finished, bar=self.bar, total=3)
        return self.worker

    def save(self, *_):
        if self.classifier is None:
            return self._fail("train first")
        try:
            folder = self.classifier.save(self.model_dir.value, min_object_um2=self.min_um2.value,
                                          cells=self._cells_classifier)
        except OSError as exc:
            return self._fail(f"{self.model_dir.value}: cannot save ({exc})")
        runs = "napari-ftu annotate IMAGE --cells --model FOLDER applies it" if self._cells_classifier else \
            "the Segment dock and napari-ftu segment load it"
        show_info(f"saved the classifier to {folder} ({runs})")
        self.status.value = f"saved {folder}"

    def click(self, point, mode: str = "new") -> int | None:
        """Add (``new``), grow (``add``) or cut (``remove``) an object at ``point`` (y, x): one
        step of the objects layer's review history."""
        try:
            image = self._pixels()
            prob = self.classifier.probability(image)[0] if self.classifier is not None else None
            mask = clicks.object_at(image, point, self.um_per_px.value, self.diameter.value, prob=prob)
            layer = self._objects()
            session = self.session
            if session is None:
                raise InputError(f"{OBJECTS}: not an editable label image")
            edit = headless.click_edit(layer.data, mask, mode, int(layer.selected_label))
            session.apply(edit)
        except (InputError, EditError) as exc:
            self._fail(str(exc))
            return None
        self._announce(layer, session)
        if edit.created:
            layer.selected_label = edit.created[0]
        self.status.value = f"{edit.name} ({len(session.review.rows)} objects)"
        return edit.created[0] if edit.created else int(layer.selected_label)

    def undo(self, *_):
        self._replay("undo")

    def redo(self, *_):
        self._replay("redo")

    def _replay(self, which: str):
        session = self.session
        if session is not None and getattr(session, which)() is not None:
            self._announce(self._viewer.layers[OBJECTS], session)

    def _on_click(self, viewer, event):
        if not self.clicking.value or self.image.value is None:
            return
        mods = {str(m).lower() for m in event.modifiers}
        mode = "add" if "shift" in mods else "remove" if "alt" in mods else "new"
        point = self.image.value.world_to_data(event.position)[-2:]
        self.click(point, mode)
