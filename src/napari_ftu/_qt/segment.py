"""Segment dock: run a model tile by tile in a worker thread, with progress and cancel."""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSlider, Label, ProgressBar, PushButton, SpinBox, create_widget
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info

from ..inference import segment_steps
from ..models import ModelError, load_model

DEFAULT_MODEL = "built-in: synthetic kidney glomeruli"


class SegmentWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._models: dict = {}  # (path, device) -> FTUModel, so a re-run does not reload
        self._paths = {DEFAULT_MODEL: None}
        self.worker = None
        self.last_result = None
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.model = ComboBox(label="model", choices=[DEFAULT_MODEL], value=DEFAULT_MODEL)
        self.browse = PushButton(text="Add model folder…")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.tile = SpinBox(label="tile size", value=0, min=0, max=4096, step=32,
                            tooltip="0 = the model card's default")
        self.overlap = SpinBox(label="overlap", value=-1, min=-1, max=2048, step=8,
                               tooltip="-1 = the model card's default")
        self.threshold = FloatSlider(label="threshold", value=0.5, min=0.01, max=0.99, step=0.01)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.bar = ProgressBar(label="tiles", value=0, min=0, max=1)
        self.status = Label(value="device: not loaded yet")
        self.extend([self.image, self.model, self.browse, self.device, self.tile, self.overlap, self.threshold,
                     self.run_button, self.cancel_button, self.bar, self.status])
        self.browse.changed.connect(self._browse)
        self.model.changed.connect(self._model_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)

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
            self.threshold.value = self._load().card.threshold
        except ModelError as exc:
            self._fail(exc)

    def _load(self):
        key = (self.model.value, self.device.value)
        if key not in self._models:
            self._models[key] = load_model(self._paths[self.model.value], device=self.device.value)
        return self._models[key]

    # --- running --------------------------------------------------------------------------
    def run(self):
        """Start segmentation of the chosen image in a worker thread."""
        layer = self.image.value
        if layer is None:
            self._fail("Open an image first (Load dock, File > Open or a sample).")
            return None
        try:
            model = self._load()
            data, um, factor = _pick_level(layer, model.card.um_per_px)
        except (ModelError, ValueError) as exc:
            self._fail(exc)
            return None
        self.status.value = f"running on {model.device} …"
        self.worker = create_worker(
            segment_steps, data, model,
            um_per_px=um,
            tile_size=self.tile.value or None,
            overlap=None if self.overlap.value < 0 else self.overlap.value,
            threshold=self.threshold.value,
            _start_thread=False,
        )
        self._pbar = progress(total=0, desc=f"Segmenting {layer.name}")
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(lambda seg: self._on_done(layer, seg, model.card.classes[0], factor))
        self.worker.errored.connect(self._fail)
        self.worker.aborted.connect(lambda: setattr(self.status, "value", "cancelled"))
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.worker.start()
        return self.worker

    def cancel(self):
        """Stop the run at the next tile batch."""
        if self.worker is not None:
            self.worker.quit()

    def _on_progress(self, event):
        _, done, total = event
        self.bar.max, self.bar.value = max(total, 1), done
        self._pbar.total = total
        self._pbar.n = done
        self._pbar.refresh()

    def _on_done(self, layer, seg, class_name, factor=1.0):
        self.last_result = seg
        kwargs = {"scale": [v * factor for v in layer.scale[-2:]], "translate": layer.translate[-2:],
                  "units": layer.units[-2:]}
        um = layer.metadata.get("um_per_px")
        meta = {"um_per_px": um * factor if um else None, "source": layer.name, "class": class_name}
        prob = seg.probability if seg.probability.ndim == 2 else seg.probability[0]
        self._viewer.add_image(prob, name=f"{layer.name} probability", colormap="magma", blending="additive",
                               opacity=0.6, contrast_limits=(0, 1), visible=False, metadata=meta, **kwargs)
        features = {key: [o[key] for o in seg.objects] for key in ("id", "area_px", "area_um2", "confidence")}
        features["index"] = features.pop("id")
        features["class"] = [class_name] * len(seg.objects)
        self._viewer.add_labels(seg.labels, name=f"{layer.name} FTUs", metadata=meta,
                                features=features if seg.objects else None, opacity=0.5, **kwargs)
        self.status.value = (f"{len(seg.objects)} FTUs in {seg.seconds:.1f} s on {seg.device} "
                             f"({seg.n_tiles} tiles)")
        show_info(self.status.value)

    def _fail(self, exc):
        self.status.value = f"Error: {exc}"
        show_error(str(exc))

    def _on_finished(self):
        self._pbar.close()
        self.run_button.enabled, self.cancel_button.enabled = True, False


MAX_LEVEL_PIXELS = 400e6  # this engine holds the level it segments in memory


def _pick_level(layer, model_um: float):
    """The image data to segment: for a pyramid, the coarsest level still at least as fine as
    the model's µm/px (the engine resamples the rest). Returns ``(data, µm/px, downsample)``."""
    um = layer.metadata.get("um_per_px")
    if not layer.multiscale:
        return layer.data, um, 1.0
    base = layer.data[0].shape[0]
    choice = 0
    if um:
        for k, level in enumerate(layer.data):
            if um * base / level.shape[0] <= model_um * 1.01:
                choice = k
    level = layer.data[choice]
    if np.prod(level.shape[:2]) > MAX_LEVEL_PIXELS:
        raise ValueError(f"{layer.name}: level {choice} has {np.prod(level.shape[:2]) / 1e6:.0f} megapixels, "
                         "too many to segment in memory with this version")
    factor = base / level.shape[0]
    return np.asarray(level), (um * factor if um else None), factor
