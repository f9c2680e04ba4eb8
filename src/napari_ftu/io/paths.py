"""Paths from the user: outputs that must never land on an input, and globs that terminate."""

from __future__ import annotations

import fnmatch
import glob
import os
from pathlib import Path

from napari_ftu.errors import OutputOntoInputError


def _identity(path: Path):
    try:
        st = os.stat(path)  # follows links
        return (st.st_dev, st.st_ino)
    except OSError:
        return None


def refuse_onto_inputs(outputs, inputs) -> None:
    """Raise :class:`OutputOntoInputError` if any output names an input file, however spelled
    (relative, through a symlink, a hard link): ``--overwrite`` never reaches an input. Linear in
    the number of paths (a batch checks every per-slide output against every slide)."""
    by_id, by_real = {}, {}
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        by_real.setdefault(os.path.realpath(src), src)
        ident = _identity(src)
        if ident is not None:
            by_id.setdefault(ident, src)
    for out in outputs:
        if out is None:
            continue
        out = Path(out)
        src = by_real.get(os.path.realpath(out))
        if src is None and (out.exists() or out.is_symlink()):
            src = by_id.get(_identity(out))
        if src is not None:
            raise OutputOntoInputError(f"{out}: is the input {src}; refusing to write onto an input "
                                       f"(choose another output)")


def expand_glob(pattern: str) -> list[Path]:
    """The paths matching ``pattern`` (``*``, ``?``, ``[...]``, ``**`` for any depth), sorted.
    ``**`` does not descend into symlinked folders, so a symlink cycle cannot make it run forever
    (Python's ``glob(recursive=True)`` follows them); files that are links still match, and so do
    links named by the other components (their depth is bounded by the pattern)."""
    if "**" not in pattern:
        return sorted(Path(p) for p in glob.glob(pattern))
    path = Path(pattern)
    root = Path(path.anchor) if path.is_absolute() else Path("")
    parts = path.parts[1:] if path.is_absolute() else path.parts
    return sorted(set(_walk(root, parts)))


def _entries(folder: Path, hidden: bool):
    try:
        with os.scandir(folder or ".") as it:
            return [e for e in it if hidden or not e.name.startswith(".")]
    except OSError:  # unreadable or vanished folders match nothing, as with glob
        return []


def _walk(folder: Path, parts):
    if not parts:
        yield folder
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        yield from _walk(folder, rest)  # zero folders
        for entry in _entries(folder, hidden=False):
            if entry.is_dir(follow_symlinks=False):  # never into a link: no cycles
                yield from _walk(folder / entry.name, parts)
            elif not rest:  # a trailing ** also names the files (and links) it passes
                yield folder / entry.name
    elif glob.has_magic(head):
        for entry in _entries(folder, hidden=head.startswith(".")):
            if fnmatch.fnmatch(entry.name, head) and (not rest or entry.is_dir()):
                yield from _walk(folder / entry.name, rest)
    else:
        target = folder / head
        if (target.is_dir() if rest else (target.exists() or target.is_symlink())):
            yield from _walk(target, rest)
