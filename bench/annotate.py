"""Annotating without a model, measured with simulated users (issue 18).

    python bench/annotate.py [--only scribbles,cross,vessels,synthetic,clicks,speed,curve,cells,settings]
                             [--plot docs/annotate_strokes.png] [--seeds 0,1] [--users careful,quick]

Strokes and clicks come from the ground truth (:mod:`napari_ftu.annotate.simulate`): a stroke
is a 20-px piece of an object's or the background's medial axis, painted with a ``--brush``-px
brush kept inside its region; a click is an object's innermost pixel. Prints one line per figure.
``settings`` prints one table, simulated users x ``napari-ftu annotate`` options, through the
command's own headless functions (:data:`USERS`, :data:`SETTINGS`), and the clicks path.
``cells`` scores fluorescence cells on seeded synthetic HPA-like images (no HPA data here).
"""

import argparse
import glob
import json
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from napari_ftu.annotate import simulate
from napari_ftu.annotate.headless import ScribbleOptions
from napari_ftu.annotate.objects import min_area_px

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MIN_AREA = 100  # px, remove-small of the objects when no FTU size is known
SHAPE = "outline"  # objects grown to their enclosing edge where the FTU size is known, else convex hulls
DEEP = 3  # encoder stages among the scribble features (pixels.train's deep; --no-deep: 0)
UM_SARDER, DIAMETER_SARDER = 3.0, 200.0  # µm/px of the Sarder patches; human glomeruli 150–250 µm (~64 px)
UM_VESSELS, DIAMETER_VESSELS = 0.5, 30.0  # vasculature tiles; most of their vessels 10–30 µm across


def dice(a, b) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def iou(a, b) -> float:
    u = (a | b).sum()
    return 1.0 if u == 0 else float((a & b).sum() / u)


def sarder():
    from skimage.io import imread

    root = DATA / "sarder_frozen_kidney_glomeruli"
    out = []
    for f in sorted(glob.glob(str(root / "images" / "*.png"))):
        out.append((imread(f)[..., :3], imread(f.replace("images/slide", "masks/mask")) > 0))
    return out


def vessels():
    """The 8 labelled vasculature tiles with their vessel instance masks from the COCO json."""
    from skimage.draw import polygon
    from skimage.io import imread

    root = DATA / "hubmap2023_vasculature"
    coco = json.loads((root / "annotations_blood_vessel_coco.json").read_text())
    images = {im["id"]: im for im in coco["images"]}
    masks = {}
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        m = masks.setdefault(ann["image_id"], np.zeros((im["height"], im["width"]), np.int32))
        for ring in ann["segmentation"]:
            xy = np.asarray(ring, float).reshape(-1, 2)
            rr, cc = polygon(xy[:, 1], xy[:, 0], m.shape)
            m[rr, cc] = len(np.unique(m))  # a new id per vessel
    out = []
    for key, m in masks.items():
        name = Path(images[key]["file_name"]).name
        path = root / "tiles" / name
        if path.exists():
            from napari_ftu.engine.postprocess import relabel_sequential

            out.append((imread(str(path))[..., :3], relabel_sequential(m)))
    return out


def scribble_dice(pairs, n=3, brush=5, seed=0, um_per_px=1.0, min_area=MIN_AREA, deep=0, diameter=None):
    """Per image Dice of the objects (reshaped as :data:`SHAPE` for FTUs of ``diameter`` µm,
    smaller than ``min_area`` px dropped)."""
    from napari_ftu.annotate import pixels, simulate

    scores = []
    for im, gt in pairs:
        sc = simulate.strokes(gt, n, n, seed=seed, brush=brush)
        clf = pixels.train(im, sc, um_per_px, deep=deep)
        scores.append(dice(objects(clf, im, min_area, um_per_px, diameter) > 0, gt > 0))
    return scores


def objects(clf, im, min_area, um_per_px, diameter):
    from napari_ftu.annotate.objects import objects_from_probability, reshaper

    reshape = reshaper(SHAPE if diameter else "convex", im, (diameter or 0) / um_per_px / 2)
    return objects_from_probability(clf.probability(im), 0.5, min_area, reshape=reshape)[0]


SARDER = {"um_per_px": UM_SARDER, "min_area": min_area_px(DIAMETER_SARDER, UM_SARDER), "diameter": DIAMETER_SARDER}
VESSELS = {"um_per_px": UM_VESSELS, "diameter": DIAMETER_VESSELS}


def shape_ceilings(truth, click) -> tuple[float, float]:
    """IoU of two oracle objects at the click: a disc of the truth's area, and an ellipse with
    the truth's area-equivalent axes and orientation. What a round (or elliptic) object could
    reach if its size (and shape) were guessed perfectly."""
    from skimage.draw import ellipse
    from skimage.measure import regionprops

    y, x = click
    yy, xx = np.ogrid[: truth.shape[0], : truth.shape[1]]
    disc = (yy - y) ** 2 + (xx - x) ** 2 <= truth.sum() / np.pi
    p = regionprops(truth.astype(np.uint8))[0]
    oval = np.zeros_like(truth)
    rr, cc = ellipse(y, x, max(p.axis_major_length / 2, 1), max(p.axis_minor_length / 2, 1), truth.shape,
                     rotation=p.orientation)
    oval[rr, cc] = True
    return iou(disc, truth), iou(oval, truth)


def cross_dice(pairs, n_train=5, n=3, brush=5, min_area=MIN_AREA, um_per_px=1.0, deep=0, diameter=None):
    from napari_ftu.annotate import pixels, simulate

    train = pairs[:n_train]
    scs = [simulate.strokes(gt, n, n, seed=i, brush=brush) for i, (_, gt) in enumerate(train)]
    clf = pixels.train([im for im, _ in train], scs, um_per_px, deep=deep)
    return [dice(objects(clf, im, min_area, um_per_px, diameter) > 0, gt > 0) for im, gt in pairs[n_train:]]


USERS = {  # name -> (what the user does, scribbles from the truth and a seed)
    "careful": ("3+3 strokes of 20 px along the medial axis, 5-px brush",
                lambda gt, seed: simulate.strokes(gt, 3, 3, seed=seed, brush=5)),
    "wide": ("3+3 strokes of 20 px along the medial axis, 10-px brush",
             lambda gt, seed: simulate.strokes(gt, 3, 3, seed=seed, brush=10)),
    "quick": (f"3+3 straight {simulate.QUICK_PX}-px dabs anywhere inside (off-centre), {simulate.QUICK_BRUSH}-px brush",
              lambda gt, seed: simulate.quick_strokes(gt, 3, 3, seed=seed)),
}
SETTINGS = [(f"{'encoder' if enc else 'filters'}, {shape or 'as predicted'}, min {m} FTU",
             ScribbleOptions(enc, shape, float(Fraction(m))))
            for m in ("0", "1/32", "1/8") for enc in (False, True) for shape in ("", "convex", "outline")]


def settings_table(pairs, users, seeds, um_per_px=UM_SARDER, diameter_um=DIAMETER_SARDER, only=""):
    """Mean Dice per (setting, user) of ``napari-ftu annotate --scribbles`` (its headless function,
    the other options at their defaults), over the images and ``seeds`` (stroke placements)."""
    from napari_ftu.annotate import headless

    table = {}
    for user in users:
        draw = USERS[user][1]
        scribbles = [(im, gt, draw(gt, seed)) for seed in seeds for im, gt in pairs]
        for name, opt in SETTINGS:
            if only and name not in only.split(";"):
                continue
            t = time.perf_counter()
            s = [dice(headless.labels_from_scribbles(im, sc, um_per_px, opt.min_object_um2(diameter_um),
                                                     encoder_features=opt.encoder_features, shape=opt.shape,
                                                     diameter_um=diameter_um)[0] > 0, gt > 0)
                 for im, gt, sc in scribbles]
            table[name, user] = float(np.mean(s))
            print(f"  {user:8s} {name:40s} mean Dice {np.mean(s):.3f} (min {np.min(s):.2f}, n={len(s)}) "
                  f"{(time.perf_counter() - t) / len(s):.2f} s/image", flush=True)
    return table


def clicks_dice(pairs, um_per_px):
    """Mean Dice of ``napari-ftu annotate --clicks`` with one click per object at its innermost pixel."""
    from scipy import ndimage as ndi

    from napari_ftu.annotate import headless, simulate

    return float(np.mean([dice(headless.labels_from_clicks(im, [c[:2] for c in simulate.clicks(ndi.label(gt)[0])],
                                                           um_per_px) > 0, gt > 0) for im, gt in pairs]))


CELL_SEEDS = range(5000, 5010)  # unseen in development (0-2, 7, 100-103 were used to tune)


def cells_bench(n_per_class=3, brush=5, seeds=CELL_SEEDS):
    """Synthetic HPA-like images: classifier trained per image on simulated strokes per class,
    cells from the nuclei-seeded watershed. Returns per-image rows."""
    from napari_ftu.annotate import cells, simulate
    from napari_ftu.evaluation.metrics import average_precision, dice, match_objects
    from napari_ftu.io.synthetic_cells import CLASSES, make_cells

    rows = []
    for seed in seeds:
        c = make_cells(512, seed)
        values = {i: 2 + CLASSES.index(n) for i, n in c.classes.items()}
        sc = simulate.class_strokes(c.cells, values, n_per_class, n_per_class, seed=seed, brush=brush)
        t = time.perf_counter()
        labels, table, _ = cells.cells_from_scribbles(c.image, sc, classes=list(CLASSES))
        seconds = time.perf_counter() - t
        m = match_objects(labels, c.cells, 0.5, {r["id"]: r["confidence"] for r in table})
        cls = {r["id"]: r["cls"] for r in table}
        right = [cls[p] == c.classes[t] for p, t, _ in m.pairs]
        m75 = match_objects(labels, c.cells, 0.75, {r["id"]: r["confidence"] for r in table})
        rows.append({"seed": seed, "cells": int(c.cells.max()), "found": len(table), "dice": dice(labels, c.cells),
                     "ap50": average_precision(m), "ap75": average_precision(m75), "matching": m, "right": right,
                     "ious": [iou for _, _, iou in m.pairs], "seconds": seconds})
        print(f"  seed {seed}: {rows[-1]['cells']} cells, {len(table)} found, Dice {rows[-1]['dice']:.3f}, "
              f"AP@0.5 {rows[-1]['ap50']:.3f}, AP@0.75 {rows[-1]['ap75']:.3f}, "
              f"class accuracy {np.mean(right):.2f} ({seconds:.1f} s)", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="scribbles,cross,vessels,synthetic,clicks,speed,curve,cells,settings")
    ap.add_argument("--seeds", default="0,1", help="settings: stroke placements per user")
    ap.add_argument("--users", default="careful,quick", help=f"settings: of {', '.join(USERS)}")
    ap.add_argument("--images", type=int, default=20, help="settings: the first N Sarder patches")
    ap.add_argument("--um-per-px", type=float, default=None, help="settings: as given to annotate (1: none)")
    ap.add_argument("--data", choices=["sarder", "vessels"], default="sarder", help="settings: the images")
    ap.add_argument("--settings", default="", help="settings: only these option sets (names, separated by ;)")
    ap.add_argument("--brush", type=int, default=5)
    ap.add_argument("--skip-brush", type=int, nargs="*", default=[])
    ap.add_argument("--plot", default="docs/annotate_strokes.png")
    ap.add_argument("--no-deep", action="store_true", help="scribble classifiers: filters only")
    args = ap.parse_args()
    only = set(args.only.split(","))

    deep = 0 if args.no_deep else DEEP
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    if "scribbles" in only:
        for brush in sorted({1, args.brush} - set(args.skip_brush)):
            s = scribble_dice(sarder(), brush=brush, deep=deep, **SARDER)
            print(f"scribbles Sarder (3+3 strokes, brush {brush} px, trained per image): mean Dice {np.mean(s):.3f} "
                  f"(min {np.min(s):.2f}, n={len(s)}) [{time.time() - t0:.0f} s]", flush=True)
    if "cross" in only:
        s = cross_dice(sarder(), brush=args.brush, deep=deep, **SARDER)
        print(f"scribbles Sarder (trained on 5 images, applied to 15): mean Dice {np.mean(s):.3f}", flush=True)
    if "vessels" in only:
        v = vessels()
        s = scribble_dice(v, brush=args.brush, deep=deep, **VESSELS)
        print(f"scribbles vasculature (3+3 strokes, per tile): mean Dice {np.mean(s):.3f} (n={len(s)})", flush=True)
        s = cross_dice(v, n_train=3, brush=args.brush, deep=deep, **VESSELS)
        print(f"scribbles vasculature (trained on 3 tiles, applied to 5): mean Dice {np.mean(s):.3f}", flush=True)
    if "synthetic" in only:
        from napari_ftu.io.synthetic import make_slide

        im, gt = make_slide(1024, 1024, seed=4242)[:2]
        s = scribble_dice([(im, gt)], brush=args.brush, deep=deep)
        print(f"scribbles synthetic sample slide (3+3 strokes): Dice {s[0]:.3f}", flush=True)
    if "clicks" in only:
        from napari_ftu.annotate import clicks, simulate

        for name, pairs, um, diameter in (("Sarder", sarder(), UM_SARDER, DIAMETER_SARDER),
                                          ("vasculature", vessels(), UM_VESSELS, DIAMETER_VESSELS)):
            ious, cut, ceilings = [], [], []
            for im, gt in pairs:
                lab = gt if gt.dtype != bool else __import__("scipy.ndimage").ndimage.label(gt)[0]
                rim = np.unique(np.concatenate([lab[[0, -1]].ravel(), lab[:, [0, -1]].ravel()]))
                for y, x, i in simulate.clicks(lab):
                    try:
                        m = clicks.object_at(im, (y, x), um_per_px=um, diameter_um=diameter)
                    except clicks.InputError:
                        m = np.zeros(lab.shape, bool)
                    ious.append(iou(m, lab == i))
                    cut.append(i in rim)
                    ceilings.append(shape_ceilings(lab == i, (y, x)))
            ious, whole = np.asarray(ious), ~np.asarray(cut)
            print(f"clicks {name}: mean IoU {ious.mean():.3f}, IoU >= 0.5 for {np.mean(ious >= 0.5):.0%} "
                  f"of {len(ious)} objects; the {whole.sum()} not cut by the image edge: mean IoU "
                  f"{ious[whole].mean():.3f}, {np.mean(ious[whole] >= 0.5):.0%} >= 0.5", flush=True)
            disc, ellipse = np.asarray(ceilings).T
            print(f"clicks {name}, shapes told by the truth, centred on the click: a disc of the object's area "
                  f"{disc.mean():.3f} ({np.mean(disc >= 0.5):.0%} >= 0.5), an ellipse of its area, elongation "
                  f"and orientation {ellipse.mean():.3f} ({np.mean(ellipse >= 0.5):.0%} >= 0.5)", flush=True)
    if "speed" in only:
        from napari_ftu.annotate import pixels, simulate
        from napari_ftu.io.synthetic import make_slide

        im, gt = make_slide(2048, 2048, seed=4242)[:2]
        sc = simulate.strokes(gt, 3, 3, seed=0, brush=5)
        t = time.perf_counter()
        clf = pixels.train(im, sc, deep=deep)
        t_train = time.perf_counter() - t
        t = time.perf_counter()
        clf.probability(im)
        t_pred = time.perf_counter() - t
        print(f"speed 2048² view (1 torch thread): retrain {t_train:.2f} s + predict {t_pred:.2f} s", flush=True)
    if "curve" in only:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        counts, curves = (1, 2, 3, 5), {}
        for name, pairs in (("Sarder glomeruli (20)", sarder()), ("vasculature vessels (8)", vessels())):
            kw = SARDER if name.startswith("Sarder") else VESSELS
            curves[name] = [float(np.mean(scribble_dice(pairs, n, brush=args.brush, deep=deep, **kw))) for n in counts]
            print(f"strokes per class {counts} -> mean Dice {[round(v, 3) for v in curves[name]]} ({name})", flush=True)
        fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
        for name, ys in curves.items():
            ax.plot(counts, ys, marker="o", label=name)
        ax.set_xlabel("strokes per class (20 px each)")
        ax.set_ylabel("mean Dice, trained per image")
        ax.set_ylim(0, 1)
        ax.set_xticks(counts)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"wrote {args.plot}")
    if "cells" in only:
        from napari_ftu.evaluation.metrics import average_precision

        rows = cells_bench(brush=args.brush)
        right = [r for row in rows for r in row["right"]]
        print(f"cells synthetic HPA-like 512² (n={len(rows)}, 3 strokes per class x 3 classes + 3 background, "
              f"trained per image): mean Dice {np.mean([r['dice'] for r in rows]):.3f}, "
              f"mean AP@0.5 {np.mean([r['ap50'] for r in rows]):.3f} (min {np.min([r['ap50'] for r in rows]):.3f}; "
              f"all images ranked together {average_precision([r['matching'] for r in rows]):.3f}), "
              f"mean AP@0.75 {np.mean([r['ap75'] for r in rows]):.3f}, "
              f"mean IoU of matched cells {np.mean([v for r in rows for v in r['ious']]):.3f}, "
              f"class accuracy of matched cells {np.mean(right):.3f} of {len(right)} "
              f"(per image min {np.min([np.mean(r['right']) for r in rows]):.2f}), "
              f"{np.mean([r['seconds'] for r in rows]):.1f} s per image", flush=True)
    if "settings" in only:
        from napari_ftu.annotate.headless import SCRIBBLE_DEFAULTS

        kw = SARDER if args.data == "sarder" else VESSELS
        um = args.um_per_px or kw["um_per_px"]
        pairs, users = (sarder() if args.data == "sarder" else vessels())[: args.images], args.users.split(",")
        seeds = [int(v) for v in args.seeds.split(",")]
        table = settings_table(pairs, users, seeds, um, kw["diameter"], args.settings)
        print(f"\nscribbles {args.data}, {len(pairs)} images x seeds {seeds}, --um-per-px {um:g} "
              f"--diameter-um {kw['diameter']:g}, mean Dice (min as a share of the FTU's disc; "
              f"defaults now: {SCRIBBLE_DEFAULTS}):")
        for user in users:
            print(f"  {user}: {USERS[user][0]}")
        print("| options | " + " | ".join(users) + " | mean | worst |")
        print("|---" * (len(users) + 3) + "|")
        for name in sorted({n for n, _ in table}, key=lambda n: -np.mean([table[n, u] for u in users])):
            row = [table[name, u] for u in users]
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + f" | {np.mean(row):.3f} | {min(row):.3f} |")
        for um, how in ((UM_SARDER, f"--um-per-px {UM_SARDER:g}"), (1.0, "no pixel size (1 µm/px)"))[
                : 2 if args.data == "sarder" else 0]:
            pairs = sarder()
            print(f"clicks Sarder (one per glomerulus, innermost pixel), {how}: mean Dice {clicks_dice(pairs, um):.3f} "
                  f"(n={len(pairs)})", flush=True)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
