"""Plot the correction-loop bench's curves and print their table for docs/learning.md.

    python docs/scripts/correction_loop_plot.py docs/data/correction_loop_*.json [--out docs/correction_loop.png]

Each JSON file is one run of ``bench/correction_loop.py --json``; runs of one dataset share a panel,
each seed its line style.
"""

import argparse
import json
from pathlib import Path

COLOURS = {"loop": "#1c71d8", "review-only": "#77767b", "annotate-then-train": "#e66100"}


def _name(folder: str) -> str:
    """The data set's name (the ccf runs read the instance masks through a link folder)."""
    return {"ccf_inst": "hubmap_ccf_kidney_glomeruli (instances)"}.get(folder, folder)


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
                ax.step(xs, ys, style, where="post", color=COLOURS[policy], marker="o" if len(xs) == 2 else ".",
                        label=f"{policy}, seed {r['seed']}")
            held = r["held_out"]
        ax.set_title(f"{_name(name)}\nheld out: {held}", fontsize=10)
        ax.set_xlabel("reviewer minutes")
        ax.set_ylabel("held-out pixel Dice")
        mine = [r for r in runs if Path(r["dataset"]).name == name]
        low = min(q["dice"] for r in mine for pts in r["policies"].values() for q in pts)
        ax.set_ylim(max(0.0, low - 0.05), 1)
        if max(q["minutes"] for r in mine for pts in r["policies"].values() for q in pts) > 30:
            ax.set_xscale("symlog", linthresh=10)  # the first ten minutes linear, hours of drawing beyond
            ax.set_xlabel("reviewer minutes (linear to 10, logarithmic beyond)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}\n")
    print("| dataset | seed | policy | reviewer minutes → held-out Dice / object F1 |")
    print("| --- | --- | --- | --- |")
    for r in runs:
        for policy, points in r["policies"].items():
            pts = ", ".join(f"{q['minutes']:.1f}" + (f" ({q['wall_minutes']:.1f})" if q.get("wall_minutes", 0) > q[
                "minutes"] + 0.05 else "") + f" → {q['dice']:.3f} / {q['f1']:.3f}" for q in points)
            print(f"| {_name(Path(r['dataset']).name)} | {r['seed']} | {policy} | {pts} |")
    print()
    for r in runs:
        print(Path(r["dataset"]).name, r["seed"], json.dumps(r["goals"]), f"wall {r['wall_minutes']} min",
              f"load {r['load_average']}", json.dumps(r["details"].get("annotate-then-train", {})))


if __name__ == "__main__":
    main()
