"""Atomic file writes: a failure mid-write must leave any previous file intact."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, before any worker thread exists
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _naming(exc: OSError, path: Path) -> OSError:
    """The same kind of OSError (PermissionError, disk full, ...) naming the file the user
    chose rather than our hidden temporary file."""
    if exc.errno is None:
        return exc
    return type(exc)(exc.errno, f"cannot write {path.name}: {exc.strerror}", str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A failure (disk full, permission denied, an error in the block) leaves any previous file
    untouched and no temporary behind; an OSError names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; exports get the usual mode
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
