"""Train on real tissue through the CLI defaults and score held-out images through `napari-ftu segment`.

Glomeruli: the Sarder lab's 20 frozen-kidney H&E patches (../shared/data), 14 for training
(`napari-ftu train` holds out every fifth of them for validation), the 6 named O27_15 ... O27_20
held out; mean per-image Dice of the saved model run by `napari-ftu segment` (and with `--tta`).
The patches carry no pixel size. Human glomeruli are 150-250 µm across and proximal tubules about
60 µm; here the largest glomerular profiles are 64 px and tubules ~20 px, so about 3 µm/px.
Vessels: the 8 HuBMAP 2023 vasculature tiles (PAS, ~0.5 µm/px), 6 for training and 2 held out,
scored by AP@0.6 (the competition's metric) with the project's evaluation module.
The load average (the machine is shared) is sampled during training and printed.

    python bench/train_real.py [--minutes 10] [--task glomeruli|vessels|both] [--out /tmp/train_real]
                               [-- more train flags, e.g. --ema 0 or --steps 500 instead of the budget]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SARDER = DATA / "sarder_frozen_kidney_glomeruli"
VESSELS = DATA / "hubmap2023_vasculature"
SARDER_UM = 3.0
VESSEL_UM = 0.5


def cli(*args, quiet=False):
    cmd = [sys.executable, "-c", "import sys; from napari_ftu.cli import main; sys.exit(main())", *map(str, args)]
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if not quiet else subprocess.DEVNULL,
                         text=True)
    if run.returncode:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{run.stdout[-3000:]}")
    return run.stdout


def load_sampler(stop, out):
    while not stop.wait(15):
        out.append(os.getloadavg()[0])


def train(folder, out, minutes, um, extra=()):
    samples, stop = [], threading.Event()
    sampler = threading.Thread(target=load_sampler, args=(stop, samples), daemon=True)
    sampler.start()
    start = time.perf_counter()
    budget = () if "--steps" in extra else ("--minutes", minutes)
    log = cli("train", "--tiles", folder, "--out", out, "--data-um-per-px", um, *budget, *extra)
    stop.set()
    print("\n".join(line for line in log.splitlines() if not line.startswith("step ") or "validation" in line))
    last = [line for line in log.splitlines() if line.startswith('step ') and 'ETA' in line][-1:]
    print(f"last progress line: {last}")
    print(f"train wall time {time.perf_counter() - start:.0f} s; load average during training: mean "
          f"{np.mean(samples) if samples else float('nan'):.1f}, max {max(samples, default=float('nan')):.1f} "
          f"(2 cores)")
    return json.loads((Path(out) / "model_card.json").read_text())


def glomeruli(args):
    import imageio.v3 as iio
    from glomeruli import unannotated_ignored  # the bench's own module beside this one

    from napari_ftu.evaluation.metrics import dice

    work = args.out / "sarder"
    tiles = work / "train_tiles"
    for sub in ("images", "masks"):
        (tiles / sub).mkdir(parents=True, exist_ok=True)
    held = [f"O27_{k}_" for k in range(15, 21)]
    test = []
    for image in sorted((SARDER / "images").glob("*.png")):
        key = image.name[len("slide_"):]
        mask = SARDER / "masks" / f"mask_{key}"
        if any(key.startswith(h) for h in held):
            test.append((image, mask))
            continue
        for src, dst in ((image, tiles / "images" / image.name), (mask, tiles / "masks" / mask.name)):
            if not dst.exists():
                dst.symlink_to(src)
    print(f"glomeruli: {len(list((tiles / 'images').iterdir()))} training patches, {len(test)} held out "
          f"({', '.join(p.stem for p, _ in test)}), {SARDER_UM} µm/px, {args.minutes} min")
    card = train(tiles, work / "model", args.minutes, SARDER_UM, extra=args.train_flags)
    print(f"card: threshold {card['threshold']}, encoder {card['encoder']}, "
          f"weights {card['notes'].get('encoder_weights', {}).get('source')}")
    for extra in ((), ("--tta",)):
        scores, unmarked = [], []
        for image, mask in test:
            labels = work / f"{image.stem}.tif"
            cli("segment", image, "--model", work / "model", "--out", work / f"{image.stem}.csv", "--labels", labels,
                "--um-per-px", SARDER_UM, "--overwrite", *extra, quiet=True)
            truth = iio.imread(mask)
            truth = (truth[..., 0] if truth.ndim == 3 else truth) > 0
            pred = iio.imread(labels) > 0
            scores.append(dice(pred, truth))
            pred_shown, truth_shown = unannotated_ignored(image.name, pred, truth)
            unmarked.append(dice(pred_shown > 0, truth_shown))
        how = "`napari-ftu segment" + "".join(f" {e}" for e in extra) + "`"
        print(f"held-out Dice per image ({how}): " + ", ".join(f"{s:.3f}" for s in scores))
        print(f"GLOMERULI held-out mean Dice through {how}: {np.mean(scores):.4f} "
              f"(with O27_17's unannotated glomerulus ignored: {np.mean(unmarked):.4f})")


def vessels(args):
    from napari_ftu.evaluation.evaluate import evaluate_image, summarize
    from napari_ftu.formats.annotations import Annotations
    from napari_ftu.formats.datasets import open_dataset
    from napari_ftu.io.images import read_image, write_tiff

    work = args.out / "vessels"
    tiles = work / "train_tiles"
    for sub in ("images", "masks"):
        (tiles / sub).mkdir(parents=True, exist_ok=True)
    ds = open_dataset(VESSELS)
    held = ds.ids[-2:]
    for k, image_id in enumerate(ds.ids):
        if image_id in held:
            continue
        item = ds.load(k)
        write_tiff(tiles / "images" / f"{image_id}.tif", np.asarray(item.slide.read()), VESSEL_UM)
        write_tiff(tiles / "masks" / f"{image_id}.tif", item.annotations.labels.astype(np.uint16), VESSEL_UM)
    print(f"vessels: {len(ds.ids) - len(held)} training tiles, held out {held}, {VESSEL_UM} µm/px, {args.minutes} min")
    train(tiles, work / "model", args.minutes, VESSEL_UM,
          extra=("--um-per-px", "1.0", "--classes", "blood_vessel", *args.train_flags))
    results = []
    for image_id in held:
        k = ds.ids.index(image_id)
        truth = ds.load(k).annotations
        image = VESSELS / "tiles" / f"{image_id}.tif"
        labels = work / f"{image_id}.tif"
        cli("segment", image, "--model", work / "model", "--out", work / f"{image_id}.csv", "--labels", labels,
            "--um-per-px", VESSEL_UM, "--overwrite", quiet=True)
        pred = Annotations(image_id, np.asarray(read_image(labels).data))
        results.append(evaluate_image(pred, truth, ap_iou=0.6))
    for row in summarize(results):
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--task", choices=["glomeruli", "vessels", "both"], default="glomeruli")
    p.add_argument("--out", type=Path, default=Path("/tmp/train_real"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the CLI's choice from the load)")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more `napari-ftu train` flags")
    args = p.parse_args()
    more = [a for a in args.train_args if a != "--"]
    args.train_flags = (("--threads", str(args.threads)) if args.threads else ()) + tuple(more)
    print(f"load average at start: {os.getloadavg()}")
    if args.task in ("glomeruli", "both"):
        glomeruli(args)
    if args.task in ("vessels", "both"):
        vessels(args)


if __name__ == "__main__":
    main()
