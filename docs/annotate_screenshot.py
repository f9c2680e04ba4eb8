"""Make docs/annotate.png: the Annotate dock after Train on a real Sarder frozen-kidney patch
(../shared/data, 3 µm/px) with simulated strokes from its truth (3 glomerulus, 3 background), the
encoder features and convex objects on; the truth's outlines in green for comparison.

Run with ``xvfb-run -a python docs/annotate_screenshot.py``.
"""

import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication
from skimage.io import imread
from skimage.segmentation import find_boundaries

from napari_ftu._qt.demo import hide_notices
from napari_ftu.annotate import simulate

OUT = Path(__file__).resolve().parent / "annotate.png"
ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sarder_frozen_kidney_glomeruli"
PATCH = "O27_10_180_992"

image = imread(ROOT / "images" / f"slide_{PATCH}.png")[..., :3]
truth = imread(ROOT / "masks" / f"mask_{PATCH}.png") > 0
viewer = napari.Viewer(show=True)
viewer.window.resize(1500, 950)
_, dock = viewer.window.add_plugin_dock_widget("napari-ftu", "Annotate")
viewer.add_image(image, name=PATCH, metadata={"um_per_px": 3.0})
viewer.add_labels(find_boundaries(truth).astype("uint8"), name="truth (outline)", colormap={1: "lime", None: None})
dock.encoder_features.value = dock.convex.value = True
dock.live.value = False
dock.add_scribbles().data[:] = simulate.strokes(truth, 3, 3, seed=0, brush=5)
dock.train()
app, start = QApplication.instance(), time.time()
while dock.worker is not None:
    if time.time() - start > 600:
        raise SystemExit(f"gave up waiting: {dock.status.value}")
    app.processEvents()
    time.sleep(0.01)
objects = viewer.layers["objects"]
d = 2 * ((objects.data > 0) & truth).sum() / ((objects.data > 0).sum() + truth.sum())
print(f"{dock.status.value}; Dice {d:.3f}")
objects.contour, objects.opacity = 2, 0.9
viewer.layers.selection.active = objects
viewer.reset_view()
hide_notices(viewer)
app.processEvents()
viewer.screenshot(str(OUT), canvas_only=False)
print(OUT)
viewer.close()
