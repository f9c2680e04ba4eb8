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

from .rle import MAX_PIXELS, RLEError, encode_pairs, paint_runs

MAX_COUNTS_BYTES = 256 * 2**20  # refuse a zlib stream that inflates past this


def counts_from_mask(mask: np.ndarray) -> list[int]:
    """COCO uncompressed counts: alternating background/foreground run lengths, column-major."""
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
    """The ``(height, width)`` uint8 mask of COCO uncompressed counts (validated)."""
    h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0 or h * w > MAX_PIXELS:
        raise RLEError(f"mask size {h} x {w} is not a valid image size")
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise RLEError("COCO counts must be non-negative integers")
    if int(counts.sum()) != h * w:
        raise RLEError(f"COCO counts cover {int(counts.sum())} pixels, a {h} x {w} mask has {h * w}")
    ends = np.cumsum(counts)
    starts = ends[0::2][: counts[1::2].size]
    lengths = counts[1::2]
    keep = lengths > 0
    return paint_runs(starts[keep], lengths[keep], (h, w))


def compress_counts(counts) -> bytes:
    """COCO's compressed counts string (5-bit groups, delta against the count two back)."""
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
    """Inverse of :func:`compress_counts`; raises :class:`RLEError` on a malformed string."""
    if isinstance(data, str):
        data = data.encode("ascii", errors="replace")
    counts: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise RLEError("COCO counts string ends inside a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise RLEError(f"COCO counts string has an invalid character {chr(data[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def mask_to_coco(mask: np.ndarray) -> dict:
    """``{"size": [h, w], "counts": str}`` as pycocotools' ``encode`` gives (decoded to text)."""
    h, w = np.asarray(mask).shape
    return {"size": [int(h), int(w)], "counts": compress_counts(counts_from_mask(mask)).decode("ascii")}


def coco_to_mask(rle: dict) -> np.ndarray:
    """A mask from a COCO RLE dict with compressed (str/bytes) or uncompressed (list) counts."""
    try:
        h, w = rle["size"]
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise RLEError("a COCO RLE needs 'size': [height, width] and 'counts'") from None
    if isinstance(counts, (str, bytes)):
        counts = decompress_counts(counts)
    return mask_from_counts(counts, (h, w))


def oid_encode(mask: np.ndarray) -> str:
    """Open Images / HPA mask string: base64(zlib(COCO compressed counts))."""
    return base64.b64encode(zlib.compress(compress_counts(counts_from_mask(mask)), 9)).decode("ascii")


def oid_decode(text: str, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`oid_encode`; refuses bad base64, bad zlib and zlib bombs."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RLEError("mask is not valid base64") from None
    inflater = zlib.decompressobj()
    try:
        counts = inflater.decompress(raw, MAX_COUNTS_BYTES)
    except zlib.error as exc:
        raise RLEError(f"mask is not valid zlib data ({exc})") from None
    if inflater.unconsumed_tail:
        raise RLEError("mask inflates to more than 256 MiB")
    return mask_from_counts(decompress_counts(counts), (height, width))
