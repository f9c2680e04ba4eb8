"""Segment a 50 000 x 50 000 synthetic slide end to end with a cheap model and print the peak
resident memory: probability and labels stream into a zarr store, so memory should not grow
with slide size.

    python bench/slide_memory.py [--slide PATH] [--model-um 2.0] [--out DIR]

The slide is written by ``bench/slide_open.py``'s repeated-patch writer when PATH is missing.
The cheap model is a fixed 3-layer CNN (a darkness detector smoothed over 9 px, giving thousands
of objects), so the
figure measures the engine: reading, resampling, blending, the zarr writes and the strip-wise
labelling, not a network.
"""

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cheap_model(um_per_px: float):
    import torch

    from napari_ftu.models.card import ModelCard
    from napari_ftu.models.loading import FTUModel

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 1, 1),  # darkness: the negative mean of the normalised channels
        torch.nn.AvgPool2d(9, stride=1, padding=4),
        torch.nn.Conv2d(1, 1, 1),
    ).eval()
    with torch.no_grad():
        net[0].weight.fill_(-1 / 3)
        net[0].bias.fill_(1.45)  # positive where darker than most of the synthetic tissue
        net[2].weight.fill_(6.0)
        net[2].bias.zero_()
    card = ModelCard(um_per_px=um_per_px, tile_size=1024, overlap=32, min_object_um2=2000, name="cheap")
    return FTUModel(net, card, "cpu")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--slide", type=Path, default=Path("/tmp/bench_slides/synthetic_50000.ome.tif"))
    p.add_argument("--size", type=int, default=50_000)
    p.add_argument("--model-um", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_slides/segmented.zarr"))
    args = p.parse_args()

    import torch

    torch.set_num_threads(2)
    if not args.slide.exists():
        from slide_open import write_repeated_slide

        args.slide.parent.mkdir(parents=True, exist_ok=True)
        write_repeated_slide(args.slide, args.size)
    from napari_ftu.engine.inference import segment_steps
    from napari_ftu.io.slides import open_slide
    from napari_ftu.steps import Progress, drain

    slide = open_slide(args.slide)
    model = cheap_model(args.model_um)
    before = peak_rss_mb()
    start = time.perf_counter()
    last = [0.0]

    def report(event):
        now = time.perf_counter()
        if isinstance(event, Progress) and now - last[0] > 30:
            last[0] = now
            print(f"  {now - start:6.0f} s  {event.unit} {event.done}/{event.total}  peak RSS {peak_rss_mb():.0f} MB",
                  flush=True)

    seg = drain(segment_steps(slide.levels, model, um_per_px=slide.um_per_px, store=args.out, batch_size=4), report)
    seconds = time.perf_counter() - start
    h, w = slide.size
    print(f"slide {h} x {w} px at {slide.um_per_px} µm/px, {len(slide.levels)} levels; "
          f"model grid {seg.labels.shape[0]} x {seg.labels.shape[1]} at {args.model_um} µm/px")
    print(f"tiles computed {seg.n_tiles}, glass tiles skipped {seg.n_skipped}, objects {len(seg.objects)}")
    print(f"time {seconds:.0f} s ({h * w / seconds / 1e6:.1f} slide megapixels/s)")
    print(f"peak RSS {peak_rss_mb():.0f} MB (after imports and model: {before:.0f} MB)")


if __name__ == "__main__":
    main()
