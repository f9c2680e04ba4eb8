"""What a pathologist's minute buys: a simulated reviewer corrects a model's masks, and the
held-out score is printed against reviewer minutes for three ways of working.

    python bench/correction_loop.py DATASET --um-per-px X --held-out REGEX [--init MODEL] [--seed N]
                                    [--minutes 10] [--round-seconds 45] [--att-minutes 10] [--json]

DATASET is any images/ + masks/ folder (binary masks or instance label images); images whose id
matches REGEX are held out and scored, the others are reviewed. The reviewer works through the
training images one at a time: accepting a predicted object that matches a true one (IoU >= 0.5)
costs 2 s, rejecting a false one 2 s, fixing a partly right one (replacing it with the true
object) 10 s, drawing a missed FTU 15 s (the HuBMAP paper's per-FTU figure), marking the view done
("nothing else here") 1 s. Reviewer minutes count these actions only.

Policies:
  loop                 learn as you review: training rounds run in the background from the sparse
                       labels of the reviews so far; after each round the new model re-predicts the
                       images not yet reviewed; the queue puts the most doubtful images and objects
                       first and offers possible misses (sub-threshold regions) that one key accepts.
  review-only          the same reviewer, images by position, the model never retrained.
  annotate-then-train  draw every FTU of the training images by hand, then train once from the
                       same model on the whole masks (as the Train dock does); its point sits at
                       the drawing time, its training minutes are reported beside it.

The loop runs in real time: the reviewer's clock and the wall clock advance together (an action
happens when its cost has elapsed), so a round helps only once this CPU has finished it and the
reviewer never waits for one; once every training image is reviewed, rounds go on until the budget
ends. Held-out pixel Dice (mean per image) and object F1 at IoU 0.5 come from the same engine as
``napari-ftu segment``, computed after the clock stops for each model the loop had in use.
With --json, one JSON object: {"policies": {NAME: [{"minutes", "dice", "f1"}, ...]}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

COSTS = {"accept": 2.0, "reject": 2.0, "fix": 10.0, "draw": 15.0, "done": 1.0}
MAX_CANDIDATES = 4  # possible misses offered per image
REPREDICT = 12  # unreviewed images re-predicted after a round (the head of the queue)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Image:
    def __init__(self, image_id, rgb, truth):
        self.id, self.rgb, self.truth = image_id, rgb, truth


def load_set(folder: Path, pattern: str):
    from napari_ftu.formats.annotations import instances_of
    from napari_ftu.formats.datasets import open_dataset
    from napari_ftu.io.images import to_rgb

    ds = open_dataset(folder)
    train, held = [], []
    for k, image_id in enumerate(ds.ids):
        item = ds.load(k)
        if item.annotations is None:
            continue
        img = Image(image_id, to_rgb(np.asarray(item.slide.read())), instances_of(item.annotations.labels))
        (held if re.search(pattern, image_id) else train).append(img)
    if not train or not held:
        raise SystemExit(f"{folder}: {len(train)} training and {len(held)} held-out images (check --held-out)")
    return train, held


class Prediction:
    def __init__(self, seg):
        self.labels = np.asarray(seg.labels).astype(np.int32)
        self.prob = np.asarray(seg.class_probability(), np.float32) / seg.prob_scale
        self.conf = {int(o["id"]): o.get("confidence") for o in seg.objects}
        self.threshold, self.min_area = float(seg.threshold), int(seg.min_area_px)
        if self.prob.shape != self.labels.shape:
            from skimage.transform import resize

            self.prob = resize(self.prob, self.labels.shape, order=1, preserve_range=True).astype(np.float32)


def predict(model, img: Image, um: float) -> Prediction:
    from napari_ftu.engine.inference import segment

    return Prediction(segment(img.rgb, model, um_per_px=um))


def score(model, held, um: float) -> tuple[float, float]:
    """Mean per-image pixel Dice and object F1 at IoU 0.5 over the held-out images."""
    from napari_ftu.engine.inference import segment
    from napari_ftu.evaluation.metrics import dice, match_objects

    dices, tp, fp, fn = [], 0, 0, 0
    for img in held:
        pred = np.asarray(segment(img.rgb, model, um_per_px=um).labels)
        dices.append(dice(pred > 0, img.truth > 0))
        m = match_objects(pred, img.truth, 0.5)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    return float(np.mean(dices)), 2 * tp / max(1, 2 * tp + fp + fn)


class Reviewer:
    """The simulated pathologist: each action happens when its cost has elapsed on the wall clock
    (``real_time``), or at once with the cost only counted."""

    def __init__(self, real_time: bool, budget_s: float):
        self.t, self.real_time, self.budget = 0.0, real_time, budget_s
        self.t0 = time.monotonic()
        self.counts = {k: 0 for k in COSTS}

    def act(self, kind: str) -> bool:
        if self.t + COSTS[kind] > self.budget:
            return False
        self.t += COSTS[kind]
        self.counts[kind] += 1
        if self.real_time:
            wait = self.t0 + self.t - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        return True


def best_truth(truth, box, obj_mask) -> tuple[int, float]:
    ids, counts = np.unique(truth[box][obj_mask], return_counts=True)
    best, best_iou = 0, 0.0
    for i, inter in zip(ids, counts):
        if i == 0:
            continue
        union = obj_mask.sum() + (truth == i).sum() - inter
        if inter / union > best_iou:
            best, best_iou = int(i), float(inter / union)
    return best, best_iou


def review_image(img: Image, pred: Prediction, reviewer: Reviewer, um: float, active: bool, previous=None):
    """Work through one image like a pathologist; returns the session (None if the budget ran out
    before the view was done)."""
    from napari_ftu.boxes import from_corners
    from napari_ftu.review import active as act
    from napari_ftu.review.editing import add_mask
    from napari_ftu.review.session import ReviewSession

    session = ReviewSession(pred.labels.copy(), um_per_px=um)
    for i, row in session.review.rows.items():
        conf = pred.conf.get(i)
        row.confidence = float("nan") if conf is None else float(conf)
    claimed = set()
    rows = list(session.review.rows.values())
    agreements = {r.id: act.agreement(session.labels, previous, r.box, r.id) for r in rows} if active else {}
    for row in act.order(rows, "most doubtful first" if active else "by position", pred.threshold, agreements):
        mask = session.labels[row.box] == row.id
        t, iou = best_truth(img.truth, row.box, mask)
        if t and iou >= 0.5 and t not in claimed:
            if not reviewer.act("accept"):
                return None
            session.accept([row.id])
            claimed.add(t)
        elif t and t not in claimed:
            if not reviewer.act("fix"):
                return None
            session.reject([row.id])  # the wrong outline is background where the true object is not
            draw_truth(session, img.truth, t)
            claimed.add(t)
        else:
            if not reviewer.act("reject"):
                return None
            session.reject([row.id])
    if active:
        blocked = session.rejected > 0 if session.rejected is not None else None
        for cand in act.possible_misses(pred.prob, session.labels, pred.threshold, max(pred.min_area, 16),
                                        blocked=blocked)[:MAX_CANDIDATES]:
            t, iou = best_truth(img.truth, cand.box, cand.mask)
            if t and t not in claimed:
                kind = "accept" if iou >= 0.5 else "fix"
                if not reviewer.act(kind):
                    return None
                if kind == "accept":
                    session.apply(add_mask(session.labels, cand.box, cand.mask, reserved=session.reserved()),
                                  "accepted")
                else:
                    draw_truth(session, img.truth, t)
                claimed.add(t)
            elif not reviewer.act("reject"):
                return None
            # a rejected candidate is simply left out: the done mark below makes it background
    for t in np.unique(img.truth):
        if t == 0 or int(t) in claimed:
            continue
        if not reviewer.act("draw"):
            return None
        try:
            draw_truth(session, img.truth, t)
        except Exception:  # the true object lies wholly under accepted ones
            pass
        claimed.add(int(t))
    if not reviewer.act("done"):
        return None
    session.mark_done(from_corners(0, 0, *session.labels.shape))
    return session


def draw_truth(session, truth, t):
    """The reviewer draws (or redraws) true object ``t``: an "edited" object."""
    from napari_ftu.review.editing import add_mask

    box = _box_of(truth == t)
    session.apply(add_mask(session.labels, box, truth[box] == t, reserved=session.reserved()), "edited")


def _box_of(mask):
    from napari_ftu.boxes import from_corners

    rr, cc = np.nonzero(mask)
    return from_corners(rr.min(), cc.min(), rr.max() + 1, cc.max() + 1)


def image_value(pred: Prediction) -> float:
    """How much a look at this image is worth: its objects' doubt plus its possible misses."""
    from napari_ftu.review import active as act

    if getattr(pred, "value", None) is not None:
        return pred.value

    value = sum(1 - act.doubt(c if c is not None else float("nan"), pred.threshold) for c in pred.conf.values())
    misses = act.possible_misses(pred.prob, pred.labels, pred.threshold, max(pred.min_area, 16))
    pred.value = value + sum(min(1.0, c.confidence / pred.threshold) for c in misses[:MAX_CANDIDATES])
    return pred.value


def run_review(policy, train, held, args, init_path, workdir, first_preds):
    """The loop or review-only policy: returns the list of models in use over time and stats.
    ``first_preds`` are the start model's predictions (the Segment run before the review)."""
    from napari_ftu.models.loading import load_model
    from napari_ftu.training.rounds import round_steps
    from napari_ftu.training.sparse import ReviewData

    loop = policy == "loop"
    preds = dict(first_preds)
    previous = {}
    budget = args.minutes * 60
    reviewer = Reviewer(real_time=loop, budget_s=budget)
    lock, stop = threading.Lock(), threading.Event()
    reviews, models = [], [(0.0, 0.0, str(init_path), 0)]  # (reviewer s, wall s, model, images learned from)
    done_ids = []
    rounds_log = []

    def trainer():
        current, k = init_path, 0
        while not stop.is_set():
            with lock:
                snapshot = list(reviews)
            if not snapshot:
                stop.wait(0.5)
                continue
            k += 1
            out = workdir / f"{policy}-round-{k}"
            t_start = time.monotonic() - reviewer.t0
            gen = round_steps(snapshot, current, out, seconds=args.round_seconds, round_no=k, seed=args.seed,
                              threads=args.threads, device="cpu")
            try:
                for _ in gen:
                    if stop.is_set():
                        gen.close()  # a round cut by the budget writes nothing
                        return
            except Exception as exc:
                log(f"  round {k} failed: {type(exc).__name__}: {exc}")
                return
            if not out.exists() or stop.is_set():
                return
            current = out
            wall = time.monotonic() - reviewer.t0
            if wall > budget:
                return
            new = load_model(out, device="cpu")
            with lock:
                models.append((min(reviewer.t, wall), wall, str(out), len(snapshot)))
                todo = [i for i in queue_order() if i not in done_ids][:REPREDICT]
            rounds_log.append({"round": k, "started_s": round(t_start, 1), "finished_s": round(wall, 1),
                               "images": len(snapshot), "reviewed_objects": sum(len(r.reviewed) for r in snapshot)})
            log(f"  round {k}: {len(snapshot)} images learned, ready at {wall / 60:.1f} min")
            for image_id in todo:
                if stop.is_set():
                    return
                img = next(i for i in train if i.id == image_id)
                p = predict(new, img, args.um_per_px)
                with lock:
                    previous[image_id] = preds[image_id].labels
                    preds[image_id] = p

    def queue_order():
        ids = [img.id for img in train]
        if not loop:
            return ids
        return sorted(ids, key=lambda i: -image_value(preds[i]))

    thread = threading.Thread(target=trainer, daemon=True) if loop else None
    reviewer.t0 = time.monotonic()
    if thread:
        thread.start()
    finished_at = None
    while True:
        with lock:
            todo = [i for i in queue_order() if i not in done_ids]
        if not todo:
            finished_at = reviewer.t
            break
        img = next(i for i in train if i.id == todo[0])
        with lock:
            pred, prev = preds[img.id], previous.get(img.id)
        session = review_image(img, pred, reviewer, args.um_per_px, active=loop, previous=prev)
        if session is None:
            break
        done_ids.append(img.id)
        with lock:
            reviews.append(ReviewData.from_session(session, [img.rgb], args.um_per_px, img.id))
        log(f"  {policy}: {len(done_ids)}/{len(train)} images reviewed at {reviewer.t / 60:.1f} reviewer-min")
    if loop:
        while time.monotonic() - reviewer.t0 < budget and thread.is_alive():
            time.sleep(0.5)
        stop.set()
        thread.join()
    return models, {"reviewer_minutes": reviewer.t / 60, "images_reviewed": len(done_ids),
                    "all_reviewed_at_min": None if finished_at is None else finished_at / 60,
                    "actions": reviewer.counts, "rounds": rounds_log}


def annotate_then_train(train, args, init_path, workdir):
    """Draw every FTU by hand (15 s each), then one training run from the init model on the whole masks."""
    from napari_ftu.io.resample import resample_pair
    from napari_ftu.steps import drain
    from napari_ftu.training.data import FINE_TUNE_LR, start_from
    from napari_ftu.training.train import train_steps

    n = sum(len(np.unique(img.truth)) - 1 for img in train)
    draw_s = n * COSTS["draw"]
    card, state = start_from(init_path)
    samples = []
    for img in train:
        mask = (img.truth > 0).astype(np.uint8)
        samples.append(resample_pair(img.rgb, mask, args.um_per_px / card.um_per_px))
    out = workdir / "annotate-then-train"
    t = time.monotonic()
    drain(train_steps(samples, [], card, minutes=args.att_minutes, lr=FINE_TUNE_LR, seed=args.seed,
                      init_state=state, out=out, workers=1, threads=args.threads, device="cpu"))
    return out, draw_s, (time.monotonic() - t) / 60, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("--um-per-px", type=float, required=True, help="pixel size of the dataset's images")
    p.add_argument("--held-out", required=True, help="regular expression: image ids scored, never reviewed")
    p.add_argument("--init", default=None, help="model folder to start from (default: the built-in model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=10.0, help="reviewer-minutes budget (also the loop's wall budget)")
    p.add_argument("--round-seconds", type=float, default=45.0, help="length of one training round")
    p.add_argument("--att-minutes", type=float, default=10.0, help="annotate-then-train's training time")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--policies", default="loop,review-only,annotate-then-train")
    p.add_argument("--out", type=Path, default=None, help="where round models go (default: a temporary folder)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from napari_ftu.models.loading import default_model_path, load_model, model_path

    init_path = model_path(args.init) if args.init else default_model_path()
    workdir = args.out or Path(tempfile.mkdtemp(prefix="correction-loop-"))
    workdir.mkdir(parents=True, exist_ok=True)
    train, held = load_set(args.dataset, args.held_out)
    n_truth = sum(len(np.unique(i.truth)) - 1 for i in train)
    log(f"{len(train)} training images ({n_truth} FTUs), {len(held)} held out; models in {workdir}")
    load0 = os.getloadavg()[0]
    started = time.monotonic()
    scores = {}

    def scored(path):
        if path not in scores:
            scores[path] = score(load_model(path, device="cpu"), held, args.um_per_px)
        return scores[path]

    result = {"dataset": str(args.dataset), "um_per_px": args.um_per_px, "held_out": args.held_out,
              "seed": args.seed, "minutes": args.minutes, "round_seconds": args.round_seconds,
              "n_train": len(train), "n_held_out": len(held), "n_train_ftus": n_truth, "policies": {}, "details": {}}
    d0, f0 = scored(str(init_path))
    log(f"start: held-out Dice {d0:.3f}, F1 {f0:.3f}")
    first_preds = None
    for policy in args.policies.split(","):
        t = time.monotonic()
        if policy in ("loop", "review-only"):
            if first_preds is None:
                start_model = load_model(init_path, device="cpu")
                first_preds = {img.id: predict(start_model, img, args.um_per_px) for img in train}
            models, stats = run_review(policy, train, held, args, init_path, workdir, first_preds)
            points = []
            for reviewer_s, wall_s, path, n_images in models:
                d, f = scored(path)
                points.append({"minutes": round(reviewer_s / 60, 3), "dice": round(d, 4), "f1": round(f, 4),
                               "wall_minutes": round(wall_s / 60, 3), "images_learned": n_images})
            end = stats["reviewer_minutes"]
            if points[-1]["minutes"] < end:
                points.append({**points[-1], "minutes": round(end, 3)})  # the model in use when the review ended
            result["details"][policy] = stats
        elif policy == "annotate-then-train":
            out, draw_s, train_min, n = annotate_then_train(train, args, init_path, workdir)
            d, f = scored(str(out))
            points = [{"minutes": 0.0, "dice": round(d0, 4), "f1": round(f0, 4)},
                      {"minutes": round(draw_s / 60, 3), "dice": round(d, 4), "f1": round(f, 4)}]
            result["details"][policy] = {"drawn_ftus": n, "training_minutes": round(train_min, 2)}
        else:
            raise SystemExit(f"unknown policy {policy!r}")
        result["policies"][policy] = points
        log(f"{policy}: " + ", ".join(f"{q['minutes']:.1f} min Dice {q['dice']:.3f}" for q in points)
            + f" ({(time.monotonic() - t) / 60:.1f} min wall)")
    result["wall_minutes"] = round((time.monotonic() - started) / 60, 2)
    result["load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    result["goals"] = goals(result["policies"])
    if args.json:
        print(json.dumps(result))
    else:
        for name, pts in result["policies"].items():
            print(f"{name:>20}: " + "  ".join(f"{q['minutes']:5.1f} min {q['dice']:.3f}/{q['f1']:.3f}" for q in pts))
        print("goals:", json.dumps(result["goals"]))
    return 0


def goals(policies: dict) -> dict:
    """The issue's comparisons: the loop's Dice at 10 reviewer-minutes, its time to each Dice
    level against annotate-then-train's, and whether it ever scores below review-only."""
    out = {}
    loop = policies.get("loop")
    if loop:
        out["loop_best_dice"] = max(q["dice"] for q in loop)
        out["loop_dice_at_end"] = loop[-1]["dice"]
    att, ro = policies.get("annotate-then-train"), policies.get("review-only")
    if loop and att:
        ratios = {}
        best = max(q["dice"] for q in loop)
        # every Dice level both reach (the points of either curve): the loop's first time at it over
        # annotate-then-train's; levels the start model already has cost nobody anything
        for level in sorted({q["dice"] for q in loop + att if q["dice"] <= best}):
            t_loop = min(p["minutes"] for p in loop if p["dice"] >= level)
            t_att = min((p["minutes"] for p in att if p["dice"] >= level), default=None)
            if t_att:
                ratios[level] = round(t_loop / t_att, 3)
        out["loop_time_over_att"] = ratios
        out["loop_time_over_att_max"] = max(ratios.values()) if ratios else None
    if loop and ro:
        out["loop_minus_review_only_min"] = round(min(q["dice"] for q in loop) - ro[0]["dice"], 4)
    return out


if __name__ == "__main__":
    sys.exit(main())
