"""Make docs/segment_running.png: the Segment dock half way through a run on a 4096 x 4096
synthetic slide, the finished rows already showing their glomeruli (progressive display).

Run with ``xvfb-run -a python docs/scripts/segment_screenshot.py``.
"""

import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_ftu._qt.demo import hide_notices
from napari_ftu.io.synthetic import make_slide
from napari_ftu.steps import TileProgress

OUT = Path(__file__).resolve().parents[1] / "segment_running.png"

viewer = napari.Viewer(show=True)
viewer.window.resize(1500, 950)
rgb, _, _ = make_slide(4096, 4096, seed=7, um_per_px=2.0)
layer = viewer.add_image(rgb, name="kidney", metadata={"um_per_px": 2.0})
viewer.scene.camera.center = (1200, 2000)
viewer.scene.camera.zoom = 0.45
_, dock = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
dock.device.value = "cpu"
dock.image.value = layer
dock.batch.value = 2
app = QApplication.instance()
worker = dock.run()
taken = []


def half_way(event):
    if isinstance(event, TileProgress) and event.done >= event.total // 2 and not taken:
        hide_notices(viewer)
        app.processEvents()
        taken.append(viewer.screenshot(str(OUT), canvas_only=False))


worker.yielded.connect(half_way)
while dock.worker is not None or not dock.run_button.enabled:
    app.processEvents()
    time.sleep(0.01)
print(f"{OUT}: {dock.status.value}")
viewer.close()
