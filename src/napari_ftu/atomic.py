"""Atomic, durable file writes: a failure mid-write, a kill or a power cut must leave any
previous file intact.

The data goes to a short temporary name in the same folder (``.ftu-<host>-<pid>-<random>.part``,
so a legal 255-byte target name still works and a leftover says who wrote it), is fsynced, renamed
over the target, and the folder is fsynced so the rename itself survives a power cut. Replacing a
file keeps its permission bits (a private 0600 file stays private).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import time
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, before any worker thread exists
    os.umask(mask)
    return mask


_UMASK = _read_umask()
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
TEMP_RE = re.compile(r"^\.ftu-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}\.part")
LEGACY_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.part")  # mkstemp names written before this scheme
FOREIGN_AGE_S = 24 * 3600  # a leftover of another host (shared folder) is removed only when this old


def _naming(exc: OSError, path: Path) -> OSError:
    """The same kind of OSError (PermissionError, disk full, ...) naming the file the user
    chose rather than our hidden temporary file."""
    if exc.errno is None:
        return exc
    return type(exc)(exc.errno, f"cannot write {path.name}: {exc.strerror}", str(path))


def temp_name(path: Path) -> str:
    """A short temporary name for ``path``'s folder that says who wrote it (see :func:`clean_leftovers`)."""
    suffix = path.suffix if len(path.suffix) <= 16 else ""  # writers pick the format from the suffix
    return f".ftu-{HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}.part{suffix}"


def fsync_path(path: str | Path, folder: bool = False):
    """Flush a file (or a folder's entries) to the disk; folders are skipped where the OS has no such call."""
    if folder and os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY if os.name != "nt" else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A failure (disk full, permission denied, an error in the block) leaves any previous file
    untouched and no temporary behind; an OSError names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = os.stat(path).st_mode & 0o7777  # replacing: keep the file's permissions
        except FileNotFoundError:
            mode = 0o666 & ~_UMASK  # a new file gets the usual mode
        for _ in range(10):
            tmp = path.parent / temp_name(path)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"no free temporary name beside {path}")
    except OSError as exc:
        raise _naming(exc, path) from None
    os.close(fd)
    try:
        os.chmod(tmp, mode)
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise
    with contextlib.suppress(OSError):  # the new file is in place; the folder flush only hardens it
        fsync_path(path.parent, folder=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or the platform cannot tell: assume alive)
    return True


def clean_leftovers(folder: str | Path, before: float | None = None, legacy: bool = False) -> list[Path]:
    """Remove temporaries that killed writers left in ``folder``; returns what was removed.

    Only our own temporary names, only files last written before ``before`` (default: now), and
    only when the writer is gone: its process no longer runs on this host, or it came from another
    host (a shared folder) more than a day ago. ``legacy`` also removes the older ``mkstemp``
    names, when more than an hour old (folders that hold only our files: session folders).
    """
    before = time.time() if before is None else before
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_RE.match(entry.name)
        if match is None and not (legacy and LEGACY_TEMP_RE.match(entry.name)):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if mtime >= before:
            continue  # written since the caller started: maybe a live save
        if match is None:
            gone = before - mtime > 3600
        elif match["host"] == HOST_TAG:
            gone = int(match["pid"]) != os.getpid() and not pid_alive(int(match["pid"]))
        else:
            gone = before - mtime > FOREIGN_AGE_S
        if gone:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed
