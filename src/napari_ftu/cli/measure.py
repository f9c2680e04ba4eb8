"""``napari-ftu measure``: per-object measurements and per-slide summaries as CSV."""

from __future__ import annotations

import json
from pathlib import Path

from napari_ftu.errors import OptionError


def add_parser(sub, common) -> None:
    from napari_ftu.measure.objects import STAINS

    m = sub.add_parser("measure", parents=[common],
                       help="measure every object (area, perimeter, shape, stain) and summarise each slide")
    m.add_argument("path", type=Path,
                   help="a slide with a saved review session (<slide>.ftu/), a label image, a label store (zarr), "
                        "a .session.npz file, or a batch output folder")
    m.add_argument("--out", type=Path, required=True, help="the measurements CSV (one row per object)")
    m.add_argument("--summary", type=Path, default=None, help="also write one summary row per slide (CSV)")
    m.add_argument("--image", type=Path, default=None,
                   help="the image of a label image or store: stain columns and the tissue area")
    m.add_argument("--labels", type=Path, default=None, help="the labels of the slide PATH (instead of its session)")
    m.add_argument("--um-per-px", type=float, default=None,
                   help="pixel size of the labels when the files carry none (else 1 µm/px is assumed and said)")
    m.add_argument("--stain", choices=["auto", "none", "channels", *STAINS], default="auto",
                   help="colour deconvolution of the stain columns: auto (H&E for RGB, per-channel means "
                        "otherwise), none, channels, or a matrix")
    m.add_argument("--json", action="store_true", help="print the summary rows as one JSON object")
    m.add_argument("--overwrite", action="store_true", help="replace existing CSVs")
    m.set_defaults(func=run)


def run(args) -> int:
    from napari_ftu.io.paths import refuse_onto_inputs
    from napari_ftu.measure.run import measure_to_csv

    if args.um_per_px is not None and not args.um_per_px > 0:
        raise OptionError(f"--um-per-px must be a positive number, got {args.um_per_px}")
    outs = [p for p in (args.out, args.summary) if p is not None]
    refuse_onto_inputs(outs, [p for p in (args.path, args.image, args.labels) if p is not None])
    for p in outs:
        if p.exists() and not args.overwrite:
            raise FileExistsError(f"{p} exists; pass --overwrite to replace it")
    if args.summary is not None and args.summary.resolve() == args.out.resolve():
        raise OptionError("--summary must be another file than --out")
    result = measure_to_csv(args.path, args.out, args.summary, args.image, args.labels, args.um_per_px, args.stain)
    if args.json:
        print(json.dumps({"summary": result["slides"], "objects": result["objects"], "notes": result["notes"],
                          "out": str(args.out), "summary_csv": str(args.summary) if args.summary else None}))
        return 0
    for note in result["notes"]:
        print(f"note: {note}")
    for s in result["slides"]:
        tissue = "" if s["tissue_area_mm2"] is None else (
            f", tissue {s['tissue_area_mm2']:.3f} mm², {s['density_per_mm2']:.2f} per mm²")
        size = "" if s["area_median_um2"] is None else (
            f", median area {s['area_median_um2']:.0f} µm² (IQR {s['area_iqr_um2']:.0f})")
        print(f"{s['slide']}: {s['n_objects']} objects ({s['classes'] or 'none'}){tissue}{size}, "
              f"{s['n_border']} cut by the edge")
    print(f"wrote {args.out} ({result['objects']} objects)" + (f" and {args.summary}" if args.summary else ""))
    return 0
