"""COCO run-length masks and the Open Images (OID) encoding used by the HPA and vasculature
competitions: COCO compressed counts -> zlib (level 9) -> base64.

Implemented here (pycocotools is only a test-time cross-check) so that the core installs
without a C compiler.
"""

from __future__ import annotations

import base64
import binascii
import zlib

import numpy as np

from napari_ftu.errors import FormatError
from napari_ftu.formats.rle import check_size, encode_pairs, paint_runs
from napari_ftu.io.budget import check_memory

MAX_COUNTS_BYTES = 256 * 2**20  # refuse a zlib stream that inflates past this
MAX_CHUNKS = 8  # 5-bit groups per compressed count: 40 bits, past any delta of MAX_PIXELS
# Bytes decoding takes per character of compressed counts (tracemalloc: 58 to parse them into
# Python ints, 42 more per count to paint the runs), besides the mask itself.
COST_PER_COUNT = 100


def check_decode(shape, counts_length: int) -> None:
    """Refuse a mask whose decode (the mask and its counts) exceeds the memory budget.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` as the file claims it.
    counts_length : int
        Number of run lengths.

    Raises
    ------
    FormatError
    """
    h, w = shape
    check_memory(h * w + COST_PER_COUNT * counts_length, f"mask of {h} x {w}", "decoding", FormatError)


def counts_from_mask(mask: np.ndarray) -> list[int]:
    """COCO uncompressed counts: alternating background/foreground run lengths, column-major.

    Parameters
    ----------
    mask : ndarray
        2-D, nonzero = foreground, in any memory order.

    Returns
    -------
    list of int
    """
    pairs = encode_pairs(mask)
    h, w = np.asarray(mask).shape
    starts, lengths = pairs[0::2] - 1, pairs[1::2]
    counts = np.empty(2 * starts.size + 1, np.int64)
    if starts.size:
        counts[0] = starts[0]
        counts[2:-1:2] = starts[1:] - (starts[:-1] + lengths[:-1])
        counts[1::2] = lengths
        counts[-1] = h * w - (starts[-1] + lengths[-1])
    else:
        counts[0] = h * w
    if counts[-1] == 0 and counts.size > 1:
        counts = counts[:-1]
    return counts.tolist()


def mask_from_counts(counts, shape) -> np.ndarray:
    """The ``(height, width)`` uint8 mask of COCO uncompressed counts (validated).

    Parameters
    ----------
    counts : sequence of int
    shape : tuple of int

    Returns
    -------
    ndarray
        uint8 0/1, written run by run.

    Raises
    ------
    FormatError
        Negative counts, or runs that do not add up to the image.
    """
    h, w = check_size(shape)
    starts, lengths = runs_from_counts(counts, (h, w))
    try:
        return paint_runs(starts, lengths, (h, w))
    except MemoryError:
        raise FormatError(f"a {h} x {w} mask does not fit in memory") from None


def runs_from_counts(counts, shape) -> tuple[np.ndarray, np.ndarray]:
    """0-indexed column-major run starts and lengths (non-empty) of validated COCO counts.

    Parameters
    ----------
    counts : sequence of int
        Validated by :func:`mask_from_counts` rules.
    shape : tuple of int

    Returns
    -------
    tuple of ndarray
    """
    h, w = shape
    try:
        counts = np.asarray(counts)
    except (TypeError, ValueError, OverflowError):  # ragged, nested or beyond 64 bits
        raise FormatError("COCO counts must be a flat list of non-negative integers") from None
    if counts.ndim != 1 or (counts.size and counts.dtype.kind not in "iu") or (counts < 0).any():
        raise FormatError("COCO counts must be a flat list of non-negative integers")
    counts = counts.astype(np.int64)
    if counts.size and int(counts.max()) > h * w:  # also keeps the sum below overflow
        raise FormatError(f"COCO count {int(counts.max())} is larger than a {h} x {w} mask")
    if int(counts.sum()) != h * w:
        raise FormatError(f"COCO counts cover {int(counts.sum())} pixels, a {h} x {w} mask has {h * w}")
    ends = np.cumsum(counts)
    starts = ends[0::2][: counts[1::2].size]
    lengths = counts[1::2]
    keep = lengths > 0
    return starts[keep], lengths[keep]


def paint_coco(labels: np.ndarray, rle: dict, value) -> None:
    """Set the pixels of a COCO RLE dict in ``labels`` to ``value``, decoding only the band of
    columns its runs touch: a small object on a large image costs its columns, not the image.

    Parameters
    ----------
    labels : ndarray
        Changed in place.
    rle : dict
        ``{"size": [h, w], "counts": ...}``.
    value : int
        The object's id.

    Raises
    ------
    FormatError
    """
    h, w = labels.shape
    counts = _counts(rle, (h, w))
    starts, lengths = runs_from_counts(counts, (h, w))
    if not starts.size:
        return
    c0, c1 = int(starts[0]) // h, (int(starts[-1] + lengths[-1]) - 1) // h + 1
    band = paint_runs(starts - c0 * h, lengths, (h, c1 - c0))
    np.copyto(labels[:, c0:c1], value, where=band.view(bool))


def compress_counts(counts) -> bytes:
    """COCO's compressed counts string (5-bit groups, delta against the count two back).

    Parameters
    ----------
    counts : sequence of int

    Returns
    -------
    bytes
    """
    out = bytearray()
    for i, x in enumerate(counts):
        x = int(x) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(c + 48)
    return bytes(out)


def decompress_counts(data: bytes | str) -> list[int]:
    """Inverse of :func:`compress_counts`; raises :class:`FormatError` on a malformed string.

    Vectorised (a zlib-inflated string can be megabytes). A number may use at most
    :data:`MAX_CHUNKS` 5-bit groups, enough for any mask of :data:`MAX_PIXELS`, so values
    stay far inside 64 bits.

    Parameters
    ----------
    data : bytes or str

    Returns
    -------
    list of int

    Raises
    ------
    FormatError
    """
    if isinstance(data, str):
        try:
            data = data.encode("ascii")
        except UnicodeEncodeError:
            raise FormatError("COCO counts string has a non-ASCII character") from None
    try:
        c = np.frombuffer(data, np.uint8).astype(np.int64) - 48
    except TypeError:
        raise FormatError("COCO counts must be a string or a list of integers") from None
    if c.size == 0:
        return []
    bad = np.flatnonzero((c < 0) | (c >= 64))
    if bad.size:
        raise FormatError(f"COCO counts string has an invalid character {chr(c[bad[0]] + 48)!r}")
    more = (c & 0x20) != 0
    if more[-1]:
        raise FormatError("COCO counts string ends inside a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    chunks = ends - starts + 1
    if chunks.max() > MAX_CHUNKS:
        raise FormatError(f"COCO counts string has a number of {int(chunks.max())} digits (at most {MAX_CHUNKS})")
    k = np.arange(c.size) - np.repeat(starts, chunks)  # position of each 5-bit group in its number
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * chunks[negative])  # sign-extend: x | (-1 << 5k)
    x[1::2] = np.cumsum(x[1::2])  # counts[i] += counts[i - 2] for i > 2
    x[2::2] = np.cumsum(x[2::2])
    return x.tolist()


def mask_to_coco(mask: np.ndarray) -> dict:
    """``{"size": [h, w], "counts": str}`` as pycocotools' ``encode`` gives (decoded to text).

    Parameters
    ----------
    mask : ndarray
        One object (nonzero), the image's size.

    Returns
    -------
    dict
        Compressed counts, readable by pycocotools and by :func:`coco_to_mask`.
    """
    h, w = np.asarray(mask).shape
    return {"size": [int(h), int(w)], "counts": compress_counts(counts_from_mask(mask)).decode("ascii")}


def coco_to_mask(rle: dict, shape=None) -> np.ndarray:
    """A mask from a COCO RLE dict with compressed (str/bytes) or uncompressed (list) counts.

    With ``shape``, the RLE's ``size`` must equal it (checked before anything is decoded).

    Parameters
    ----------
    rle : dict
    shape : tuple of int, optional
        The image's size.

    Returns
    -------
    ndarray
        uint8 0/1.

    Raises
    ------
    FormatError
    """
    h, w = _rle_size(rle, shape)
    return mask_from_counts(_counts(rle, (h, w)), (h, w))


def _rle_size(rle, shape=None) -> tuple[int, int]:
    try:
        (h, w), _ = rle["size"], rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise FormatError("a COCO RLE needs 'size': [height, width] and 'counts'") from None
    h, w = check_size((h, w))
    if shape is not None and (h, w) != tuple(int(v) for v in shape):
        raise FormatError(f"COCO RLE size {h} x {w} differs from the image's {shape[0]} x {shape[1]}")
    return h, w


def _counts(rle: dict, shape):
    """The counts of an RLE dict of ``shape``, decompressed; refused when decoding them and a
    mask of ``shape`` would exceed the memory budget."""
    h, w = _rle_size(rle, shape)
    counts = rle["counts"]
    if isinstance(counts, (str, bytes, list)):
        check_decode((h, w), len(counts))
    if isinstance(counts, (str, bytes)):
        if len(counts) > 8 * (h * w + 1):
            raise FormatError(f"COCO counts string is longer than any {h} x {w} mask needs")
        counts = decompress_counts(counts)
    return counts


def oid_encode(mask: np.ndarray) -> str:
    """Open Images / HPA mask string: base64(zlib(COCO compressed counts)).

    Parameters
    ----------
    mask : ndarray
        A cell mask of the whole image: HPA strings are image-sized.

    Returns
    -------
    str
    """
    return base64.b64encode(zlib.compress(compress_counts(counts_from_mask(mask)), 9)).decode("ascii")


def oid_decode(text: str, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`oid_encode`; refuses bad base64, bad zlib and zlib bombs.

    The inflated counts may not exceed what a ``height`` x ``width`` mask can need (at most
    one count per pixel plus one, :data:`MAX_CHUNKS` bytes each), so a small string cannot
    make us inflate or parse megabytes for a small mask.

    Parameters
    ----------
    text : str
    height, width : int
        The image's size (from the CSV row).

    Returns
    -------
    ndarray
        uint8 0/1 of ``height × width``.

    Raises
    ------
    FormatError
    """
    height, width = check_size((height, width))
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise FormatError("mask is not valid base64") from None
    limit = min(MAX_COUNTS_BYTES, MAX_CHUNKS * (height * width + 1))
    inflater = zlib.decompressobj()
    try:
        counts = inflater.decompress(raw, limit)
    except zlib.error as exc:
        raise FormatError(f"mask is not valid zlib data ({exc})") from None
    if inflater.unconsumed_tail:
        raise FormatError(f"mask inflates to more than the {limit} bytes a {height} x {width} mask can need")
    check_decode((height, width), len(counts))
    return mask_from_counts(decompress_counts(counts), (height, width))
