"""Batch throughput with 1 vs 2 Dask workers (and in this process), side by side in one run.

    python bench/batch.py [--slides 8] [--size 1536] [--workers 1 2]

Writes ``--slides`` synthetic kidney slides (``--size`` px square, 1 µm/px: the built-in model
runs at 2 µm/px, so each is resampled) and segments them with :func:`napari_ftu.batch.runner.run_batch`
into a fresh output folder per configuration: a LocalCluster of N single-threaded worker processes
on loopback, and the in-process loop (torch with its own thread count). Workers are started and
the model loaded in each (``warm-up``) before the clock starts, so the figures are steady-state
throughput; the start-up is printed separately. Outputs per slide: RLE CSV + label OME-TIFF.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--size", type=int, default=1536)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-in-process", action="store_true")
    args = ap.parse_args()

    import torch
    from distributed import Client, LocalCluster

    from napari_ftu.batch.plan import BatchOptions, plan_inputs
    from napari_ftu.batch.runner import COMBINED, run_batch
    from napari_ftu.batch.slide import worker_model
    from napari_ftu.io.synthetic import write_slide

    root = Path(tempfile.mkdtemp(prefix="napari-ftu-bench-batch-"))
    try:
        for i in range(args.slides):
            write_slide(root / "slides" / f"slide_{i}", args.size, args.size, seed=500 + i, um_per_px=1.0)
        jobs = plan_inputs([root / "slides"])
        options = BatchOptions(device="cpu")
        mp = sum(args.size * args.size for _ in jobs) / 1e6
        print(f"{len(jobs)} slides of {args.size} x {args.size} px ({mp:.1f} MP in all), {os.cpu_count()} CPU cores, "
              f"built-in model on CPU")
        results = []
        for n in args.workers:
            t0 = time.perf_counter()
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, silence_logs=40)
            with Client(cluster) as client:
                client.wait_for_workers(n)
                client.run(worker_model, options)  # load the model in every worker
                startup = time.perf_counter() - t0
                result = run_batch(jobs, root / f"out_{n}", options, client=client)
            cluster.close()
            results.append((f"Dask, {n} worker{'s' if n > 1 else ''} x 1 thread", result, startup))
        if not args.no_in_process:
            t0 = time.perf_counter()
            worker_model(options)
            startup = time.perf_counter() - t0
            result = run_batch(jobs, root / "out_local", options)
            results.append((f"in process, torch {torch.get_num_threads()} threads", result, startup))

        print(f"{'configuration':34s} {'start-up s':>10s} {'batch s':>8s} {'slides/min':>11s} {'MP/s':>7s} "
              f"{'done':>5s}")
        base = None
        for name, r, startup in results:
            assert r.done == len(jobs) and r.failed == 0, r.summary()
            base = base or r.slides_per_minute
            print(f"{name:34s} {startup:10.1f} {r.seconds:8.1f} {r.slides_per_minute:11.2f} "
                  f"{r.megapixels_per_second:7.3f} {r.done:5d}   x{r.slides_per_minute / base:.2f}")
        first = (root / f"out_{args.workers[0]}" / COMBINED).read_bytes()
        same = all((root / d / COMBINED).read_bytes() == first
                   for d in [f"out_{n}" for n in args.workers] + ([] if args.no_in_process else ["out_local"]))
        print(f"combined predictions.csv identical across configurations: {same}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
