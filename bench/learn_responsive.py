"""How responsive the viewer stays while the Review dock learns from a review: a 10 ms QTimer
probe on the main thread over a whole round (training, then the re-prediction and the merge),
on a real frozen H&E patch, with the Segment and Review docks open.

    xvfb-run -a python bench/learn_responsive.py [--seconds 30]

Prints the longest gap between probe ticks (a stall the user would feel as a frozen canvas), the
99th percentile and the round's own figures.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NAPARI_FTU_SESSIONS", tempfile.mkdtemp())

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sarder_frozen_kidney_glomeruli"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=30)
    args = p.parse_args()
    import imageio.v3 as iio
    import napari
    import numpy as np
    from qtpy.QtCore import QTimer

    app = napari.qt.get_qapp()

    def wait(until, timeout=900):
        start = time.time()
        while not until() and time.time() - start < timeout:
            app.processEvents()
            time.sleep(0.005)

    rgb = iio.imread(DATA / "images" / "slide_O27_2_589_736.png")[..., :3]
    viewer = napari.Viewer()
    viewer.add_image(rgb, name="O27_2", scale=(3.0, 3.0), metadata={"um_per_px": 3.0})
    _, segment = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    _, review = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
    segment.run()
    wait(lambda: segment.worker is None)
    for obj in sorted(review.session.review.rows)[:2]:
        review.select([obj])
        review.accept()
    review.learning.seconds.value = args.seconds
    for k in (1, 2):  # the first round also imports torch (the Segment dock ran ONNX Runtime); the second does not
        ticks = []
        probe = QTimer()
        probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
        probe.start(10)
        start = time.perf_counter()
        review.learning.learn()
        wait(lambda: review.learning.worker is None)
        probe.stop()
        gaps = np.diff(ticks) * 1000
        worst = int(np.argmax(gaps))
        print(f"round {k} ({args.seconds} s training + re-prediction): {time.perf_counter() - start:.1f} s wall; probe "
              f"gaps over {len(gaps)} ticks: longest {gaps.max():.0f} ms ({ticks[worst] - start:.1f} s in), p99 "
              f"{np.percentile(gaps, 99):.0f} ms, median {np.median(gaps):.0f} ms; load {os.getloadavg()[0]:.1f}")
        print("  " + review.learning.info.value)
    viewer.close()


if __name__ == "__main__":
    main()
