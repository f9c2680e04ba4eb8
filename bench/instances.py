"""The built-in model's ccf test figures against the instance truth: PQ (SQ × RQ), AJI, F1, AP,
through the commands a user runs (`napari-ftu segment` on the 10 test tiles at 1 µm/px, then
`napari-ftu evaluate` against `instances/` and, for comparison, against the binary `masks/`).

    python bench/instances.py [--model DIR|builtin] [--out /tmp/instances]
"""

import argparse
import json
from pathlib import Path

from glomeruli import CCF, _link_folder, ccf_test_ids, cli, segment_set


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="builtin")
    p.add_argument("--out", type=Path, default=Path("/tmp/instances"))
    args = p.parse_args()
    ids = ccf_test_ids()
    images = _link_folder(args.out / "ccf_test", [CCF / "images" / f"{i}.jpg" for i in ids])
    pred = args.out / "ccf_pred"
    segment_set(args.model, images, pred, 1.0, ())
    for name in ("instances", "masks"):
        truth = _link_folder(args.out / f"truth_{name}", [CCF / name / f"{i}.png" for i in ids])
        report = json.loads(cli("evaluate", pred, truth, "--json").strip().splitlines()[-1])
        (s,) = [r for r in report["summary"] if r["class"] == "all"]
        print(f"ccf test vs {name}: {s['images']} tiles, pixel Dice {s['dice']:.4f}, TP {s['tp']} FP {s['fp']} "
              f"FN {s['fn']}, F1@0.5 {s['f1']:.4f}, AP@0.6 {s['ap']:.4f}, PQ {s['pq']:.4f} (SQ {s['sq']:.4f} × "
              f"RQ {s['rq']:.4f}), AJI {s['aji']:.4f}")
        for r in report["images"]:
            print(f"  {r['image']}: {r['n_pred']} pred / {r['n_truth']} true, PQ {r['pq']:.3f}, AJI {r['aji']:.3f}")


if __name__ == "__main__":
    main()
