"""Engine speed and memory, side by side in one run.

    python bench/inference.py [--size 4096] [--device cpu] [--batch 4] [--repeat 3] [--no-monai] [--profile]

1. End-to-end time of ``segment`` / the model's forward time alone over the same tiles, each run
   ``--repeat`` times interleaved, the best of each compared.
2. Against MONAI ``sliding_window_inference`` (same network, tile, overlap, Gaussian blending,
   batch) on an all-tissue image and on one that is 60 % glass: time and peak-memory ratios.
   Each run is a fresh subprocess, so peak resident memory (ru_maxrss) is its own.
3. On a GPU (``--device cuda``): tiles/s end to end versus model-only at the same batch and
   precision, and megapixels/s.

Wall time and CPU time (all threads) are printed: on a shared machine the wall-time ratio varies
with the load while the CPU-time ratio (the work done per tile computed) stays put.

The model is the built-in one (U-Net, MobileNetV3 encoder, 256 px tiles, 32 px overlap, taper) on a
synthetic kidney slide rendered at the model's 2 µm/px, so no resampling is involved.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def image(size: int, glass: float) -> np.ndarray:
    """A synthetic kidney image tiled from one rendered patch; the left ``glass`` fraction blank."""
    from napari_ftu.io.synthetic import make_slide

    patch, _, _ = make_slide(1024, 1024, seed=2, um_per_px=2.0)
    reps = -(-size // 1024)
    rgb = np.tile(patch, (reps, reps, 1))[:size, :size].copy()
    rgb[:, : int(size * glass)] = (238, 238, 240)
    return rgb


def run_one(method: str, size: int, glass: float, device: str, batch: int) -> dict:
    """One measurement in this process (called in a subprocess by ``main``)."""
    import torch

    from napari_ftu.engine.models import load_model

    model = load_model(None, device=device)
    rgb = image(size, glass)
    card = model.card
    base = peak_mb()
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    if method == "ours":
        from napari_ftu.engine.inference import segment

        segment(rgb[:512, :512], model, batch_size=batch)  # warm-up
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        seg = segment(rgb, model, batch_size=batch)
        sync()
        out = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
               "tiles": seg.n_tiles, "skipped": seg.n_skipped,
               "prob": seg.probability[::8, ::8].tolist()}
    elif method == "forward":
        from napari_ftu.engine.tile_source import TileSource
        from napari_ftu.engine.tiling import tile_grid
        from napari_ftu.engine.tissue import tiles_with_tissue, tissue_mask

        source = TileSource(rgb, None, card.um_per_px)
        grid = tile_grid(source.shape, card.tile_size, card.overlap)
        thumb, scale = source.thumbnail()
        keep = tiles_with_tissue(tissue_mask(thumb), scale, grid, card.tile_size, card.overlap)
        tiles = np.stack([source.read(y, x, card.tile_size) for (y, x), k in zip(grid, keep) if k])
        model.predict(tiles[:batch])  # warm-up
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(tiles), batch):
            model.predict(tiles[i : i + batch])
        sync()
        out = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu, "tiles": len(tiles)}
    else:  # monai
        from monai.inferers import sliding_window_inference

        net = model.network
        mean = torch.tensor(card.mean, device=model.device).view(1, -1, 1, 1) * 255
        std = torch.tensor(card.std, device=model.device).view(1, -1, 1, 1) * 255

        def predictor(x):
            return torch.sigmoid(net(x))

        def run(array):
            x = torch.from_numpy(array).to(model.device).permute(2, 0, 1)[None].float()
            x = (x - mean) / std
            with torch.inference_mode():
                prob = sliding_window_inference(x, (card.tile_size,) * 2, batch, predictor,
                                                overlap=card.overlap / card.tile_size, mode="gaussian")
            return prob[0, 0].float().cpu().numpy()

        run(rgb[:512, :512])
        sync()
        start = time.perf_counter()
        prob = run(rgb)
        labels_start = time.perf_counter()
        from napari_ftu.engine.postprocess import instances

        instances(prob, card.threshold, int(card.min_object_um2 / card.um_per_px**2))  # same post-processing
        sync()
        out = {"seconds": time.perf_counter() - start, "labels_seconds": time.perf_counter() - labels_start,
               "prob": prob[::8, ::8].tolist()}
    out["peak_mb"] = peak_mb() - base
    return out


def profile(size: int, device: str, batch: int) -> None:
    """One in-process end-to-end run under cProfile: the model's ``predict`` against the stages
    around it (steadier than wall-clock pairs on a shared machine)."""
    import cProfile
    import pstats

    from napari_ftu.engine.inference import segment
    from napari_ftu.engine.models import load_model

    model = load_model(None, device=device)
    rgb = image(size, 0.0)
    segment(rgb[:512, :512], model, batch_size=batch)  # warm-up
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.runcall(segment, rgb, model, batch_size=batch)
    total = time.perf_counter() - start
    cum = {}
    for (path, _, name), (_, _, _, cumtime, _) in pstats.Stats(prof).stats.items():
        cum[(os.path.basename(path), name)] = cum.get((os.path.basename(path), name), 0.0) + cumtime
    predict = cum[("models.py", "predict")]
    stages = {"instance labelling": cum.get(("inference.py", "relabel_steps"), 0.0),
              "blending": cum.get(("tiling.py", "add"), 0.0),
              "flushing rows": cum.get(("tiling.py", "_flush"), 0.0) + cum.get(("tiling.py", "finish"), 0.0),
              "writes": cum.get(("inference.py", "write"), 0.0),
              "tissue overview": cum.get(("tissue.py", "tissue_mask"), 0.0)}
    print(f"{size} x {size}: end to end {total:.2f} s, predict {predict:.2f} s, ratio {total / predict:.3f}; "
          + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()))


def measure(method, size, glass, device, batch) -> dict:
    cmd = [sys.executable, __file__, "--one", method, "--size", str(size), "--glass", str(glass),
           "--device", device, "--batch", str(batch)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--glass", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--no-monai", action="store_true", help="leave out the MONAI comparison")
    p.add_argument("--repeat", type=int, default=3,
                   help="end-to-end and forward runs, interleaved; the best of each is compared (timeit's rule: "
                        "on a shared machine the fastest run is the one least disturbed)")
    p.add_argument("--profile", action="store_true", help="one in-process run under cProfile: stage times")
    args = p.parse_args()
    if args.profile:
        profile(args.size, args.device, args.batch)
        return
    if args.one:
        print(json.dumps(run_one(args.one, args.size, args.glass, args.device, args.batch)))
        return
    print(f"{args.size} x {args.size} px at 2 µm/px, device {args.device}, batch {args.batch}, "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    for glass in (0.0, 0.6):
        runs = {"ours": [], "forward": []}
        for _ in range(max(1, args.repeat)):
            for method in runs:
                runs[method].append(measure(method, args.size, glass, args.device, args.batch))
        ours, fwd = (min(runs[m], key=lambda r: r["seconds"]) for m in runs)
        for key in ("cpu_seconds",):
            ours[key], fwd[key] = (min(r[key] for r in runs[m]) for m in runs)
        every = ", ".join(f"{o['seconds'] / f['seconds']:.2f}" for o, f in zip(runs["ours"], runs["forward"]))
        if args.no_monai:
            print(f"\n{int(glass * 100)} % glass: {ours['tiles']} tiles: best of {args.repeat}: end to end "
                  f"{ours['seconds']:.2f} s, forward {fwd['seconds']:.2f} s, "
                  f"ratio {ours['seconds'] / fwd['seconds']:.3f}; "
                  f"CPU time ratio {ours['cpu_seconds'] / fwd['cpu_seconds']:.3f} (each pair: {every})")
            continue
        monai = measure("monai", args.size, glass, args.device, args.batch)
        diff = np.abs(np.array(ours["prob"]) - np.array(monai["prob"]))
        mp = args.size**2 / 1e6
        print(f"\n{int(glass * 100)} % glass: {ours['tiles']} tiles computed, {ours['skipped']} skipped")
        print(f"  ours end to end   {ours['seconds']:7.2f} s   {mp / ours['seconds']:.2f} MP/s   "
              f"peak +{ours['peak_mb']:.0f} MB")
        print(f"  model forward     {fwd['seconds']:7.2f} s   ({fwd['tiles']} tiles)  "
              f"end-to-end / forward = {ours['seconds'] / fwd['seconds']:.3f}")
        print(f"  CPU time (all threads; steady when the machine is shared): ours {ours['cpu_seconds']:.2f} s, "
              f"forward {fwd['cpu_seconds']:.2f} s, ratio {ours['cpu_seconds'] / fwd['cpu_seconds']:.3f}")
        print(f"  MONAI sliding     {monai['seconds']:7.2f} s   (of which labelling {monai['labels_seconds']:.2f} s)   "
              f"peak +{monai['peak_mb']:.0f} MB")
        print(f"  MONAI / ours: time {monai['seconds'] / ours['seconds']:.2f}x, "
              f"peak memory {monai['peak_mb'] / max(ours['peak_mb'], 1):.2f}x")
        print(f"  probability vs MONAI (every 8th px): mean |diff| {diff.mean():.4f}, "
              f"99th pct {np.percentile(diff, 99):.4f}")
        if args.device.startswith("cuda"):
            print(f"  tiles/s end to end {ours['tiles'] / ours['seconds']:.1f} vs model only "
                  f"{fwd['tiles'] / fwd['seconds']:.1f}: ratio {fwd['seconds'] / ours['seconds']:.3f}")


if __name__ == "__main__":
    main()
