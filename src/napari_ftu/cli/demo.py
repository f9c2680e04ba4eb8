"""``napari-ftu demo``: segment the synthetic sample slide with the synthetic demo model, in a window or headless."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub, common) -> None:
    d = sub.add_parser("demo", parents=[common],
                       help="segment the synthetic sample slide with the synthetic demo model")
    d.add_argument("--headless", action="store_true", help="no window; print the results")
    d.add_argument("--json", action="store_true", help="print one JSON object (with --headless)")
    d.add_argument("--size", type=int, default=None, help="slide side in pixels (default 2048)")
    d.add_argument("--seed", type=int, default=None, help="slide seed (default: one unseen in training)")
    d.add_argument("--out", type=Path, default=Path("napari-ftu-demo"), help="folder for the outputs")
    d.add_argument("--device", default="auto", help="auto, cpu or cuda")
    d.add_argument("--screenshot", type=Path, default=None, help="save the window as PNG when done, then close")
    d.set_defaults(func=run)


def run(args) -> int:
    from napari_ftu.plugin.demo import run_headless

    if not args.headless:
        from napari_ftu._qt.demo import run_gui

        return run_gui(size=args.size, seed=args.seed, device=args.device, screenshot=args.screenshot)
    result = run_headless(args.out, size=args.size, seed=args.seed, device=args.device)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"Dice {result['dice']:.3f} vs ground truth, {result['n_objects']} FTUs "
            f"({result['n_true_objects']} true), {result['seconds']:.1f} s on {result['device']}"
        )
        for path in result["outputs"]:
            print(f"wrote {path}")
    return 0
