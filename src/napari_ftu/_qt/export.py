"""Export dock: a Labels layer to any supported format, or training tiles."""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (
    ComboBox,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.utils.notifications import show_info

from napari_ftu._qt.common import Dock, level0, special, status_line
from napari_ftu._qt.state import session_of
from napari_ftu.errors import FTUError
from napari_ftu.formats.annotations import Annotations
from napari_ftu.formats.export import FORMATS, export_annotations
from napari_ftu.io.images import file_stem
from napari_ftu.training.tiles import export_tiles


class ExportWidget(Dock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.labels_layer = create_widget(annotation=napari.layers.Labels, label="labels")
        self.image_id = LineEdit(label="image id", value="", tooltip="empty = the image's name")
        self.format = ComboBox(label="format", choices=[(f.title, key) for key, f in FORMATS.items()], value="hubmap")
        self.path = FileEdit(label="file", mode="w", value="submission.csv")
        self.export_button = PushButton(text="Export")
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.tiles_dir = FileEdit(label="tiles folder", mode="d", value="training_tiles")
        self.tile = SpinBox(label="tile size", value=512, min=32, max=8192, step=32)
        self.overlap = SpinBox(label="overlap", value=0, min=0, max=4096, step=16)
        self.target_um = FloatSpinBox(label="target µm/px", value=0.0, min=0.0, max=100.0, step=0.05,
                                      tooltip="lowest value = keep the image's pixel size")
        special(self.target_um, "the image's own")
        self.keep = ComboBox(label="keep tiles with", choices=["objects", "tissue"], value="objects")
        self.negatives = FloatSpinBox(label="other tiles", value=0.1, min=0.0, max=1.0, step=0.05,
                                      tooltip="fraction of the remaining tiles that are kept too")
        self.max_per_class = SpinBox(label="max per class", value=0, min=0, max=100000,
                                     tooltip="at most this many tiles per class")
        special(self.max_per_class, "no cap")
        self.tile_format = ComboBox(label="tile files", choices=["png", "tif"], value="png")
        self.tiles_button = PushButton(text="Export training tiles")
        self.status = status_line("")
        self.extend([self.labels_layer, self.image_id, self.format, self.path, self.export_button, self.image,
                     self.tiles_dir, self.tile, self.overlap, self.target_um, self.keep, self.negatives,
                     self.max_per_class, self.tile_format, self.tiles_button, self.status])
        self.format.changed.connect(self._suffix)
        viewer.layers.selection.events.active.connect(self._follow_selection)
        self.export_button.changed.connect(self.export)
        self.tiles_button.changed.connect(self.export_tiles)

    def _follow_selection(self, event=None):
        """Export what the user is looking at: the selected Labels layer."""
        layer = self._viewer.layers.selection.active
        if isinstance(layer, napari.layers.Labels):
            self.labels_layer.reset_choices()
            self.labels_layer.value = layer

    def _suffix(self):
        path = Path(self.path.value)
        name = file_stem(path) or "labels"
        self.path.value = path.with_name(name + FORMATS[self.format.value].suffix)

    def _annotations(self, layer) -> Annotations:
        """The layer's objects; classes and confidences from its review session when one is open
        (what the Review and Annotate docks show, corrections included), else from its features."""
        image_id = self.image_id.value or str(layer.metadata.get("source") or layer.name).split(" ")[0]
        data = level0(layer)
        session = session_of(layer)
        features = session.review.features() if session is not None else layer.features
        return Annotations.from_layer(image_id, np.asarray(data), features, layer.metadata,
                                      default_class=layer.metadata.get("class", "FTU"))

    def confirm_overwrite(self, path: Path) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self.native, "Overwrite?", f"{path} exists. Replace it?")
        return answer == QMessageBox.Yes

    def export(self):
        """Write the chosen Labels layer in the chosen format (asks before replacing a file)."""
        layer = self.labels_layer.value
        if layer is None:
            return self._fail("Choose a Labels layer to export.")
        path = Path(self.path.value)
        if path.exists() and not self.confirm_overwrite(path):
            return None
        try:
            written = export_annotations(self._annotations(layer), path, self.format.value, overwrite=True)
        except (FTUError, OSError) as exc:
            return self._fail(exc)
        self._ok(f"wrote {written}")
        return written

    def export_tiles(self):
        layer, image = self.labels_layer.value, self.image.value
        if layer is None or image is None:
            return self._fail("Choose an image and a Labels layer to export tiles.")
        try:
            a = self._annotations(layer)
            data = level0(image)
            rows = export_tiles(data, a.labels, Path(self.tiles_dir.value), a.image_id, tile=self.tile.value,
                                overlap=self.overlap.value, um_per_px=image.metadata.get("um_per_px"),
                                target_um_per_px=self.target_um.value or None, keep=self.keep.value,
                                negative_fraction=self.negatives.value,
                                classes={i: a.class_names(i)[0] for i in a.ids()},
                                max_per_class=self.max_per_class.value or None, fmt=self.tile_format.value)
        except (FTUError, OSError) as exc:
            return self._fail(exc)
        self._ok(f"wrote {len(rows)} tiles to {self.tiles_dir.value}")
        return rows

    def _ok(self, text):
        self.status.value = text
        show_info(text)
