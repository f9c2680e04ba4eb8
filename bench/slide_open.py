"""Open a large pyramidal OME-TIFF in napari through the Load dock, then pan across it at full
resolution; print the time to the first drawn view and the peak resident memory.

    xvfb-run -a python bench/slide_open.py [--size 50000] [--slide PATH]

The slide is generated (tile by tile, about 30 minutes for 50 000 px on 2 cores) when PATH does
not exist yet. torch is never imported here, as for a user who only views slides.
"""

import argparse
import time
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=50_000)
    p.add_argument("--slide", type=Path, default=None)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    path = args.slide or Path(f"/tmp/bench_slides/synthetic_{args.size}.ome.tif")
    if not path.exists():
        from napari_ftu.synthetic import write_slide

        print(f"writing {path} …", flush=True)
        written = write_slide(path.with_name(path.name.replace(".ome.tif", "")), args.size, args.size, seed=1,
                              um_per_px=0.5, pyramid=True)
        path = written["image"]

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1600, 1000)
    _, load = viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    QApplication.processEvents()
    base_rss = rss_mb()

    start = time.perf_counter()
    layer = load.open(path)
    viewer.screenshot(canvas_only=True)  # forces the first view to be drawn
    opened = time.perf_counter() - start
    h, w = layer.data[0].shape[:2]
    um = layer.scale[-1]
    print(f"{path.name}: {h} x {w} px, {len(layer.data)} levels; open to first view {opened:.2f} s")

    # Full resolution: one screen pixel per image pixel, then sweep across the slide.
    viewer.camera.zoom = 1 / um
    peak, times = rss_mb(), []
    for k in range(args.steps):
        frac = k / max(1, args.steps - 1)
        row = (0.1 + 0.8 * ((k * 7) % args.steps) / args.steps) * h
        col = (0.05 + 0.9 * frac) * w
        t = time.perf_counter()
        viewer.camera.center = (row * um, col * um)
        QApplication.processEvents()
        viewer.screenshot(canvas_only=True)
        times.append(time.perf_counter() - t)
        peak = max(peak, rss_mb())
    level = layer.data_level
    times.sort()
    print(f"panned {args.steps} views at full resolution (level {level}): median {times[len(times) // 2] * 1000:.0f} ms,"
          f" slowest {times[-1] * 1000:.0f} ms per view")
    print(f"resident memory: {base_rss:.0f} MB before opening, peak {peak:.0f} MB while panning")
    viewer.close()


if __name__ == "__main__":
    main()
