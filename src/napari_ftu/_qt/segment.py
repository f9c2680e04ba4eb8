"""Segment dock: run the engine in a worker thread, show rows as they finish, cancel, and
re-derive instances when the threshold moves (from the cached probability, no model run)."""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FloatSlider,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from napari_ftu._qt.common import EngineRunDock, narrow_combo, special, status_line, viewable
from napari_ftu._qt.state import is_edited
from napari_ftu.engine.inference import relabel_steps
from napari_ftu.engine.options import MAX_BATCH_SIZE, MIN_TILE_SIZE, SegmentOptions, check_positive
from napari_ftu.errors import ModelError, OptionError
from napari_ftu.io.images import assumed_pixel_size
from napari_ftu.models.backends import BACKENDS, cached
from napari_ftu.models.card import CARD_NAME, MAX_TILE_SIZE, ModelCard, describe_domain, scale_note
from napari_ftu.models.loading import builtin_model_path, default_model_path

DEFAULT_MODEL = "built-in: kidney glomeruli (PAS)"
SYNTHETIC_MODEL = "built-in: synthetic demo"
BUILTIN_CHOICES = {"builtin": DEFAULT_MODEL, "synthetic-demo": SYNTHETIC_MODEL}  # model name -> choice


class SegmentWidget(EngineRunDock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self._paths = {label: builtin_model_path(name) for name, label in BUILTIN_CHOICES.items()}
        self._init_run()
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        # choices from a callable: napari resets every dock's choices when a layer is added, and a
        # fixed list would drop the model folders added since (and silently run the built-in one)
        self.model = ComboBox(label="model", choices=self._model_choices, value=DEFAULT_MODEL)
        # what the chosen model was trained on (its card's trained_on), so nobody mistakes the domain
        self.domain = status_line(describe_domain(ModelCard.read(default_model_path() / CARD_NAME)))
        narrow_combo(self.model)
        self.browse = PushButton(text="Add model folder…")
        self.browse_file = PushButton(text="Add model file (.onnx, bioimage.io .zip)…")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.backend = ComboBox(label="backend", choices=list(BACKENDS), value="auto",
                                tooltip="what runs the model: auto = ONNX Runtime on the CPU when the model has "
                                        "or can get an ONNX graph, else torch")
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
        self.status = status_line("device: not loaded yet")
        self.scale_note = status_line()  # says when the image's pixel size is assumed
        self.scale_note.visible = False
        self.extend([self.image, self.model, self.domain, self.browse, self.browse_file, self.device, self.backend,
                     self.trust, self.tile, self.overlap, self.batch, self.skip_glass, self.tta, self.split,
                     self.threshold, self.run_button, self.cancel_button, self.bar, self.scale_note, self.status])
        self.scroll()  # beside the Review dock, the window still fits a laptop screen
        self.browse.changed.connect(self._browse)
        self.browse_file.changed.connect(self._browse_file)
        self.model.changed.connect(self._model_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.threshold.changed.connect(self._threshold_moved)
        self.tile.changed.connect(self._tile_changed)
        self.state.events.models.connect(self._models_saved)
        self.image.changed.connect(self._image_changed)
        self._image_changed(self.image.value)  # the image napari chose before the connection

    def _image_changed(self, layer):
        """An image that names its built-in model (the synthetic sample) gets that model."""
        name = layer.metadata.get("model") if layer is not None else None
        if name in BUILTIN_CHOICES and self.model.value in BUILTIN_CHOICES.values():
            self.model.value = BUILTIN_CHOICES[name]

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
        self.model.reset_choices()
        self.model.value = str(path)

    def _model_choices(self, _widget=None) -> list:
        return list(self._paths)

    def _browse(self):
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self.native, "Model folder (model_card.json + weights, or a "
                                                  "bioimage.io package's folder)")
        if folder:
            self.add_model(folder)

    def _browse_file(self):
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self.native, "Model file", "",
                                              "Models (*.onnx *.zip *.safetensors *.pt *.pth *.ts)")
        if path:
            self.add_model(path)

    def _model_changed(self):
        try:
            card = self._load().card
        except ModelError as exc:
            self.domain.value = "trained on: (model not loaded)"
            return self._fail(exc)
        self.domain.value = describe_domain(card)
        self._show_card_defaults(card)
        try:
            self.threshold.value = SegmentOptions().resolve(card).threshold  # the card's, for its class
        except OptionError as exc:  # a model this dock cannot run (a cells classifier)
            return self._fail(exc)

    def _show_card_defaults(self, card):
        """The tile and overlap boxes' lowest value means "the model's": say which it is."""
        special(self.tile, f"auto (model: {card.tile_size})")
        special(self.overlap, f"auto (model: {card.overlap})")

    def _load(self):
        return cached(self._paths[self.model.value], device=self.device.value, backend=self.backend.value,
                      trust_code=self.trust.value)

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
        used, note = assumed_pixel_size(layer.name, um, model.card.um_per_px, "the model's", "µm/px in the Load dock")
        note = note or scale_note(layer.name, used, model.card, "µm/px in the Load dock")
        self.scale_note.value = note or ""
        self.scale_note.visible = bool(note)
        # the result layers record the size assumed and the model, which learning starts from
        return self.start_run(layer, model, options, used, source=self._paths[self.model.value])

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
            labels.data = viewable(seg.labels)
            labels.metadata["threshold"] = seg.threshold
            labels.features = {}
            self._set_features(labels, seg, class_name)
            self.status.value = f"{len(objects)} FTUs at threshold {seg.threshold:.2f} (no model run)"

        self._start_worker(relabel_steps(seg, float(value), watershed=self.split.value),
                           f"Objects at threshold {value:.2f}", done, lambda event: self._on_event(source, event))



