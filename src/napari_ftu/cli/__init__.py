"""``napari-ftu``: demo, segment, train and export from the command line (the same core as the docks).

Errors the user can fix (bad files, bad models, bad ids) print one ``napari-ftu: error: ...``
line and exit with status 2. Library warnings and log lines are hidden unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from napari_ftu.errors import FTUError, OptionError
from napari_ftu.formats.export import FORMATS, format_of
from napari_ftu.io.paths import refuse_onto_inputs

USER_ERRORS = (FTUError, OSError)
QUIET_LOGGERS = ("tifffile", "imageio", "distributed", "PIL")


def main(argv=None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with contextlib.ExitStack() as stack:
        if not getattr(args, "verbose", False):
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            stack.enter_context(_quiet_logs())
        try:
            return args.func(args) or 0
        except USER_ERRORS as exc:
            print(f"napari-ftu: error: {one_line(exc)}", file=sys.stderr)
            return 2


def one_line(exc: BaseException) -> str:
    """An error as one line: the first line of its text (libraries append install hints and
    advice on further lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def _quiet_logs():
    """Silence the log lines libraries print while reading files (tifffile's "corrupted" notes)."""
    import logging

    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    before = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for log, level in zip(loggers, before):
            log.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show library warnings and log lines (hidden by default)")
    p = argparse.ArgumentParser(prog="napari-ftu", description=__doc__.splitlines()[0], parents=[common])
    sub = p.add_subparsers(title="commands")
    trust_help = ("run a TorchScript model (it carries its own code, which can read and write your files); "
                  "only for models from a source you trust")

    d = sub.add_parser("demo", parents=[common],
                       help="segment the synthetic sample slide with the default model")
    d.add_argument("--headless", action="store_true", help="no window; print the results")
    d.add_argument("--json", action="store_true", help="print one JSON object (with --headless)")
    d.add_argument("--size", type=int, default=None, help="slide side in pixels (default 2048)")
    d.add_argument("--seed", type=int, default=None, help="slide seed (default: one unseen in training)")
    d.add_argument("--out", type=Path, default=Path("napari-ftu-demo"), help="folder for the outputs")
    d.add_argument("--device", default="auto", help="auto, cpu or cuda")
    d.add_argument("--screenshot", type=Path, default=None, help="save the window as PNG when done, then close")
    d.set_defaults(func=_demo)

    s = sub.add_parser("segment", parents=[common],
                       help="segment an image, or a batch of slides on Dask, and write HuBMAP RLE (and labels)")
    s.add_argument("image", nargs="+",
                   help="an image; or many: files, folders, globs ('slides/*.svs') or a competition CSV (batch)")
    s.add_argument("--model", type=Path, default=None, help="model folder or checkpoint (default: built-in)")
    s.add_argument("--trust-model", action="store_true", help=trust_help)
    s.add_argument("--out", type=Path, required=True, help="CSV to write (id,rle); for a batch, the output folder")
    s.add_argument("--labels", type=Path, default=None, help="also write the instance labels as TIFF")
    s.add_argument("--probability", type=Path, default=None,
                   help="also write the probability map as TIFF: the model grid, float32 0-1 (one page per "
                        "class), its µm/px in the resolution tags")
    s.add_argument("--id", default=None, help="image id in the CSV (default: file name stem)")
    s.add_argument("--um-per-px", type=float, default=None, help="override the image's pixel size")
    s.add_argument("--device", default="auto")
    s.add_argument("--tile", type=int, default=None)
    s.add_argument("--overlap", type=int, default=None)
    s.add_argument("--threshold", type=float, default=None)
    s.add_argument("--batch", type=int, default=4, help="tiles per model call (halved on out-of-memory)")
    s.add_argument("--tta", action="store_true", help="test-time augmentation: average flips and a rotation")
    s.add_argument("--blend", choices=["taper", "gaussian"], default="taper",
                   help="tile blending window: cosine taper over the overlap (default) or Gaussian (sigma tile/8)")
    s.add_argument("--keep-glass", action="store_true", help="also run the model on background (glass) tiles")
    s.add_argument("--split", action="store_true", help="split touching objects with a watershed")
    s.add_argument("--json", action="store_true", help="print a JSON summary")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    b = s.add_argument_group("batch (many slides)")
    b.add_argument("--workers", type=int, default=None,
                   help="local Dask workers (default: one per GPU, else one per core; 0: in this process)")
    b.add_argument("--scheduler", default=None,
                   help="attach to the Dask scheduler at ADDRESS: tls://host:8786 with --tls-ca/--tls-cert/--tls-key "
                        "(plain tcp:// only with --insecure-scheduler)")
    b.add_argument("--tls-ca", default=None, help="CA certificate (PEM) of a tls:// scheduler")
    b.add_argument("--tls-cert", default=None, help="this client's certificate (PEM) for a tls:// scheduler")
    b.add_argument("--tls-key", default=None, help="this client's private key (PEM) for a tls:// scheduler")
    b.add_argument("--insecure-scheduler", action="store_true",
                   help="allow a plain tcp:// scheduler: anyone who can reach it can run code on its workers")
    b.add_argument("--formats", default="rle,labels",
                   help="per-slide outputs, comma-separated: rle, labels (OME-TIFF), geojson (default rle,labels)")
    b.add_argument("--retries", type=int, default=2, help="retries of a failing slide (default 2)")
    b.add_argument("--images", type=Path, default=None, help="image folder of a competition CSV")
    b.add_argument("--threads", type=int, default=1,
                   help="torch threads per slide (default 1, as in each Dask worker; results are identical "
                        "only for equal thread counts)")
    b.add_argument("--band-above", type=float, default=400.0,
                   help="split slides above this many megapixels into row-band tasks (default 400)")
    s.set_defaults(func=_segment)

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
    t.add_argument("--synthetic", type=int, default=0, help="number of synthetic training slides")
    t.add_argument("--val-synthetic", type=int, default=0, help="number of synthetic validation slides")
    t.add_argument("--synthetic-size", type=int, default=768)
    t.add_argument("--init", type=Path, default=None, help="fine-tune from this model folder")
    t.add_argument("--trust-model", action="store_true", help=trust_help)
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
    t.add_argument("--lr", type=float, default=2e-3)
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
    t.add_argument("--name", default="napari-ftu model")
    t.set_defaults(func=_train)

    i = sub.add_parser("info", parents=[common],
                       help="describe a slide or a dataset folder (and check that it loads)")
    i.add_argument("path", type=Path)
    i.add_argument("--item", type=int, default=None, help="also load this dataset image (0-based)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_info)

    e = sub.add_parser("export", parents=[common],
                       help="convert labels or annotations to any supported format, or training tiles")
    e.add_argument("labels", type=Path, help="label/mask image (TIFF/PNG), or an annotation file with --from")
    e.add_argument("--from", dest="source_format", choices=sorted(FORMATS), default=None,
                   help="read LABELS as this annotation format instead of as an image")
    e.add_argument("--out", type=Path, default=None, help="file to write")
    e.add_argument("--format", choices=sorted(FORMATS), default=None,
                   help="output format (default: from the suffix: .csv hubmap, .json coco, .geojson, .ome.tif)")
    e.add_argument("--image", type=Path, default=None, help="the image (for --tiles, and GeoJSON's size)")
    e.add_argument("--id", default=None, help="image id (default: image or labels file stem)")
    e.add_argument("--class", dest="class_name", default="FTU", help="class of objects without one")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    e.add_argument("--tiles", type=Path, default=None, help="folder for training tiles")
    e.add_argument("--tile", type=int, default=512)
    e.add_argument("--overlap", type=int, default=0)
    e.add_argument("--target-um-per-px", type=float, default=None, help="resample tiles to this pixel size")
    e.add_argument("--keep", choices=["objects", "tissue"], default="objects")
    e.add_argument("--negative-fraction", type=float, default=0.1)
    e.add_argument("--max-per-class", type=int, default=None)
    e.add_argument("--tile-format", choices=["png", "tif"], default="png")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=_export)

    v = sub.add_parser("evaluate", parents=[common],
                       help="score predictions against ground truth (Dice, IoU, F1, AP@0.6)")
    v.add_argument("pred", type=Path,
                   help="prediction: label image, folder of them, a batch output folder, or an annotation file")
    v.add_argument("truth", type=Path, help="ground truth: label image, folder, dataset folder or annotation file")
    v.add_argument("--pred-format", choices=sorted(FORMATS), default=None, help="read PRED as this format")
    v.add_argument("--truth-format", choices=sorted(FORMATS), default=None, help="read TRUTH as this format")
    v.add_argument("--compare", type=Path, default=None, metavar="B",
                   help="a second prediction: A and B against the truth and against each other (the Debug dock's "
                        "A-vs-B numbers)")
    v.add_argument("--compare-format", choices=sorted(FORMATS), default=None, help="read B as this format")
    v.add_argument("--iou", type=float, default=0.5, help="IoU for a match when counting TP/FP/FN (default 0.5)")
    v.add_argument("--ap-iou", type=float, default=0.6, help="IoU of the average precision (default 0.6)")
    v.add_argument("--out", type=Path, default=None, help="write the report: .csv (rows) or .json")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument("--overwrite", action="store_true", help="replace an existing report")
    v.set_defaults(func=_evaluate)
    _add_annotate(sub)
    return p


def _demo(args) -> int:
    from napari_ftu.plugin.demo import run_headless

    if not args.headless:
        from napari_ftu._qt.demo import run_gui

        return run_gui(size=args.size, seed=args.seed, device=args.device, screenshot=args.screenshot)
    result = run_headless(args.out, size=args.size, seed=args.seed, device=args.device)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"Dice {result['dice']:.3f} vs ground truth, {result['n_objects']} FTUs "
            f"({result['n_true_objects']} true), {result['seconds']:.1f} s on {result['device']}"
        )
        for path in result["outputs"]:
            print(f"wrote {path}")
    return 0


def _info(args) -> int:
    from napari_ftu.formats.datasets import open_dataset
    from napari_ftu.io.slides import open_slide

    if args.path.is_file() and args.path.suffix.lower() not in (".json", ".jsonl", ".csv"):
        slide = open_slide(args.path)
        out = {"path": str(args.path), "size": list(slide.size), "kind": slide.kind, "levels": len(slide.levels),
               "um_per_px": slide.um_per_px, "pyramid_stored": not slide.flat}
    else:
        ds = open_dataset(args.path)
        out = {"path": str(args.path), "layout": ds.layout, "images": len(ds), "first_ids": ds.ids[:5]}
        if args.item is not None:
            if not 0 <= args.item < len(ds):
                raise FileNotFoundError(f"{args.path}: no image {args.item} (the dataset has {len(ds)})")
            item = ds.load(args.item)
            n = len(item.annotations.ids()) if item.annotations is not None else 0
            out["item"] = {"id": ds.ids[args.item], "size": list(item.slide.size), "objects": n,
                           "um_per_px": item.slide.um_per_px, **{k: v for k, v in item.info.items() if v}}
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key}: {value}")
    return 0


def _segment_options(args):
    """The run options from the flags, validated before anything slow starts."""
    from napari_ftu.engine.options import SegmentOptions, check_positive

    args.um_per_px = check_positive(args.um_per_px, "--um-per-px")
    return SegmentOptions(tile_size=args.tile, overlap=args.overlap, threshold=args.threshold, batch_size=args.batch,
                          tta=args.tta, blend=args.blend, skip_background=not args.keep_glass, watershed=args.split)


def _segment(args) -> int:
    """One image, through the same core function as the batch and the Segment dock: the slide
    is opened lazily and its outputs stream into a temporary zarr store when it is large."""
    import shutil
    import tempfile

    import numpy as np

    from napari_ftu.batch.runner import is_batch_input
    from napari_ftu.engine.models import load_model
    from napari_ftu.engine.run import STORE_NAME, segment_slide_steps
    from napari_ftu.formats.annotations import Annotations
    from napari_ftu.formats.export import export_annotations, safe_id
    from napari_ftu.io.images import file_stem, write_labels_ome_tiff, write_probability, write_tiff
    from napari_ftu.steps import Outputs, TileProgress, drain

    options = _segment_options(args)
    if len(args.image) > 1 or is_batch_input(args.image[0]):
        return _segment_batch(args, options)
    args.image = Path(args.image[0])
    refuse_onto_inputs([args.out, args.labels, args.probability], [args.image])  # even with --overwrite
    if args.labels is not None and args.out.resolve() == args.labels.resolve():
        raise OptionError(f"{args.out}: --out and --labels name the same file")
    for out in (args.out, args.labels, args.probability):
        if out is not None and out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    image_id = safe_id(args.id or file_stem(args.image))
    model = load_model(args.model, device=args.device, trust_code=args.trust_model)

    grid = []  # the probability on the model grid, as the engine fills it

    def progress(event):
        if isinstance(event, Outputs):
            grid.append(event.probability)
        elif isinstance(event, TileProgress) and not args.json:
            print(f"\rtiles {event.done}/{event.total}", end="", file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="napari-ftu-"))
    try:
        seg = drain(segment_slide_steps(args.image, model, options, um_per_px=args.um_per_px, store=tmp / STORE_NAME),
                    progress)
        if not args.json:
            print(file=sys.stderr)
        um = seg.um_per_px  # of the labels: the image's, or the model grid's for a large slide
        outputs = [str(export_annotations(Annotations(image_id, _foreground(seg.labels), um_per_px=um), args.out,
                                          "hubmap", overwrite=True))]
        if args.labels and isinstance(seg.labels, np.ndarray):
            outputs.append(str(write_tiff(args.labels, seg.labels, um)))
        elif args.labels:  # a store: written tile by tile, never whole in memory
            outputs.append(str(write_labels_ome_tiff(args.labels, seg.labels, um)))
        if args.probability:
            prob = np.asarray(grid[0][:], np.float32) / seg.prob_scale
            outputs.append(str(write_probability(args.probability, prob, model.card.um_per_px or um)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {"id": image_id, "n_objects": len(seg.objects), "seconds": round(seg.seconds, 3),
               "device": seg.device, "um_per_px": um, "tiles": seg.n_tiles, "glass_tiles_skipped": seg.n_skipped,
               "outputs": outputs}
    if seg.downsample != 1.0:
        summary["labels_downsample"] = seg.downsample
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{image_id}: {summary['n_objects']} FTUs in {seg.seconds:.1f} s on {seg.device}"
              + (f" (labels on the model grid, {um:g} µm/px)" if seg.downsample != 1.0 and um else ""))
        for path in outputs:
            print(f"wrote {path}")
    return 0


def _foreground(labels):
    """What the ``id,rle`` row encodes (labels > 0): in-memory labels as they are, a store's as a
    uint8 mask read strip by strip (156 MB instead of 625 MB for a 12 500² model grid)."""
    import numpy as np

    if isinstance(labels, np.ndarray):
        return labels
    mask = np.empty(labels.shape, np.uint8)
    rows = max(1, 2**24 // max(labels.shape[1], 1))
    for y in range(0, labels.shape[0], rows):
        mask[y : y + rows] = np.asarray(labels[y : y + rows]) != 0
    return mask


def _segment_batch(args, segment_options) -> int:
    """Many slides on Dask (or in this process with ``--workers 0``): per-slide outputs under
    ``--out``, a progress bar, a summary; exit status 1 when some slide failed."""
    import time

    from napari_ftu.batch.runner import BatchOptions, SchedulerAccess, plan_inputs, run_batch
    from napari_ftu.engine.options import check_int

    if args.labels or args.id:
        raise OptionError("--labels and --id are for one image; a batch writes <out>/<id>/ (see --formats)")
    if args.out.suffix.lower() == ".csv" or args.out.is_file():
        raise OptionError(f"{args.out}: a batch writes a folder; give --out FOLDER")
    check_int(args.retries, "--retries", 0, 100)
    if args.workers is not None:
        check_int(args.workers, "--workers", 0, 4096)
    jobs = plan_inputs(args.image, images=args.images)
    if not jobs:
        raise OptionError(f"no slides found in {' '.join(map(str, args.image))}")
    if args.um_per_px:
        from dataclasses import replace

        jobs = [replace(j, um_per_px=args.um_per_px) for j in jobs]
    options = BatchOptions(model=str(args.model) if args.model else None, device=args.device,
                           segment=segment_options,
                           outputs=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
                           band_above_px=args.band_above * 1e6, threads=args.threads, trust_model=args.trust_model)
    scheduler = None
    if args.scheduler:
        scheduler = SchedulerAccess(args.scheduler, args.tls_ca, args.tls_cert, args.tls_key, args.insecure_scheduler)
        scheduler.security()  # a bad address or missing credentials: one error line before any work
    elif any((args.tls_ca, args.tls_cert, args.tls_key, args.insecure_scheduler)):
        raise OptionError("--tls-ca, --tls-cert, --tls-key and --insecure-scheduler go with --scheduler")
    start = time.perf_counter()
    failed = []

    def progress(done, total, row):
        if row is not None and row["status"] == "failed":
            failed.append(row["id"])
        if not args.json:
            width = 30
            fill = int(width * done / max(total, 1))
            print(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} slides"
                  + (f", {len(failed)} failed" if failed else "") + f", {time.perf_counter() - start:.0f} s",
                  end="", file=sys.stderr, flush=True)

    result = run_batch(jobs, args.out, options, progress=progress, scheduler=scheduler,
                       workers=args.workers, retries=args.retries, overwrite=args.overwrite)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(file=sys.stderr)
        print(f"{summary['slides']} slides: {summary['done']} done ({summary['skipped']} from an earlier run), "
              f"{summary['failed']} failed; {summary['seconds']:.1f} s, {summary['slides_per_minute']:.1f} slides/min, "
              f"{summary['megapixels_per_second']:.2f} MP/s "
              + (f"on {summary['workers']} Dask workers" if summary["workers"] else "in this process"))
        for image_id, error in summary["failures"].items():
            print(f"failed {image_id}: {error}")
        for path in summary["outputs"]:
            print(f"wrote {path}")
    return 1 if result.failed else 0


def _train(args) -> int:
    from napari_ftu.engine.models import ModelCard, load_model
    from napari_ftu.io.images import read_image
    from napari_ftu.training.data import folder_split, pair_split
    from napari_ftu.training.progress import ProgressPrinter
    from napari_ftu.training.train import dataset_samples, new_model, read_checkpoint, synthetic_samples, train

    _check_numbers(args, ints={"steps": 1, "batch_size": 1, "crop": 32, "val_every": 0, "patience": 0, "synthetic": 0,
                               "val_synthetic": 0, "synthetic_size": 32}, positive=("lr", "um_per_px"))
    if args.minutes is not None and args.minutes <= 0:
        raise OptionError(f"--minutes must be positive, got {args.minutes}")
    if not 0 <= args.ema < 1:
        raise OptionError(f"--ema must be from 0 (off) to below 1, got {args.ema}")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if len(classes) != 1:
        raise OptionError(f"--classes: training learns one class from binary masks, got {classes}")
    init_state, resume = None, None
    if args.resume:
        import json

        resume = read_checkpoint(args.out)
        card = ModelCard.from_dict(json.loads(resume["card"]), str(args.out / "checkpoint.pt"))
    elif args.init:
        base = load_model(args.init, device="cpu", trust_code=args.trust_model)
        card = base.card
        init_state = base.network.state_dict()
    else:
        card, init_state = new_model(args.arch, args.encoder, classes, args.um_per_px or 2.0, args.pretrained,
                                     args.name, args.seed, _decoder(args.decoder_channels, args.arch))
    train_set, val_set = [], [pair for folder in args.val_tiles for pair in
                              dataset_samples(folder, card, um_per_px=args.data_um_per_px)]
    every = args.hold_out_every if args.hold_out_every is not None else (0 if args.val_tiles else 5)
    for folder in args.tiles:
        more, val = folder_split(folder, card, args.val_match, every, um_per_px=args.data_um_per_px)
        train_set, val_set = train_set + more, val_set + val
    if args.image or args.labels:
        if not (args.image and args.labels):
            raise OptionError("--image and --labels go together (an image and its label image)")
        image, labels = read_image(args.image), read_image(args.labels)
        more, val = pair_split(image.data, labels.data, image.um_per_px or args.data_um_per_px, card,
                               name=str(args.labels))
        train_set, val_set = train_set + more, val_set + val
    if args.synthetic:
        train_set += synthetic_samples(args.synthetic, args.synthetic_size, args.seed + 1, card)
    if args.val_synthetic:
        val_set += synthetic_samples(args.val_synthetic, args.synthetic_size, args.seed + 2, card)
    if not train_set:
        raise FileNotFoundError("no training data: give --tiles FOLDER and/or --synthetic N")
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


def _trained_on(args) -> dict:
    """The card's ``trained_on`` from this run's data and ``--organ``/``--stain``."""
    from napari_ftu.training.train import trained_on

    sources = [p.name for p in [*args.tiles, *args.val_tiles]] + ([args.image.name] if args.image else [])
    if args.synthetic:
        sources.append(f"{args.synthetic} synthetic slides")
    organs = [o.strip() for o in args.organ.split(",") if o.strip()] if args.organ else None
    return trained_on(sources, args.data_um_per_px, organs, args.stain, args.init.name if args.init else None)


def _export(args) -> int:
    from napari_ftu.formats.annotations import Annotations, safe_id
    from napari_ftu.formats.export import export_annotations, import_annotations
    from napari_ftu.io.images import read_image
    from napari_ftu.io.slides import open_slide
    from napari_ftu.training.tiles import export_tiles

    _check_numbers(args, ints={"tile": 32, "overlap": 0, "max_per_class": 0}, positive=("target_um_per_px",))
    if not 0 <= args.negative_fraction <= 1:
        raise OptionError(f"--negative-fraction must be from 0 to 1, got {args.negative_fraction}")
    if not args.out and not args.tiles:
        raise OptionError("nothing to do: give --out FILE and/or --tiles FOLDER")
    image = read_image(args.image) if args.image else None
    if args.source_format:
        items = import_annotations(args.labels, args.source_format, image.data.shape[:2] if image else None)
    else:
        loaded = read_image(args.labels)
        lab = loaded.data if loaded.data.ndim == 2 else loaded.data[..., 0]
        um = image.um_per_px if image else loaded.um_per_px
        items = [Annotations(args.id or (image.name if image else loaded.name), lab, um_per_px=um)]
    for a in items:
        a.default_class = args.class_name
        if args.id and len(items) == 1:
            a.image_id = safe_id(args.id)
    if args.out:
        refuse_onto_inputs([args.out], [args.labels, args.image])  # even with --overwrite
        if args.out.exists() and not args.overwrite:
            raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
        fmt = args.format or format_of(args.out)
        print(f"wrote {export_annotations(items, args.out, fmt, overwrite=args.overwrite)} ({FORMATS[fmt].title})")
    if args.tiles:
        if image is None or len(items) != 1:
            raise OptionError("--tiles needs --image and labels of that one image")
        a = items[0]
        slide = open_slide(args.image)  # read window by window, never whole
        rows = export_tiles(slide.levels[0], a.labels, args.tiles, a.image_id, tile=args.tile, overlap=args.overlap,
                            um_per_px=image.um_per_px, target_um_per_px=args.target_um_per_px, keep=args.keep,
                            negative_fraction=args.negative_fraction,
                            classes={i: a.class_names(i)[0] for i in a.ids()}, max_per_class=args.max_per_class,
                            seed=args.seed, fmt=args.tile_format)
        print(f"wrote {len(rows)} tiles and {args.tiles / 'manifest.csv'}")
    return 0


def _evaluate(args) -> int:
    from napari_ftu.evaluation.evaluate import evaluate_paths, write_report

    refuse_onto_inputs([args.out], [args.pred, args.truth])  # even with --overwrite
    if args.out and args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    for name in ("iou", "ap_iou"):
        if not 0 < getattr(args, name) <= 1:
            raise OptionError(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(args, name)}")
    if args.compare is not None:
        from napari_ftu.evaluation.compare import compare_paths

        rows, summary, missing = compare_paths(args.pred, args.truth, args.compare, args.pred_format,
                                               args.truth_format, args.compare_format, args.iou, args.ap_iou)
    else:
        rows, summary, missing = evaluate_paths(args.pred, args.truth, args.pred_format, args.truth_format,
                                                args.iou, args.ap_iou)
    if args.out:
        write_report(args.out, rows, summary)
    if args.json:
        print(json.dumps({"summary": summary, "images": rows, "missing_predictions": missing,
                          "report": str(args.out) if args.out else None}))
        return 0
    for row in summary:
        ap = "n/a" if row["ap"] is None else f"{row['ap']:.4f}"
        print(f"{row['group']}/{row['class']}: {row['images']} images, Dice {row['dice']:.4f}, IoU {row['iou']:.4f}, "
              f"TP {row['tp']} FP {row['fp']} FN {row['fn']}, F1@{args.iou:g} {row['f1']:.4f}, "
              f"AP@{args.ap_iou:g} {ap}")
    if missing:
        print(f"{len(missing)} ground-truth images without a prediction (scored as empty): {', '.join(missing[:5])}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


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


def _check_numbers(args, ints: dict, positive=()) -> None:
    """Whole-number flags at least their minimum, and positive finite numbers, as one error line."""
    from napari_ftu.engine.options import check_int, check_positive

    for name, low in ints.items():
        if getattr(args, name) is not None:
            check_int(getattr(args, name), f"--{name.replace('_', '-')}", low)
    for name in positive:
        flag = f"--{name.replace('_', '-')}"
        check_positive(getattr(args, name), flag)


# --- annotate (issue 18): scribbles or clicks -> labels, without a model ---------------------------
def _add_annotate(sub) -> None:
    from napari_ftu.annotate.headless import SCRIBBLE_DEFAULTS

    a = sub.add_parser("annotate", help="label FTUs without a model: from scribbles (pixel classifier) or clicks")
    a.add_argument("image", type=Path,
                   help="the image; with --cells a 4-channel TIFF (red, green, blue = nuclei, yellow) or one of "
                        "an HPA image's <id>_{red,green,blue,yellow}.png")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--scribbles", type=Path, help="label TIFF of the image's size: 1 = background, 2.. = FTU classes")
    src.add_argument("--clicks", type=Path, help="CSV with columns y,x (full-resolution pixels), one object per row")
    src.add_argument("--model", type=Path,
                     help="with --cells: a classifier saved by --save-model (or the Annotate dock), applied to this "
                          "image without scribbles")
    a.add_argument("--out", type=Path, required=True, help="instance labels TIFF to write")
    a.add_argument("--cells", action="store_true",
                   help="fluorescence cells: a watershed from the nuclei (blue channel) over the classifier's "
                        "foreground; each cell takes the class of its pixels (with --scribbles)")
    a.add_argument("--classes", default=None,
                   help="comma-separated names of scribble values 2, 3, ... (for --csv: HPA label names such as "
                        "nucleoplasm,cytosol,negative, or their numbers)")
    a.add_argument("--csv", type=Path, default=None,
                   help="with --cells: also write the cells as an HPA / Open Images CSV (label confidence mask)")
    a.add_argument("--id", default=None, help="image id in --csv (default: the file name, without _red.png)")
    a.add_argument("--save-model", type=Path, default=None, help="save the scribble classifier as a model folder")
    a.add_argument("--um-per-px", type=float, default=None, help="pixel size (default: from the file, else 1)")
    a.add_argument("--diameter-um", type=float, default=None,
                   help="expected FTU diameter for clicks and --shape outline (default 200)")
    d = SCRIBBLE_DEFAULTS
    a.add_argument("--min-object-um2", type=float, default=None,
                   help=f"scribbles: drop smaller objects (default: {d.min_object_fraction:g} of the disc of "
                        f"--diameter-um, {d.min_object_um2():.0f} µm² for 200 µm, where the pixel size is known; "
                        "0 keeps all)")
    a.add_argument("--encoder-features", action=argparse.BooleanOptionalAction, default=d.encoder_features,
                   help="scribbles: add ImageNet EfficientNet-Lite0 stages to the filters (context; slower, RGB; "
                        "default %(default)s)")
    a.add_argument("--shape", choices=["none", "convex", "outline"], default=d.shape or "none",
                   help="scribbles: keep objects as predicted, make each its convex hull, or grow it out to the edge "
                        "that encloses it (Bowman's capsule beyond the pale space; FTUs of --diameter-um; "
                        "default %(default)s)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a.set_defaults(func=_annotate)


def _annotate(args) -> int:
    import numpy as np

    from napari_ftu.annotate import headless
    from napari_ftu.formats.datasets import HPA_CHANNELS, hpa_channel_id
    from napari_ftu.io.images import read_image, write_tiff

    outputs = [p for p in (args.out, args.csv) if p]
    hpa = hpa_channel_id(args.image) if args.cells else None
    siblings = [hpa[0] / f"{hpa[1]}_{c}.png" for c in HPA_CHANNELS] if hpa else []
    refuse_onto_inputs(outputs, [args.image, args.scribbles, args.clicks, *siblings])
    for p in outputs:
        if p.exists() and not args.overwrite:
            raise FileExistsError(f"{p} exists; pass --overwrite to replace it")
    names = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if args.cells and args.clicks is not None:
        raise OptionError("--cells works from --scribbles or --model (the classifier gives each cell its class)")
    if args.model is not None and not args.cells:
        raise OptionError("--model applies a cells classifier: add --cells (napari-ftu segment runs FTU classifiers)")
    if args.model is not None and args.save_model:
        raise OptionError("--save-model saves a classifier trained on --scribbles; --model is one already saved")
    clf = None
    if args.model is not None:  # loaded first: its class names serve --csv when --classes is not given
        from dataclasses import replace

        from napari_ftu.annotate.pixels import PixelClassifier
        from napari_ftu.engine.models import load_model

        clf = PixelClassifier.from_model(load_model(args.model, device="cpu"))
        if names and len(names) != len(clf.classes):
            raise OptionError(f"--classes: {len(names)} names for the {len(clf.classes)} classes of {args.model} "
                              f"({', '.join(clf.classes)})")
        clf = replace(clf, classes=names or clf.classes)
        names = clf.classes
    if args.csv and not args.cells:
        raise OptionError("--csv writes cells: add --cells")
    if args.csv:
        from napari_ftu.formats.csv_formats import hpa_label

        if not names:
            raise OptionError("--csv needs --classes: the HPA label (name or number) of scribble values 2, 3, ...")
        for name in names:
            try:
                hpa_label(name)
            except FTUError as exc:
                raise OptionError(f"--classes: {exc}") from None
    if args.cells:
        return _annotate_cells(args, names, clf)
    loaded = read_image(args.image)
    um = args.um_per_px or loaded.um_per_px or 1.0
    if args.scribbles is not None:
        scribbles = read_image(args.scribbles).data
        min_um2 = args.min_object_um2
        if min_um2 is None:  # without a pixel size the FTU's area in pixels is unknown: keep every object
            min_um2 = headless.SCRIBBLE_DEFAULTS.min_object_um2(args.diameter_um) if args.um_per_px or \
                loaded.um_per_px else 0.0
        labels, table, clf = headless.labels_from_scribbles(loaded.data, scribbles, um, min_um2,
                                                            source=str(args.scribbles), classes=names,
                                                            encoder_features=args.encoder_features,
                                                            shape="" if args.shape == "none" else args.shape,
                                                            diameter_um=args.diameter_um)
        if args.save_model:
            clf.save(args.save_model, min_object_um2=min_um2)
    else:
        points = headless.read_clicks(args.clicks)
        labels = headless.labels_from_clicks(loaded.data, points, um, args.diameter_um, source=str(args.clicks))
    write_tiff(args.out, labels, um)
    print(f"{args.image.name}: {int(len(np.unique(labels)) - 1)} objects; wrote {args.out}"
          + (f" and model {args.save_model}" if args.save_model else ""))
    return 0


def _annotate_cells(args, names, clf=None) -> int:
    """Cells from scribbles (training the classifier) or from ``clf``, a saved one (``--model``)."""
    from collections import Counter

    from napari_ftu.annotate import cells
    from napari_ftu.formats.export import export_annotations
    from napari_ftu.io.images import read_image, write_tiff
    from napari_ftu.steps import drain

    image, um, image_id = cells.read_cell_image(args.image, args.um_per_px)
    um = um or 1.0
    if clf is not None:
        labels, table = drain(cells.apply_steps(image, clf, um, image_source=str(args.image)))
    else:
        scribbles = read_image(args.scribbles).data
        labels, table, clf = cells.cells_from_scribbles(image, scribbles, um, names, source=str(args.scribbles),
                                                        image_source=str(args.image))
    if args.csv:  # the id is checked before anything is written
        items = cells.to_annotations(args.id or image_id, labels, table, um)
    write_tiff(args.out, labels, um)
    if args.save_model:
        clf.save(args.save_model, cells=True)
    if args.csv:
        export_annotations(items, args.csv, "hpa", overwrite=args.overwrite)
    counts = ", ".join(f"{n} {c}" for c, n in sorted(Counter(r["cls"] for r in table).items()))
    print(f"{args.image.name}: {len(table)} cells ({counts or 'none'}); wrote {args.out}"
          + (f" and {args.csv}" if args.csv else "") + (f" and model {args.save_model}" if args.save_model else ""))
    return 0
