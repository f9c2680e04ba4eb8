"""Choosing objects by their measurements (a range of sizes, a box on a scatter plot): the ids a
review queue is narrowed to, and the numeric columns a plot can show."""

from __future__ import annotations

import math

NOT_PLOTTED = ("id", "bbox_y0_px", "bbox_x0_px", "bbox_y1_px", "bbox_x1_px")


def numeric_columns(rows) -> list[str]:
    """Columns of ``rows`` (dicts) holding numbers in every row, in their order, ids and pixel
    boxes left out (nothing to read in a plot of them).

    Parameters
    ----------
    rows : list of dict

    Returns
    -------
    list of str
    """
    if not rows:
        return []
    return [k for k in rows[0] if k not in NOT_PLOTTED and all(
        isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)]


def values(rows, column: str) -> list[float]:
    """The column as floats (NaN where empty)."""
    return [math.nan if r.get(column) is None else float(r[column]) for r in rows]


def ids_in_range(rows, column: str, low: float, high: float) -> frozenset:
    """Ids of the objects whose ``column`` lies in ``[low, high]`` (either order).

    Parameters
    ----------
    rows : list of dict
        Measurement rows (``id`` and the column).
    column : str
    low, high : float

    Returns
    -------
    frozenset of int
    """
    low, high = min(low, high), max(low, high)
    return frozenset(int(r["id"]) for r, v in zip(rows, values(rows, column)) if low <= v <= high)


def ids_in_box(rows, x: str, y: str, x_range, y_range) -> frozenset:
    """Ids of the objects inside a rectangle of a scatter plot of ``x`` against ``y``.

    Parameters
    ----------
    rows : list of dict
    x, y : str
        Columns.
    x_range, y_range : tuple of float
        The rectangle's sides (either order).

    Returns
    -------
    frozenset of int
    """
    return ids_in_range(rows, x, *x_range) & ids_in_range(rows, y, *y_range)


def nearest(rows, x: str, y: str, point, scale=(1.0, 1.0)) -> int | None:
    """The id of the object plotted nearest ``point`` (``(x, y)`` in data units, distances
    divided by ``scale`` so both axes count alike); None without rows.

    Parameters
    ----------
    rows : list of dict
    x, y : str
    point : tuple of float
    scale : tuple of float

    Returns
    -------
    int or None
    """
    best, found = math.inf, None
    for r, vx, vy in zip(rows, values(rows, x), values(rows, y)):
        d = ((vx - point[0]) / scale[0]) ** 2 + ((vy - point[1]) / scale[1]) ** 2
        if d < best:
            best, found = d, int(r["id"])
    return found
