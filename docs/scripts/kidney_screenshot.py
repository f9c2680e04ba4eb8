"""Make docs/kidney_segment.png: the Segment dock with the built-in model on a real PAS kidney tile
(a ccf test tile from ``../shared/data``, never trained on), its glomeruli outlined in the ground
truth, as a pathologist opening the plugin sees it.

Run with ``xvfb-run -a python docs/scripts/kidney_screenshot.py [TILE_ID]`` (needs ``../shared`` beside the repo).
"""

import sys
import time
from pathlib import Path

import imageio.v3 as iio
import napari
from qtpy.QtWidgets import QApplication

from napari_ftu._qt.demo import hide_notices
from napari_ftu.evaluation.metrics import dice

ROOT = Path(__file__).resolve().parents[1]  # docs/
CCF = ROOT.parents[1] / "shared" / "data" / "hubmap_ccf_kidney_glomeruli"
TILE = sys.argv[1] if len(sys.argv) > 1 else "ccf_test_321"
UM_PER_PX = 1.0  # the ccf tiles' pixel size (the JPEGs carry none)
OUT = ROOT / "kidney_segment.png"

viewer = napari.Viewer(show=True)
viewer.window.resize(1500, 950)
viewer.open(str(CCF / "images" / f"{TILE}.jpg"), plugin="napari-ftu")
image = viewer.layers[0]
image.metadata["um_per_px"] = UM_PER_PX
truth = iio.imread(CCF / "masks" / f"{TILE}.png")
truth = truth[..., 0] if truth.ndim == 3 else truth
_, dock = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
dock.device.value = "cpu"
dock.image.value = image
app = QApplication.instance()
dock.run()
while dock.worker is not None or not dock.run_button.enabled:
    app.processEvents()
    time.sleep(0.01)
outline = viewer.add_labels((truth > 0).astype("uint8"), name="ground truth (outline)", opacity=1.0)
outline.contour = 4
hide_notices(viewer)
viewer.reset_view()
app.processEvents()
viewer.screenshot(str(OUT), canvas_only=False)
labels = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Labels) and layer is not outline)
print(f"{OUT}: {dock.status.value}; pixel Dice against the ground truth {dice(labels.data > 0, truth > 0):.3f}")
viewer.close()
