"""What every dock shares: its viewer, the viewer's dock state and one job at a time, a status
line for failures, level 0 of a layer, a plot canvas, spin boxes whose "automatic" value reads
as words instead of a sentinel number, and the engine run with its result layers (the Segment
dock's and the Annotate dock's *Apply to slide*)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import Container, Label, PushButton
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QSizePolicy

from napari_ftu._qt.jobs import start_job
from napari_ftu._qt.state import is_edited, mark_edited, state_of
from napari_ftu.formats.annotations import layer_features
from napari_ftu.steps import Band, LabelProgress, Outputs, TileProgress

REFRESH_EVERY_S = 0.25  # progressive display: redraw at most this often


class Dock(Container):
    """A dock of one viewer: the docks' shared state (:func:`state_of`), at most one running job
    (``worker``), and a ``status`` Label where it reports failures."""

    def __init__(self, viewer):
        super().__init__()
        self._viewer = viewer
        self.state = state_of(viewer)
        self.worker = None

    def scroll(self, min_height: int = 160) -> None:
        """Put the dock's widgets in a scroll area (:func:`scroll_area`); call it once they are in."""
        from qtpy.QtWidgets import QVBoxLayout, QWidget

        layout = self.native.layout()
        page = QWidget()
        inner = QVBoxLayout(page)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.setSpacing(layout.spacing())
        while layout.count():
            item = layout.takeAt(0)
            if item.widget() is not None:
                inner.addWidget(item.widget())
            else:
                inner.addItem(item)
        inner.addStretch(1)
        left, top, _, bottom = layout.getContentsMargins()
        layout.setContentsMargins(left, top, 0, bottom)  # the scroll bar takes the right margin's place
        layout.addWidget(scroll_area(page, min_height))

    def _fail(self, exc):
        """Show a failure in the status line and as a napari notice; handlers return its None."""
        self.status.value = f"Error: {exc}"
        show_error(str(exc))
        return None


def status_line(value: str = "") -> Label:
    """A dock's status Label; it wraps, so a long message (an error naming a file) adds lines
    instead of widening the dock over the canvas. Its width is the dock's (Ignored: its own size
    hint, the whole text on one line, never widens the dock, and a wrapping label left to that
    hint would break even a short line into a narrow column); a path too long for a line is cut
    at the edge and shown whole in the tooltip."""
    label = Label(value=value)
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.native.setMinimumWidth(0)
    label.tooltip = value
    label.changed.connect(lambda text: setattr(label, "tooltip", str(text)))
    return label


def scroll_area(widget, min_height: int = 160):
    """``widget`` in a vertical scroll area: a dock then asks the window for ``min_height``
    instead of its whole height, so docks side by side fit a laptop screen. Where there is
    room it asks for the whole widget; it keeps the widget's minimum width (no horizontal
    scrolling, no frame)."""
    from qtpy.QtCore import QEvent, QSize, Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    class ScrollArea(QScrollArea):
        def _bar(self) -> int:
            return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

        def minimumSizeHint(self):
            return QSize(self.widget().minimumSizeHint().width() + self._bar(), min_height)

        def sizeHint(self):
            hint = self.widget().sizeHint()
            width = max(hint.width(), self.minimumSizeHint().width())  # a dock's usual width, not wider
            return QSize(width, max(hint.height(), min_height))

        def eventFilter(self, obj, event):
            if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
                self.updateGeometry()  # the content's size changed: so do the hints
            return super().eventFilter(obj, event)

    area = ScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)  # one that came and went hid content
    area.setWidget(widget)
    area.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    return area


def narrow_combo(combo) -> None:
    """A ComboBox whose choices may be long paths: sized for ~24 characters, not its longest
    entry (which would widen the dock to the path's length); the full entry is in the tooltip."""
    from qtpy.QtWidgets import QComboBox

    native = combo.native
    native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    native.setMinimumContentsLength(24)
    native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    combo.tooltip = str(combo.value)
    combo.changed.connect(lambda value: setattr(combo, "tooltip", str(value)))


def button(text: str, action, **kwargs) -> PushButton:
    """A push button that runs ``action`` when pressed: declared once, with what it does."""
    widget = PushButton(text=text, **kwargs)
    widget.changed.connect(action)
    return widget


def level0(layer):
    """The full-resolution data of a layer (the first level of a multiscale one), not loaded."""
    return layer.data[0] if layer.multiscale else layer.data


def level0_array(layer) -> np.ndarray:
    return np.asarray(level0(layer))


def plot_canvas(height: int = 190):
    """A matplotlib figure in a Qt canvas, sized for a dock."""
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.6, 2.4), tight_layout=True)
    canvas = FigureCanvasQTAgg(figure)
    canvas.setMinimumHeight(height)
    return figure, canvas


def special(spin, text: str):
    """Show ``text`` instead of the spin box's minimum, the value that means "automatic"."""
    box = spin.native
    box.setSpecialValueText(text)
    if hasattr(box, "_updateEdit"):  # superqt's large-int spin box ignores the special text: show it ourselves

        def update():
            shown = text if box.value() == box.minimum() else str(box.value())
            if box.lineEdit().text() != shown:
                box.lineEdit().setText(shown)

        def interpret(policy):
            typed = box.lineEdit().displayText()
            box._setValue(box.minimum() if typed == text or not typed else int(typed), policy)

        box._updateEdit, box._interpret = update, interpret
        update()
    return spin


class EngineRunDock(Dock):
    """A dock that runs a model over an image layer through the engine
    (:func:`~napari_ftu.engine.run.segment_slide_steps`) and shows the result like the Segment
    dock: a live probability layer filled while tiles finish, then "<image> probability" and an
    instance "<image> FTUs" Labels layer with class and confidence features. A cancelled or
    failed run leaves the layers as they were. Subclasses have ``_viewer``, ``bar``, ``status``
    and say in :meth:`_set_running` which buttons a run disables."""

    def _init_run(self):
        self.worker = None
        self.last_result = None
        self._result_layers = None  # (source layer, labels layer) of the last run
        self._live = None  # the probability layer filled while a run goes on
        self._restore = None  # what that layer was before, when it is a previous result's
        self._stores: list[Path] = []  # temporary zarr stores this dock made (deleted once unused)
        self._store = None  # the running job's
        atexit.register(_delete_stores, self._stores)

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled, self.cancel_button.enabled = not running, running

    def start_run(self, layer, model, options, um_per_px: float, description: str | None = None,
                  source: str | Path | None = None):
        """Run ``model`` over ``layer`` (all its pyramid levels) in a worker; returns the worker.
        ``source`` (the model's folder or file) goes into the result layers' metadata, so the
        Review dock's learning starts from the model that made the objects."""
        from napari_ftu.engine.run import segment_slide_steps

        self._model_source = None if source is None else str(source)
        data = list(layer.data) if layer.multiscale else layer.data
        # where a store goes if the size rules call for one (the core decides; deleted once unused)
        store = Path(tempfile.mkdtemp(prefix="napari-ftu-")) / f"{layer.name}.zarr"
        self._stores.append(store)
        self._store = None  # set when the run's outputs turn out to be in that store
        self._pending_store = store
        steps = segment_slide_steps(data, model, options, um_per_px=um_per_px, store=store,
                                    pyramid_view=layer.multiscale)
        self.status.value = f"running on {model.device} ({getattr(model, 'backend', 'torch')}) …"
        self._live = None
        self._last_refresh = 0.0
        self._start_worker(steps, description or f"Segmenting {layer.name}",
                           lambda seg: self._on_done(layer, seg, model.card.classes[seg.class_index]),
                           lambda event: self._on_event(layer, event))
        return self.worker

    def _start_worker(self, steps, description, on_done, on_event):
        self._set_running(True)
        self.worker = start_job(steps, description, on_event=on_event, on_done=on_done, on_error=self._fail,
                                on_abort=lambda: setattr(self.status, "value", "cancelled"),
                                on_finished=self._on_finished, bar=self.bar)

    def cancel(self):
        """Stop the run at the next tile batch."""
        if self.worker is not None:
            self.worker.quit()

    def _on_event(self, layer, event):
        if isinstance(event, Outputs):
            if not isinstance(event.probability, np.ndarray):
                self._store = self._pending_store
            self._live = self._add_probability(layer, event.probability, event.downsample)
        elif isinstance(event, Band):
            now = time.perf_counter()
            if self._live is not None and now - self._last_refresh > REFRESH_EVERY_S:
                self._live.refresh()
                self._last_refresh = now
        elif isinstance(event, (TileProgress, LabelProgress)):  # the job moves the bars
            self.bar.label = event.unit

    def _add_probability(self, layer, prob, downsample):
        """The live layer keeps a temporary name until the run succeeds. A previous result's
        probability layer is reused (adding and removing napari layers stalls the viewer for
        hundreds of ms) and restored as it was if the run is cancelled or fails."""
        name = f"{layer.name} probability (running)"
        top = 1 if isinstance(prob, np.ndarray) else 255
        view, place = viewable(prob)[0], _placement(layer, downsample)
        old = self._viewer.layers[f"{layer.name} probability"] if f"{layer.name} probability" in self._viewer.layers \
            else None
        if isinstance(old, napari.layers.Image) and not old.multiscale and old.rgb is False:
            self._restore = {k: getattr(old, k) for k in ("name", "data", "scale", "translate", "contrast_limits",
                                                          "visible")}
            self._restore["metadata"] = dict(old.metadata)
            old.name = name
            old.data = view
            _place(old, place)
            old.contrast_limits, old.visible = (0, top), True
            old.metadata = {**old.metadata, "store": _text(self._store)}
            return old
        self._restore = None
        return self._viewer.add_image(view, name=name, colormap=probability_colormap(), blending="translucent",
                                      opacity=0.7, contrast_limits=(0, top), metadata={"store": _text(self._store)},
                                      **place)

    def _on_done(self, layer, seg, class_name):
        self.last_result = seg
        live = self._live
        if live is not None:
            final = f"{layer.name} probability"
            if final in self._viewer.layers:
                self._viewer.layers.remove(final)
            live.name = final
            self._restore = None
            live.visible = False  # hidden first: the swaps below then cost no redraw
            prob = seg.class_probability()
            if isinstance(prob, np.ndarray) and prob.shape != live.data.shape:  # outputs at full resolution
                live.data = prob
                _place(live, _placement(layer, seg.downsample))
            live.metadata.update({"um_per_px": seg.um_per_px, "source": layer.name, "class": class_name,
                                  "store": _text(seg.store)})
        if seg.uncertainty is not None:
            unc = viewable(seg.uncertainty)
            self._replace(f"{layer.name} uncertainty", lambda **kw: self._viewer.add_image(
                unc, colormap="viridis", blending="additive", visible=False,
                contrast_limits=(0, 0.5 * seg.prob_scale), **kw), layer, seg, data=unc)
        objects = viewable(seg.labels)
        labels = self._replace(f"{layer.name} FTUs", lambda **kw: self._viewer.add_labels(
            objects, opacity=0.5, **kw), layer, seg, class_name, data=objects)
        labels.features = {}
        self._set_features(labels, seg, class_name)
        self._result_layers = (layer, labels)
        labels.events.paint.connect(_mark_edited)
        skipped = f", {seg.n_skipped} glass tiles skipped" if seg.n_skipped else ""
        self.status.value = (f"{len(seg.objects)} FTUs in {seg.seconds:.1f} s on {seg.device}, {seg.backend} "
                             f"({seg.n_tiles} tiles{skipped})")
        show_info(self.status.value)

    def _replace(self, name, add, layer, seg, class_name=None, data=None):
        """Put a result into the layer ``name``: the existing one is updated in place (no
        remove/add stall) unless it holds the user's work (edited, or under review), which is
        kept as it is next to a new layer."""
        um = seg.um_per_px
        meta = {"um_per_px": um, "source": layer.name, "class": class_name, "threshold": seg.threshold,
                "store": _text(seg.store), "model": getattr(self, "_model_source", None)}
        place = _placement(layer, seg.downsample)
        old = self._viewer.layers[name] if name in self._viewer.layers else None
        kind = napari.layers.Labels if class_name is not None else napari.layers.Image
        reusable = isinstance(old, kind) and not old.multiscale and not is_edited(old)
        if not reusable:
            return add(name=name, metadata=meta, **place)
        old.data = data
        _place(old, place)
        old.metadata = {**old.metadata, **meta}
        return old

    @staticmethod
    def _set_features(labels, seg, class_name):
        if seg.objects:
            objects = seg.objects
            labels.features = layer_features([o["id"] for o in objects], [class_name] * len(objects),
                                             [o["confidence"] for o in objects],
                                             area_px=[o["area_px"] for o in objects],
                                             area_um2=[o["area_um2"] for o in objects])

    def _on_finished(self):
        live, self._live = getattr(self, "_live", None), None
        restore, self._restore = getattr(self, "_restore", None), None
        if live is not None and live.name.endswith("(running)") and live in self._viewer.layers:
            if restore is None:
                self._viewer.layers.remove(live)  # cancelled or failed: no half-filled layer stays
            else:  # the previous result's layer, as it was
                live.data = restore.pop("data")
                for key, value in restore.items():
                    setattr(live, key, value)
        self.worker = None
        self._store = None
        self._sweep_stores()
        self._set_running(False)

    def _sweep_stores(self):
        """Delete the temporary stores no layer shows any more (a cancelled run's, or a result
        whose layers a newer run updated); the last result's stays for threshold changes."""
        used = {lyr.metadata.get("store") for lyr in self._viewer.layers}
        if self.last_result is not None:
            used.add(_text(self.last_result.store))
        unused = [p for p in self._stores if str(p) not in used]
        _delete_stores(unused)
        self._stores[:] = [p for p in self._stores if p not in unused]



def _placement(layer, downsample: float) -> dict:
    """Scale and offset putting an output grid ``downsample`` times coarser on the image."""
    return {"scale": [v * downsample for v in layer.scale[-2:]], "translate": layer.translate[-2:],
            "units": layer.units[-2:]}


def _mark_edited(event) -> None:
    mark_edited(event.source)


def _text(path) -> str | None:
    return None if path is None else str(path)


def _delete_stores(stores) -> None:
    for store in list(stores):
        shutil.rmtree(Path(store).parent, ignore_errors=True)  # the mkdtemp folder around it


def probability_colormap():
    """Transparent at 0, through yellow to red at 1: on bright H&E an additive map is invisible."""
    from napari.utils.colormaps import Colormap

    return Colormap([[1.0, 0.9, 0.1, 0.0], [1.0, 0.6, 0.0, 0.8], [0.85, 0.05, 0.1, 1.0]], name="ftu probability")


def _place(layer, place: dict) -> None:
    """Set scale and offset only where they change: each set redraws the layer."""
    for key in ("scale", "translate"):
        if not np.allclose(getattr(layer, key)[-2:], place[key]):
            setattr(layer, key, place[key])


def viewable(array):
    """Numpy as it is; a zarr array as dask, so napari reads only what it draws."""
    if isinstance(array, np.ndarray):
        return array
    import uuid

    import dask.array as da

    return da.from_zarr(array, name=f"napari-ftu-{uuid.uuid4().hex}")  # a fresh name: no stale cached chunks
