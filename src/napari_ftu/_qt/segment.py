"""Segment dock: run the engine in a worker thread, show rows as they finish, cancel, and
re-derive instances when the threshold moves (from the cached probability, no model run)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.utils.notifications import show_info

from napari_ftu._qt.common import Dock, special
from napari_ftu._qt.jobs import start_job
from napari_ftu._qt.state import is_edited, mark_edited
from napari_ftu.engine.inference import relabel_steps
from napari_ftu.engine.models import (
    CARD_NAME,
    MAX_TILE_SIZE,
    ModelCard,
    cached_model,
    default_model_path,
    describe_domain,
)
from napari_ftu.engine.options import MAX_BATCH_SIZE, MIN_TILE_SIZE, SegmentOptions, check_positive
from napari_ftu.engine.run import segment_slide_steps
from napari_ftu.errors import ModelError, OptionError
from napari_ftu.formats.annotations import layer_features
from napari_ftu.steps import Band, LabelProgress, Outputs, TileProgress

DEFAULT_MODEL = "built-in: synthetic kidney glomeruli"
REFRESH_EVERY_S = 0.25  # progressive display: redraw at most this often


class SegmentWidget(Dock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self._paths = {DEFAULT_MODEL: None}
        self.last_result = None
        self._result_layers = None  # (source layer, labels layer) of the last run
        self._live = None  # the probability layer filled while a run goes on
        self._restore = None  # what that layer was before, when it is a previous result's
        self._stores: list[Path] = []  # temporary zarr stores this dock made (deleted once unused)
        self._store = None  # the running job's
        atexit.register(_delete_stores, self._stores)
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.model = ComboBox(label="model", choices=[DEFAULT_MODEL], value=DEFAULT_MODEL)
        # what the chosen model was trained on (its card's trained_on), so nobody mistakes the domain
        self.domain = Label(value=describe_domain(ModelCard.read(default_model_path() / CARD_NAME)))
        self.domain.native.setWordWrap(True)
        self.browse = PushButton(text="Add model folder…")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.trust = CheckBox(text="Trust model code (TorchScript runs its own code)", value=False,
                              tooltip="a TorchScript model can read and write your files; tick only for "
                                      "models from a source you trust")
        self.tile = SpinBox(label="tile size", value=0, min=0, max=MAX_TILE_SIZE, step=32,
                            tooltip=f"auto = the model card's tile size; else {MIN_TILE_SIZE} to {MAX_TILE_SIZE}")
        self.overlap = SpinBox(label="overlap", value=-1, min=-1, max=MAX_TILE_SIZE - 1, step=8,
                               tooltip="auto = the model card's overlap; always smaller than the tile size")
        self._show_card_defaults(ModelCard.read(default_model_path() / CARD_NAME))
        self.batch = SpinBox(label="batch size", value=4, min=1, max=MAX_BATCH_SIZE,
                             tooltip="tiles per model call; halved automatically if the GPU runs out of memory")
        self.skip_glass = CheckBox(text="skip glass (background) tiles", value=True)
        self.tta = CheckBox(text="test-time augmentation (4 views, adds an uncertainty layer)", value=False)
        self.split = CheckBox(text="split touching objects (watershed)", value=False)
        self.threshold = FloatSlider(label="threshold", value=0.5, min=0.01, max=0.99, step=0.01,
                                     tooltip="moving it after a run re-derives the objects without re-running")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.bar = ProgressBar(label="tiles", value=0, min=0, max=1)
        self.status = Label(value="device: not loaded yet")
        self.extend([self.image, self.model, self.domain, self.browse, self.device, self.trust, self.tile,
                     self.overlap, self.batch, self.skip_glass, self.tta, self.split, self.threshold, self.run_button,
                     self.cancel_button, self.bar, self.status])
        self.browse.changed.connect(self._browse)
        self.model.changed.connect(self._model_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.threshold.changed.connect(self._threshold_moved)
        self.tile.changed.connect(self._tile_changed)
        self.state.events.models.connect(self._models_saved)

    def _models_saved(self, models):
        """Offer the models another dock saved (the Train dock's)."""
        for path in models:
            if str(path) not in self._paths:
                self.add_model(path)

    # --- model choice -------------------------------------------------------------------
    def add_model(self, path: str | Path) -> None:
        """Offer a local model folder (card + weights) or checkpoint in the model list."""
        path = Path(path)
        self._paths[str(path)] = path
        self.model.choices = list(self._paths)
        self.model.value = str(path)

    def _browse(self):
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self.native, "Model folder (model_card.json + weights)")
        if folder:
            self.add_model(folder)

    def _model_changed(self):
        try:
            card = self._load().card
        except ModelError as exc:
            self.domain.value = "trained on: (model not loaded)"
            return self._fail(exc)
        self.threshold.value = SegmentOptions().resolve(card).threshold  # the card's, for its class
        self.domain.value = describe_domain(card)
        self._show_card_defaults(card)

    def _show_card_defaults(self, card):
        """The tile and overlap boxes' lowest value means "the model's": say which it is."""
        special(self.tile, f"auto (model: {card.tile_size})")
        special(self.overlap, f"auto (model: {card.overlap})")

    def _load(self):
        return cached_model(self._paths[self.model.value], device=self.device.value, trust_code=self.trust.value)

    def _tile_changed(self, value):
        """Keep the spin boxes valid: a tile is 0 (the card's) or at least MIN_TILE_SIZE, and
        the overlap stays below it."""
        if 0 < value < MIN_TILE_SIZE:
            self.tile.value = MIN_TILE_SIZE
            return
        self.overlap.max = (value or MAX_TILE_SIZE) - 1

    def options(self) -> SegmentOptions:
        """The run options the widgets show (``None`` where the card decides)."""
        return SegmentOptions(tile_size=self.tile.value or None,
                              overlap=None if self.overlap.value < 0 else self.overlap.value,
                              threshold=self.threshold.value, batch_size=self.batch.value, tta=self.tta.value,
                              skip_background=self.skip_glass.value, watershed=self.split.value)

    # --- running --------------------------------------------------------------------------
    def run(self):
        """Start segmentation of the chosen image in a worker thread."""
        layer = self.image.value
        if layer is None:
            self._fail("Open an image first (Load dock, File > Open or a sample).")
            return None
        if self.worker is not None:
            return None
        try:
            model = self._load()
            options = self.options()
            options.resolve(model.card)  # refused here, not in the worker
            um = check_positive(layer.metadata.get("um_per_px"), f"{layer.name}: µm/px")
        except (ModelError, OptionError, ValueError) as exc:
            self._fail(exc)
            return None
        data = list(layer.data) if layer.multiscale else layer.data
        # where a store goes if the size rules call for one (the core decides; deleted once unused)
        store = Path(tempfile.mkdtemp(prefix="napari-ftu-")) / f"{layer.name}.zarr"
        self._stores.append(store)
        self._store = None  # set when the run's outputs turn out to be in that store
        self._pending_store = store
        steps = segment_slide_steps(data, model, options, um_per_px=um, store=store, pyramid_view=layer.multiscale)
        self.status.value = f"running on {model.device} …"
        self._live = None
        self._last_refresh = 0.0
        self._start_worker(steps, f"Segmenting {layer.name}",
                           lambda seg: self._on_done(layer, seg, model.card.classes[seg.class_index]),
                           lambda event: self._on_event(layer, event))
        return self.worker

    def _start_worker(self, steps, description, on_done, on_event):
        self.run_button.enabled, self.cancel_button.enabled = False, True
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
        view, place = _viewable(prob)[0], _placement(layer, downsample)
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
        return self._viewer.add_image(view, name=name, colormap=_probability_colormap(), blending="translucent",
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
            unc = _viewable(seg.uncertainty)
            self._replace(f"{layer.name} uncertainty", lambda **kw: self._viewer.add_image(
                unc, colormap="viridis", blending="additive", visible=False,
                contrast_limits=(0, 0.5 * seg.prob_scale), **kw), layer, seg, data=unc)
        objects = _viewable(seg.labels)
        labels = self._replace(f"{layer.name} FTUs", lambda **kw: self._viewer.add_labels(
            objects, opacity=0.5, **kw), layer, seg, class_name, data=objects)
        labels.features = {}
        self._set_features(labels, seg, class_name)
        self._result_layers = (layer, labels)
        labels.events.paint.connect(_mark_edited)
        skipped = f", {seg.n_skipped} glass tiles skipped" if seg.n_skipped else ""
        self.status.value = (f"{len(seg.objects)} FTUs in {seg.seconds:.1f} s on {seg.device} "
                             f"({seg.n_tiles} tiles{skipped})")
        show_info(self.status.value)

    def _replace(self, name, add, layer, seg, class_name=None, data=None):
        """Put a result into the layer ``name``: the existing one is updated in place (no
        remove/add stall) unless it holds the user's work (edited, or under review), which is
        kept as it is next to a new layer."""
        um = seg.um_per_px
        meta = {"um_per_px": um, "source": layer.name, "class": class_name, "threshold": seg.threshold,
                "store": _text(seg.store)}
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

    # --- threshold without re-running ------------------------------------------------------
    def _threshold_moved(self, value):
        seg = self.last_result
        if seg is None or self.worker is not None or abs(value - seg.threshold) < 1e-9:
            return
        source, labels = self._result_layers
        if is_edited(labels) or labels not in self._viewer.layers:
            self.status.value = "The objects layer has your edits: run again to segment with the new threshold."
            return
        if isinstance(seg.labels, np.ndarray):
            seg.labels = np.zeros_like(seg.labels)  # the layer keeps showing the old objects until done
        class_name = labels.metadata.get("class")

        def done(objects):
            seg.objects = objects
            labels.data = _viewable(seg.labels)
            labels.metadata["threshold"] = seg.threshold
            labels.features = {}
            self._set_features(labels, seg, class_name)
            self.status.value = f"{len(objects)} FTUs at threshold {seg.threshold:.2f} (no model run)"

        self._start_worker(relabel_steps(seg, float(value), watershed=self.split.value),
                           f"Objects at threshold {value:.2f}", done, lambda event: self._on_event(source, event))

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
        self.run_button.enabled, self.cancel_button.enabled = True, False

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


def _probability_colormap():
    """Transparent at 0, through yellow to red at 1: on bright H&E an additive map is invisible."""
    from napari.utils.colormaps import Colormap

    return Colormap([[1.0, 0.9, 0.1, 0.0], [1.0, 0.6, 0.0, 0.8], [0.85, 0.05, 0.1, 1.0]], name="ftu probability")


def _place(layer, place: dict) -> None:
    """Set scale and offset only where they change: each set redraws the layer."""
    for key in ("scale", "translate"):
        if not np.allclose(getattr(layer, key)[-2:], place[key]):
            setattr(layer, key, place[key])


def _viewable(array):
    """Numpy as it is; a zarr array as dask, so napari reads only what it draws."""
    if isinstance(array, np.ndarray):
        return array
    import uuid

    import dask.array as da

    return da.from_zarr(array, name=f"napari-ftu-{uuid.uuid4().hex}")  # a fresh name: no stale cached chunks
