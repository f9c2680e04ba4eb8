"""HuBMAP run-length encoding: column-major pixel order, 1-indexed ``"start length"`` pairs.

The competitions flatten masks in Fortran (column-major) order; a row-major decode of a real
row gives IoU 0.085 against the truth, so the order is part of the format, not a detail.
Both directions are vectorised numpy (no per-run Python loop).
"""

from __future__ import annotations

import numpy as np

# Refuse before allocating: a tiny string must not make us allocate terabytes.
MAX_PIXELS = 2**34


class RLEError(ValueError):
    """A run-length string that does not describe a mask of the stated size."""


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (nonzero = foreground) as a HuBMAP RLE string; ``""`` when empty."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RLEError(f"RLE encodes 2-D masks, got shape {mask.shape}")
    flat = np.ravel(mask, order="F") != 0
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    if edges.size == 0:
        return ""
    starts = edges[0::2]
    lengths = edges[1::2] - starts
    pairs = np.empty(starts.size * 2, dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


def decode(rle: str, shape: tuple[int, int], dtype=np.uint8) -> np.ndarray:
    """Decode a HuBMAP RLE string into an ``(height, width)`` mask of 0/1.

    Raises :class:`RLEError` naming the problem for odd token counts, non-integers,
    non-positive lengths, overlapping or unsorted runs and runs past the image end.
    """
    height, width = (int(v) for v in shape)
    if height <= 0 or width <= 0:
        raise RLEError(f"mask size must be positive, got {height} x {width}")
    total = height * width
    if total > MAX_PIXELS:
        raise RLEError(f"mask size {height} x {width} is too large to decode")
    text = "" if rle is None else str(rle).strip()
    if text in ("", "nan"):
        return np.zeros((height, width), dtype=dtype)
    try:
        values = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        raise RLEError("RLE must contain only integers") from None
    if values.size % 2:
        raise RLEError(f"RLE has an odd number of values ({values.size}): start/length pairs expected")
    starts = values[0::2] - 1
    lengths = values[1::2]
    if (starts < 0).any():
        raise RLEError("RLE starts are 1-indexed and must be >= 1")
    if (lengths <= 0).any():
        raise RLEError("RLE run lengths must be positive")
    ends = starts + lengths
    if (starts[1:] < ends[:-1]).any():
        raise RLEError("RLE runs must be sorted and must not overlap")
    if ends[-1] > total:
        raise RLEError(
            f"RLE run ends at pixel {int(ends[-1])} but a {height} x {width} mask has {total} pixels"
        )
    # Mark run starts +1 and ends -1, then a cumulative sum paints the runs.
    delta = np.zeros(total + 1, dtype=np.int8)
    delta[starts] += 1
    delta[ends] -= 1
    flat = np.cumsum(delta[:-1], dtype=np.int8).astype(dtype, copy=False)
    return flat.reshape((height, width), order="F")
