"""Train dock: train or fine-tune a model in a worker thread with a live loss / Dice plot.

Data come from a dataset folder (exported tiles, images/ + masks/, competition layouts) or
from the image and corrected Labels layers open in the viewer ("retrain on my corrections"): a
layer under review teaches only what was reviewed (training.sparse), read from the lazy image.
The best model is saved as a model folder and offered to the Segment dock.
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.utils.notifications import show_info

from napari_ftu._qt.common import Dock, level0, plot_canvas, special, status_line
from napari_ftu._qt.jobs import start_job
from napari_ftu._qt.state import session_of
from napari_ftu.errors import FTUError, OptionError
from napari_ftu.io.images import assumed_pixel_size
from napari_ftu.steps import TrainStep, Validation
from napari_ftu.training.data import ARCHITECTURES, ENCODERS, FINE_TUNE_LR, LR, folder_split, pair_split, start_from
from napari_ftu.training.train import new_model, train_steps, trained_on

SOURCES = ["dataset folder", "layers in the viewer"]
START = ["new model", "fine-tune the built-in model", "fine-tune a model folder"]


class TrainWidget(Dock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.history = {"loss": [], "val": []}
        self.source = ComboBox(label="data", choices=SOURCES, value=SOURCES[0])
        self.folder = FileEdit(label="dataset", mode="d")
        self.val_match = LineEdit(label="validate on ids matching", value="",
                                  tooltip="regular expression; empty = hold out every fifth image")
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.labels_layer = create_widget(annotation=napari.layers.Labels, label="labels")
        self.start = ComboBox(label="start from", choices=START, value=START[0])
        self.base = FileEdit(label="model folder", mode="d")
        self.architecture = ComboBox(label="architecture", choices=list(ARCHITECTURES), value="Unet")
        self.encoder = ComboBox(label="encoder", choices=list(ENCODERS), value=ENCODERS[0])
        self.pretrained = CheckBox(label="ImageNet encoder", value=True,
                                   tooltip="start from offline ImageNet weights (EfficientNet-Lite encoders)")
        self.um_per_px = FloatSpinBox(label="model µm/px", value=2.0, min=0.05, max=50.0, step=0.05)
        self.minutes = FloatSpinBox(label="minutes", value=0.0, min=0.0, max=10000.0, step=1.0,
                                    tooltip="wall-clock budget (the schedule fits it); 0 = train for the steps below")
        self.steps = SpinBox(label="steps", value=300, min=1, max=100000, step=50)
        self.batch = SpinBox(label="batch size", value=8, min=1, max=256)
        self.crop = SpinBox(label="crop", value=256, min=32, max=2048, step=32)
        self.lr = FloatSpinBox(label="learning rate", value=LR, min=1e-6, max=1.0, step=1e-4)
        self.patience = SpinBox(label="early stop after", value=0, min=0, max=1000,
                                tooltip="validations without gain")
        special(self.patience, "never")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.out = FileEdit(label="save to", mode="d", value="my_model")
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.bar = ProgressBar(label="steps", value=0, min=0, max=1)
        self.status = status_line("")
        self.scale_note = status_line()  # says when the image's pixel size is assumed
        self.scale_note.visible = False
        self.extend([self.source, self.folder, self.val_match, self.image, self.labels_layer, self.start, self.base,
                     self.architecture, self.encoder, self.pretrained, self.um_per_px, self.minutes, self.steps,
                     self.batch, self.crop, self.lr,
                     self.patience, self.device, self.out, self.train_button, self.cancel_button, self.bar,
                     self.scale_note, self.status])
        self._figure, self._canvas = plot_canvas()
        self.native.layout().addWidget(self._canvas)
        self.source.changed.connect(self._show_fields)
        self.start.changed.connect(self._show_fields)
        self.start.changed.connect(lambda value: setattr(self.lr, "value", LR if value == START[0] else FINE_TUNE_LR))
        self.train_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self._show_fields()
        self.state.events.retrain.connect(self._retrain_on)

    def _retrain_on(self, pair):
        """Another dock asked to retrain on an image and its corrected labels."""
        if pair is None:
            return
        image, labels = pair
        self.source.value = SOURCES[1]
        self.labels_layer.reset_choices()
        self.image.reset_choices()
        self.labels_layer.value = labels
        if image is not None:
            self.image.value = image
        self.state.retrain = None  # handled

    def _show_fields(self):
        from_folder = self.source.value == SOURCES[0]
        self.folder.visible = self.val_match.visible = from_folder
        self.image.visible = self.labels_layer.visible = not from_folder
        new = self.start.value == "new model"
        self.base.visible = self.start.value == "fine-tune a model folder"
        self.architecture.visible = self.encoder.visible = self.pretrained.visible = self.um_per_px.visible = new

    def _card_and_weights(self):
        name = Path(self.out.value).name
        if self.start.value == "new model":
            return new_model(self.architecture.value, self.encoder.value, um_per_px=self.um_per_px.value,
                             pretrained=None if self.pretrained.value else False, name=name)
        return start_from(None if self.start.value == "fine-tune the built-in model" else Path(self.base.value), name)

    def _data(self, card):
        if self.source.value == SOURCES[0]:
            return folder_split(Path(self.folder.value), card, self.val_match.value or None)
        image, labels = self.image.value, self.labels_layer.value
        if image is None or labels is None:
            raise OptionError("choose the image and its corrected Labels layer")
        session = session_of(labels)
        if session is not None:  # under review: learn what was reviewed, from the lazy image, whole objects validate
            from napari_ftu.training.sparse import ReviewData, pooled_crops

            levels = list(image.data) if image.multiscale else [image.data]
            review = ReviewData.from_session(session, levels, image.metadata.get("um_per_px"), image.name)
            if review.n_reviewed == 0:
                raise OptionError(f"{labels.name}: nothing reviewed yet (accept, reject or draw objects first)")
            return pooled_crops([review], card.um_per_px, val_every=5)
        return pair_split(level0(image), level0(labels), image.metadata.get("um_per_px"), card, name=labels.name)

    def _trained_on(self) -> dict:
        if self.source.value == SOURCES[0]:
            source, um = Path(self.folder.value).name, None
        else:
            source, um = self.image.value.name, self.image.value.metadata.get("um_per_px")
        start = None if self.start.value == "new model" else (
            "the built-in model" if self.start.value == "fine-tune the built-in model" else Path(self.base.value).name)
        return trained_on([source], um, fine_tuned_from=start)

    def run(self):
        """Start training in a worker thread."""
        try:
            card, weights = self._card_and_weights()
            train_set, val_set = self._data(card)
            card.trained_on = self._trained_on()
        except (FTUError, OSError) as exc:
            return self._fail(exc)
        self.history = {"loss": [], "val": []}
        out = Path(self.out.value)
        minutes = self.minutes.value or None
        steps = train_steps(train_set, val_set, card, steps=self.steps.value, batch_size=self.batch.value,
                            crop=self.crop.value, lr=self.lr.value, device=self.device.value, init_state=weights,
                            val_every=None if minutes else max(1, min(50, self.steps.value // 4)),
                            patience=self.patience.value, out=out, minutes=minutes)
        self.train_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"training on {len(train_set)} images, validating on {len(val_set)} …"
        note = None
        if self.source.value != SOURCES[0] and not self.image.value.metadata.get("um_per_px"):
            _, note = assumed_pixel_size(self.image.value.name, None, card.um_per_px, "the model's",
                                         "µm/px in the Load dock")
        self.scale_note.value, self.scale_note.visible = note or "", bool(note)
        self.worker = start_job(
            steps, "Training", total=self.steps.value, bar=self.bar, on_event=self._on_event,
            on_done=lambda result: self._on_done(out, result), on_error=self._fail, on_finished=self._on_finished,
            on_abort=lambda: setattr(self.status, "value", "cancelled; nothing saved"))
        return self.worker

    def cancel(self):
        if self.worker is not None:
            self.worker.quit()

    def _on_event(self, event):
        if isinstance(event, TrainStep):
            self.history["loss"].append(event.loss)
            stats = event.stats
            if stats.get("eta") == stats.get("eta"):  # not NaN
                last = stats.get("val_dice")
                self.status.value = (f"step {event.step}/~{event.total}, {stats['steps_per_s']:.2f} steps/s, "
                                     f"ETA {stats['eta'] / 60:.1f} min"
                                     + (f", validation Dice {last:.3f}" if last is not None else ""))
        elif isinstance(event, Validation):
            self.history["val"].append((event.step, event.dice))
            self.status.value = f"step {event.step}: validation Dice {event.dice:.3f}"
        if isinstance(event, Validation) or (isinstance(event, TrainStep) and event.step % 10 == 0):
            _draw(self._figure, self._canvas, self.history)

    def _on_done(self, out: Path, result):
        model, history = result
        _draw(self._figure, self._canvas, self.history)
        self.status.value = (f"best validation Dice {history['best_dice']:.3f} (step {history['best_step']}), "
                             f"{history['seconds']:.0f} s on {model.device}; saved {out}")
        show_info(self.status.value)
        self.state.models = (*self.state.models, str(out))  # the Segment dock offers it

    def _on_finished(self):
        self.train_button.enabled, self.cancel_button.enabled = True, False



def _draw(figure, canvas, history):
    figure.clear()
    ax = figure.add_subplot(111)
    ax.plot(np.arange(1, len(history["loss"]) + 1), history["loss"], lw=0.8, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if history["val"]:
        ax2 = ax.twinx()
        steps, scores = zip(*history["val"])
        ax2.plot(steps, scores, "o-", color="tab:orange", label="val Dice")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("validation Dice")
    canvas.draw_idle()
