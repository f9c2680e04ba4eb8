"""``napari-ftu export``: convert labels or annotations to any supported format, or training tiles."""

from __future__ import annotations

from pathlib import Path

from napari_ftu.cli.common import check_numbers
from napari_ftu.errors import OptionError
from napari_ftu.formats.export import FORMATS, format_of
from napari_ftu.io.paths import refuse_onto_inputs


def add_parser(sub, common) -> None:
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
    e.set_defaults(func=run)


def run(args) -> int:
    from napari_ftu.formats.annotations import Annotations, safe_id
    from napari_ftu.formats.export import export_annotations, import_annotations
    from napari_ftu.io.images import read_image
    from napari_ftu.io.slides import open_slide
    from napari_ftu.training.tiles import export_tiles

    check_numbers(args, ints={"tile": 32, "overlap": 0, "max_per_class": 0}, positive=("target_um_per_px",))
    if not 0 <= args.negative_fraction <= 1:
        raise OptionError(f"--negative-fraction must be from 0 to 1, got {args.negative_fraction}")
    if not args.out and not args.tiles:
        raise OptionError("nothing to do: give --out FILE and/or --tiles FOLDER")
    fmt = args.format or (format_of(args.out) if args.out else None)
    if args.out and fmt == "hubmap" and not (args.source_format or args.tiles or args.image):
        return _export_rle_bands(args)  # a label image to id,rle: read a band of columns at a time
    image = read_image(args.image) if args.image else None
    if args.source_format and args.out and not (args.tiles or args.id):  # converted as read, one image at a time
        items = import_annotations(args.labels, args.source_format, image.data.shape[:2] if image else None,
                                   compact=True)
        refuse_onto_inputs([args.out], [args.labels, args.image])  # even with --overwrite
        if args.out.exists() and not args.overwrite:
            raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
        written = export_annotations(_with_class(items, args.class_name), args.out, fmt, overwrite=args.overwrite)
        print(f"wrote {written} ({FORMATS[fmt].title})")
        return 0
    if args.source_format:
        items = list(import_annotations(args.labels, args.source_format, image.data.shape[:2] if image else None))
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


def _with_class(items, class_name):
    """Each image with objects without a class given ``class_name``, handed on one at a time."""
    for a in items:
        a.default_class = class_name
        yield a
        del a


def _export_rle_bands(args) -> int:
    from napari_ftu.atomic import write_text
    from napari_ftu.formats.annotations import safe_id
    from napari_ftu.formats.rle import encode_bands
    from napari_ftu.io.slides import open_slide

    refuse_onto_inputs([args.out], [args.labels])  # even with --overwrite
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    slide = open_slide(args.labels)
    try:
        level = slide.levels[0]
        if len(level.shape) != 2:
            raise OptionError(f"{args.labels}: a label image is 2-D, got shape {tuple(level.shape)}")
        image_id = safe_id(args.id or slide.name)
        text = encode_bands(level)
    finally:
        slide.close()
    write_text(args.out, f"id,rle\n{image_id},{text}\n")
    print(f"wrote {args.out} ({FORMATS['hubmap'].title})")
    return 0
