"""Plot the correction-loop bench's curves and print their table for docs/learning.md.

    python docs/scripts/correction_loop_plot.py docs/data/correction_loop_*.json [--out docs/correction_loop.png]

Each JSON file is one run of ``bench/correction_loop.py --json``; runs of one dataset share a panel,
each seed its line style.
"""

import argparse
import json
from pathlib import Path

COLOURS = {"loop": "#1c71d8", "review-only": "#77767b", "annotate-then-train": "#e66100"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "correction_loop.png")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(f.read_text()) for f in sorted(args.runs)]
    datasets = sorted({Path(r["dataset"]).name for r in runs})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets), 4.2), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        for r in (r for r in runs if Path(r["dataset"]).name == name):
            style = ["-", "--", ":", "-."][r["seed"] % 4]
            for policy, points in r["policies"].items():
                xs, ys = [q["minutes"] for q in points], [q["dice"] for q in points]
                if policy == "annotate-then-train":
                    ax.plot(xs, ys, style, color=COLOURS[policy], marker="o", label=f"{policy}, seed {r['seed']}")
                else:
                    ax.step(xs, ys, style, where="post", color=COLOURS[policy], marker=".",
                            label=f"{policy}, seed {r['seed']}")
        ax.set_title(f"{name} (held out: {runs[0]['held_out'] if len(datasets) == 1 else ''})".replace(" ()", ""))
        ax.set_xlabel("reviewer minutes")
        ax.set_ylabel("held-out pixel Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}\n")
    print("| dataset | seed | policy | reviewer minutes → held-out Dice / object F1 |")
    print("| --- | --- | --- | --- |")
    for r in runs:
        for policy, points in r["policies"].items():
            pts = ", ".join(f"{q['minutes']:.1f} → {q['dice']:.3f} / {q['f1']:.3f}" for q in points)
            print(f"| {Path(r['dataset']).name} | {r['seed']} | {policy} | {pts} |")
    print()
    for r in runs:
        print(Path(r["dataset"]).name, r["seed"], json.dumps(r["goals"]), f"wall {r['wall_minutes']} min",
              f"load {r['load_average']}", json.dumps(r["details"].get("annotate-then-train", {})))


if __name__ == "__main__":
    main()
