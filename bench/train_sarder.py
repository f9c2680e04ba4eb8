"""Train on real glomeruli: the Sarder lab's frozen kidney patches (../shared/data), 14 images
for training and 6 held out by name, on this machine's CPU; print the validation Dice from the
training loop and from the saved model run through the Segment engine.

    python bench/train_sarder.py [--steps 600] [--init default] [--out /tmp/sarder_model]
"""

import argparse
import time
from pathlib import Path

import numpy as np

from napari_ftu.engine.inference import segment
from napari_ftu.engine.models import ModelCard, default_model_path, load_model
from napari_ftu.evaluation.metrics import dice
from napari_ftu.training.train import dataset_samples, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sarder_frozen_kidney_glomeruli"
VAL = [f"O27_{k}_" for k in range(15, 21)]  # slides O27_15 ... O27_20 are held out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--init", default="default", help="'default' (our synthetic model), 'none', or a model folder")
    p.add_argument("--out", type=Path, default=Path("/tmp/sarder_model"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    from napari_ftu.formats.datasets import open_dataset

    ids = open_dataset(DATA).ids
    val_ids = [i for i in ids if any(i.startswith(v) for v in VAL)]
    train_ids = [i for i in ids if i not in val_ids]
    init_state, card = None, ModelCard(name="sarder-frozen-kidney", um_per_px=1.0, min_object_um2=100.0,
                                       tile_size=256, overlap=32)
    if args.init != "none":
        base = load_model(default_model_path() if args.init == "default" else args.init, device="cpu")
        init_state = base.network.state_dict()
    card.notes = {"init": args.init, "train_ids": train_ids, "val_ids": val_ids}
    train_set = dataset_samples(DATA, ids=set(train_ids))
    val_set = dataset_samples(DATA, ids=set(val_ids))
    print(f"{len(train_set)} training and {len(val_set)} validation images ({', '.join(val_ids)})")

    start = time.perf_counter()
    model, history = train(train_set, val_set, card, out=args.out, steps=args.steps, batch_size=8, crop=256,
                           lr=2e-3, seed=args.seed, device=args.device, val_every=50, init_state=init_state,
                           log=lambda e: e[0] == "val" and print(f"  step {e[1]}: validation Dice {e[2]:.3f}",
                                                                  flush=True))
    minutes = (time.perf_counter() - start) / 60
    loaded = load_model(args.out, device="cpu")
    engine = float(np.mean([dice(segment(rgb, loaded).labels, mask) for rgb, mask in val_set]))
    print(f"training: {minutes:.1f} min on {model.device}, best validation Dice {history['best_dice']:.4f} "
          f"at step {history['best_step']}")
    print(f"the saved model through the Segment engine: validation Dice {engine:.4f}")


if __name__ == "__main__":
    main()
