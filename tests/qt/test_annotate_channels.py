"""The Annotate dock on a four-channel fluorescence image, shown as one layer per channel as the
Load dock opens an HPA composite: the classifier sees all four channels in HPA order."""

from __future__ import annotations

import numpy as np

from napari_ftu.annotate import simulate
from napari_ftu.io.synthetic_cells import CHANNELS, make_cells


def test_channel_layers_train_as_one_four_channel_image(make_napari_viewer, qtbot):
    from napari_ftu._qt.annotate import AnnotateWidget

    c = make_cells(256, seed=31)
    viewer = make_napari_viewer()
    layers = viewer.add_image(np.moveaxis(c.image, -1, 0), channel_axis=0, name=[f"abc {n}" for n in CHANNELS],
                              metadata={"path": "hpa/abc_red.png", "um_per_px": 1.0}, blending="additive")
    viewer.add_image(c.image[..., 0], name="another image")  # not part of the composite
    viewer.layers.move(viewer.layers.index(layers[3]), 0)  # the user reordered the layers
    widget = AnnotateWidget(viewer)
    widget.image.value = layers[1]  # any channel layer stands for the composite
    np.testing.assert_array_equal(widget._pixels(), c.image)
    assert widget.cells.value  # four channels: cells by default (tests/qt/test_annotate_cells.py)
    widget.cells.value = False  # here the FTU path
    widget.min_um2.value, widget.shape.value = 0.0, ""  # cells are far smaller than the default 200-µm FTU
    scribbles = widget.add_scribbles()
    assert scribbles.data.shape == c.cells.shape
    scribbles.data[:] = simulate.class_strokes(c.cells, {i: 2 for i in c.classes}, 3, 3, seed=1, brush=5)
    widget.classes.value = "cell"
    widget.train()
    qtbot.waitUntil(lambda: widget.train_button.enabled and "objects" in viewer.layers, timeout=120_000)
    assert widget.classifier.in_channels == 4
    objects = viewer.layers["objects"].data
    # FTU objects (the dock's default prior: unpainted pixels lean to background), not yet cells:
    # what it marks lies in cells
    precision = ((objects > 0) & (c.cells > 0)).sum() / max(1, (objects > 0).sum())
    assert objects.any() and precision > 0.9, precision
