"""``napari-ftu info``: describe a slide or a dataset folder (and check that it loads)."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub, common) -> None:
    i = sub.add_parser("info", parents=[common],
                       help="describe a slide or a dataset folder (and check that it loads)")
    i.add_argument("path", type=Path)
    i.add_argument("--item", type=int, default=None, help="also load this dataset image (0-based)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=run)


def run(args) -> int:
    from napari_ftu.formats.datasets import open_dataset
    from napari_ftu.io.backends import is_dicom_folder
    from napari_ftu.io.slides import open_slide

    if (args.path.is_file() and args.path.suffix.lower() not in (".json", ".jsonl", ".csv")
            or is_dicom_folder(args.path)):
        slide = open_slide(args.path)
        out = {"path": str(args.path), "backend": slide.backend, "size": list(slide.size), "kind": slide.kind,
               "levels": len(slide.levels), "um_per_px": slide.um_per_px, "pyramid_stored": not slide.flat}
        if slide.note:
            out["note"] = slide.note
        slide.close()
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
