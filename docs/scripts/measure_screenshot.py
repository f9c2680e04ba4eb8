"""Make docs/measure.png: the Measure dock beside the Review dock on a real PAS kidney tile
(ccf_test_321 of HuBMAP's ccf set, about 1 µm/px), segmented by the built-in model.

Run with ``xvfb-run -a python docs/scripts/measure_screenshot.py`` (needs ../shared/data; sessions go to a
temporary folder).
"""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NAPARI_FTU_SESSIONS", tempfile.mkdtemp())

import napari  # noqa: E402

from napari_ftu.engine.inference import segment  # noqa: E402
from napari_ftu.io.images import read_image  # noqa: E402
from napari_ftu.measure import select  # noqa: E402
from napari_ftu.models.loading import load_model  # noqa: E402

TILE = Path(__file__).resolve().parents[3] / "shared" / "data" / "hubmap_ccf_kidney_glomeruli" / "images" / \
    "ccf_test_321.jpg"


def main(out: Path):
    rgb = read_image(TILE).data
    seg = segment(rgb, load_model(None, device="cpu"), um_per_px=1.0)
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1800, 1050)
    viewer.add_image(rgb, name="ccf_test_321", scale=(1.0, 1.0), metadata={"um_per_px": 1.0})
    features = {"index": [o["id"] for o in seg.objects], "class": ["glomerulus"] * len(seg.objects),
                "confidence": [o["confidence"] for o in seg.objects]}
    viewer.add_labels(seg.labels, name="ccf_test_321 FTUs", features=features, opacity=0.5,
                      metadata={"um_per_px": 1.0, "source": "ccf_test_321", "class": "glomerulus"})
    _, review = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
    _, dock = viewer.window.add_plugin_dock_widget("napari-ftu", "Measure")
    areas = sorted(r["area_um2"] for r in dock.rows)
    dock.set_selection(select.ids_in_range(dock.rows, "area_um2", areas[len(areas) // 2], areas[-1]))
    dock.pick(max(dock.rows, key=lambda r: r["area_um2"])["id"])
    viewer.scene.camera.zoom *= 0.45  # the neighbourhood of the picked glomerulus
    napari.qt.get_qapp().processEvents()
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out}: {dock.status.value}; review lists {review.table.rowCount()}")
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "measure.png")
