"""Time from pressing Run in the Segment dock to the first finished rows drawn, on the sample
slide (2048 x 2048 at 1 µm/px, the built-in model, CPU), and the longest stall of the Qt event
loop during the run (a 10 ms QTimer probe).

    xvfb-run -a python bench/first_result.py [--repeat 3]

The model is loaded before the clock starts (the dock caches it after the first run).
"""

import argparse
import time

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_ftu.plugin.sample import synthetic_layers

    viewer = napari.Viewer(show=True)
    data, kwargs, _ = synthetic_layers()[0]
    layer = viewer.add_image(data, **kwargs)
    _, dock = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    dock.device.value = "cpu"
    dock.image.value = layer
    dock._load()
    app = QApplication.instance()
    for run in range(args.repeat):
        ticks, marks = [], {}
        probe = QTimer()
        probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
        probe.start(10)
        start = time.perf_counter()
        worker = dock.run()

        def seen(event, start=start, marks=marks):
            name = f"{layer.name} probability (running)"
            if type(event).__name__ == "Band" and "first" not in marks and name in viewer.layers:
                app.processEvents()  # let the canvas draw the refreshed layer
                if float(np.asarray(viewer.layers[name].data).max()) > 0:
                    marks["first"] = time.perf_counter() - start

        worker.yielded.connect(seen)
        while dock.worker is not None or not dock.run_button.enabled:
            app.processEvents()
            time.sleep(0.002)
        total = time.perf_counter() - start
        probe.stop()
        gaps = np.diff([t for t in ticks if t >= start]) * 1000
        seg = dock.last_result
        print(f"run {run + 1}: first rows drawn after {marks.get('first', float('nan')):.2f} s, "
              f"finished after {total:.2f} s ({seg.n_tiles} tiles, {len(seg.objects)} objects); "
              f"longest event-loop gap {gaps.max():.0f} ms")
    viewer.close()


if __name__ == "__main__":
    main()
