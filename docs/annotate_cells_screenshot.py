"""Make docs/annotate_cells.png: the Annotate dock with *cells (fluorescence)* on, after Train on a
synthetic HPA-like image (``io/synthetic_cells``) opened as one layer per channel, with simulated
strokes from its truth (3 per class and 3 of background).

Run with ``xvfb-run -a python docs/annotate_cells_screenshot.py``.
"""

import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_ftu._qt.demo import hide_notices
from napari_ftu.annotate import simulate
from napari_ftu.evaluation.metrics import average_precision, dice, match_objects
from napari_ftu.io.synthetic_cells import CHANNELS, CLASSES, make_cells

OUT = Path(__file__).resolve().parent / "annotate_cells.png"

viewer = napari.Viewer(show=True)
viewer.window.resize(1500, 950)
_, dock = viewer.window.add_plugin_dock_widget("napari-ftu", "Annotate")
c = make_cells(512, seed=4242)
viewer.add_image(np.moveaxis(c.image, -1, 0), channel_axis=0, name=[f"cells_4242 {n}" for n in CHANNELS],
                 metadata={"path": "cells_4242_red.png", "um_per_px": 1.0}, blending="additive",
                 colormap=["red", "green", "blue", "yellow"])
dock.classes.value = ", ".join(CLASSES)
scribbles = dock.add_scribbles()
scribbles.data[:] = simulate.class_strokes(c.cells, {i: 2 + CLASSES.index(n) for i, n in c.classes.items()}, 3, 3,
                                           seed=1, brush=5)
dock.train()
app, start = QApplication.instance(), time.time()
while dock.worker is not None:
    if time.time() - start > 600:
        raise SystemExit(f"gave up waiting: {dock.status.value}")
    app.processEvents()
    time.sleep(0.01)
objects = viewer.layers["objects"]
scores = dict(zip(objects.features["index"], objects.features["confidence"]))
m = match_objects(objects.data, c.cells, 0.5, scores)
print(f"{dock.status.value}; AP@0.5 {average_precision(m):.3f}, Dice {dice(objects.data, c.cells):.3f}")
objects.contour, objects.opacity = 2, 0.9
viewer.layers.selection.active = objects
viewer.reset_view()
hide_notices(viewer)
app.processEvents()
viewer.screenshot(str(OUT), canvas_only=False)
print(OUT)
viewer.close()
