"""Batch segmentation of many slides, in this process or on a Dask distributed cluster.

One task per slide (:func:`segment_slide`, a plain function of picklable arguments), so the
same code runs in a loop here, on a :class:`distributed.LocalCluster` sized to the machine, or on
any cluster given by its scheduler address. Slides larger than ``band_above_px`` are split into
row bands of the model grid, one task each, whose tiles coincide with the whole-slide tile grid
(with enough context rows that every kept row saw exactly the tiles it would have seen in one
run), then one task per slide derives the instances over the assembled probability.

Per slide, ``<out>/<id>/`` receives the chosen outputs, each written atomically, and
``done.json`` last: a rerun skips slides whose marker matches the run's settings, the model's
files (sha256) and the slide file (size and modification time), and whose per-slide CSV is
well formed (resume); any other marker, malformed or planted, means "not done". The combined
``predictions.csv`` (``id,rle``) and ``summary.csv`` are written at the end; ``batch.json``
records the settings and the hashes of those two files, so a rerun replaces them only when they
are its own (same settings, unchanged since written), else only with ``overwrite``. A slide
that fails is retried (``retries``), then reported in the summary; it never stops the batch.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import hashlib
import io
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_ftu.atomic import write_text
from napari_ftu.engine.options import BAND_ABOVE_PIXELS, BAND_PIXELS, SegmentOptions, check_positive, plan_outputs
from napari_ftu.errors import FormatError, InputError, OptionError
from napari_ftu.formats.annotations import Annotations, safe_id
from napari_ftu.formats.datasets import DONE, SUMMARY
from napari_ftu.io.images import RASTER_SUFFIXES, TIFF_SUFFIXES, file_stem
from napari_ftu.steps import BatchProgress

RUN = "batch.json"  # the settings of the batch that wrote this folder and hashes of its combined outputs
COMBINED = "predictions.csv"
OUTPUTS = ("rle", "labels", "geojson")
DEFAULT_OUTPUTS = ("rle", "labels")
DEFAULT_EXCLUDE = ("*_labels.*", "*_mask.*", "*_masks.*", ".*")
SUMMARY_COLUMNS = ["id", "status", "n_objects", "height", "width", "megapixels", "um_per_px", "downsample",
                   "bands", "tiles", "seconds", "attempts", "worker", "error", "source"]


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
    backend: str = "auto"  # what runs the model (napari_ftu.engine.backends)
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


@dataclass
class BatchResult:
    rows: list  # one summary row per slide, in input order
    done: int = 0
    failed: int = 0
    skipped: int = 0  # already done by an earlier run
    seconds: float = 0.0
    megapixels: float = 0.0  # of the slides segmented in this run
    workers: int = 0
    outputs: list = field(default_factory=list)

    @property
    def slides_per_minute(self) -> float:
        return 60.0 * (self.done - self.skipped) / self.seconds if self.seconds else 0.0

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {"slides": len(self.rows), "done": self.done, "failed": self.failed, "skipped": self.skipped,
                "seconds": round(self.seconds, 2), "slides_per_minute": round(self.slides_per_minute, 2),
                "megapixels_per_second": round(self.megapixels_per_second, 3), "workers": self.workers,
                "outputs": [str(p) for p in self.outputs],
                "failures": {r["id"]: r["error"] for r in self.rows if r["status"] == "failed"}}


# --- planning ---------------------------------------------------------------------------------


def is_batch_input(path) -> bool:
    """Whether a ``segment`` argument names many slides: a folder, a glob or a CSV."""
    text = str(path)
    return any(c in text for c in "*?[") or Path(text).is_dir() or text.lower().endswith(".csv")


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
        elif Path(text).is_dir():
            jobs += [_file_job(p) for p in sorted(Path(text).iterdir()) if p.is_file() and _is_slide(p, exclude)]
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
    return path.suffix.lower() in TIFF_SUFFIXES + RASTER_SUFFIXES and not any(
        fnmatch.fnmatch(name, pattern) for pattern in exclude)


def _file_job(path: Path) -> SlideJob:
    try:
        image_id = safe_id(file_stem(path))
    except FormatError as exc:
        raise InputError(f"{path}: {exc}") from None
    return SlideJob(image_id, str(path.resolve()))


def _csv_jobs(path: Path, images) -> list[SlideJob]:
    from napari_ftu.formats.csv_formats import read_csv_rows
    from napari_ftu.formats.datasets import _find_image

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


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def read_marker(folder: Path, job: SlideJob, options: BatchOptions) -> dict | None:
    """The summary row of a finished slide, or ``None`` ("redo it") for a missing, malformed,
    stale (other settings, model files or slide) or tampered marker."""
    marker = _read_json(folder / DONE)
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
        if name not in files or hashes.get(name) != _sha256(folder / name):
            return None
    return marker["row"]


# --- the per-slide work (runs in a worker) -----------------------------------------------------



@contextlib.contextmanager
def _torch_threads(n: int, model=None):
    """Run with ``n`` torch threads, as every worker of the batch does (Dask starts its worker
    processes with one OpenMP thread), so a slide gives the same bytes wherever it runs. An ONNX
    Runtime model got its threads when it was loaded (and torch is not imported for it)."""
    if getattr(model, "backend", "torch") != "torch":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _model(options: BatchOptions):
    from napari_ftu.engine.backends import cached

    return cached(options.model, device=options.device, backend=options.backend, precision=options.precision,
                  trust_code=options.trust_model, threads=options.threads)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().name if isinstance(get_worker().name, str) else str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


def segment_slide(job: SlideJob, out: str, options: BatchOptions) -> dict:
    """Segment one slide at full resolution and write its outputs; returns its summary row.

    The model is loaded once per worker process. Raises on failure (Dask retries the task)."""
    from napari_ftu.engine.run import STORE_NAME, segment_slide_steps
    from napari_ftu.steps import drain

    start = time.perf_counter()
    model = _model(options)
    store = Path(out) / job.id / STORE_NAME  # used only when the size rules call for a store
    store.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _torch_threads(options.threads, model):
            seg = drain(segment_slide_steps(job.path, model, options.segment, um_per_px=job.um_per_px, store=store))
        um = seg.um_per_px / seg.downsample if seg.um_per_px else None  # of the slide
        info = {"height": seg.image_shape[0], "width": seg.image_shape[1], "um_per_px": um,
                "downsample": round(seg.downsample, 6), "bands": 1, "tiles": seg.n_tiles}
        return _write_outputs(job, Path(out), options, seg.labels, seg.objects, seg.um_per_px, info, start)
    finally:
        shutil.rmtree(store, ignore_errors=True)


def _write_outputs(job, out: Path, options, labels, objects, out_um, info: dict, start: float) -> dict:
    """The chosen files, each atomically, then ``done.json`` (the marker a rerun trusts)."""
    from napari_ftu.formats.export import export_annotations
    from napari_ftu.io.images import write_labels_ome_tiff

    folder = out / job.id
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    if "labels" in options.outputs:
        files.append(write_labels_ome_tiff(folder / f"{job.id}_labels.ome.tif", labels, out_um).name)
    if {"rle", "geojson"} & set(options.outputs):
        scores = {o["id"]: o["confidence"] for o in objects}
        a = Annotations(job.id, np.asarray(labels), scores=scores, um_per_px=out_um, meta=dict(job.meta))
        if "rle" in options.outputs:
            files.append(export_annotations(a, folder / f"{job.id}.csv", "hubmap", overwrite=True).name)
        if "geojson" in options.outputs:
            files.append(export_annotations(a, folder / f"{job.id}.geojson", "geojson", overwrite=True).name)
    row = {"id": job.id, "status": "done", "n_objects": len(objects), "height": info["height"],
           "width": info["width"], "megapixels": round(info["height"] * info["width"] / 1e6, 3),
           "um_per_px": info["um_per_px"], "downsample": info["downsample"], "bands": info["bands"],
           "tiles": info["tiles"], "seconds": round(time.perf_counter() - start, 3), "attempts": None,
           "worker": _worker_name(), "error": "", "source": job.path, "labels_um_per_px": out_um}
    csv_name = f"{job.id}.csv"
    hashes = {csv_name: _sha256(folder / csv_name)} if csv_name in files else {}
    stamp = job.stamp if job.stamp is not None else slide_stamp(job.path)
    marker = {"source": job.path, "slide": stamp, "settings": options.signature(), "files": files,
              "sha256": hashes, "row": row}
    write_text(folder / DONE, json.dumps(marker, indent=1))
    return row


# --- row bands of very large slides ------------------------------------------------------------


@dataclass(frozen=True)
class BandPlan:
    """Row bands of one slide's model grid: ``cores`` are the rows each band owns; ``spans`` the
    rows it computes (whole tile rows of the slide's grid, so every owned row is exact)."""

    shape: tuple  # model grid (H, W)
    factor: float  # model px per slide px
    cores: tuple
    spans: tuple
    n_classes: int
    store: str


def plan_bands(shape, tile: int, overlap: int, band_rows: int) -> tuple[list, list]:
    """Cores ``[c0, c1)`` (multiples of ``band_rows``) and the spans of tile rows that cover them:
    from the last tile row lying wholly above the core to the first lying wholly below it, so
    that the band's own first and last tile rows (whose blending windows differ from the whole
    slide's) touch no owned row."""
    from napari_ftu.engine.tiling import tile_starts

    h = int(shape[0])
    starts = tile_starts(h, tile, overlap)
    cuts = list(range(0, h, band_rows)) + [h]
    cores, spans = [], []
    for c0, c1 in zip(cuts[:-1], cuts[1:]):
        first = max([j for j, s in enumerate(starts) if s + tile <= c0], default=0)
        last = min([j for j, s in enumerate(starts) if s >= c1], default=len(starts) - 1)
        cores.append((c0, c1))
        spans.append((starts[first], min(h, starts[last] + tile)))
    return cores, spans


class _ModelGridRows:
    """Rows ``y0:y1`` of a slide seen on the model grid, as an array the engine can tile: reads
    go through the whole slide's :class:`TileSource`, so pixels equal a whole-slide run's."""

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, source, y0: int, y1: int):
        self.source, self.y0 = source, y0
        self.shape = (y1 - y0, source.shape[1], 3)

    def __getitem__(self, key):
        rows, cols = (key + (slice(None),) * 2)[:2] if isinstance(key, tuple) else (key, slice(None))
        r0, r1, rs = rows.indices(self.shape[0])
        c0, c1, cs = cols.indices(self.shape[1])
        h, w = r1 - r0, c1 - c0
        block = self.source.read(self.y0 + r0, c0, max(h, w, 1))[:h, :w]
        return block[::rs, ::cs]


class _RowCrop:
    """Rows ``r0:r1`` of a coarse slide level (the band's overview for tissue detection), as RGB."""

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, level, r0: int, r1: int, to_rgb):
        self.level, self.r0, self.to_rgb = level, r0, to_rgb
        self.shape = (r1 - r0, level.shape[1], 3)

    def __getitem__(self, key):
        rows, cols = (key + (slice(None),) * 2)[:2] if isinstance(key, tuple) else (key, slice(None))
        r0, r1, rs = rows.indices(self.shape[0])
        block = np.asarray(self.level[self.r0 + r0 : self.r0 + r1 : rs])
        return self.to_rgb(block)[:, cols]


def band_plan(job: SlideJob, out, options: BatchOptions, create: bool = True) -> BandPlan | None:
    """The bands of a slide with more than ``band_above_px`` pixels (``None`` for smaller ones);
    ``create`` makes the shared zarr store the bands write their rows into."""
    from napari_ftu.engine.tile_source import TileSource
    from napari_ftu.io.slides import open_slide

    slide = open_slide(job.path, um_per_px=job.um_per_px)
    try:
        if not plan_outputs(slide.size, slide.size, band_above=options.band_above_px).banded:
            return None  # (banding depends on the slide's size only: no model needed to know)
        card = _card(options)
        source = TileSource(slide.levels, slide.um_per_px, card.um_per_px)
    finally:
        slide.close()
    resolved = options.segment.resolve(card)
    tile, overlap = resolved.tile_size, resolved.overlap
    band_rows = max(tile, int(options.band_pixels // max(source.shape[1], 1)))
    cores, spans = plan_bands(source.shape, tile, overlap, band_rows)
    store = Path(out) / job.id / "bands.zarr"
    n_classes = len(card.classes)
    if create:
        import zarr

        group = zarr.open_group(str(store), mode="w")
        shape = source.shape
        chunks = (band_rows, min(1024, shape[1]))
        group.create_array("probability", shape=(n_classes, *shape), dtype="uint8", chunks=(1, *chunks), fill_value=0)
        group.create_array("labels", shape=shape, dtype="int32", chunks=chunks, fill_value=0)
    return BandPlan(tuple(source.shape), source.factor, tuple(cores), tuple(spans), n_classes, str(store))


_CARDS: dict = {}


def _card(options: BatchOptions):
    key = (options.model, options.model_sha256)
    if key not in _CARDS:
        _CARDS[key] = _model(replace(options, device="cpu", precision="auto")).card
    return _CARDS[key]


def segment_band(job: SlideJob, options: BatchOptions, plan: BandPlan, index: int) -> dict:
    """Run the model on one band (its span) and write the rows it owns into the shared store."""
    import zarr

    from napari_ftu.engine.inference import segment
    from napari_ftu.engine.tile_source import TileSource
    from napari_ftu.io.slides import open_slide

    start = time.perf_counter()
    model = _model(options)
    slide = open_slide(job.path, um_per_px=job.um_per_px)
    try:
        source = TileSource(slide.levels, slide.um_per_px, model.card.um_per_px)
        s0, s1 = plan.spans[index]
        c0, c1 = plan.cores[index]
        levels = [_ModelGridRows(source, s0, s1)]
        if options.segment.skip_background:  # the band's rows of the slide's coarsest level, for tissue detection
            coarse = slide.levels[-1]
            per_row = coarse.shape[0] / source.shape[0]  # coarse rows per model row
            r0, r1 = int(math.floor(s0 * per_row)), max(int(math.ceil(s1 * per_row)), int(math.floor(s0 * per_row)) + 1)
            levels.append(_RowCrop(coarse, r0, min(r1, coarse.shape[0]), source._rgb))
        with _torch_threads(options.threads, model):
            seg = segment(levels, model, options.segment, um_per_px=None, full_resolution=False)
    finally:
        slide.close()
    prob = seg.probability if seg.probability.ndim == 3 else seg.probability[None]
    core = prob[:, c0 - s0 : c1 - s0]
    quantised = np.clip(np.rint(core * 255), 0, 255).astype(np.uint8)
    zarr.open_group(plan.store, mode="r+")["probability"][:, c0:c1] = quantised
    return {"band": index, "tiles": seg.n_tiles, "skipped": seg.n_skipped, "seconds": time.perf_counter() - start}


def finish_bands(job: SlideJob, out: str, options: BatchOptions, plan: BandPlan, bands: list) -> dict:
    """Instances over the assembled probability (strip by strip), then the slide's outputs."""
    import zarr

    from napari_ftu.engine.inference import Segmentation, relabel_steps
    from napari_ftu.steps import drain

    start = time.perf_counter() - sum(b["seconds"] for b in bands)
    card = _card(options)
    group = zarr.open_group(plan.store, mode="r+")
    from napari_ftu.io.slides import open_slide

    slide = open_slide(job.path, um_per_px=job.um_per_px)
    size, um = slide.size, slide.um_per_px
    slide.close()
    out_um = um / plan.factor if um else None
    resolved = options.segment.resolve(card)
    prob = group["probability"]
    seg = Segmentation(probability=prob, labels=group["labels"],
                       prob_scale=255.0, downsample=1.0 / plan.factor, um_per_px=out_um,
                       min_area_px=int(resolved.min_object_um2 / (out_um or card.um_per_px) ** 2),
                       class_index=resolved.class_index)
    objects = drain(relabel_steps(seg, resolved.threshold, watershed=resolved.watershed))
    info = {"height": size[0], "width": size[1], "um_per_px": um, "downsample": round(1.0 / plan.factor, 6),
            "bands": len(bands), "tiles": sum(b["tiles"] for b in bands)}
    row = _write_outputs(job, Path(out), options, group["labels"], objects, out_um, info, start)
    shutil.rmtree(plan.store, ignore_errors=True)
    return row


def run_slide_in_process(job: SlideJob, out, options: BatchOptions) -> dict:
    """One slide the way the cluster would run it (bands in turn for a large slide)."""
    plan = band_plan(job, out, options)
    if plan is None:
        return segment_slide(job, str(out), options)
    bands = [segment_band(job, options, plan, i) for i in range(len(plan.cores))]
    return finish_bands(job, str(out), options, plan, bands)


# --- clusters ----------------------------------------------------------------------------------


def visible_gpus() -> list[str]:
    """CUDA devices this machine shows (respecting ``CUDA_VISIBLE_DEVICES``); torch is imported
    only where the CUDA driver reports a device."""
    from napari_ftu.engine.backends import gpu_present

    if not gpu_present():
        return []
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        n = 0
    if not n:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in env.split(",") if d.strip()] if env else [str(i) for i in range(n)]
    return ids[:n]


def gpu_worker_spec(devices, host: str = "127.0.0.1") -> dict:
    """One single-threaded worker process per GPU, each seeing only its own device."""
    from distributed import Nanny

    return {f"gpu-{d}": {"cls": Nanny, "options": {"nthreads": 1, "host": host, "resources": {"GPU": 1},
                                                    "env": {"CUDA_VISIBLE_DEVICES": str(d)}}}
            for d in devices}


def _temporary_security():
    """Fresh self-signed TLS credentials held by this process only: the scheduler and workers
    accept no connection without them, so another local user cannot submit tasks (which would
    run as the user who started the batch)."""
    try:
        from distributed.security import Security

        return Security.temporary()
    except ImportError as exc:  # Security.temporary needs the 'cryptography' package
        raise InputError(f"a local Dask cluster needs TLS credentials, which need the 'cryptography' "
                         f"package ({exc})") from None


def local_cluster(n_workers: int | None = None, devices=None, host: str = "127.0.0.1"):
    """A cluster on this machine, secured with temporary TLS credentials (``cluster.security``):
    one worker per GPU (device pinned), else one single-threaded worker process per core (torch
    then uses one thread in each)."""
    from distributed import LocalCluster, Scheduler, SpecCluster

    security = _temporary_security()  # silence_logs=50: workers' log lines (heartbeats lost at close) stay hidden
    devices = visible_gpus() if devices is None else list(devices)
    if devices:
        workers = gpu_worker_spec(devices, host)
        for spec in workers.values():
            spec["options"]["security"] = security
        return SpecCluster(workers=workers, silence_logs=50, security=security,
                           scheduler={"cls": Scheduler, "options": {"host": host, "dashboard": False,
                                                                    "protocol": "tls://", "security": security}})
    n = n_workers or os.cpu_count() or 1
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host=host, dashboard_address=None,
                        silence_logs=50, security=security, protocol="tls://")


@dataclass(frozen=True)
class SchedulerAccess:
    """How to reach an existing Dask scheduler: a ``tls://`` address and this client's
    credentials (CA, certificate, key files), or a plain ``tcp://`` address when the user says
    so explicitly (``insecure``): anyone who can reach such a scheduler runs code on its workers."""

    address: str
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure: bool = False

    def security(self):
        """The client's ``distributed.Security``; :class:`InputError` for an address or set of
        credentials that cannot be used."""
        from distributed.security import Security

        address = self.address.strip()
        scheme = address.split("://", 1)[0].lower() if "://" in address else "tcp"
        creds = {"--tls-ca": self.tls_ca, "--tls-cert": self.tls_cert, "--tls-key": self.tls_key}
        if scheme == "tls":
            missing = [flag for flag, value in creds.items() if not value]
            if missing:
                raise InputError(f"--scheduler {address}: a tls:// scheduler needs this client's credentials: "
                                 f"give {', '.join(missing)}")
            for flag, value in creds.items():
                if not Path(value).is_file():
                    raise InputError(f"{value}: no such file (given as {flag})")
            return Security(tls_ca_file=str(self.tls_ca), tls_client_cert=str(self.tls_cert),
                            tls_client_key=str(self.tls_key), require_encryption=True)
        if scheme == "tcp":
            if not self.insecure:
                raise InputError(f"--scheduler {address}: a plain tcp:// scheduler has no authentication (anyone "
                                 f"who reaches it runs code as its workers' user); use tls:// with --tls-ca, "
                                 f"--tls-cert and --tls-key, or pass --insecure-scheduler if the network is yours")
            if any(creds.values()):
                raise InputError(f"--scheduler {address}: --tls-ca/--tls-cert/--tls-key need a tls:// address")
            return Security()
        raise InputError(f"--scheduler {address}: unsupported address; give tls://HOST:PORT "
                         f"(or tcp://HOST:PORT with --insecure-scheduler)")


def connect(access: SchedulerAccess, timeout: float = 30):
    """A client on an existing scheduler, or a :class:`InputError` saying why not (one line)."""
    from distributed import Client

    security = access.security()
    try:
        return Client(access.address.strip(), timeout=timeout, security=security)
    except (OSError, ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--scheduler {access.address}: cannot connect ({reason})") from None


@contextlib.contextmanager
def batch_client(scheduler: str | SchedulerAccess | None = None, n_workers: int | None = None):
    """A client on ``scheduler`` (an existing cluster: an address or a :class:`SchedulerAccess`),
    else on a new local cluster, secured with temporary TLS credentials and closed afterwards."""
    from distributed import Client

    if scheduler:
        access = scheduler if isinstance(scheduler, SchedulerAccess) else SchedulerAccess(scheduler)
        client = connect(access)
        try:
            yield client
        finally:
            client.close()
        return
    cluster = local_cluster(n_workers)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


# --- the batch ---------------------------------------------------------------------------------


def batch_steps(jobs, out, options: BatchOptions | None = None, client=None,
                scheduler: str | SchedulerAccess | None = None,
                workers: int | None = 0, retries: int = 2, overwrite: bool = False):
    """Segment ``jobs`` into ``out``, yielding :class:`~napari_ftu.steps.BatchProgress` per slide and
    returning a :class:`BatchResult`.

    ``client`` (a ``distributed.Client``) runs the slides there; else ``scheduler`` attaches to a
    cluster, ``workers`` N > 0 starts a local cluster of N workers and ``None`` one sized to the
    machine (:func:`local_cluster`); ``workers=0`` (the default) runs the slides in this process.
    Without ``overwrite``, results of another batch in ``out`` are never replaced (see
    :func:`check_outputs`). Closing the generator cancels what is still queued.
    """
    options = options or BatchOptions()
    from napari_ftu.engine.models import check_trust, model_fingerprint

    check_trust(options.model, options.trust_model)  # refused up front, not once per slide
    from napari_ftu.engine.backends import prepare

    prepare(options.model, options.device, options.backend)  # one export for all workers, not one each
    if options.model_sha256 is None:  # hashed once per run; the markers and workers' caches use it
        options = replace(options, model_sha256=model_fingerprint(options.model))
    options.segment.resolve(_card(options))  # options the model cannot take (or a cells classifier): up front too
    out = Path(out)
    check_outputs(out, jobs, options, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    _write_run(out, options)
    start = time.perf_counter()
    todo, done_rows = pending(jobs, out, options)
    rows = {r["id"]: {**r, "status": "skipped"} for r in done_rows}
    total = len(jobs)
    yield BatchProgress(len(rows), total, None)
    n_workers = 0
    if client is None and not scheduler and workers == 0:
        for job in todo:
            rows[job.id] = _in_process(job, out, options, retries)
            yield BatchProgress(len(rows), total, rows[job.id])
    else:
        with contextlib.ExitStack() as stack:
            if client is None:
                client = stack.enter_context(batch_client(scheduler, workers))
            n_workers = len(client.scheduler_info().get("workers", {}))
            yield from _on_cluster(client, todo, out, options, retries, rows, total)
    ordered = [rows[j.id] for j in jobs]
    result = BatchResult(ordered, workers=n_workers)
    result.done = sum(r["status"] in ("done", "skipped") for r in ordered)
    result.skipped = sum(r["status"] == "skipped" for r in ordered)
    result.failed = sum(r["status"] == "failed" for r in ordered)
    result.megapixels = sum(float(r.get("megapixels") or 0) for r in ordered if r["status"] == "done")
    result.outputs = write_combined(out, jobs, ordered, options)
    result.seconds = time.perf_counter() - start
    return result


def run_batch(jobs, out, options: BatchOptions | None = None, progress=None, **kwargs) -> BatchResult:
    """:func:`batch_steps` to the end; ``progress(finished, total, row)`` after each slide."""
    from napari_ftu.steps import drain

    return drain(batch_steps(jobs, out, options, **kwargs),
                 None if progress is None else lambda e: progress(e.done, e.total, e.row))


def _in_process(job, out, options, retries) -> dict:
    for attempt in range(1, retries + 2):
        try:
            row = run_slide_in_process(job, out, options)
            return {**row, "attempts": attempt}
        except Exception as exc:  # any failure of one slide is reported, never fatal to the batch
            error = _describe(exc, job)
    return _failed(job, error, retries + 1)


def _on_cluster(client, todo, out, options, retries, rows, total):
    from distributed import as_completed

    futures = {}
    for job in todo:
        try:
            plan = band_plan(job, out, options)
        except Exception:  # unreadable here: the slide's own task fails, is retried and reported
            plan = None
        key = f"napari-ftu-{job.id}-{time.time_ns()}"
        if plan is None:
            fut = client.submit(segment_slide, job, str(out), options, key=key, retries=retries, pure=False)
        else:
            bands = [client.submit(segment_band, job, options, plan, i, key=f"{key}-band{i}", retries=retries,
                                   pure=False) for i in range(len(plan.cores))]
            fut = client.submit(finish_bands, job, str(out), options, plan, bands, key=key, retries=retries,
                                pure=False)
        futures[fut] = job
    try:
        for fut in as_completed(list(futures)):
            job = futures.pop(fut)
            try:
                rows[job.id] = fut.result()
            except Exception as exc:  # a failed or killed task: reported, the rest goes on
                rows[job.id] = _failed(job, _describe(exc, job), retries + 1)
            yield BatchProgress(len(rows), total, rows[job.id])
    finally:
        if futures:
            client.cancel(list(futures))


def _describe(exc: BaseException, job: SlideJob) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if job.path in text or Path(job.path).name in text else f"{Path(job.path).name}: {text}"


def _failed(job: SlideJob, error: str, attempts: int) -> dict:
    return {"id": job.id, "status": "failed", "n_objects": None, "error": error, "source": job.path,
            "attempts": attempts}


def check_outputs(out: Path, jobs, options: BatchOptions, overwrite: bool = False) -> None:
    """Refuse, before any work, a batch that would write onto one of its input slides (even
    through a link), and, without ``overwrite``, one that would replace results it did not write:
    a ``predictions.csv`` or ``summary.csv`` not recorded in ``batch.json`` (or changed since),
    or a folder a batch with other settings or another model wrote. Resuming (same settings)
    rewrites its own combined outputs."""
    from napari_ftu.io.paths import refuse_onto_inputs

    names = [COMBINED, SUMMARY, RUN]
    for job in jobs:
        names += [f"{job.id}/{n}" for n in (DONE, f"{job.id}.csv", f"{job.id}_labels.ome.tif", f"{job.id}.geojson")]
    refuse_onto_inputs([out / n for n in names], [j.path for j in jobs])
    if overwrite:
        return
    record = _read_json(out / RUN)
    record = record if isinstance(record, dict) else None
    if record is not None and record.get("settings") != options.signature():
        raise InputError(f"{out}: holds the results of a batch with other settings or another model (see {RUN}); "
                         f"pass --overwrite to replace them, or choose another --out")
    for name in (COMBINED, SUMMARY):
        path = out / name
        if path.exists() or path.is_symlink():
            recorded = (record or {}).get("outputs")
            if not isinstance(recorded, dict) or recorded.get(name) != _sha256(path):
                raise InputError(f"{path} exists and was not written by a batch into this folder, or was changed "
                                 f"since; pass --overwrite to replace it")


def _write_run(out: Path, options: BatchOptions, outputs: dict | None = None) -> None:
    record = _read_json(out / RUN)
    kept = record.get("outputs") if isinstance(record, dict) and record.get("settings") == options.signature() else None
    write_text(out / RUN, json.dumps({"settings": options.signature(),
                                      "outputs": outputs if outputs is not None else (kept or {})}, indent=1))


def write_combined(out: Path, jobs, rows, options: BatchOptions) -> list:
    """``predictions.csv`` (the per-slide ``id,rle`` rows in input order) and ``summary.csv``,
    then their hashes in ``batch.json`` (what lets a resumed run replace them)."""
    written = []
    if "rle" in options.outputs:
        lines = ["id,rle\n"]
        for job, row in zip(jobs, rows):
            if row["status"] in ("done", "skipped"):
                text = (out / job.id / f"{job.id}.csv").read_text(encoding="utf-8")
                lines.append(text.split("\n", 1)[1])
        written.append(write_text(out / COMBINED, "".join(lines)))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    written.append(write_text(out / SUMMARY, buf.getvalue()))
    _write_run(out, options, {Path(p).name: _sha256(Path(p)) for p in written})
    return written
