"""Load dock: open a slide or image with its physical pixel size."""

from __future__ import annotations

from pathlib import Path

import napari
from magicgui.widgets import Container, FileEdit, FloatSpinBox, Label, PushButton
from napari.utils.notifications import show_error

from ..reader import image_layer_data
from ..slide_io import SlideError, read_image

FILTER = "Images (*.tif *.tiff *.svs *.ndpi *.png *.jpg *.jpeg)"


class LoadWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self.path = FileEdit(label="file", mode="r", filter=FILTER)
        self.um_per_px = FloatSpinBox(label="µm/px", value=0.0, min=0.0, max=100.0, step=0.05,
                                      tooltip="0 = read from the file's metadata")
        self.open_button = PushButton(text="Open")
        self.status = Label(value="")
        self.extend([self.path, self.um_per_px, self.open_button, self.status])
        self.open_button.changed.connect(self.open)

    def open(self, path: str | Path | None = None):
        """Read the file and add it as an Image layer scaled in µm; errors become notifications."""
        path = Path(path or self.path.value)
        try:
            loaded = read_image(path)
        except SlideError as exc:
            self.status.value = f"Error: {exc}"
            show_error(str(exc))
            return None
        data, kwargs, _ = image_layer_data(loaded, self.um_per_px.value or None)
        layer = self._viewer.add_image(data, **kwargs)
        um = kwargs["metadata"]["um_per_px"]
        size = " × ".join(map(str, data.shape[:2]))
        self.status.value = f"{loaded.name}: {size} px, " + (f"{um:g} µm/px" if um else "pixel size unknown")
        return layer
