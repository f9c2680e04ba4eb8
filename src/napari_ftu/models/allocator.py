"""Keep freed memory for reuse: every model call frees and allocates the same large blocks again.

glibc's malloc gives blocks above a threshold (128 kB, raised as it goes, to 32 MB at most) back
to the kernel when they are freed, so each tile batch's activations can land on fresh pages. On
this project's 2-core machine a 4096² CPU segment run took 820 000 page faults and 3 s of kernel
time, and end to end was 1.5× the model's forward time (``bench/inference.py``). With blocks up
to 128 MB kept for reuse it takes a few thousand faults; the price is that the process may hold
up to 256 MB of freed memory (the 50 000² slide bench: peak RSS 1 218 MB instead of 1 064 MB).
Linux with glibc only; the user's own ``MALLOC_*_THRESHOLD_`` environment settings win.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 128 << 20  # blocks below this come from the heap and are reused
TRIM_THRESHOLD = 256 << 20  # freed memory the heap keeps before returning it to the kernel

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds, once per process; True when they are set."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if not sys.platform.startswith("linux") or any(
            k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
