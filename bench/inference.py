"""Engine speed and memory, side by side in one run.

    python bench/inference.py [--size 4096] [--device cpu] [--batch 4] [--repeat 3] [--no-monai] [--profile]
    python bench/inference.py --backends [--repeat 3] [--int8]
    python bench/inference.py --processes [--size 4096] [--repeat 2]

``--backends``: the runtimes side by side (see :func:`backends`), instead of 1-3 below.
``--processes``: whole processes as a user runs them against MONAI (see :func:`processes`).

1. End-to-end time of ``segment`` / the model's forward time alone over the same tiles, each run
   ``--repeat`` times interleaved, the best of each compared.
2. Against MONAI ``sliding_window_inference`` (same network, tile, overlap, Gaussian blending,
   batch) on an all-tissue image and on one that is 60 % glass: time and peak-memory ratios.
   Each run is a fresh subprocess, so peak resident memory (ru_maxrss) is its own.
3. On a GPU (``--device cuda``): tiles/s end to end versus model-only at the same batch and
   precision, and megapixels/s.

Wall time and CPU time (all threads) are printed: on a shared machine the wall-time ratio varies
with the load while the CPU-time ratio (the work done per tile computed) stays put.

The model is the built-in one (``--model`` for another: a folder, or ``synthetic-demo``) with its
card's tiles and overlap, on a synthetic kidney slide rendered at 2 µm/px (both built-in models' scale,
so no resampling is involved). Run once per model to put their times side by side.
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


def run_one(method: str, size: int, glass: float, device: str, batch: int, name: str = "builtin") -> dict:
    """One measurement in this process (called in a subprocess by ``main``)."""
    import torch

    from napari_ftu.models.loading import load_model, model_path

    model = load_model(model_path(name), device=device)
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
    from napari_ftu.models.loading import load_model

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
    predict = cum[("loading.py", "predict")]
    stages = {"instance labelling": cum.get(("inference.py", "relabel_steps"), 0.0),
              "blending": cum.get(("tiling.py", "add"), 0.0),
              "flushing rows": cum.get(("tiling.py", "_flush"), 0.0) + cum.get(("tiling.py", "finish"), 0.0),
              "writes": cum.get(("inference.py", "write"), 0.0),
              "tissue overview": cum.get(("tissue.py", "tissue_mask"), 0.0)}
    print(f"{size} x {size}: end to end {total:.2f} s, predict {predict:.2f} s, ratio {total / predict:.3f}; "
          + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()))


def _tiles(n: int, side: int = 256, seed: int = 2) -> np.ndarray:
    from napari_ftu.io.synthetic import make_slide

    rgb = make_slide(side * 4, side * 2, seed=seed, um_per_px=2.0)[0]
    return np.stack([rgb[y : y + side, x : x + side] for y in range(0, side * 4, side)
                     for x in range(0, side * 2, side)][:n])


def _best(fn, repeat: int) -> tuple:
    """Best wall and best CPU time of ``repeat`` calls after a warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def _int8(graph: str, out_dir: str, tiles, card, static: bool) -> str:
    """The graph quantised to int8: dynamic (weights only), or static as ``export-model --int8``
    makes it (calibrated on ``tiles``)."""
    from onnxruntime import quantization as q

    from napari_ftu.models.onnx import quantize_int8

    target = os.path.join(out_dir, ("static" if static else "dynamic") + ".onnx")
    if static:
        return str(quantize_int8(graph, target, tiles, card))
    pre = os.path.join(out_dir, "pre.onnx")
    q.quant_pre_process(graph, pre, skip_symbolic_shape=True)
    q.quantize_dynamic(pre, target, weight_type=q.QuantType.QInt8)
    return target


def _held_out_dice(model, n: int = 3) -> float:
    """Mean Dice of ``model`` on synthetic slides with seeds unseen in training."""
    from napari_ftu.engine.inference import segment
    from napari_ftu.evaluation.metrics import dice
    from napari_ftu.io.synthetic import make_slide

    scores = []
    for seed in range(9000, 9000 + n):
        rgb, truth, _ = make_slide(768, 768, seed=seed, um_per_px=2.0)
        scores.append(dice(segment(rgb, model, um_per_px=2.0).labels > 0, truth > 0))
    return float(np.mean(scores))


def backends(repeat: int, int8: bool, batch: int = 4) -> None:
    """Forward only, in one process, over the same 256 px tiles: eager torch, torch with batch
    norm folded, ONNX Runtime fp32 (and int8 with ``int8``), for the built-in model and the
    default training architecture; then start-up to the first tile of ``napari-ftu segment``
    on a 256 px PNG with each backend (fresh processes: wall time and peak resident memory)."""
    import logging
    import tempfile

    import torch

    from napari_ftu.models.fold import fold_batch_norm
    from napari_ftu.models.loading import FTUModel, builtin_model_path, load_model
    from napari_ftu.models.onnx import OnnxModel, export_onnx

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's notes on tensors it leaves in float
    threads = 1  # one thread each: CPU time is then the work done, steady on a shared machine
    torch.set_num_threads(threads)
    tiles = _tiles(8)
    print(f"forward only: {len(tiles)} tiles of 256 px, batch {batch}, {threads} thread (torch and ONNX Runtime), "
          f"best of {repeat} interleaved; CPU time (wall time in brackets)")
    demo = load_model(builtin_model_path("synthetic-demo"), device="cpu")
    kidney = load_model(None, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        for label, eager in (("synthetic demo (U-Net, MobileNetV3-small)", demo),
                             ("built-in kidney = training default (U-Net, EfficientNet-Lite0, decoder 128-16)",
                              kidney)):
            graph = export_onnx(eager.network, eager.card, os.path.join(tmp, "fp32.onnx"))
            folded = FTUModel(fold_batch_norm(__import__("copy").deepcopy(eager.network))[0], eager.card, "cpu")
            runtimes = {"torch eager": eager, "torch, batch norm folded": folded,
                        "onnxruntime fp32": OnnxModel(graph, eager.card, threads)}
            if int8:
                for static in (False, True):
                    try:
                        q = _int8(str(graph), tmp, tiles[:4], eager.card, static)
                        runtimes[f"onnxruntime int8 {'static' if static else 'dynamic'}"] = OnnxModel(
                            q, eager.card, threads)
                    except Exception as exc:  # some operators have no int8 kernel
                        print(f"  int8 {'static' if static else 'dynamic'}: not made ({type(exc).__name__}: {exc})")
            reference = np.concatenate([eager.predict(tiles[i : i + batch]) for i in range(0, len(tiles), batch)])
            results, walls = {}, {}
            for _ in range(repeat):  # interleaved, so a busy moment of the machine hits all alike
                for name, model in runtimes.items():
                    wall, cpu = _best(lambda m=model: [m.predict(tiles[i : i + batch])
                                                       for i in range(0, len(tiles), batch)], 1)
                    results[name], walls[name] = min(results.get(name, cpu), cpu), min(walls.get(name, wall), wall)
            print(f"\n{label}")
            base = results["torch eager"]
            for name, model in runtimes.items():
                prob = np.concatenate([model.predict(tiles[i : i + batch]) for i in range(0, len(tiles), batch)])
                print(f"  {name:34s} {results[name] / len(tiles) * 1000:7.1f} ms/tile "
                      f"({walls[name] / len(tiles) * 1000:6.1f})   {base / results[name]:.2f}x eager   "
                      f"max |dp| {np.abs(prob - reference).max():.1e}")
            if int8 and label.startswith("synthetic"):
                for name in [n for n in runtimes if "int8" in n]:
                    if results[name] < results["onnxruntime fp32"]:
                        d32, d8 = _held_out_dice(runtimes["onnxruntime fp32"]), _held_out_dice(runtimes[name])
                        print(f"  {name}: held-out Dice {d8:.4f} vs fp32 {d32:.4f} (|diff| {abs(d8 - d32):.4f})")
                    else:
                        print(f"  {name}: slower than fp32, Dice not measured")
    startup()


def startup(repeat: int = 2) -> None:
    """``napari-ftu segment IMAGE.png`` (256 px, the built-in model) in fresh processes: wall time
    (start-up to the first and only tile, and writing) and peak resident memory, per backend."""
    import tempfile

    import imageio.v3 as iio

    # peak RSS from VmHWM: a child's ru_maxrss starts at the forking parent's, which here holds torch
    code = ("import re, sys, time; t = time.perf_counter(); from napari_ftu.cli import main; "
            "rc = main(sys.argv[1:]); hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]); "
            "print('BENCH', rc, time.perf_counter() - t, hwm / 1024, 'torch' in sys.modules)")
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "tile.png")
        iio.imwrite(png, _tiles(1)[0])
        print("\nnapari-ftu segment tile.png (256 px, built-in model), fresh process each, best of", repeat)
        env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                        "src")}
        for backend in ("torch", "onnxruntime"):
            runs = []
            for _ in range(repeat):
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-c", code, "segment", png, "--out",
                                       os.path.join(tmp, "o.csv"), "--overwrite", "--json", "--backend", backend,
                                       "--device", "cpu"], capture_output=True, text=True, env=env, check=True)
                wall = time.perf_counter() - start
                line = next(ln for ln in done.stdout.splitlines() if ln.startswith("BENCH")).split()
                runs.append((wall, float(line[3]), line[4] == "True"))
            wall, rss, torch_loaded = min(runs)
            print(f"  --backend {backend:12s} wall {wall:5.2f} s   peak RSS {rss:6.0f} MB   torch imported: "
                  f"{torch_loaded}" + ("   (goal < 400 MB: " + ("met)" if rss < 400 else "MISSED)")
                                        if backend == "onnxruntime" else ""))


# peak RSS from VmHWM (a child's ru_maxrss starts at the forking parent's), as code for `python -c`
HWM = "int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) / 1024"


def hwm_mb() -> float:
    import re

    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read())[1]) / 1024


def monai_file(path: str, name: str, batch: int) -> None:
    """What a MONAI user runs as one process: read the image, the same network in eager torch
    through ``sliding_window_inference`` (same tile, overlap, Gaussian blending, batch), the same
    instance labelling, and the RLE CSV written. Prints the peak resident memory."""
    import tifffile
    import torch
    from monai.inferers import sliding_window_inference

    from napari_ftu.engine.postprocess import instances
    from napari_ftu.formats import rle
    from napari_ftu.models.loading import load_model, model_path

    model = load_model(model_path(name), device="cpu")
    card, net = model.card, model.network
    rgb = tifffile.imread(path)
    mean = torch.tensor(card.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(card.std).view(1, -1, 1, 1) * 255
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() - mean) / std
    with torch.inference_mode():
        prob = sliding_window_inference(x, (card.tile_size,) * 2, batch, lambda t: torch.sigmoid(net(t)),
                                        overlap=card.overlap / card.tile_size, mode="gaussian")[0, 0].numpy()
    labels = instances(prob, card.threshold, int(card.min_object_um2 / card.um_per_px**2))
    with open(path + ".monai.csv", "w") as fh:
        fh.write(f"id,rle\nimage,{rle.encode(labels > 0)}\n")
    print("BENCH", hwm_mb())


def processes(size: int, repeat: int, name: str, batch: int) -> None:
    """Whole processes as a user runs them, on a ``size``² TIFF at the model's 2 µm/px: ``napari-ftu
    segment IMAGE --out x.csv --blend gaussian`` (the CPU default: ONNX Runtime, glass skipped)
    against :func:`monai_file`; wall time from start to exit and peak resident memory, best of
    ``repeat``, all tissue and 60 % glass."""
    import tempfile

    from napari_ftu.io.images import write_tiff

    code = ("import re, sys; from napari_ftu.cli import main; rc = main(sys.argv[1:]); "
            f"print('BENCH', {HWM})")
    print(f"whole processes: {size} x {size} px TIFF at 2 µm/px, model {name}, batch {batch}, best of {repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        for glass in (0.0, 0.6):
            path = os.path.join(tmp, f"slide_{int(glass * 100)}.tif")
            write_tiff(path, image(size, glass), 2.0)
            runs = {"ours": [], "monai": []}
            for _ in range(repeat):
                for method, cmd in (
                        ("ours", [sys.executable, "-c", code, "segment", path, "--out", path + ".csv", "--overwrite",
                                  "--blend", "gaussian", "--batch", str(batch), "--model", name, "--device", "cpu"]),
                        ("monai", [sys.executable, __file__, "--monai-file", path, "--model", name,
                                   "--batch", str(batch)])):
                    start = time.perf_counter()
                    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    wall = time.perf_counter() - start
                    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("BENCH")).split()
                    runs[method].append((wall, float(line[1])))
            ours, monai = min(runs["ours"]), min(runs["monai"])
            every = ", ".join(f"{m[0] / o[0]:.2f}" for o, m in zip(runs["ours"], runs["monai"]))
            print(f"  {int(glass * 100):2d} % glass: ours {ours[0]:6.2f} s, peak {ours[1]:5.0f} MB | MONAI "
                  f"{monai[0]:6.2f} s, peak {monai[1]:5.0f} MB | MONAI / ours: time {monai[0] / ours[0]:.2f}x "
                  f"(each pair: {every}), peak memory {monai[1] / ours[1]:.2f}x")


def measure(method, size, glass, device, batch, name="builtin") -> dict:
    cmd = [sys.executable, __file__, "--one", method, "--size", str(size), "--glass", str(glass),
           "--device", device, "--batch", str(batch), "--model", name]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--model", default="builtin", help="model folder or built-in name (builtin, synthetic-demo)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--glass", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--no-monai", action="store_true", help="leave out the MONAI comparison")
    p.add_argument("--repeat", type=int, default=3,
                   help="end-to-end and forward runs, interleaved; the best of each is compared (timeit's rule: "
                        "on a shared machine the fastest run is the one least disturbed)")
    p.add_argument("--profile", action="store_true", help="one in-process run under cProfile: stage times")
    p.add_argument("--backends", action="store_true",
                   help="torch eager / batch norm folded / ONNX Runtime forward times, and CLI start-up per backend")
    p.add_argument("--int8", action="store_true", help="with --backends: also int8 ONNX graphs (dynamic, static)")
    p.add_argument("--processes", action="store_true",
                   help="whole processes as a user runs them: napari-ftu segment against a MONAI script")
    p.add_argument("--monai-file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.backends:
        backends(args.repeat, args.int8, args.batch)
        return
    if args.monai_file:
        monai_file(args.monai_file, args.model, args.batch)
        return
    if args.processes:
        processes(args.size, args.repeat, args.model, args.batch)
        return
    if args.profile:
        profile(args.size, args.device, args.batch)
        return
    if args.one:
        print(json.dumps(run_one(args.one, args.size, args.glass, args.device, args.batch, args.model)))
        return
    print(f"{args.size} x {args.size} px at 2 µm/px, model {args.model}, device {args.device}, batch {args.batch}, "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    for glass in (0.0, 0.6):
        runs = {"ours": [], "forward": []}
        for _ in range(max(1, args.repeat)):
            for method in runs:
                runs[method].append(measure(method, args.size, glass, args.device, args.batch, args.model))
        ours, fwd = (min(runs[m], key=lambda r: r["seconds"]) for m in runs)
        for key in ("cpu_seconds",):
            ours[key], fwd[key] = (min(r[key] for r in runs[m]) for m in runs)
        every = ", ".join(f"{o['seconds'] / f['seconds']:.2f}" for o, f in zip(runs["ours"], runs["forward"]))
        if args.no_monai:
            print(f"\n{int(glass * 100)} % glass: {ours['tiles']} tiles: best of {args.repeat}: end to end "
                  f"{ours['seconds']:.2f} s ({ours['seconds'] / (args.size**2 / 1e6):.3f} s/MP), "
                  f"forward {fwd['seconds']:.2f} s, "
                  f"ratio {ours['seconds'] / fwd['seconds']:.3f}; "
                  f"CPU time ratio {ours['cpu_seconds'] / fwd['cpu_seconds']:.3f} (each pair: {every})")
            continue
        monai = measure("monai", args.size, glass, args.device, args.batch, args.model)
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
