"""HuBMAP run-length encoding: column-major pixel order, 1-indexed ``"start length"`` pairs.

The competitions flatten masks in Fortran (column-major) order; a row-major decode of a real
row gives IoU 0.085 against the truth, so the order is part of the format, not a detail.
Both directions are vectorised numpy (no per-run Python loop).
"""

from __future__ import annotations

import re

import numpy as np

from napari_ftu.errors import FormatError
from napari_ftu.io.budget import check_memory

# ASCII only: numpy's parser knows ASCII whitespace, and Unicode spaces or digits must be refused,
# not half-parsed.
_DIGITS = re.compile(r"[0-9\s]*", re.ASCII)

# Refuse before allocating: a tiny string must not make us allocate terabytes.
MAX_PIXELS = 2**34


def check_size(shape, bytes_per_pixel: int = 1, what: str = "mask") -> tuple[int, int]:
    """``(height, width)`` as ints, refused before allocating when not positive, above
    :data:`MAX_PIXELS` or larger than the memory budget (a tiny file must not claim
    terabytes).

    Parameters
    ----------
    shape : tuple
        ``(height, width)`` as a file claims it.
    bytes_per_pixel : int
        Of the array about to be allocated.
    what : str
        What it is, for the error message.

    Returns
    -------
    tuple of int

    Raises
    ------
    FormatError
    """
    try:
        height, width = (int(v) for v in shape)
    except (TypeError, ValueError, OverflowError):
        raise FormatError(f"{what} size {shape!r} is not two integers") from None
    if height <= 0 or width <= 0:
        raise FormatError(f"{what} size must be positive, got {height} x {width}")
    if height * width > MAX_PIXELS:
        raise FormatError(f"{what} size {height} x {width} is too large to decode (over {MAX_PIXELS} pixels)")
    check_memory(height * width * bytes_per_pixel, f"{what} of {height} x {width}", "decoding", FormatError)
    return height, width


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (nonzero = foreground) as a HuBMAP RLE string; ``""`` when empty.

    Parameters
    ----------
    mask : ndarray

    Returns
    -------
    str
        ``"start length ..."``, 1-indexed, column-major.
    """
    return format_ints(encode_pairs(mask))


BAND_BYTES = 2**28  # columns read at once by encode_bands (decoded tiles of a band of columns)


def encode_bands(image) -> str:
    """:func:`encode` of a 2-D array read lazily (a zarr or dask level of a label image), a band
    of whole columns at a time, so a 40 000 x 40 000 label image costs one band, not the image.

    Parameters
    ----------
    image : array-like
        2-D, sliceable; read ``image[:, c0:c1]`` by bands as wide as its chunks allow.

    Returns
    -------
    str
    """
    h, w = (int(v) for v in image.shape)
    chunks = getattr(image, "chunks", None)  # zarr: (rows, cols); dask: ((rows, ...), (cols, ...))
    chunk = int(chunks[1] if chunks and not isinstance(chunks[1], tuple) else chunks[1][0] if chunks else w)
    cols = max(1, BAND_BYTES // max(h * np.dtype(image.dtype).itemsize, 1))
    if chunk < w:  # whole chunks per band; strips (chunks as wide as the image) are read in bands of columns
        cols = max(chunk, cols // chunk * chunk)
    step = min(w, cols)
    parts, last_end = [], None  # runs continuing across a band boundary are joined
    for c0 in range(0, w, step):
        pairs = encode_pairs(np.asarray(image[:, c0 : c0 + step]))
        if pairs.size:
            pairs[0::2] += c0 * h
            if last_end is not None and parts and pairs[0] == last_end:
                parts[-1][-1] += pairs[1]
                pairs = pairs[2:]
            if pairs.size:
                parts.append(pairs)
            last_end = int(parts[-1][-2] + parts[-1][-1]) if parts else None
    return format_ints(np.concatenate(parts)) if parts else ""


def format_ints(values: np.ndarray) -> str:
    """Space-separated decimal text (C-level ``%`` formatting: 2.5x faster than ``str.join``).

    Parameters
    ----------
    values : ndarray
        Integers.

    Returns
    -------
    str
    """
    values = np.asarray(values).tolist()
    return ("%d " * len(values) % tuple(values))[:-1]


def encode_pairs(mask: np.ndarray) -> np.ndarray:
    """Run starts (1-indexed) and lengths, interleaved, of a 2-D mask in column-major order.

    Works on the array as stored (C or Fortran order, any integer or bool dtype): changes are
    found by comparing 8-byte words, and only the few changed pixels are put into column-major
    order. No transposed or boolean copy of the image is made.

    Parameters
    ----------
    mask : ndarray

    Returns
    -------
    ndarray
        int64 ``[start, length, start, length, ...]``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise FormatError(f"RLE encodes 2-D masks, got shape {mask.shape}")
    h, w = mask.shape
    if mask.size == 0:
        return np.empty(0, np.int64)
    if mask.flags.f_contiguous and not mask.flags.c_contiguous:
        flat = mask.T.reshape(-1)  # column-major pixel order, without a copy
        edges = [[0] if flat[0] else [], _changed(flat[1:], flat[:-1]) + 1]  # already in order
    else:
        mask = np.ascontiguousarray(mask)
        flat = mask.reshape(-1)
        i = _changed(flat[w:], flat[:-w])  # pixel i + w differs from the one above it
        inside = (i % w) * h + i // w + 1
        across = np.flatnonzero((mask[-1, :-1] != 0) != (mask[0, 1:] != 0)) + 1  # column wraps
        edges = [[0] if mask[0, 0] else [], inside, across * h]
    edges.append([h * w] if flat[-1] else [])
    edges = np.concatenate(edges).astype(np.int64)
    if len(edges) > 1 and (edges[1:] < edges[:-1]).any():
        edges.sort()
    pairs = np.empty(edges.size, np.int64)
    pairs[0::2] = edges[0::2] + 1
    pairs[1::2] = edges[1::2] - edges[0::2]
    return pairs


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Indices where ``a != 0`` differs from ``b != 0`` (1-D contiguous arrays of one dtype).

    Whole 8-byte words are compared first; only the words that differ are looked into.
    """
    if a.dtype.kind not in "biuf" or 8 % a.itemsize:
        return np.flatnonzero((a != 0) != (b != 0))
    per = 8 // a.itemsize
    n = a.size - a.size % per
    wa, wb = a[:n].view(np.uint64), b[:n].view(np.uint64)
    words = np.flatnonzero(wa != wb)
    diff = (wa[words] ^ wb[words]).view(np.dtype(f"u{a.itemsize}"))
    i = np.flatnonzero(diff)
    idx = np.concatenate([words[i // per] * per + i % per, np.arange(n, a.size)]).astype(np.int64)
    return idx[(a[idx] != 0) != (b[idx] != 0)]  # keep foreground/background changes only


def decode(rle: str, shape: tuple[int, int], dtype=np.uint8) -> np.ndarray:
    """Decode a HuBMAP RLE string into an ``(height, width)`` mask of 0/1.

    Raises :class:`FormatError` naming the problem for odd token counts, non-integers,
    non-positive lengths, overlapping or unsorted runs and runs past the image end.

    Parameters
    ----------
    rle : str
    shape : tuple of int
    dtype : dtype

    Returns
    -------
    ndarray
        Of ``dtype``; run pixels are 1.

    Raises
    ------
    FormatError
    """
    height, width = check_size(shape, np.dtype(dtype).itemsize)
    total = height * width
    text = "" if rle is None else str(rle).strip()
    if text in ("", "nan"):
        return np.zeros((height, width), dtype=dtype)
    if not _DIGITS.fullmatch(text):
        raise FormatError("RLE must contain only non-negative integers separated by spaces")
    try:
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    except ValueError:  # numpy refuses what it cannot read to the end
        raise FormatError("RLE must contain only non-negative integers separated by spaces") from None
    if (values > total).any():
        raise FormatError(f"RLE value {int(values.max())} is larger than the {height} x {width} mask")
    if values.size % 2:
        raise FormatError(f"RLE has an odd number of values ({values.size}): start/length pairs expected")
    starts = values[0::2] - 1
    lengths = values[1::2]
    if (starts < 0).any():
        raise FormatError("RLE starts are 1-indexed and must be >= 1")
    if (lengths <= 0).any():
        raise FormatError("RLE run lengths must be positive")
    ends = starts + lengths
    if (starts[1:] < ends[:-1]).any():
        raise FormatError("RLE runs must be sorted and must not overlap")
    if ends[-1] > total:
        raise FormatError(
            f"RLE run ends at pixel {int(ends[-1])} but a {height} x {width} mask has {total} pixels"
        )
    try:
        return paint_runs(starts, lengths, (height, width), dtype)
    except MemoryError:
        raise FormatError(f"a {height} x {width} mask does not fit in memory") from None


def paint_runs(starts: np.ndarray, lengths: np.ndarray, shape, dtype=np.uint8) -> np.ndarray:
    """A column-major ``shape`` mask with the (0-indexed, validated) runs set to 1.

    One ``np.repeat`` of alternating 0/1 over the run and gap lengths writes each pixel once.

    Parameters
    ----------
    starts, lengths : ndarray
        0-indexed column-major runs, validated.
    shape : tuple of int
    dtype : dtype

    Returns
    -------
    ndarray
    """
    total = int(shape[0]) * int(shape[1])
    if starts.size == 0:
        return np.zeros(shape, dtype=dtype, order="F")
    ends = starts + lengths
    counts = np.empty(2 * starts.size + 1, np.int64)
    counts[0] = starts[0]
    counts[1::2] = lengths
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = total - ends[-1]
    values = np.zeros(counts.size, dtype=dtype)
    values[1::2] = 1
    return np.repeat(values, counts).reshape(shape, order="F")
