"""Export dock: HuBMAP RLE CSV and training tiles from a Labels layer."""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import Container, FileEdit, FloatSpinBox, Label, LineEdit, PushButton, SpinBox, create_widget
from napari.utils.notifications import show_error, show_info

from ..export import ExportError, export_tiles, write_rle_csv


class ExportWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self.labels = create_widget(annotation=napari.layers.Labels, label="labels")
        self.image_id = LineEdit(label="image id", value="", tooltip="empty = the image's name")
        self.csv_path = FileEdit(label="RLE CSV", mode="w", filter="*.csv", value="submission.csv")
        self.rle_button = PushButton(text="Export RLE CSV")
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.tiles_dir = FileEdit(label="tiles folder", mode="d", value="training_tiles")
        self.tile = SpinBox(label="tile size", value=512, min=32, max=8192, step=32)
        self.overlap = SpinBox(label="overlap", value=0, min=0, max=4096, step=16)
        self.negatives = FloatSpinBox(label="negative tiles", value=0.1, min=0.0, max=1.0, step=0.05,
                                      tooltip="fraction of tiles without objects that are kept")
        self.tiles_button = PushButton(text="Export training tiles")
        self.status = Label(value="")
        self.extend([self.labels, self.image_id, self.csv_path, self.rle_button, self.image, self.tiles_dir,
                     self.tile, self.overlap, self.negatives, self.tiles_button, self.status])
        self.rle_button.changed.connect(self.export_rle)
        self.tiles_button.changed.connect(self.export_tiles)

    def _id(self, layer) -> str:
        return self.image_id.value or str(layer.metadata.get("source") or layer.name).split(" ")[0]

    def confirm_overwrite(self, path: Path) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self.native, "Overwrite?", f"{path} exists. Replace it?")
        return answer == QMessageBox.Yes

    def export_rle(self):
        layer = self.labels.value
        if layer is None:
            return self._fail("Choose a Labels layer to export.")
        path = Path(self.csv_path.value)
        if path.exists() and not self.confirm_overwrite(path):
            return None
        try:
            write_rle_csv(path, [(self._id(layer), np.asarray(layer.data) > 0)])
        except (ExportError, OSError) as exc:
            return self._fail(exc)
        self._ok(f"wrote {path}")
        return path

    def export_tiles(self):
        layer, image = self.labels.value, self.image.value
        if layer is None or image is None:
            return self._fail("Choose an image and a Labels layer to export tiles.")
        try:
            rows = export_tiles(np.asarray(image.data), np.asarray(layer.data), Path(self.tiles_dir.value),
                                self._id(layer), tile=self.tile.value, overlap=self.overlap.value,
                                um_per_px=image.metadata.get("um_per_px"), negative_fraction=self.negatives.value)
        except (ExportError, OSError) as exc:
            return self._fail(exc)
        self._ok(f"wrote {len(rows)} tiles to {self.tiles_dir.value}")
        return rows

    def _ok(self, text):
        self.status.value = text
        show_info(text)

    def _fail(self, exc):
        self.status.value = f"Error: {exc}"
        show_error(str(exc))
        return None
