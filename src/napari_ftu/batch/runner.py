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
import io
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from napari_ftu.atomic import write_text
from napari_ftu.batch.bands import band_plan, finish_bands, run_slide_in_process, segment_band
from napari_ftu.batch.cluster import SchedulerAccess, batch_client
from napari_ftu.batch.plan import BatchOptions, SlideJob, file_sha256, pending, read_json
from napari_ftu.batch.slide import batch_card, segment_slide
from napari_ftu.errors import InputError
from napari_ftu.formats.datasets.batch_output import DONE, SUMMARY
from napari_ftu.measure.summary import SUMMARY_COLUMNS as MEASURED
from napari_ftu.steps import BatchProgress

RUN = "batch.json"  # the settings of the batch that wrote this folder and hashes of its combined outputs
COMBINED = "predictions.csv"
SUMMARY_COLUMNS = ["id", "status", "n_objects", "height", "width", "megapixels", "um_per_px", "downsample",
                   "bands", "tiles", "seconds", "attempts", "worker", "error", "source",
                   *[c for c in MEASURED if c != "n_objects"]]


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
    from napari_ftu.models.loading import check_trust, model_fingerprint

    check_trust(options.model, options.trust_model)  # refused up front, not once per slide
    from napari_ftu.models.backends import prepare

    prepare(options.model, options.device, options.backend)  # one export for all workers, not one each
    if options.model_sha256 is None:  # hashed once per run; the markers and workers' caches use it
        options = replace(options, model_sha256=model_fingerprint(options.model))
    options.segment.resolve(batch_card(options))  # options the model cannot take (or a cells classifier): up front too
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
    record = read_json(out / RUN)
    record = record if isinstance(record, dict) else None
    if record is not None and record.get("settings") != options.signature():
        raise InputError(f"{out}: holds the results of a batch with other settings or another model (see {RUN}); "
                         f"pass --overwrite to replace them, or choose another --out")
    for name in (COMBINED, SUMMARY):
        path = out / name
        if path.exists() or path.is_symlink():
            recorded = (record or {}).get("outputs")
            if not isinstance(recorded, dict) or recorded.get(name) != file_sha256(path):
                raise InputError(f"{path} exists and was not written by a batch into this folder, or was changed "
                                 f"since; pass --overwrite to replace it")


def _write_run(out: Path, options: BatchOptions, outputs: dict | None = None) -> None:
    record = read_json(out / RUN)
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
    _write_run(out, options, {Path(p).name: file_sha256(Path(p)) for p in written})
    return written
