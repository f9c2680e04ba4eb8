"""Measurements dock: every object's measurements in the Labels layer's features, and a plot of
them (a histogram of one column or a scatter of two).

Clicking a point selects that object (the Review dock follows the layer's selected label) and
centres it; dragging over a range (histogram) or a box (scatter) narrows the Review dock's queue
to those objects, through the docks' shared state. The plot follows edits: the review session's
generation and napari's painting are checked twice a second. The numbers come from
:mod:`napari_ftu.measure` (the same code as ``napari-ftu measure``).
"""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, create_widget

from napari_ftu._qt.common import Dock, button, plot_canvas, status_line
from napari_ftu._qt.state import session_of
from napari_ftu.errors import FTUError
from napari_ftu.measure import select
from napari_ftu.measure.objects import ImageSource, Measurement, ObjectInfo, measure_objects
from napari_ftu.measure.run import as_features, info_from_features, info_from_review

PLOTS = ("scatter", "histogram")
LIVE_MAX_PX = 4096 * 4096  # larger layers are measured in a worker, on demand
SELECTED = "#e01b24"


class MeasureWidget(Dock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.rows: list[dict] = []
        self.layer = None
        self.selection: frozenset | None = None
        self.picked: int | None = None
        self._seen = None  # what the plot was drawn from: (layer, session generation, paint count)
        self._paints = 0
        self.labels_layer = create_widget(annotation=napari.layers.Labels, label="labels")
        self.stain = CheckBox(text="stain columns from the image", value=True)
        self.kind = ComboBox(label="plot", choices=list(PLOTS), value="scatter")
        self._columns: list[str] = []
        # Callable choices: napari's reset_choices (on docking, on layer changes) reads them again.
        self.x = ComboBox(label="x", choices=lambda _: self._columns)
        self.y = ComboBox(label="y", choices=lambda _: self._columns)
        self.measure_button = button("Measure", lambda: self.measure())
        self.clear_button = button("Show every object in Review", self.clear_selection)
        self.status = status_line("choose a Labels layer")
        self.figure, self.canvas = plot_canvas(240)
        self.extend([self.labels_layer, self.stain, self.measure_button, self.kind,
                     Container(layout="horizontal", widgets=[self.x, self.y], labels=True), self.status,
                     self.clear_button])
        self.native.layout().insertWidget(5, self.canvas)
        self.canvas.mpl_connect("pick_event", self._on_pick)
        self._selector = None
        self.labels_layer.changed.connect(lambda value: self.bind(value))
        for w in (self.kind, self.x, self.y):
            w.changed.connect(lambda *_: self.draw())
        self.stain.changed.connect(lambda *_: self.measure())
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(500)
        self.timer.timeout.connect(self.follow_edits)
        self.timer.start()
        self.native.destroyed.connect(self.timer.stop)
        self.bind(self.labels_layer.value)

    # --- measuring ------------------------------------------------------------------------------
    def bind(self, layer):
        if self.layer is not None:
            self.layer.events.paint.disconnect(self._on_paint)
        self.layer = layer
        self.clear_selection()
        if layer is not None:
            layer.events.paint.connect(self._on_paint)
        self.measure()

    def _on_paint(self, event=None):
        self._paints += 1

    def _state_key(self):
        session = session_of(self.layer) if self.layer is not None else None
        return (id(self.layer), id(self.layer.data) if self.layer is not None else None,
                session.generation if session is not None else None, self._paints)

    def follow_edits(self):
        """Measure again when the layer changed since the plot was drawn (edits, painting, review);
        layers measured in a worker are measured again with the button only."""
        layer = self.layer
        if layer is None or layer.multiscale or int(np.prod(layer.data.shape[:2])) > LIVE_MAX_PX:
            return
        if self._state_key() != self._seen:
            self.measure()

    def _image(self, layer):
        """The image layer the labels belong to (metadata ``source``, else the first image)."""
        source = layer.metadata.get("source")
        if source and source in self._viewer.layers and isinstance(self._viewer.layers[source], napari.layers.Image):
            return self._viewer.layers[source]
        return next((lyr for lyr in self._viewer.layers if isinstance(lyr, napari.layers.Image)), None)

    def measure(self, background: bool | None = None):
        """Measure every object of the layer, store the table in its features and redraw. A
        multiscale or large layer is measured in a worker (``background`` forces either way) and
        is not measured again by itself after edits."""
        layer = self.layer
        if layer is None:
            self.rows = []
            self.status.value = "choose a Labels layer"
            self.draw()
            return []
        if self.worker is not None:
            return self.rows  # one run at a time; the next change is seen when it ends
        self._seen = self._state_key()
        labels = layer.data[0] if layer.multiscale else layer.data
        session = session_of(layer)
        if session is not None:
            info, default = info_from_review(session.review), ObjectInfo(session.review.default_class)
        else:
            info = info_from_features(layer.features if len(layer.features) else None,
                                      layer.metadata.get("class") or "FTU")
            default = ObjectInfo(layer.metadata.get("class") or "FTU")
        how = Measurement(layer.metadata.get("um_per_px"), info, default)
        try:
            image = self._image_source(labels) if self.stain.value else None
        except (FTUError, ValueError) as exc:
            return self._fail(exc)
        if background is None:
            background = layer.multiscale or int(np.prod(labels.shape[:2])) > LIVE_MAX_PX
        if background:
            from napari_ftu._qt.jobs import call_steps, start_job

            self.status.value = "measuring …"
            self.worker = start_job(call_steps(lambda: list(measure_objects(labels, image, how))), "Measuring objects",
                                    on_done=lambda rows: self._show(layer, rows, how), on_error=self._fail,
                                    on_finished=lambda: setattr(self, "worker", None))
            return self.rows
        try:
            rows = list(measure_objects(labels, image, how))
        except (FTUError, ValueError, MemoryError) as exc:
            self.rows = []
            self.draw()
            return self._fail(exc)
        return self._show(layer, rows, how)

    def _show(self, layer, rows, how):
        """Put measured rows into the layer's features, the column choices and the plot."""
        if layer is not self.layer:
            return self.rows
        self.rows = rows
        if rows:
            layer.features = as_features(rows)
        columns = select.numeric_columns(rows)
        self._columns = columns
        for combo, default_column in ((self.x, "area_um2"), (self.y, "circularity")):
            keep = combo.value
            combo.reset_choices()
            if keep in columns:
                combo.value = keep
            elif default_column in columns:
                combo.value = default_column
        if self.selection is not None:
            self.selection = self.selection & {r["id"] for r in rows}
        self.status.value = f"{len(rows)} objects" + (f"; {how.assumed}" if how.assumed else "")
        self.draw()
        return rows

    def _image_source(self, labels):
        from napari_ftu.io.slides import Slide

        image = self._image(self.layer)
        if image is None:
            return None
        levels = list(image.data) if image.multiscale else [image.data]
        kind = "rgb" if image.rgb else "gray"
        slide = Slide(levels, image.metadata.get("um_per_px"), image.name, None, kind)
        if slide.size != tuple(labels.shape[:2]) and not image.multiscale:
            return None  # another picture (a window of a slide): no stain rather than a wrong one
        return ImageSource(slide, labels.shape[:2])

    # --- the plot -------------------------------------------------------------------------------
    def draw(self):
        """Redraw the histogram or scatter; points of the queue's selection and the picked object in red."""
        from matplotlib.widgets import RectangleSelector, SpanSelector

        self.figure.clear()
        ax = self.figure.add_subplot(111)
        self._points = None
        x = self.x.value
        if not self.rows or x is None:
            ax.text(0.5, 0.5, "no objects measured", ha="center", va="center", transform=ax.transAxes)
            self.canvas.draw_idle()
            return
        xs = np.array(select.values(self.rows, x))
        chosen = np.array([self.selection is None or r["id"] in self.selection for r in self.rows])
        if self.kind.value == "histogram":
            bins = min(30, max(5, len(xs) // 3))
            ax.hist(xs[np.isfinite(xs)], bins=bins, color="0.6")
            if self.selection is not None:
                ax.hist(xs[chosen & np.isfinite(xs)], bins=bins, range=(np.nanmin(xs), np.nanmax(xs)), color=SELECTED)
            ax.set_ylabel("objects")
            self._selector = SpanSelector(ax, self._on_span, "horizontal", useblit=False, minspan=1e-12,
                                          props={"alpha": 0.2, "facecolor": SELECTED})
        else:
            y = self.y.value
            ys = np.array(select.values(self.rows, y))
            colours = np.where(chosen, "tab:blue", "0.75")
            self._points = ax.scatter(xs, ys, s=18, c=list(colours), picker=True, pickradius=6)
            if self.picked is not None:
                k = [r["id"] for r in self.rows].index(self.picked) if self.picked in self._ids() else None
                if k is not None:
                    ax.scatter([xs[k]], [ys[k]], s=80, facecolors="none", edgecolors=SELECTED, linewidths=1.5)
            ax.set_ylabel(y)
            self._selector = RectangleSelector(ax, self._on_box, useblit=False, minspanx=5, minspany=5,
                                               spancoords="pixels", button=[1],
                                               props={"alpha": 0.2, "facecolor": SELECTED})
        ax.set_xlabel(x)
        self.canvas.draw_idle()

    def _ids(self) -> list[int]:
        return [r["id"] for r in self.rows]

    def _on_pick(self, event):
        if event.artist is not self._points or not len(event.ind):
            return
        self.pick(self.rows[int(event.ind[0])]["id"])

    def _on_span(self, low, high):
        self.set_selection(select.ids_in_range(self.rows, self.x.value, low, high))

    def _on_box(self, press, release):
        x0, x1, y0, y1 = self._selector.extents  # the rectangle as drawn (the events may be clipped copies)
        self.set_selection(select.ids_in_box(self.rows, self.x.value, self.y.value, (x0, x1), (y0, y1)))

    # --- acting on the objects ------------------------------------------------------------------
    def pick(self, obj: int):
        """Select object ``obj`` in the layer (the Review dock selects its row) and centre on it."""
        row = next((r for r in self.rows if r["id"] == obj), None)
        if row is None or self.layer is None:
            return
        self.picked = obj
        self.layer.selected_label = obj
        centre = self.layer.data_to_world((row["centroid_y_px"], row["centroid_x_px"]))
        self._viewer.scene.camera.center = tuple(centre[-2:])
        scale = np.abs(np.asarray(self.layer.scale[-2:], float))
        extent = max((row["bbox_y1_px"] - row["bbox_y0_px"]) * scale[0],
                     (row["bbox_x1_px"] - row["bbox_x0_px"]) * scale[1], 1e-9)
        self._viewer.scene.camera.zoom = max(min(self._viewer.canvas.size) / 3 / extent, 1e-6)
        self.draw()

    def set_selection(self, ids):
        """Narrow the Review dock's queue to ``ids`` (None: every object) and show them in the plot."""
        self.selection = None if ids is None else frozenset(int(i) for i in ids)
        self.state.queue_ids = None if self.selection is None or self.layer is None else (self.layer, self.selection)
        self.status.value = f"{len(self.rows)} objects" + (
            "" if self.selection is None else f", {len(self.selection)} selected (listed in Review)")
        self.draw()

    def clear_selection(self):
        self.set_selection(None)
