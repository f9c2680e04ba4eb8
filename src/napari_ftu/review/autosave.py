"""Autosave of review sessions: labels + review statuses in one atomically replaced file.

Each image gets a session folder: ``<slide>.ftu/`` beside the slide file when that folder can
be written, else ``<project>/<image name>.ftu/`` (images without a file, read-only datasets).
Inside, ``<labels layer>.session.npz`` holds the label image (or the edited window of a large
slide and its offset), the review table as JSON and a little metadata. It is written to a
temporary file and renamed, so an abrupt kill leaves the previous save intact: at most the
time since the last autosave is lost.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_ftu.atomic import atomic_path
from napari_ftu.review.table import Review
from napari_ftu.review.session import ReviewSession

DEFAULT_INTERVAL_S = 15.0  # the dock saves at least this often while there are unsaved changes
SUFFIX = ".session.npz"


def default_project_folder() -> Path:
    """Where sessions of images without a writable home go (``NAPARI_FTU_SESSIONS`` overrides)."""
    env = os.environ.get("NAPARI_FTU_SESSIONS")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-ftu" / "sessions"


def safe_name(name: str) -> str:
    """A file-name-safe version of a layer or image name (never empty, never ``..``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "unnamed"
    return cleaned[:120]


def session_folder(image_name: str, path: str | Path | None = None, item: str | None = None,
                   project: str | Path | None = None) -> Path:
    """The session folder of an image: beside its file if writable, else in the project folder."""
    if path:
        path = Path(path)
        # A dataset folder gets one ``.ftu`` folder inside it, with one subfolder per item.
        base = path / ".ftu" if path.is_dir() else path.with_name(path.name + ".ftu")
        if os.access(base if base.exists() else base.parent, os.W_OK):
            return base / safe_name(item) if item else base
    root = Path(project) if project else default_project_folder()
    folder = root / (safe_name(image_name) + ".ftu")
    return folder / safe_name(item) if item else folder


@dataclass
class Saved:
    """What a session file restores."""

    labels: np.ndarray
    review: Review
    offset: tuple[int, int]
    meta: dict


class SessionStore:
    """Save and restore one labels layer's session in ``folder``."""

    def __init__(self, folder: str | Path, name: str = "labels"):
        self.folder = Path(folder)
        self.path = self.folder / (safe_name(name) + SUFFIX)

    def save(self, session: ReviewSession, meta: dict | None = None) -> float:
        """Write the session atomically; returns the seconds it took."""
        start = time.perf_counter()
        info = {**(meta or {}), "offset": list(session.offset), "saved_at": time.time(),
                "generation": session.generation}
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, labels=session.labels,
                                    review=np.frombuffer(json.dumps(session.review.to_dict()).encode(), np.uint8),
                                    meta=np.frombuffer(json.dumps(info).encode(), np.uint8))
                fh.flush()
                os.fsync(fh.fileno())
        return time.perf_counter() - start

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> Saved | None:
        """The saved session, or None if there is none; a damaged file raises ValueError."""
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                labels = data["labels"]
                review = Review.from_dict(json.loads(bytes(data["review"]).decode()))
                meta = json.loads(bytes(data["meta"]).decode())
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise ValueError(f"{self.path}: cannot read the saved session ({exc})") from exc
        return Saved(labels, review, tuple(int(v) for v in meta.get("offset", (0, 0))), meta)


class Autosaver:
    """Saves a session when it has changed and ``interval`` seconds have passed since the last
    save (the dock ticks it with a timer), or at once with :meth:`save_now` (image change)."""

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

    def save_now(self) -> bool:
        """Save now if anything changed since the last save."""
        if not self.dirty:
            return False
        generation = self.session.generation
        self.last_seconds = self.store.save(self.session, self.meta)
        self.saved_generation, self.last_save = generation, self._clock()
        return True
