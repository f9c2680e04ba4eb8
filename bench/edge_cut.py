"""Glomeruli cut by the image edge: the built-in model on ccf test tiles cropped so that borders cut them.

The 10 ccf test tiles (PAS kidney, 1 µm/px, instance truth in ``instances/``) are cut into
512 × 512 crops (a 1024² tile at 0.5 µm/px, as users open biopsy fragments) every 256 px, so
that many glomeruli are cut by a crop's border. Each crop goes through the engine that
``napari-ftu segment`` runs (``segment_slide_steps`` on the crop, at 1 µm/px). Per true
glomerulus of a crop it prints:

- whole (inside the crop) or cut (touching the crop's border: at least half of it visible, or less);
- found: more than half of its visible pixels are predicted foreground;
- object Dice: its visible pixels against the predicted objects that overlap it.

and the mean pixel Dice over crops and the number of crops at Dice 0 (among crops holding a glomerulus).

    OMP_NUM_THREADS=1 python bench/edge_cut.py [--model builtin] [--crop 512] [--stride 256]
        [--set KEY=VALUE ...]   # SegmentOptions fields, e.g. --set border_margin=0 to compare
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CCF = DATA / "hubmap_ccf_kidney_glomeruli"
MIN_VISIBLE_UM2 = 5000.0  # the built-in card's minimum object: smaller visible pieces are not counted


def ccf_test_ids() -> list[str]:
    rows = [r.split(",") for r in (CCF / "split.csv").read_text().splitlines()[1:]]
    return [r[0] for r in rows if r[1] == "test"]


def starts(length: int, crop: int, stride: int) -> list[int]:
    s = list(range(0, max(1, length - crop + 1), stride))
    if s[-1] + crop < length:
        s.append(length - crop)
    return s


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run(model, crops, changes: dict) -> dict:
    """Segment every crop with ``changes`` and score the glomeruli by kind."""
    from napari_ftu.engine.options import SegmentOptions
    from napari_ftu.engine.run import segment_slide_steps
    from napari_ftu.evaluation.metrics import dice
    from napari_ftu.steps import drain

    kinds = {"whole": [], "cut, half or more visible": [], "cut, less than half visible": []}
    dices, zero, seconds = [], 0, 0.0
    for image, truth, full_area in crops:
        t0 = time.perf_counter()
        seg = drain(segment_slide_steps([image], model, SegmentOptions(**changes), um_per_px=1.0))
        seconds += time.perf_counter() - t0
        pred = np.asarray(seg.labels)
        if pred.shape != truth.shape:
            raise SystemExit(f"labels of shape {pred.shape} for a crop of {truth.shape}")
        d = dice(pred > 0, truth > 0)
        dices.append(d)
        zero += d == 0
        border = np.zeros(truth.shape, bool)
        border[[0, -1], :] = border[:, [0, -1]] = True
        for i in np.unique(truth[truth > 0]):
            obj = truth == i
            visible = int(obj.sum())
            if visible < MIN_VISIBLE_UM2:
                continue
            if not (obj & border).any():
                kind = "whole"
            else:
                kind = "cut, half or more visible" if visible >= full_area[i] / 2 else "cut, less than half visible"
            hit = np.unique(pred[obj & (pred > 0)])
            mine = np.isin(pred, hit) if hit.size else np.zeros_like(obj)
            covered = (obj & (pred > 0)).sum() / visible
            kinds[kind].append((covered > 0.5, 2 * (obj & mine).sum() / (visible + mine.sum())))
    out = {"crops": len(crops), "mean pixel Dice": float(np.mean(dices)), "crops at Dice 0": int(zero),
           "seconds": seconds}
    for kind, rows in kinds.items():
        found = sum(f for f, _ in rows)
        out[kind] = {"n": len(rows), "found": int(found),
                     "object Dice": float(np.mean([d for _, d in rows])) if rows else None}
    return out


def load_crops(crop: int, stride: int):
    import imageio.v3 as iio

    crops = []
    for image_id in ccf_test_ids():
        image = iio.imread(CCF / "images" / f"{image_id}.jpg")[..., :3]
        truth = iio.imread(CCF / "instances" / f"{image_id}.png").astype(np.int32)
        full_area = np.bincount(truth.ravel())
        for y in starts(truth.shape[0], crop, stride):
            for x in starts(truth.shape[1], crop, stride):
                t = truth[y : y + crop, x : x + crop]
                if t.any():  # crops with a glomerulus: the Dice-0 count means a miss
                    crops.append((np.ascontiguousarray(image[y : y + crop, x : x + crop]), t, full_area))
    return crops


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="builtin")
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a SegmentOptions field for a second run beside the default one (repeatable)")
    args = p.parse_args()
    if not CCF.is_dir():
        raise SystemExit(f"{CCF} is missing: this bench needs ../shared/data beside the repository")
    import torch

    from napari_ftu.models.loading import load_model, model_path

    torch.set_num_threads(1)
    model = load_model(model_path(args.model), device="cpu")
    crops = load_crops(args.crop, args.stride)
    runs = {"default": {}}
    if args.set:
        runs["with " + " ".join(args.set)] = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    for name, changes in runs.items():
        r = run(model, crops, changes)
        print(f"{name}: {r['crops']} crops of {args.crop}², mean pixel Dice {r['mean pixel Dice']:.3f}, "
              f"{r['crops at Dice 0']} at Dice 0 ({r['seconds']:.0f} s)")
        for kind in ("whole", "cut, half or more visible", "cut, less than half visible"):
            k = r[kind]
            dice_text = "n/a" if k["object Dice"] is None else f"{k['object Dice']:.3f}"
            print(f"  {kind}: found {k['found']} of {k['n']}, object Dice {dice_text}")
        print(json.dumps({name: r}))


if __name__ == "__main__":
    main()
