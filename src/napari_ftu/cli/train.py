"""``napari-ftu train``: train a model folder from image/mask tiles or synthetic slides."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_ftu.cli.common import BUILTIN_HELP, TRUST_HELP, check_numbers, few, model_arg
from napari_ftu.errors import OptionError
from napari_ftu.training.data import FINE_TUNE_LR, LR

DEFAULT_NAME = "napari-ftu model"


def add_parser(sub, common) -> None:
    t = sub.add_parser("train", parents=[common],
                       help="train a model folder from image/mask tiles or synthetic slides")
    t.add_argument("--out", type=Path, required=True, help="model folder to write")
    t.add_argument("--tiles", type=Path, action="append", default=[],
                   help="training data: exported tiles, images/ + masks/, or a competition dataset folder")
    t.add_argument("--val-tiles", type=Path, action="append", default=[], help="validation data folder")
    t.add_argument("--val-match", default=None,
                   help="regular expression: images of --tiles whose id matches go to validation instead "
                        "(default: every fifth image, unless --val-tiles)")
    t.add_argument("--data-um-per-px", type=float, default=None,
                   help="pixel size of training images whose files do not say (they are resampled to the model's)")
    t.add_argument("--hold-out-every", type=int, default=None, metavar="N",
                   help="validate on every N-th image of --tiles when --val-match picks none "
                        "(default 5; 0 with --val-tiles)")
    t.add_argument("--image", type=Path, default=None, help="train on one image and ...")
    t.add_argument("--labels", type=Path, default=None,
                   help="... its label image; the right fifth is held out for validation (the Train dock's layers)")
    t.add_argument("--reviews", type=Path, nargs="+", default=[], metavar="SLIDE_OR_SESSION",
                   help="learn from saved reviews (what the Review dock autosaves beside a slide): reviewed objects "
                        "and regions marked done teach, unreviewed pixels are ignored; fine-tunes --init (default: "
                        "the built-in model)")
    t.add_argument("--synthetic", type=int, default=0, help="number of synthetic training slides")
    t.add_argument("--val-synthetic", type=int, default=0, help="number of synthetic validation slides")
    t.add_argument("--synthetic-size", type=int, default=768)
    t.add_argument("--init", type=model_arg, default=None, help=f"fine-tune from this model folder, {BUILTIN_HELP}")
    t.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    t.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (its checkpoint.pt)")
    t.add_argument("--arch", default="Unet", help="smp architecture of a new model: Unet, UnetPlusPlus, FPN, ...")
    t.add_argument("--encoder", default="efficientnet-lite0",
                   help="encoder of a new model: efficientnet-lite0/1/2 (ImageNet weights offline) or any smp encoder")
    t.add_argument("--decoder-channels", default=None, metavar="C1,C2,...",
                   help="a new U-Net's decoder widths, deepest first (default 128,64,32,16,16; smp's own: "
                        "256,128,64,32,16)")
    t.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start the encoder from ImageNet weights (default: when the encoder has offline ones)")
    t.add_argument("--classes", default="FTU", help="name of the class the masks mark")
    t.add_argument("--organ", default=None, help="organ(s) of the training slides, comma-separated, for the card "
                                                 "(the Segment dock shows what a model was trained on)")
    t.add_argument("--stain", default=None, help="stain of the training slides, for the card (e.g. H&E, PAS)")
    t.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget: the schedule fits it (instead of --steps)")
    t.add_argument("--steps", type=int, default=500, help="optimiser steps (without --minutes)")
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--crop", type=int, default=256)
    t.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (default {LR:g}; {FINE_TUNE_LR:g} with --init, from trained weights)")
    t.add_argument("--ema", type=float, default=0.0,
                   help="validate and save a moving average of the weights with this decay, e.g. 0.99 (default 0: "
                        "the raw weights)")
    t.add_argument("--val-every", type=int, default=None, help="validate every N steps (default: ten times in all)")
    t.add_argument("--patience", type=int, default=0, help="stop after this many validations without gain")
    t.add_argument("--workers", type=int, default=2, help="threads preparing batches (0: in the training loop)")
    t.add_argument("--threads", type=int, default=None,
                   help="torch threads on CPU (default: the cores the load average leaves idle)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--um-per-px", type=float, default=None, help="model pixel size of a new model (default 2.0)")
    t.add_argument("--name", default=DEFAULT_NAME, help="the model's name (with --init: the base's, fine-tuned)")
    t.set_defaults(func=run)


def run(args) -> int:
    from napari_ftu.io.images import read_image
    from napari_ftu.models.card import ModelCard
    from napari_ftu.training.data import dataset_samples, folder_split, pair_split, start_from, synthetic_samples
    from napari_ftu.training.progress import ProgressPrinter
    from napari_ftu.training.train import new_model, read_checkpoint, train

    check_numbers(args, ints={"steps": 1, "batch_size": 1, "crop": 32, "val_every": 0, "patience": 0, "synthetic": 0,
                               "val_synthetic": 0, "synthetic_size": 32}, positive=("lr", "um_per_px"))
    if args.minutes is not None and args.minutes <= 0:
        raise OptionError(f"--minutes must be positive, got {args.minutes}")
    if not 0 <= args.ema < 1:
        raise OptionError(f"--ema must be from 0 (off) to below 1, got {args.ema}")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if len(classes) != 1:
        raise OptionError(f"--classes: training learns one class from binary masks, got {classes}")
    if args.reviews:
        return _from_reviews(args)
    if args.lr is None:
        args.lr = FINE_TUNE_LR if args.init else LR
    init_state, resume = None, None
    if args.resume:
        import json

        resume = read_checkpoint(args.out)
        card = ModelCard.from_dict(json.loads(resume["card"]), str(args.out / "checkpoint.pt"))
    elif args.init:
        card, init_state = start_from(args.init, None if args.name == DEFAULT_NAME else args.name, args.trust_model)
    else:
        card, init_state = new_model(args.arch, args.encoder, classes, args.um_per_px or 2.0, args.pretrained,
                                     args.name, args.seed, _decoder(args.decoder_channels, args.arch))
    unknown = []  # images without a pixel size: said in one line
    train_set, val_set = [], [pair for folder in args.val_tiles for pair in
                              dataset_samples(folder, card, um_per_px=args.data_um_per_px, unknown=unknown)]
    every = args.hold_out_every if args.hold_out_every is not None else (0 if args.val_tiles else 5)
    for folder in args.tiles:
        more, val = folder_split(folder, card, args.val_match, every, um_per_px=args.data_um_per_px,
                                 unknown=unknown)
        train_set, val_set = train_set + more, val_set + val
    if args.image or args.labels:
        if not (args.image and args.labels):
            raise OptionError("--image and --labels go together (an image and its label image)")
        image, labels = read_image(args.image), read_image(args.labels)
        if not (image.um_per_px or args.data_um_per_px):
            unknown.append(args.image.name)
        more, val = pair_split(image.data, labels.data, image.um_per_px or args.data_um_per_px, card,
                               name=str(args.labels))
        train_set, val_set = train_set + more, val_set + val
    if args.synthetic:
        train_set += synthetic_samples(args.synthetic, args.synthetic_size, args.seed + 1, card)
    if args.val_synthetic:
        val_set += synthetic_samples(args.val_synthetic, args.synthetic_size, args.seed + 2, card)
    if not train_set:
        raise FileNotFoundError("no training data: give --tiles FOLDER and/or --synthetic N")
    if unknown:
        print(f"{len(unknown)} training image(s) have no pixel size ({few(unknown)}); assumed {card.um_per_px:g} µm/px "
              "(the model's); set --data-um-per-px", file=sys.stderr)
    if not resume:
        card.trained_on = _trained_on(args)
        card.notes = {**card.notes, "training": {
            "tiles": [str(p) for p in args.tiles], "data_um_per_px": args.data_um_per_px,
            "synthetic": args.synthetic, "synthetic_size": args.synthetic_size, "val_match": args.val_match,
            "n_train": len(train_set), "n_val": len(val_set), "minutes": args.minutes,
            "steps": None if args.minutes else args.steps, "batch_size": args.batch_size, "crop": args.crop,
            "lr": args.lr, "ema": args.ema, "seed": args.seed, "init": str(args.init) if args.init else None}}
    weights = card.notes.get("encoder_weights")
    print(f"{card.architecture} / {card.encoder}" + (f" (ImageNet weights: {weights['source']})" if weights else "")
          + f"; {len(train_set)} training and {len(val_set)} validation images at {card.um_per_px} µm/px", flush=True)
    printer = ProgressPrinter(sys.stderr)
    try:
        _, history = train(train_set, val_set, card, out=args.out, log=printer, steps=args.steps,
                           batch_size=args.batch_size, crop=args.crop, lr=args.lr, seed=args.seed,
                           device=args.device, val_every=args.val_every, init_state=init_state,
                           patience=args.patience, minutes=args.minutes, workers=args.workers,
                           checkpoint=True, resume=resume, threads=args.threads, ema=args.ema)
    except KeyboardInterrupt:
        printer.close()
        print(f"interrupted; continue with --resume (from the last validation in {args.out})", file=sys.stderr)
        return 130
    printer.close()
    best = (f"best validation Dice {history['best_dice']:.4f} at step {history['best_step']} "
            f"(threshold {history['best_threshold']:.2f})" if history["val_dice"]
            else "no validation set (last weights saved)")
    print(f"{best}; {history['steps']} steps in {history['seconds']:.0f} s, "
          f"waiting for data {100 * history.get('data_wait', 0):.0f} % of the time; wrote {args.out}")
    return 0


def _from_reviews(args) -> int:
    """``--reviews``: one round of learning from saved reviews, with the sparse rules of the
    Review dock's "Learn from my reviews" (training.rounds)."""
    from napari_ftu.steps import drain
    from napari_ftu.training.progress import ProgressPrinter
    from napari_ftu.training.rounds import round_steps
    from napari_ftu.training.sparse import saved_reviews

    if args.tiles or args.val_tiles or args.image or args.synthetic or args.resume:
        raise OptionError("--reviews trains from reviews alone: leave out --tiles, --image, --synthetic and --resume")
    reviews = [r for path in args.reviews for r in saved_reviews(path, args.data_um_per_px)]
    unknown = [r.name for r in reviews if not r.um_per_px]
    if unknown:
        print(f"{len(unknown)} slide(s) have no pixel size ({few(unknown)}); assumed the model's; set "
              "--data-um-per-px", file=sys.stderr)
    n_obj = sum(len(r.reviewed) for r in reviews)
    print(f"{len(reviews)} review(s): {n_obj} reviewed objects, {sum(len(r.done) for r in reviews)} regions marked "
          "done", flush=True)
    printer = ProgressPrinter(sys.stderr)
    if args.out.exists() and not args.out.is_dir():
        raise OptionError(f"{args.out}: --out must be a folder")
    gen = round_steps(reviews, args.init, args.out, seconds=args.minutes * 60 if args.minutes else None,
                      steps=args.steps, lr=args.lr, batch_size=args.batch_size, crop=args.crop, seed=args.seed,
                      val_every=args.hold_out_every or 0, threads=args.threads, device=args.device,
                      trust_code=args.trust_model, release=True)
    try:
        out, history = drain(gen, printer)
    except KeyboardInterrupt:
        printer.close()
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    printer.close()
    print(f"{history['steps']} steps in {history['seconds']:.0f} s; wrote {out}")
    return 0


def _trained_on(args) -> dict:
    """The card's ``trained_on`` from this run's data and ``--organ``/``--stain``."""
    from napari_ftu.training.train import trained_on

    sources = [p.name for p in [*args.tiles, *args.val_tiles]] + ([args.image.name] if args.image else [])
    if args.synthetic:
        sources.append(f"{args.synthetic} synthetic slides")
    organs = [o.strip() for o in args.organ.split(",") if o.strip()] if args.organ else None
    return trained_on(sources, args.data_um_per_px, organs, args.stain, args.init.name if args.init else None)


def _decoder(text: str | None, arch: str) -> dict | None:
    """``--decoder-channels`` as the architecture's keyword arguments."""
    if text is None:
        return None
    from napari_ftu.training.train import DECODER_ARCHITECTURES

    if arch not in DECODER_ARCHITECTURES:
        raise OptionError(f"--decoder-channels: for --arch {' or '.join(DECODER_ARCHITECTURES)}, not {arch}")
    try:
        channels = [int(v) for v in text.split(",")]
    except ValueError:
        raise OptionError(f"--decoder-channels: five comma-separated whole numbers, got {text!r}") from None
    if len(channels) != 5 or not 1 <= min(channels) <= max(channels) <= 1024:
        raise OptionError(f"--decoder-channels: five widths from 1 to 1024 (one per encoder stage), got {text!r}")
    return {"decoder_channels": channels}
