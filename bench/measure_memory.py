"""Time and peak memory of ``napari-ftu measure LABELS --image SLIDE --out m.csv --summary s.csv``
on a 40 000 x 40 000 synthetic pyramid, measured from outside with ``/usr/bin/time -v`` (the whole
process: Python, reading, every object's measurements and stain, the tissue area, the CSVs).

    python bench/measure_memory.py [--size 40000] [--folder /tmp/bench_measure]

The slide is a rendered 4096-px synthetic patch (0.5 µm/px, 11 glomeruli) repeated across the
slide, as ``bench/slide_open.py`` writes it, and its labels the patch's labels repeated with new
ids in each copy, so the label pyramid holds about a thousand objects (JPEG image, deflate uint32
labels, 512-px tiles). Both are written once and kept in the folder.
"""

import argparse
import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def write_labels(path: Path, size: int, patch: int = 4096) -> int:
    """The labels of ``slide_open.write_repeated_slide``'s patch, repeated with new ids per copy;
    returns the number of objects."""
    from napari_ftu.io.images import PYRAMID_TILE as T
    from napari_ftu.io.images import pyramid_downsamples, write_pyramid
    from napari_ftu.io.synthetic import make_slide

    _, labels, _ = make_slide(patch, patch, seed=1, um_per_px=0.5)
    labels = labels.astype(np.uint32)
    step = int(labels.max()) + 1
    copies = -(-size // patch)

    def tiles(d):
        n = -(-size // d)
        for y in range(0, n, T):
            for x in range(0, n, T):
                ys = np.arange(y, min(y + T, n)) * d  # level-0 rows of this tile (nearest neighbour)
                xs = np.arange(x, min(x + T, n)) * d
                base = labels[np.ix_(ys % patch, xs % patch)]
                copy = (ys // patch)[:, None] * copies + (xs // patch)[None, :]
                tile = np.zeros((T, T), np.uint32)
                tile[: len(ys), : len(xs)] = np.where(base > 0, base + copy * step, 0)
                yield tile

    write_pyramid(path, tiles, (size, size), np.uint32, 0.5, pyramid_downsamples((size, size)))
    return copies * copies * (step - 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=40_000)
    p.add_argument("--folder", type=Path, default=Path("/tmp/bench_measure"))
    args = p.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    slide = args.folder / f"synthetic_{args.size}.ome.tif"
    labels = args.folder / f"synthetic_{args.size}_labels.ome.tif"
    if not slide.exists():
        from slide_open import write_repeated_slide

        print(f"writing {slide} …", flush=True)
        write_repeated_slide(slide, args.size)
    if not labels.exists():
        print(f"writing {labels} …", flush=True)
        start = time.perf_counter()
        write_labels(labels, args.size)
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    out, summary = args.folder / "measurements.csv", args.folder / "summary.csv"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "napari_ftu.cli", "measure", str(labels), "--image",
           str(slide), "--out", str(out), "--summary", str(summary), "--overwrite", "--json"]
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if run.returncode:
        raise SystemExit(run.stdout[-2000:] + run.stderr[-3000:])
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    report = json.loads(run.stdout.strip().splitlines()[-1])
    (s,) = report["summary"]
    with out.open() as fh:
        columns = next(csv.reader(fh))
    full_gb = args.size**2 * 3 / 1e9
    print(f"napari-ftu measure on {args.size} x {args.size} (0.5 µm/px; the RGB pixels alone are {full_gb:.1f} GB, "
          f"the uint32 labels {args.size**2 * 4 / 1e9:.1f} GB)")
    print(f"  {report['objects']} objects, {len(columns)} columns, tissue {s['tissue_area_mm2']:.1f} mm², "
          f"{s['density_per_mm2']:.2f} objects per mm², median area {s['area_median_um2']:.0f} µm², "
          f"{s['n_border']} cut by the edge")
    print(f"  wall {seconds:.0f} s, peak RSS {peak_kb / 1024:.0f} MB ({peak_kb / 2**20:.2f} GiB)")


if __name__ == "__main__":
    main()
