"""Soak: segment the sample slide many times in one process and watch memory and threads.

A leak of a few MB per run (a cached array, a tile-reader thread that never ends, a torch
allocator that keeps growing) only shows after many runs. This segments the napari sample
slide (``napari_ftu.plugin.sample``: synthetic kidney, its seed, size and pixel size)
with the default model, 50 times by default, and prints the resident memory after warm-up and
at the end, and the Python and OS thread counts before and after.

    OMP_NUM_THREADS=1 python bench/soak.py [--runs 50] [--warmup 3] [--size N]

Exits 1 when resident memory grew by 50 MB or more after warm-up, or a thread was left behind.
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time

import psutil


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def os_threads() -> int:
    return psutil.Process().num_threads()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3, help="runs before the memory baseline is taken")
    parser.add_argument("--size", type=int, default=None, help="slide size (default: the napari sample's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from napari_ftu.engine.inference import segment
    from napari_ftu.io.synthetic import make_slide
    from napari_ftu.models.loading import load_model
    from napari_ftu.plugin.sample import SAMPLE_SEED, SAMPLE_SIZE, SAMPLE_UM_PER_PX

    size = args.size or SAMPLE_SIZE
    rgb, _, _ = make_slide(size, size, seed=SAMPLE_SEED, um_per_px=SAMPLE_UM_PER_PX)
    model = load_model(None, device=args.device)
    threads_before, os_before = threading.active_count(), os_threads()
    print(f"slide {size} x {size} at {SAMPLE_UM_PER_PX} um/px on {model.device}; "
          f"threads before: {threads_before} Python, {os_before} OS; RSS {rss_mb():.1f} MB")
    baseline, times, counts = None, [], set()
    for run in range(1, args.runs + 1):
        start = time.perf_counter()
        seg = segment(rgb, model, um_per_px=SAMPLE_UM_PER_PX)
        times.append(time.perf_counter() - start)
        counts.add(len(seg.objects))
        del seg
        gc.collect()
        if run == args.warmup:
            baseline = rss_mb()
            print(f"after {run} warm-up runs: RSS {baseline:.1f} MB")
        if run % 10 == 0 or run == args.runs:
            print(f"run {run:3d}: RSS {rss_mb():.1f} MB, {threading.active_count()} Python threads, "
                  f"{os_threads()} OS threads, {times[-1]:.2f} s", flush=True)
    time.sleep(0.5)  # let a finishing tile reader exit
    end = rss_mb()
    threads_after, os_after = threading.active_count(), os_threads()
    growth = end - baseline
    leftover = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    print(f"RSS after warm-up {baseline:.1f} MB, at the end {end:.1f} MB: growth {growth:+.1f} MB over "
          f"{args.runs - args.warmup} runs")
    print(f"threads before/after: {threads_before}/{threads_after} Python, {os_before}/{os_after} OS; "
          f"left running: {leftover or 'none'}")
    print(f"objects per run: {sorted(counts)} (the same every run: {len(counts) == 1}); "
          f"median {sorted(times)[len(times) // 2]:.2f} s per run")
    return 0 if growth < 50 and threads_after <= threads_before and os_after <= os_before else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
