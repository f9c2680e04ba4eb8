"""One memory budget for every reader, checked per file before anything is allocated.

A tiny file can claim a huge image (a 9 kB TIFF of 40 000 x 40 000 pixels, a 2 kB COCO file
of many images, one polygon whose edges cross every row), so each reader adds up what the
whole file would allocate and calls :func:`check_memory` first: the user gets one error naming
the file and the size instead of a ``MemoryError`` or the OOM killer.

The budget is a share of the memory available now (psutil, else ``/proc/meminfo``, capped by
a cgroup limit); ``NAPARI_FTU_MEMORY_BUDGET`` (``2G``, ``512M``, bytes) sets it instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ENV = "NAPARI_FTU_MEMORY_BUDGET"
SHARE = 0.8  # of the memory available: napari, the model and what is already open need the rest
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30,
          "ti": 2**40}


def available_memory() -> int | None:
    """Bytes that can be allocated without swapping, or None when the platform does not say."""
    found = []
    try:
        import psutil

        found.append(int(psutil.virtual_memory().available))
    except Exception:  # psutil is optional
        try:
            text = Path("/proc/meminfo").read_text()
            found.append(int(re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M).group(1)) * 1024)
        except (OSError, AttributeError, ValueError):
            pass
    for limit, usage in (("memory.max", "memory.current"),  # cgroup v2, then v1: a container's limit
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            cap = Path("/sys/fs/cgroup", limit).read_text().strip()
            if cap.isdigit() and int(cap) < 2**60:
                found.append(max(0, int(cap) - int(Path("/sys/fs/cgroup", usage).read_text())))
                break
        except (OSError, ValueError):
            continue
    return min(found) if found else None


def parse_size(text: str) -> int:
    """``"2G"``, ``"512MiB"``, ``"1.5 GB"`` or plain bytes as an int."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]i?)?[bB]?\s*", str(text))
    if not m:
        raise ValueError(f"{ENV}={text!r} is not a size such as 2G, 512M or 1000000")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def memory_budget() -> int | None:
    """Bytes one file may make us allocate; None when the available memory is unknown."""
    if os.environ.get(ENV, "").strip():
        return parse_size(os.environ[ENV])
    available = available_memory()
    return None if available is None else int(available * SHARE)


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def check_memory(need: float, where, what: str = "decoding", error: type[Exception] = ValueError) -> None:
    """Raise ``error("<where>: <what> needs 4.8 GB, more than the 3.1 GB memory budget")``
    when ``need`` bytes exceed the budget."""
    budget = memory_budget()
    if budget is not None and need > budget:
        how = f"{ENV}" if os.environ.get(ENV, "").strip() else f"{SHARE:.0%} of the memory available"
        raise error(f"{where}: {what} needs {format_bytes(need)}, more than the {format_bytes(budget)} "
                    f"memory budget ({how})")
