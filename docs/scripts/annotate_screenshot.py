"""Make the Annotate dock's pictures, each after *Train* with simulated strokes from the truth
(3 per class and 3 of background):

- docs/annotate.png: a real Sarder frozen-kidney patch (../shared/data, 3 µm/px), encoder
  features on, objects grown to their enclosing outline, the truth outlined in green;
- docs/annotate_cells.png: *cells (fluorescence)* on a synthetic HPA-like image
  (``io/synthetic_cells``) opened as one layer per channel.

Run with ``xvfb-run -a python docs/scripts/annotate_screenshot.py``.
"""

import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_ftu._qt.demo import hide_notices
from napari_ftu.annotate import simulate

DOCS = Path(__file__).resolve().parents[1]
SARDER = DOCS.parents[1] / "shared" / "data" / "sarder_frozen_kidney_glomeruli"
PATCH = "O27_10_180_992"


def new_viewer():
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    _, dock = viewer.window.add_plugin_dock_widget("napari-ftu", "Annotate")
    return viewer, dock


def train_and_shoot(viewer, dock, out: Path):
    """Train, wait for the worker, then the screenshot with the objects layer selected."""
    dock.train()
    app, start = QApplication.instance(), time.time()
    while dock.worker is not None:
        if time.time() - start > 600:
            raise SystemExit(f"gave up waiting: {dock.status.value}")
        app.processEvents()
        time.sleep(0.01)
    objects = viewer.layers["objects"]
    objects.contour, objects.opacity = 2, 0.9
    viewer.layers.selection.active = objects
    viewer.reset_view()
    hide_notices(viewer)
    app.processEvents()
    viewer.screenshot(str(out), canvas_only=False)
    print(out)
    return objects


def sarder():
    from skimage.io import imread
    from skimage.segmentation import find_boundaries

    image = imread(SARDER / "images" / f"slide_{PATCH}.png")[..., :3]
    truth = imread(SARDER / "masks" / f"mask_{PATCH}.png") > 0
    viewer, dock = new_viewer()
    viewer.add_image(image, name=PATCH, metadata={"um_per_px": 3.0})
    viewer.add_labels(find_boundaries(truth).astype("uint8"), name="truth (outline)",
                      colormap={1: "lime", None: None})
    dock.encoder_features.value, dock.shape.value = True, "outline"
    dock.live.value = False
    dock.add_scribbles().data[:] = simulate.strokes(truth, 3, 3, seed=0, brush=5)
    objects = train_and_shoot(viewer, dock, DOCS / "annotate.png")
    d = 2 * ((objects.data > 0) & truth).sum() / ((objects.data > 0).sum() + truth.sum())
    print(f"{dock.status.value}; Dice {d:.3f}")
    viewer.close()


def cells():
    from napari_ftu.evaluation.metrics import average_precision, dice, match_objects
    from napari_ftu.io.synthetic_cells import CHANNELS, CLASSES, make_cells

    viewer, dock = new_viewer()
    c = make_cells(512, seed=4242)
    viewer.add_image(np.moveaxis(c.image, -1, 0), channel_axis=0, name=[f"cells_4242 {n}" for n in CHANNELS],
                     metadata={"path": "cells_4242_red.png", "um_per_px": 1.0}, blending="additive",
                     colormap=["red", "green", "blue", "yellow"])
    dock.classes.value = ", ".join(CLASSES)
    dock.add_scribbles().data[:] = simulate.class_strokes(c.cells, {i: 2 + CLASSES.index(n)
                                                                    for i, n in c.classes.items()}, 3, 3, seed=1,
                                                          brush=5)
    objects = train_and_shoot(viewer, dock, DOCS / "annotate_cells.png")
    scores = dict(zip(objects.features["index"], objects.features["confidence"]))
    m = match_objects(objects.data, c.cells, 0.5, scores)
    print(f"{dock.status.value}; AP@0.5 {average_precision(m):.3f}, Dice {dice(objects.data, c.cells):.3f}")
    viewer.close()


if __name__ == "__main__":
    sarder()
    cells()
