"""``napari-ftu export-model``: a model out as one ONNX file (the card in its metadata) or as a
bioimage.io package (rdf.yaml, ONNX and TorchScript weights, test tensors, cover)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from napari_ftu.cli.common import BUILTIN_HELP, model_arg
from napari_ftu.errors import ModelError, OptionError


def add_parser(sub, common) -> None:
    x = sub.add_parser("export-model", parents=[common],
                       help="write a model as an ONNX file or a bioimage.io package")
    x.add_argument("--model", type=model_arg, default=None,
                   help=f"model folder or weights file, {BUILTIN_HELP}")
    x.add_argument("--format", choices=["onnx", "bioimageio"], required=True,
                   help="onnx: one .onnx file with the model card in its metadata; bioimageio: a package "
                        "(OUT.zip, or a folder)")
    x.add_argument("out", type=Path, help="the .onnx file, or the package (.zip or folder)")
    x.add_argument("--test-image", type=Path, default=None,
                   help="bioimageio: a real image whose top-left tile is the package's test input "
                        "(default: a synthetic kidney tile)")
    x.add_argument("--um-per-px", type=float, default=None,
                   help="pixel size of --test-image and --calibration images (resampled to the model's)")
    x.add_argument("--int8", action="store_true",
                   help="onnx: a static int8 graph, calibrated on --calibration images (faster on most CPUs; check "
                        "its Dice on held-out images before relying on it)")
    x.add_argument("--calibration", type=Path, action="append", default=None,
                   help="onnx --int8: an image at the model's µm/px (or give --um-per-px) typical of what it will "
                        "segment; repeatable, up to 16 tiles are used (default: synthetic kidney tiles)")
    x.add_argument("--name", default=None, help="bioimageio: the package's name (default: the card's)")
    x.add_argument("--license", default="CC-BY-4.0", help="bioimageio: SPDX licence of the weights")
    x.add_argument("--author", action="append", default=None, help="bioimageio: an author (repeatable)")
    x.add_argument("--json", action="store_true", help="print a JSON summary")
    x.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    x.set_defaults(func=run)


def run(args) -> int:
    from napari_ftu.io.paths import refuse_onto_inputs
    from napari_ftu.models.loading import check_trust, default_model_path, model_files

    source = default_model_path() if args.model is None else args.model
    folder, weights = model_files(source)
    check_trust(source, False)  # TorchScript: we would run its code to export it
    if weights.suffix == ".onnx":
        raise ModelError(f"{weights}: already an ONNX graph; export-model starts from a model's weights")
    inputs = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else [weights]
    refuse_onto_inputs([args.out], inputs + ([args.test_image] if args.test_image else []))
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    if args.format == "onnx":
        if args.out.suffix.lower() != ".onnx":
            raise OptionError(f"{args.out}: an ONNX export is a .onnx file")
        out = _onnx(source, args.out)
        if args.int8:
            from napari_ftu.models.onnx import card_of, quantize_int8

            card = card_of(out)
            images = [_image_at_model_scale(p, args.um_per_px, card) for p in args.calibration or []]
            quantize_int8(out, out, _calibration_tiles(images, card), card)
    elif args.int8 or args.calibration:
        raise OptionError("--int8 and --calibration go with --format onnx")
    else:
        out = _bioimageio(source, args)
    summary = {"model": str(source), "format": args.format, "out": str(out)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {out}", file=sys.stdout)
    return 0


def _image_at_model_scale(path: Path, um_per_px, card):
    from napari_ftu.io.images import read_image
    from napari_ftu.io.resample import resample_image, zoom_shape

    loaded = read_image(path, um_per_px=um_per_px)
    image = loaded.data
    if image.ndim != 3 or image.shape[2] < 3:
        raise OptionError(f"{path}: the image must be RGB")
    image = image[..., :3]
    if loaded.um_per_px:
        image = resample_image(image, zoom_shape(image.shape[:2], loaded.um_per_px / card.um_per_px))
    return image


def _calibration_tiles(images: list, card, most: int = 16):
    """Up to ``most`` model tiles from ``images`` (synthetic kidney tiles when none are given)."""
    import numpy as np

    if not images:
        from napari_ftu.io.synthetic import make_slide

        images = [make_slide(card.tile_size * 4, card.tile_size * 4, seed=31, um_per_px=card.um_per_px)[0]]
    side = card.tile_size
    tiles = [img[y : y + side, x : x + side] for img in images for y in range(0, img.shape[0] - side + 1, side)
             for x in range(0, img.shape[1] - side + 1, side)]
    if not tiles:
        raise OptionError(f"the calibration images are smaller than one {side} px tile at the model's µm/px")
    return np.stack(tiles[:most])


def _onnx(source, out: Path) -> Path:
    from napari_ftu.models.loading import load_model, model_fingerprint
    from napari_ftu.models.onnx import export_onnx

    model = load_model(source, device="cpu")
    return export_onnx(model.network, model.card, out, model_fingerprint(source))


def _bioimageio(source, args) -> Path:
    import importlib.util

    for module in ("bioimageio.spec",):
        if importlib.util.find_spec(module) is None:
            raise OptionError(f"a bioimage.io package needs {module}: pip install 'napari-ftu[bioimageio]'")
    from napari_ftu.models.bioimageio import export_package

    image = None
    if args.test_image is not None:
        from napari_ftu.models.loading import load_model

        image = _image_at_model_scale(args.test_image, args.um_per_px, load_model(source, device="cpu").card)
    return export_package(source, args.out, test_image=image, name=args.name, license=args.license,
                          authors=tuple(args.author or ("napari-ftu user",)))
