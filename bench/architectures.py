"""Candidate architectures for the built-in model side by side: held-out Dice against forward time.

Each candidate is a model folder written by `bench/train_builtin.py` with the same recipe and step
count (only ``--encoder`` or ``--decoder-channels`` differs). For each: parameters, weights size, forward time per
megapixel of model-grid input (batch 4 x 256², eager torch and ONNX Runtime fp32, best of
``--repeat``, in this one process), then `bench/glomeruli.py` for the ccf test tiles (pixel Dice,
object F1) and the Sarder held-out patches (a stain none of them trained on).

    python bench/train_builtin.py --out /tmp/arch/lite0 --steps 800 --encoder efficientnet-lite0
    python bench/train_builtin.py --out /tmp/arch/lite1 --steps 800 --encoder efficientnet-lite1
    python bench/architectures.py /tmp/arch/lite0 /tmp/arch/lite1 ...
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent


def forward_ms_per_mp(model, repeat: int) -> float:
    x = np.random.default_rng(0).integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    model.predict(x)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.predict(x)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / (4 * 256 * 256 / 1e6)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from napari_ftu.models.loading import load_model
    from napari_ftu.models.onnx import OnnxModel, export_onnx

    torch.set_num_threads(args.threads)
    rows = []
    for folder in args.models:
        model = load_model(folder, device="cpu")
        params = sum(int(t.numel()) for t in model.network.parameters())
        mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6
        torch_ms = forward_ms_per_mp(model, args.repeat)
        with tempfile.TemporaryDirectory() as tmp:
            graph = export_onnx(model.network, model.card, Path(tmp) / "model.onnx", "bench")
            ort_ms = forward_ms_per_mp(OnnxModel(graph, model.card, threads=args.threads), args.repeat)
        out = Path(tempfile.mkdtemp(prefix="arch_"))
        run = subprocess.run([sys.executable, str(BENCH / "glomeruli.py"), "--model", str(folder), "--out", str(out),
                              "--sets", "ccf,sarder"], capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(run.stdout[-2000:] + run.stderr[-2000:])
        figures = json.loads(run.stdout.strip().splitlines()[-1])
        decoder = "-".join(map(str, model.card.arch_kwargs.get("decoder_channels", ())))
        name = f"{model.card.encoder} ({model.card.architecture} {decoder or 'default decoder'})"
        rows.append((name, params / 1e6, mb, torch_ms, ort_ms,
                     figures["ccf_dice"], figures["ccf_f1"], figures["sarder_dice"]))
    print("| encoder | parameters (M) | weights (MB) | forward torch (ms/MP) | forward ORT (ms/MP) | ccf test Dice "
          "| ccf object F1 | Sarder Dice (unseen stain) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, params, mb, t_ms, o_ms, dice, f1, sarder in rows:
        print(f"| {name} | {params:.2f} | {mb:.1f} | {t_ms:.0f} | {o_ms:.0f} | {dice:.3f} | {f1:.3f} | {sarder:.3f} |")


if __name__ == "__main__":
    main()
