"""Autosave of review sessions: labels + review statuses in one atomically replaced file.

Each image gets a session folder: ``<slide>.ftu/`` beside the slide file when that folder can
be written, else ``<project>/<image name>.ftu/`` (images without a file, read-only datasets).
Inside, ``<labels layer>.session.npz`` holds the label image, the review table as JSON and a
little metadata; a full-resolution window of a large slide has a file of its own,
``<layer>@<y>_<x>_<h>x<w>.session.npz``, so editing one window never touches another's edits.

Nothing saved is ever lost or overwritten without a copy:

* writes go through :mod:`napari_ftu.atomic` (temporary file, fsync, rename): a kill leaves the
  previous save intact, at most the time since the last autosave is lost; temporaries of killed
  writers are removed at the next open or save of the folder;
* a damaged file, or one of another shape or offset, is renamed aside
  (``<file>.damaged-<time>`` / ``.mismatch-<time>``) and reported as a :class:`SessionError`;
  the layer starts a fresh session that saves as usual;
* one writer per session: ``<file minus .npz>.lock`` names the process (pid, host) that holds it.
  A second viewer, in this process or another, saves to a file of its own and is told so; a
  lock whose process has died is taken over;
* a file that changed on disk since this store last read or wrote it (a writer that ignored the
  lock) is renamed aside (``.conflict-<time>``) before the next save.

The save runs on the caller's thread (the dock's UI thread): the labels cannot change while they
are written, so the file is always exactly one state the session went through.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import time
import weakref
import zipfile
from pathlib import Path

import numpy as np

from napari_ftu.atomic import atomic_path, clean_leftovers, pid_alive, temp_name
from napari_ftu.boxes import Box, box_at, corners, size
from napari_ftu.errors import SessionError
from napari_ftu.review.saved import SUFFIX, Saved, _Mismatch, read_session
from napari_ftu.review.session import ReviewSession
from napari_ftu.review.table import Review

DEFAULT_INTERVAL_S = 15.0  # the dock saves at least this often while there are unsaved changes
LOCK_SUFFIX = ".session.lock"


def default_project_folder() -> Path:
    """Where sessions of images without a writable home go (``NAPARI_FTU_SESSIONS`` overrides)."""
    env = os.environ.get("NAPARI_FTU_SESSIONS")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-ftu" / "sessions"


def safe_name(name: str) -> str:
    """A file-name-safe version of a layer or image name (never empty, never ``..``).

    Parameters
    ----------
    name : str
        Any text a user gave a layer.

    Returns
    -------
    str
        At most 120 characters of letters, digits, ``.``, ``_`` and ``-``.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "unnamed"
    return cleaned[:120]


def session_folder(image_name: str, path: str | Path | None = None, item: str | None = None,
                   project: str | Path | None = None) -> Path:
    """The session folder of an image: beside its file if writable, else in the project folder.

    Parameters
    ----------
    image_name : str
        The image layer's name.
    path : str or Path, optional
        The image's file or dataset folder.
    item : str, optional
        The item of a dataset folder, which gets a subfolder.
    project : str or Path, optional
        Where sessions of images without a writable folder go (default
        :func:`default_project_folder`).

    Returns
    -------
    Path
        Not created here.
    """
    if path:
        path = Path(path)
        # A dataset folder gets one ``.ftu`` folder inside it, with one subfolder per item.
        base = path / ".ftu" if path.is_dir() else path.with_name(path.name + ".ftu")
        if os.access(base if base.exists() else base.parent, os.W_OK):
            return base / safe_name(item) if item else base
    root = Path(project) if project else default_project_folder()
    folder = root / (safe_name(image_name) + ".ftu")
    return folder / safe_name(item) if item else folder


WINDOW_RE = re.compile(r"@(\d+)_(\d+)_(\d+)x(\d+)" + re.escape(SUFFIX) + "$")


def pending_windows(folder: str | Path, name: str) -> list[Box]:
    """The windows of layer ``name`` whose saved session holds edits not yet written into the
    label store (the dock reopens such a window rather than an overlapping one).

    Parameters
    ----------
    folder : str or Path
        The session folder.
    name : str
        The window layer's name, as given to :class:`SessionStore`.

    Returns
    -------
    list of Box
        Read from the file names (``<name>@<y>_<x>_<h>x<w>``); damaged files are skipped.
    """
    prefix = safe_name(name) + "@"
    found = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return found
    for entry in names:
        match = WINDOW_RE.search(entry)
        if not entry.startswith(prefix) or match is None or match.start() != len(prefix) - 1:
            continue
        try:
            with zipfile.ZipFile(Path(folder) / entry) as zf, zf.open("meta.npy") as fh:
                meta = json.loads(bytes(np.lib.format.read_array(fh, allow_pickle=False)).decode())
        except Exception:  # a damaged file is set aside when its window is opened
            continue
        if isinstance(meta, dict) and meta.get("in_store_generation") != meta.get("generation"):
            found.append(box_at(*match.groups()))
    return found


def carry_statuses(saved: Review, fresh: Review) -> int:
    """Copy class, confidence and status from ``saved`` to the objects of ``fresh`` that are
    unchanged (same id, area and box); returns how many were carried over.

    Parameters
    ----------
    saved : Review
        The saved session's table.
    fresh : Review
        A table measured from the label store, updated in place.

    Returns
    -------
    int
    """
    n = 0
    for obj, row in fresh.rows.items():
        old = saved.rows.get(obj)
        if old is not None and old.area_px == row.area_px and old.box == row.box:
            row.cls, row.confidence, row.status = old.cls, old.confidence, old.status
            n += 1
    return n


_HELD: dict[str, weakref.ref] = {}  # lock file -> the live store of this process that holds it
_HOST = socket.gethostname()


def _signature(path: Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read_lock(path: Path) -> dict | None:
    """The lock's holder, ``{}`` if unreadable, None if there is no lock."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _release_lock(path: str, token: str):
    holder = _read_lock(Path(path))
    if holder and holder.get("token") == token:
        with contextlib.suppress(OSError):
            os.unlink(path)
    ref = _HELD.get(path)
    if ref is not None and (ref() is None or getattr(ref(), "_token", None) in (None, token)):
        _HELD.pop(path, None)


class SessionStore:
    """Save and restore one labels layer's session in ``folder``.

    Parameters
    ----------
    folder : str or Path
        The image's session folder (:func:`session_folder`).
    name : str
        The labels layer's name; the file is named after it.
    window : Box, optional
        A full-resolution window of a large slide: it gets a file of its own
        (``<name>@<y>_<x>_<h>x<w>``), so editing one window never touches another's edits.
    """

    def __init__(self, folder: str | Path, name: str = "labels", window: Box | None = None):
        self.folder = Path(folder)
        self.key = safe_name(name)
        if window is not None:
            (y, x), (h, w) = corners(window)[:2], size(window)
            self.key += f"@{y}_{x}_{h}x{w}"
        self.path = self.folder / (self.key + SUFFIX)
        self.lock_path = self.folder / (self.key + LOCK_SUFFIX)
        self._lock_id = os.path.realpath(self.lock_path)  # this process's registry key, however the path is spelt
        self.save_path = self.path  # where this store writes: its own file when another viewer holds the lock
        self.notices: list[str] = []  # what the user should be told (the dock shows and clears them)
        self._token: str | None = None
        self._claimed = False
        self._seen = None  # save_path's (inode, size, mtime) when this store last read or wrote it
        self._finalizer = None

    # --- one writer per session ----------------------------------------------------------------------
    @property
    def owner(self) -> bool:
        """Whether this store holds the session's lock (and so writes the session file)."""
        return self._token is not None

    def claim(self) -> str | None:
        """Take the session's lock. Returns None when this store now writes the session file, or
        a warning when another viewer holds it: this store then writes a file of its own
        (:attr:`save_path`) so that neither overwrites the other."""
        if self._claimed:
            return None
        self._claimed = True
        token = secrets.token_hex(8)
        info = json.dumps({"pid": os.getpid(), "host": _HOST, "token": token, "since": time.time()})
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for _ in range(5):
                if self._create_lock(info):
                    self._token = token
                    _HELD[self._lock_id] = weakref.ref(self)
                    self._finalizer = weakref.finalize(self, _release_lock, self._lock_id, token)
                    return None
                holder = _read_lock(self.lock_path)
                if holder is None:
                    continue  # released meanwhile: try again
                if not self._stale(holder):
                    return self._second_writer(holder, token)
                self._remove_stale(holder)
        except OSError as exc:
            return self._second_writer({}, token, f"cannot lock {self.lock_path} ({exc})")
        return self._second_writer(_read_lock(self.lock_path) or {}, token)

    def _create_lock(self, info: str) -> bool:
        """Create the lock file with its content in one step (hard link); False if it exists."""
        tmp = self.folder / temp_name(self.lock_path)  # removed by clean() if we are killed here
        tmp.write_text(info, encoding="utf-8")
        try:
            os.link(tmp, self.lock_path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then write
            try:
                fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(info)
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _stale(self, holder: dict) -> bool:
        """A lock whose writer is gone: its process died (this host), or its store was dropped
        (this process). Locks of other hosts are never taken over."""
        if not holder:  # unreadable: written whole by a link, so damaged, unless very new
            sig = _signature(self.lock_path)
            return sig is not None and time.time() - sig[2] / 1e9 > 10
        if holder.get("host") != _HOST:
            return False
        try:
            pid = int(holder.get("pid"))
        except (TypeError, ValueError):
            return True
        if pid != os.getpid():
            return not pid_alive(pid)
        ref = _HELD.get(self._lock_id)
        live = ref() if ref is not None else None
        return live is None or live._token != holder.get("token")

    def _remove_stale(self, holder: dict):
        """Move the stale lock away; if another viewer replaced it meanwhile, put theirs back."""
        moved = self.folder / temp_name(self.lock_path)
        try:
            os.rename(self.lock_path, moved)
        except FileNotFoundError:
            return
        if (_read_lock(moved) or {}).get("token") != holder.get("token"):
            with contextlib.suppress(OSError):
                os.link(moved, self.lock_path)
        with contextlib.suppress(OSError):
            os.unlink(moved)

    def _second_writer(self, holder: dict, token: str, why: str | None = None) -> str:
        self.save_path = self.folder / f"{self.key}.viewer-{os.getpid()}-{token[:6]}{SUFFIX}"
        self._seen = None
        if why is None:
            since = holder.get("since")
            when = time.strftime(" since %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
            why = (f"another viewer is saving this review (process {holder.get('pid', '?')} on "
                   f"{holder.get('host', '?')}{when})")
        return (f"{self.path.name}: {why}; this viewer saves its edits to {self.save_path} instead, "
                f"so neither overwrites the other")

    def release(self):
        """Give the lock back (the session file stays)."""
        if self._finalizer is not None:
            self._finalizer()  # runs _release_lock once
        if self._token is not None:
            self._token, self._claimed = None, False  # a later save claims it again

    # --- reading ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, shape: tuple[int, int] | None = None) -> Saved | None:
        """The saved session, or None if there is none. A damaged file (or, with ``shape``, one
        of another shape) raises :class:`SessionError`; nothing is allocated before the label
        image's size is checked.

        Parameters
        ----------
        shape : tuple of int, optional
            The layer's shape, checked before the labels are read.

        Returns
        -------
        Saved or None

        Raises
        ------
        SessionError
            A damaged file or one of another shape; nothing is renamed here.
        """
        self.clean()
        if not self.path.is_file():
            return None
        return read_session(self.path, shape)

    def restore(self, shape: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> Saved | None:
        """The saved session of a layer of ``shape`` at ``offset``, or None if there is none.

        A file that cannot be used (damaged, another shape or offset) is renamed aside, never
        overwritten, and reported as :class:`SessionError`; the caller starts a fresh session,
        which saves under the usual name.

        Parameters
        ----------
        shape : tuple of int
        offset : tuple of int
            Where the layer's window starts in the slide.

        Returns
        -------
        Saved or None
            None: start a fresh session.

        Raises
        ------
        SessionError
            The file could not be used; :attr:`SessionError.aside` says where it went.
        """
        self._note(self.claim())
        try:
            saved = self.load(shape)
            if saved is not None and saved.offset != tuple(int(v) for v in offset):
                raise _Mismatch(f"{self.path}: the saved session is at offset {saved.offset}, "
                                f"the layer at {tuple(offset)}")
        except SessionError as exc:
            kind = "mismatch" if isinstance(exc, _Mismatch) else "damaged"
            if not self.owner:
                raise SessionError(f"{exc}; left in place (another viewer has it open)") from exc
            try:
                aside = self._set_aside(kind)
            except OSError as err:
                self._second_writer({}, secrets.token_hex(8), f"cannot rename it aside ({err})")
                raise SessionError(f"{exc}; cannot rename it aside ({err.strerror}), so this viewer saves to "
                                   f"{self.save_path}") from exc
            raise SessionError(f"{exc}; kept it as {aside.name} and started a fresh session", aside) from exc
        if self.save_path == self.path:
            self._seen = _signature(self.path)
        return saved

    def _set_aside(self, kind: str) -> Path:
        """Rename the session file to ``<name>.<kind>-<time>`` (never over another file)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            aside = self.path.with_name(f"{self.path.name}.{kind}-{stamp}" + (f"-{n}" if n else ""))
            try:
                os.link(self.path, aside)  # fails if ``aside`` exists
            except FileExistsError:
                continue
            except OSError:  # no hard links here: check, then rename
                if aside.exists():
                    continue
                os.rename(self.path, aside)
                return aside
            os.unlink(self.path)
            return aside
        raise FileExistsError(f"too many copies of {self.path.name} set aside")

    def clean(self) -> list[Path]:
        """Remove temporaries that killed saves left in the folder (never a live save's)."""
        return clean_leftovers(self.folder, legacy=True)

    # --- writing ---------------------------------------------------------------------------------
    def save(self, session: ReviewSession, meta: dict | None = None) -> float:
        """Write the session atomically; returns the seconds it took.

        Parameters
        ----------
        session : ReviewSession
        meta : dict, optional
            Extra metadata (the layer, ``in_store_generation``).

        Returns
        -------
        float
        """
        start = time.perf_counter()
        self.clean()
        if not self._claimed:
            self._note(self.claim())
        current = _signature(self.save_path)
        if self.save_path == self.path and current is not None and current != self._seen:
            aside = self._set_aside("conflict")  # written by someone else since this store looked
            self._note(f"{self.path.name} was changed by another program since this viewer read it; "
                       f"kept that version as {aside.name}")
        info = {**(meta or {}), "offset": list(session.offset), "saved_at": time.time(),
                "generation": session.generation, "pid": os.getpid(), "host": _HOST,
                "done": [list(corners(b)) for b in session.done]}
        extra = {} if session.rejected is None else {"rejected": session.rejected}
        with atomic_path(self.save_path) as tmp:
            with open(tmp, "wb") as fh:
                _write_npz(fh, labels=session.labels,
                           review=np.frombuffer(json.dumps(session.review.to_dict()).encode(), np.uint8),
                           meta=np.frombuffer(json.dumps(info).encode(), np.uint8), **extra)
        self._seen = _signature(self.save_path)
        return time.perf_counter() - start

    def _note(self, message: str | None):
        if message:
            self.notices.append(message)

    def take_notices(self) -> list[str]:
        notices, self.notices = self.notices, []
        return notices


def _write_npz(fh, **arrays):
    """``np.savez_compressed`` at zlib level 1: label images compress almost as well (316 kB
    instead of 83 kB for a 4096 × 4096 window) in half the time, and read back 3× faster."""
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, array in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asarray(array), allow_pickle=False)


class Autosaver:
    """Saves a session when it has changed and ``interval`` seconds have passed since the last
    save (the dock ticks it with a timer), or at once with :meth:`save_now` (image change).

    Parameters
    ----------
    session : ReviewSession
    store : SessionStore
    interval : float
        Seconds between saves while there are changes.
    meta : dict, optional
        Written with every save (the layer's name, ``in_store_generation``).
    clock : callable
        Seconds, monotonic (tests pass a fake one).

    Raises
    ------
    ValueError
        A non-positive ``interval``.
    """

    def __init__(self, session: ReviewSession, store: SessionStore, interval: float = DEFAULT_INTERVAL_S,
                 meta: dict | None = None, clock=time.monotonic):
        if interval <= 0:
            raise ValueError(f"autosave interval must be positive, got {interval}")
        self.session, self.store, self.interval, self.meta = session, store, interval, meta or {}
        self._clock = clock
        self.saved_generation = session.generation
        self.last_save = clock()
        self.last_seconds = None

    @property
    def dirty(self) -> bool:
        return self.session.generation != self.saved_generation

    def tick(self) -> bool:
        """Save if there are changes and the interval has passed; True if it saved."""
        if self.dirty and self._clock() - self.last_save >= self.interval:
            self.save_now()
            return True
        return False

    def save_now(self, force: bool = False) -> bool:
        """Save now if anything changed since the last save (or ``force``). A failure is raised
        and retried after the interval (not at every tick).

        Parameters
        ----------
        force : bool
            Save even without changes (the session went into the label store).

        Returns
        -------
        bool
            Whether it wrote.
        """
        if not (self.dirty or force):
            return False
        generation = self.session.generation
        try:
            self.last_seconds = self.store.save(self.session, self.meta)
        finally:
            self.last_save = self._clock()
        self.saved_generation = generation
        return True

    def close(self) -> bool:
        """Save what is unsaved and give the session's lock back."""
        try:
            return self.save_now()
        finally:
            self.store.release()
