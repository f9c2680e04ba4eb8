"""Which slides a batch runs: the options every worker shares, the slides found in files, folders,
globs or a competition CSV, and the resume markers (``done.json``) that let a rerun skip a slide."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from napari_ftu.engine.options import BAND_ABOVE_PIXELS, BAND_PIXELS, SegmentOptions, check_positive
from napari_ftu.errors import FormatError, InputError, OptionError
from napari_ftu.formats.annotations import safe_id
from napari_ftu.formats.datasets.batch_output import DONE
from napari_ftu.io.backends import is_dicom_folder
from napari_ftu.io.images import file_stem
from napari_ftu.io.slides import is_slide_path

OUTPUTS = ("rle", "labels", "geojson")
DEFAULT_OUTPUTS = ("rle", "labels")
DEFAULT_EXCLUDE = ("*_labels.*", "*_mask.*", "*_masks.*", ".*")


@dataclass(frozen=True)
class SlideJob:
    """One slide to segment: its id (the output folder name), file and known facts."""

    id: str
    path: str
    um_per_px: float | None = None  # from a competition CSV or an override; else the file's
    meta: dict = field(default_factory=dict, hash=False, compare=False)
    stamp: dict | None = field(default=None, hash=False, compare=False)  # the file when planned (slide_stamp)


@dataclass(frozen=True)
class BatchOptions:
    """Everything a worker needs to segment a slide the same way as any other worker."""

    model: str | None = None
    device: str = "auto"
    precision: str = "auto"
    segment: SegmentOptions = field(default_factory=SegmentOptions)  # the same options as one image's
    outputs: tuple = DEFAULT_OUTPUTS
    band_above_px: float = BAND_ABOVE_PIXELS
    band_pixels: float = BAND_PIXELS
    threads: int = 1  # torch threads per slide task: float results are identical only for equal counts
    trust_model: bool = False  # the user consents to running a TorchScript model's code
    backend: str = "auto"  # what runs the model (napari_ftu.models.backends)
    model_sha256: str | None = None  # of the model's files; filled once per run by batch_steps

    def __post_init__(self):
        bad = [o for o in self.outputs if o not in OUTPUTS]
        if bad or not self.outputs:
            raise OptionError(f"unknown outputs {bad}; choose from {', '.join(OUTPUTS)}")
        if not isinstance(self.segment, SegmentOptions):
            raise OptionError(f"segment options must be SegmentOptions, got {type(self.segment).__name__}")
        from napari_ftu.engine.options import check_int

        check_int(self.threads, "threads", 1, 1024)
        for name in ("band_above_px", "band_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise OptionError(f"{name.replace('_', ' ')} must be a finite number > 0, got {value!r}")

    def signature(self) -> dict:
        """What decides a slide's result: a marker written under other settings is not reused."""
        sig = asdict(self)
        for key in ("device", "band_above_px", "band_pixels", "segment", "trust_model", "backend"):  # not results
            sig.pop(key)
        sig.update(self.segment.signature())
        sig["outputs"] = list(self.outputs)
        sig["model"] = str(Path(self.model).resolve()) if self.model else None
        return sig


def is_batch_input(path) -> bool:
    """Whether a ``segment`` argument names many slides: a folder (not a DICOM WSI folder, which
    is one slide), a glob or a CSV."""
    text = str(path)
    folder = Path(text).is_dir() and not is_dicom_folder(Path(text))
    return any(c in text for c in "*?[") or folder or text.lower().endswith(".csv")


def plan_inputs(inputs, images: str | Path | None = None, exclude=DEFAULT_EXCLUDE) -> list[SlideJob]:
    """The slides named by ``inputs``: files, folders (their slide files, not recursive), globs
    and competition CSVs (``id`` column, optional ``pixel_size``; images in ``images`` or the
    CSV's ``<split>_images``/``train`` folder or beside it). Ids must be unique."""
    jobs: list[SlideJob] = []
    for item in [inputs] if isinstance(inputs, (str, Path)) else list(inputs):
        text = str(item)
        if any(c in text for c in "*?["):
            from napari_ftu.io.paths import expand_glob

            paths = expand_glob(text)  # terminates over symlink cycles
            jobs += [_file_job(p) for p in paths if _is_slide(p, exclude)]
        elif text.lower().endswith(".csv"):
            jobs += _csv_jobs(Path(text), images)
        elif is_dicom_folder(Path(text)):
            jobs.append(_file_job(Path(text)))
        elif Path(text).is_dir():
            jobs += [_file_job(p) for p in sorted(Path(text).iterdir()) if _is_slide(p, exclude)]
        elif Path(text).is_file():
            jobs.append(_file_job(Path(text)))
        else:
            raise InputError(f"{text}: no such file or folder")
    seen: dict = {}
    for job in jobs:
        if job.id in seen:
            raise InputError(f"two slides share the id {job.id!r}: {seen[job.id]} and {job.path}")
        seen[job.id] = job.path
    return jobs


def _is_slide(path: Path, exclude) -> bool:
    name = path.name
    return is_slide_path(path) and not any(
        fnmatch.fnmatch(name, pattern) for pattern in exclude)


def _file_job(path: Path) -> SlideJob:
    try:
        image_id = safe_id(file_stem(path))
    except FormatError as exc:
        raise InputError(f"{path}: {exc}") from None
    return SlideJob(image_id, str(path.resolve()))


def _csv_jobs(path: Path, images) -> list[SlideJob]:
    from napari_ftu.formats.csv_formats import read_csv_rows
    from napari_ftu.formats.datasets.base import _find_image

    rows = read_csv_rows(path, ["id"])
    split = path.stem
    folders = [Path(images)] if images else [path.parent / f"{split}_images", path.parent / split,
                                             path.parent / "images", path.parent]
    folder = next((f for f in folders if f.is_dir()), None)
    if folder is None:
        raise InputError(f"{path}: no image folder (looked for {', '.join(str(f) for f in folders)})")
    jobs = []
    for n, row in enumerate(rows, start=2):
        try:
            image_id = safe_id(row["id"])
            um = check_positive(row["pixel_size"], "pixel_size") if row.get("pixel_size") else None
        except (FormatError, ValueError) as exc:
            raise InputError(f"{path}, line {n}: {exc}") from None
        meta = {k: row[k] for k in ("organ", "data_source", "pixel_size") if row.get(k)}
        jobs.append(SlideJob(image_id, str(_find_image(folder, image_id).resolve()), um, meta))
    return jobs


def pending(jobs, out, options: BatchOptions) -> tuple[list, list]:
    """``(to_do, done_rows)``: slides without a matching ``done.json`` and the rows of the others.
    The slides to do carry their stamp, which their markers will record."""
    todo, done = [], []
    for job in jobs:
        job = replace(job, stamp=slide_stamp(job.path))
        row = read_marker(Path(out) / job.id, job, options)
        (todo.append(job) if row is None else done.append(row))
    return todo, done


def slide_stamp(path) -> dict | None:
    """Size and modification time of a slide file: a replaced slide no longer matches its marker."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def read_marker(folder: Path, job: SlideJob, options: BatchOptions) -> dict | None:
    """The summary row of a finished slide, or ``None`` ("redo it") for a missing, malformed,
    stale (other settings, model files or slide) or tampered marker."""
    marker = read_json(folder / DONE)
    if not isinstance(marker, dict) or not isinstance(marker.get("row"), dict):
        return None
    stamp = job.stamp if job.stamp is not None else slide_stamp(job.path)
    if (marker.get("source") != job.path or marker.get("settings") != options.signature()
            or stamp is None or marker.get("slide") != stamp or marker["row"].get("id") != job.id):
        return None
    files, hashes = marker.get("files"), marker.get("sha256")
    if (not isinstance(files, list) or not isinstance(hashes, dict)
            or not all(isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..") for n in files)
            or not all((folder / name).is_file() for name in files)):
        return None
    if "rle" in options.outputs:
        name = f"{job.id}.csv"
        if name not in files or hashes.get(name) != file_sha256(folder / name):
            return None
    return marker["row"]
