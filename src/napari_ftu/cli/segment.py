"""``napari-ftu segment``: segment one image, or a batch of slides on Dask, and write HuBMAP RLE (and labels)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from napari_ftu.cli.common import BUILTIN_HELP, TRUST_HELP, few, model_arg
from napari_ftu.errors import OptionError
from napari_ftu.io.paths import refuse_onto_inputs


def add_parser(sub, common) -> None:
    s = sub.add_parser("segment", parents=[common],
                       help="segment an image, or a batch of slides on Dask, and write HuBMAP RLE (and labels)")
    s.add_argument("image", nargs="+",
                   help="an image; or many: files, folders, globs ('slides/*.svs') or a competition CSV (batch)")
    s.add_argument("--model", type=model_arg, default=None,
                   help=f"model folder, checkpoint, .onnx file or bioimage.io package, {BUILTIN_HELP}")
    s.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    s.add_argument("--out", type=Path, required=True, help="CSV to write (id,rle); for a batch, the output folder")
    s.add_argument("--labels", type=Path, default=None, help="also write the instance labels as TIFF")
    s.add_argument("--probability", type=Path, default=None,
                   help="also write the probability map as TIFF: the model grid, float32 0-1 (one page per "
                        "class), its µm/px in the resolution tags")
    s.add_argument("--id", default=None, help="image id in the CSV (default: file name stem)")
    s.add_argument("--um-per-px", type=float, default=None, help="override the image's pixel size")
    s.add_argument("--device", default="auto")
    s.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
                   help="what runs the model: auto (default: ONNX Runtime on the CPU when the model has or can get "
                        "an ONNX graph, else torch), torch or onnxruntime")
    s.add_argument("--tile", type=int, default=None)
    s.add_argument("--overlap", type=int, default=None)
    s.add_argument("--threshold", type=float, default=None)
    s.add_argument("--batch", type=int, default=4, help="tiles per model call (halved on out-of-memory)")
    s.add_argument("--tta", action="store_true", help="test-time augmentation: average flips and a rotation")
    s.add_argument("--blend", choices=["taper", "gaussian"], default="taper",
                   help="tile blending window: cosine taper over the overlap (default) or Gaussian (sigma tile/8)")
    s.add_argument("--keep-glass", action="store_true", help="also run the model on background (glass) tiles")
    s.add_argument("--split", action="store_true", help="split touching objects with a watershed")
    s.add_argument("--keep-reviewed", action="store_true",
                   help="keep the objects reviewed in the Review dock (its saved review beside the slide): they stay "
                        "as reviewed, and new objects on reviewed, rejected or done places are dropped")
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
    s.set_defaults(func=run)


def _segment_options(args):
    """The run options from the flags, validated before anything slow starts."""
    from napari_ftu.engine.options import SegmentOptions, check_positive

    args.um_per_px = check_positive(args.um_per_px, "--um-per-px")
    return SegmentOptions(tile_size=args.tile, overlap=args.overlap, threshold=args.threshold, batch_size=args.batch,
                          tta=args.tta, blend=args.blend, skip_background=not args.keep_glass, watershed=args.split)


def run(args) -> int:
    """One image, through the same core function as the batch and the Segment dock: the slide
    is opened lazily and its outputs stream into a temporary zarr store when it is large."""
    import shutil
    import tempfile

    from napari_ftu.io.backends import is_dicom_folder
    from napari_ftu.io.slides import check_slide

    options = _segment_options(args)
    one, file_um = Path(args.image[0]), None
    if len(args.image) == 1 and (one.is_file() and one.suffix.lower() != ".csv" or is_dicom_folder(one)):
        file_um = check_slide(one, args.um_per_px)  # refused before the batch, torch and a model are imported

    import numpy as np

    from napari_ftu.batch.plan import is_batch_input
    from napari_ftu.engine.run import STORE_NAME, segment_slide_steps
    from napari_ftu.formats.annotations import Annotations
    from napari_ftu.formats.export import export_annotations, safe_id
    from napari_ftu.io.images import (
        assumed_pixel_size,
        file_stem,
        write_labels_ome_tiff,
        write_probability,
        write_tiff,
    )
    from napari_ftu.steps import Outputs, TileProgress, drain

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
    from napari_ftu.models.backends import load
    from napari_ftu.models.card import scale_note

    model = load(args.model, device=args.device, backend=args.backend, trust_code=args.trust_model)
    used, note = assumed_pixel_size(args.image.name, args.um_per_px or file_um, model.card.um_per_px,
                                    "the model's", "--um-per-px")
    note = note or scale_note(args.image.name, used, model.card, "--um-per-px")

    grid = []  # the probability on the model grid, as the engine fills it

    def progress(event):
        if isinstance(event, Outputs):
            grid.append(event.probability)
        elif isinstance(event, TileProgress) and not args.json:
            print(f"\rtiles {event.done}/{event.total}", end="", file=sys.stderr, flush=True)

    if args.keep_reviewed:
        from napari_ftu.review.saved import saved_sessions

        saved_sessions(args.image)  # no saved review: one error before the model runs
    tmp = Path(tempfile.mkdtemp(prefix="napari-ftu-"))
    reviewed = None
    try:
        seg = drain(segment_slide_steps(args.image, model, options, um_per_px=args.um_per_px, store=tmp / STORE_NAME),
                    progress)
        if not args.json:
            print(file=sys.stderr)
        if args.keep_reviewed:
            from napari_ftu.review.saved import keep_saved_reviews

            first = 1 + max((int(o["id"]) for o in seg.objects), default=0)
            reviewed = keep_saved_reviews(seg.labels, args.image, seg.downsample, first)
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
               "device": seg.device, "backend": seg.backend, "um_per_px": um, "tiles": seg.n_tiles,
               "glass_tiles_skipped": seg.n_skipped, "outputs": outputs}
    if seg.downsample != 1.0:
        summary["labels_downsample"] = seg.downsample
    if reviewed is not None:
        summary["reviewed_kept"], summary["predicted_dropped"] = reviewed
        summary["n_objects"] += reviewed[0] - reviewed[1]
    if note:  # said once the work is done, so that a failed run still gets one error line
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{image_id}: {summary['n_objects']} FTUs in {seg.seconds:.1f} s on {seg.device}, {seg.backend}"
              + (f" (labels on the model grid, {um:g} µm/px)" if seg.downsample != 1.0 and um else "")
              + (f"; {reviewed[0]} reviewed objects kept, {reviewed[1]} new ones on reviewed places dropped"
                 if reviewed is not None else ""))
        for path in outputs:
            print(f"wrote {path}")
    return 0


def _assumed_in_batch(rows, options) -> str | None:
    """One line for the slides of a batch that had no pixel size (the model's was assumed)."""
    from napari_ftu.batch.slide import batch_card

    unknown = [r["id"] for r in rows if r.get("status") == "done" and not r.get("um_per_px")]
    if not unknown:
        return None
    return (f"{len(unknown)} slide(s) have no pixel size ({few(unknown)}); assumed "
            f"{batch_card(options).um_per_px:g} µm/px (the model's); set --um-per-px or a pixel_size column in a CSV")


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

    from napari_ftu.batch.cluster import SchedulerAccess
    from napari_ftu.batch.plan import BatchOptions, plan_inputs
    from napari_ftu.batch.runner import run_batch
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
                           band_above_px=args.band_above * 1e6, threads=args.threads, trust_model=args.trust_model,
                           backend=args.backend)
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
    if not args.scheduler:  # workers on this machine resolve "auto" as this process does
        from napari_ftu.models.backends import choose_backend

        summary["backend"] = choose_backend(args.model, args.device, args.backend)
    note = _assumed_in_batch(result.rows, options)
    if note:
        print(note, file=sys.stderr)
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
