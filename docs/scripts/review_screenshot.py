"""Make docs/review.png: the Review dock on the sample slide, segmented by the default model.

Run with ``xvfb-run -a python docs/scripts/review_screenshot.py`` (sessions go to a temporary folder).
"""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NAPARI_FTU_SESSIONS", tempfile.mkdtemp())

import napari  # noqa: E402

from napari_ftu.engine.inference import segment  # noqa: E402
from napari_ftu.models.loading import load_model  # noqa: E402
from napari_ftu.plugin.sample import synthetic_layers  # noqa: E402
from napari_ftu.review import editing  # noqa: E402


def main(out: Path):
    (rgb, img_kw, _), _ = synthetic_layers()
    seg = segment(rgb, load_model(None, device="cpu"), um_per_px=img_kw["metadata"]["um_per_px"])
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1700, 1000)
    image = viewer.add_image(rgb, **img_kw)
    features = {k: [o[k] for o in seg.objects] for k in ("id", "area_um2", "confidence")}
    features["index"] = features.pop("id")
    features["class"] = ["glomerulus"] * len(seg.objects)
    viewer.add_labels(seg.labels, name=f"{image.name} FTUs", scale=img_kw["scale"], features=features,
                      metadata={"um_per_px": img_kw["metadata"]["um_per_px"], "source": image.name}, opacity=0.55)
    _, dock = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
    dock.sort.value = "low confidence first"
    order = list(dock._order)
    dock.select(order[:1])
    dock.reject()  # reject the least confident object
    for obj in order[1:6]:
        dock.select([obj])
        dock.accept()
    dock.select([order[6]])
    dock.grow(1)  # an edit
    dock.session.apply(editing.fill_holes(dock.session.labels))
    dock.refresh()
    rows = dock.session.review.rows
    middle = min((i for i in order[7:] if i in rows),
                 key=lambda i: abs(rows[i].centroid[0] - 1024) + abs(rows[i].centroid[1] - 1024))
    dock.select([middle])
    viewer.scene.camera.zoom *= 0.3  # show the neighbourhood of the selected object
    napari.qt.get_qapp().processEvents()
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out}: {dock.counts.value}")
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "review.png")
