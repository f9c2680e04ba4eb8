"""Make docs/learn.png: the Review dock learning from a review of a real frozen H&E patch (the
Sarder lab's O27_2, about 3 µm/px), beside the Segment dock, after one round.

Run with ``xvfb-run -a python docs/scripts/learn_screenshot.py`` (sessions go to a temporary folder).
"""

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NAPARI_FTU_SESSIONS", tempfile.mkdtemp())

import imageio.v3 as iio  # noqa: E402
import napari  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "sarder_frozen_kidney_glomeruli"


def wait(app, until, timeout=600):
    start = time.time()
    while not until() and time.time() - start < timeout:
        app.processEvents()
        time.sleep(0.05)


def main(out: Path):
    app = napari.qt.get_qapp()
    rgb = iio.imread(DATA / "images" / "slide_O27_2_589_736.png")[..., :3]
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1500, 1000)
    viewer.add_image(rgb, name="O27_2", scale=(3.0, 3.0), metadata={"um_per_px": 3.0})
    _, segment = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    _, review = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
    segment.run()
    wait(app, lambda: segment.worker is None)
    layer = viewer.layers["O27_2 FTUs"]
    session = review.session
    found = len(session.review.rows)
    # The pathologist reviews the left half: keeps the right objects, draws the missed glomeruli
    # (here: the annotation's), says "nothing else here"; the right half stays unreviewed.
    from scipy import ndimage as ndi

    from napari_ftu.boxes import from_corners
    from napari_ftu.review.editing import add_mask

    half = from_corners(0, 0, rgb.shape[0], rgb.shape[1] // 2)
    for obj, row in sorted(session.review.rows.items()):
        if row.centroid[1] < rgb.shape[1] // 2:
            review.select([obj])
            review.accept()
    truth, n = ndi.label(iio.imread(DATA / "masks" / "mask_O27_2_589_736.png") > 0)
    for k, box in enumerate(ndi.find_objects(truth), start=1):
        mask = truth[box] == k
        if box[1].start < rgb.shape[1] // 2 and (session.labels[box][mask] == 0).mean() > 0.5:
            review._run(lambda box=box, mask=mask: session.apply(
                add_mask(session.labels, box, mask, reserved=session.reserved(), name="draw"), "edited"))
    review.learning.mark_done(half)
    review.learning.seconds.value = 45
    review.learning.learn()
    wait(app, lambda: review.learning.worker is None)
    viewer.window.remove_dock_widget(segment.native)  # the Review dock alone, its learn section in view
    viewer.layers.selection.active = layer
    viewer.reset_view()
    app.processEvents()
    review.scroll.ensureWidgetVisible(review._sections["learn"])
    app.processEvents()
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out}: {found} objects found by the built-in model; {review.learning.info.value}")
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "learn.png")
