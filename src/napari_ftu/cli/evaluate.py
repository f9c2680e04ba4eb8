"""``napari-ftu evaluate``: score predictions against ground truth (Dice, IoU, F1, AP@0.6, PQ, AJI)."""

from __future__ import annotations

import json
from pathlib import Path

from napari_ftu.errors import OptionError
from napari_ftu.formats.export import FORMATS
from napari_ftu.io.paths import refuse_onto_inputs


def add_parser(sub, common) -> None:
    v = sub.add_parser("evaluate", parents=[common],
                       help="score predictions against ground truth (Dice, IoU, F1, AP@0.6, PQ, AJI)")
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
    v.set_defaults(func=run)


def run(args) -> int:
    from napari_ftu.evaluation.evaluate import evaluate_paths, write_report

    refuse_onto_inputs([args.out], [args.pred, args.truth])  # even with --overwrite
    if args.out and args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    for name in ("iou", "ap_iou"):
        if not 0 < getattr(args, name) <= 1:
            raise OptionError(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(args, name)}")
    from napari_ftu.evaluation.bands import banded_pair, evaluate_banded  # two large label TIFFs: band by band

    if args.compare is None and banded_pair(args.pred, args.truth, args.pred_format, args.truth_format):
        rows, summary, missing = evaluate_banded(args.pred, args.truth, args.iou, args.ap_iou)
    elif args.compare is not None:
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
              f"AP@{args.ap_iou:g} {ap}, PQ {row['pq']:.4f} (SQ {row['sq']:.4f} × RQ {row['rq']:.4f}), "
              f"AJI {row['aji']:.4f}")
    if missing:
        print(f"{len(missing)} ground-truth images without a prediction (scored as empty): {', '.join(missing[:5])}")
    if args.out:
        print(f"wrote {args.out}")
    return 0
