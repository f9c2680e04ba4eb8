"""Debug plots drawn on a matplotlib ``Figure`` (no pyplot, no Qt), so the dock embeds them and
anything headless saves them as PNG."""

from __future__ import annotations

import numpy as np

from napari_ftu.atomic import atomic_path


def draw_threshold_curve(figure, thresholds, dice, best: tuple[float, float] | None = None, current=None):
    """Dice against the probability threshold, the best threshold marked, the current one dashed."""
    figure.clear()
    ax = figure.add_subplot(111)
    ax.plot(thresholds, dice, lw=1.5, color="tab:blue", label="Dice")
    if best is not None:
        ax.axvline(best[0], color="tab:red", lw=1)
        ax.plot([best[0]], [best[1]], "o", color="tab:red", label=f"best {best[0]:.2f}: {best[1]:.3f}")
    if current is not None:
        ax.axvline(current, color="0.4", lw=1, ls="--", label=f"slider {current:.2f}")
    ax.set_xlim(0, 1)
    low = float(np.nanmin(dice)) if len(dice) else 0.0
    ax.set_ylim(max(0.0, np.floor((low - 0.02) * 20) / 20), 1.005)  # the variation, not empty space
    ax.set_xlabel("probability threshold")
    ax.set_ylabel("Dice")
    ax.legend(loc="lower center", fontsize="small")
    return figure


def draw_histogram(figure, values, label: str = "Dice per image"):
    """Histogram of per-image scores in [0, 1], the mean marked."""
    figure.clear()
    ax = figure.add_subplot(111)
    values = np.asarray([v for v in values if v is not None], float)
    ax.hist(values, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    if values.size:
        ax.axvline(values.mean(), color="tab:red", lw=1, label=f"mean {values.mean():.3f} (n={values.size})")
        ax.legend(loc="upper left", fontsize="small")
    ax.set_xlim(0, 1)
    ax.set_xlabel(label)
    ax.set_ylabel("images")
    return figure


def save_png(figure, path, dpi: int = 120):
    """Save a figure as PNG atomically."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return path
