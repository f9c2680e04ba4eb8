"""Regenerate docs/debug.png: the Debug dock on a synthetic slide with a damaged prediction.

Run from the repository root: ``xvfb-run -a python docs/scripts/debug_screenshot.py [OUT.png]``.
"""
import sys

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_ftu._qt.debug import DebugWidget
from napari_ftu.engine.inference import segment
from napari_ftu.io.synthetic import make_slide
from napari_ftu.models.loading import load_model

UM = 2.0
rgb, truth, _ = make_slide(768, 768, seed=777, um_per_px=UM)
seg = segment(rgb, load_model(None, device="cpu"), um_per_px=UM)
pred = np.array(seg.labels, np.int32)
ids, areas = np.unique(pred[pred > 0], return_counts=True)
pred[pred == ids[np.argmax(areas)]] = 0
yy, xx = np.ogrid[:768, :768]
pred[(yy - 40) ** 2 + (xx - 700) ** 2 <= 225] = pred.max() + 1
viewer = napari.Viewer(show=True)
kw = {"scale": (UM, UM), "metadata": {"um_per_px": UM}}
viewer.add_image(rgb, name="synthetic kidney", **kw)
viewer.add_labels(truth, name="ground truth", visible=False, **kw)
viewer.add_labels(pred, name="prediction", visible=False, **kw)
viewer.add_image(np.asarray(seg.probability, np.float32), name="probability", visible=False, colormap="magma", **kw)
w = DebugWidget(viewer)
viewer.window.add_dock_widget(w, name="Debug", area="right")
w.pred.value, w.truth.value = viewer.layers["prediction"], viewer.layers["ground truth"]
w.prob.value = viewer.layers["probability"]
app = QApplication.instance()
viewer.window._qt_window.resize(1700, 1150)
w.evaluate()
while w.worker is not None:
    app.processEvents()
w.tile_grid()
w.objects_table.selectRow(0)
for _ in range(20):
    app.processEvents()
from napari._qt.dialogs.qt_notification import NapariQtNotification  # noqa: E402 (imported after the viewer exists)

for wd in app.allWidgets():
    if isinstance(wd, NapariQtNotification):
        wd.close()
for _ in range(20):
    app.processEvents()
viewer.screenshot(sys.argv[1] if len(sys.argv) > 1 else "docs/debug.png", canvas_only=False)
print(w.status.value)
viewer.close()
