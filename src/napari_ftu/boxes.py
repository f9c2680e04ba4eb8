"""One box convention: ``(rows, cols)`` slices, as ``scipy.ndimage.find_objects`` returns them.

A :data:`Box` indexes an array directly (``labels[box]``), so editing, undo, the review table,
the label store and the session files all pass the same thing. Written-down boxes (a CSV or
JSON column) are corners ``(y0, x0, y1, x1)``: :func:`corners` writes them, :func:`from_corners`
reads them back. Stops are exclusive throughout.
"""

from __future__ import annotations

Box = tuple[slice, slice]


def box_at(y: int, x: int, h: int, w: int) -> Box:
    """The box of ``h × w`` pixels whose top-left pixel is ``(y, x)``.

    Parameters
    ----------
    y, x : int
        Top-left pixel (row, column).
    h, w : int
        Height and width in pixels.

    Returns
    -------
    Box
    """
    y, x = int(y), int(x)
    return slice(y, y + int(h)), slice(x, x + int(w))


def from_corners(y0: int, x0: int, y1: int, x1: int) -> Box:
    """The box between two corners (stops exclusive), e.g. a table's ``bbox`` read back.

    Parameters
    ----------
    y0, x0 : int
        First row and column.
    y1, x1 : int
        Row and column just past the box.

    Returns
    -------
    Box
    """
    return slice(int(y0), int(y1)), slice(int(x0), int(x1))


def corners(box: Box) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)`` of ``box``: how a box is written into a table or a file.

    Parameters
    ----------
    box : Box

    Returns
    -------
    tuple of int
        First row, first column, row and column just past the box.
    """
    rows, cols = box
    return int(rows.start or 0), int(cols.start or 0), int(rows.stop), int(cols.stop)


def size(box: Box) -> tuple[int, int]:
    """``(h, w)`` of ``box`` in pixels."""
    y0, x0, y1, x1 = corners(box)
    return y1 - y0, x1 - x0


def union(a: Box, b: Box) -> Box:
    """The smallest box holding both ``a`` and ``b``."""
    (ay0, ax0, ay1, ax1), (by0, bx0, by1, bx1) = corners(a), corners(b)
    return slice(min(ay0, by0), max(ay1, by1)), slice(min(ax0, bx0), max(ax1, bx1))


def overlaps(a: Box, b: Box) -> bool:
    """Whether ``a`` and ``b`` share a pixel."""
    (ay0, ax0, ay1, ax1), (by0, bx0, by1, bx1) = corners(a), corners(b)
    return ay0 < by1 and by0 < ay1 and ax0 < bx1 and bx0 < ax1


def grow(box: Box, by: int, shape) -> Box:
    """``box`` grown by ``by`` pixels on every side, clipped to an image of ``shape``."""
    y0, x0, y1, x1 = corners(box)
    return from_corners(max(0, y0 - by), max(0, x0 - by), min(shape[0], y1 + by), min(shape[1], x1 + by))


def shift(box: Box, dy: int, dx: int) -> Box:
    """``box`` moved by ``(dy, dx)``: from a crop's coordinates to the image's, or back."""
    y0, x0, y1, x1 = corners(box)
    return from_corners(y0 + dy, x0 + dx, y1 + dy, x1 + dx)
