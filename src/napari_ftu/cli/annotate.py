"""``napari-ftu annotate``: label FTUs without a model: from scribbles (pixel classifier) or clicks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_ftu.errors import FTUError, OptionError
from napari_ftu.io.paths import refuse_onto_inputs


def add_parser(sub, common) -> None:
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
    a.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from napari_ftu.annotate import headless
    from napari_ftu.formats.datasets.hpa import HPA_CHANNELS, hpa_channel_id
    from napari_ftu.io.images import assumed_pixel_size, read_image, write_tiff

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
        from napari_ftu.models.loading import load_model

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
    um, note = assumed_pixel_size(args.image.name, args.um_per_px or loaded.um_per_px, 1.0, "the default",
                                  "--um-per-px")
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
    if note:  # said once the work is done, so that a refused input still gets one error line
        print(note, file=sys.stderr)
    print(f"{args.image.name}: {int(len(np.unique(labels)) - 1)} objects; wrote {args.out}"
          + (f" and model {args.save_model}" if args.save_model else ""))
    return 0


def _annotate_cells(args, names, clf=None) -> int:
    """Cells from scribbles (training the classifier) or from ``clf``, a saved one (``--model``)."""
    from collections import Counter

    from napari_ftu.annotate import cells
    from napari_ftu.formats.export import export_annotations
    from napari_ftu.io.images import assumed_pixel_size, read_image, write_tiff
    from napari_ftu.steps import drain

    image, um, image_id = cells.read_cell_image(args.image, args.um_per_px)
    um, note = assumed_pixel_size(Path(args.image).name, um, 1.0, "the default", "--um-per-px")
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
    if note:
        print(note, file=sys.stderr)
    print(f"{args.image.name}: {len(table)} cells ({counts or 'none'}); wrote {args.out}"
          + (f" and {args.csv}" if args.csv else "") + (f" and model {args.save_model}" if args.save_model else ""))
    return 0
