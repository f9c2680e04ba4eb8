"""The per-slide work, run in a worker: the model loaded once per process, one slide segmented
whole, and its outputs written atomically with the marker last."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_ftu.atomic import write_text
from napari_ftu.batch.plan import BatchOptions, SlideJob, file_sha256, slide_stamp
from napari_ftu.formats.annotations import Annotations
from napari_ftu.formats.datasets.batch_output import DONE


@contextlib.contextmanager
def torch_threads(n: int, model=None):
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


def worker_model(options: BatchOptions):
    """The batch's model, loaded once per worker process."""
    from napari_ftu.models.backends import cached

    return cached(options.model, device=options.device, backend=options.backend, precision=options.precision,
                  trust_code=options.trust_model, threads=options.threads)


def worker_name() -> str:
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
    model = worker_model(options)
    store = Path(out) / job.id / STORE_NAME  # used only when the size rules call for a store
    store.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch_threads(options.threads, model):
            seg = drain(segment_slide_steps(job.path, model, options.segment, um_per_px=job.um_per_px, store=store))
        um = seg.um_per_px / seg.downsample if seg.um_per_px else None  # of the slide
        info = {"height": seg.image_shape[0], "width": seg.image_shape[1], "um_per_px": um,
                "downsample": round(seg.downsample, 6), "bands": 1, "tiles": seg.n_tiles}
        return write_outputs(job, Path(out), options, seg.labels, seg.objects, seg.um_per_px, info, start)
    finally:
        shutil.rmtree(store, ignore_errors=True)


def write_outputs(job, out: Path, options, labels, objects, out_um, info: dict, start: float) -> dict:
    """The chosen files, each atomically, then ``done.json`` (the marker a rerun trusts)."""
    from napari_ftu.formats.export import export_annotations
    from napari_ftu.io.images import write_labels_ome_tiff

    folder = out / job.id
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    if "labels" in options.outputs:
        files.append(write_labels_ome_tiff(folder / f"{job.id}_labels.ome.tif", labels, out_um).name)
    measured = [] if "geojson" in options.outputs else None
    summary = _measured(job, labels, objects, out_um, options, measured)
    if {"rle", "geojson"} & set(options.outputs):
        from napari_ftu.measure.run import geojson_measurements

        scores = {o["id"]: o["confidence"] for o in objects}
        a = Annotations(job.id, np.asarray(labels), scores=scores, um_per_px=out_um, meta=dict(job.meta))
        a.meta["measurements"] = geojson_measurements(measured or [])
        if "rle" in options.outputs:
            files.append(export_annotations(a, folder / f"{job.id}.csv", "hubmap", overwrite=True).name)
        if "geojson" in options.outputs:
            files.append(export_annotations(a, folder / f"{job.id}.geojson", "geojson", overwrite=True).name)
    row = {"id": job.id, "status": "done", "n_objects": len(objects), "height": info["height"],
           "width": info["width"], "megapixels": round(info["height"] * info["width"] / 1e6, 3),
           "um_per_px": info["um_per_px"], "downsample": info["downsample"], "bands": info["bands"],
           "tiles": info["tiles"], "seconds": round(time.perf_counter() - start, 3), "attempts": None,
           "worker": worker_name(), "error": "", "source": job.path, "labels_um_per_px": out_um}
    row.update(summary)
    csv_name = f"{job.id}.csv"
    hashes = {csv_name: file_sha256(folder / csv_name)} if csv_name in files else {}
    stamp = job.stamp if job.stamp is not None else slide_stamp(job.path)
    marker = {"source": job.path, "slide": stamp, "settings": options.signature(), "files": files,
              "sha256": hashes, "row": row}
    write_text(folder / DONE, json.dumps(marker, indent=1))
    return row


def _measured(job, labels, objects, out_um, options, rows_out: list | None) -> dict:
    """The measurement summary of the slide's objects (counts, tissue area, density, sizes);
    each object's measurements go to ``rows_out``."""
    from napari_ftu.measure.run import summary_of_labels

    classes = worker_model(options).card.classes  # loaded once per worker: the slide's model
    summary = summary_of_labels(labels, out_um, {o["id"]: o["confidence"] for o in objects}, job.path,
                                ", ".join(classes) if len(classes) == 1 else "FTU", rows_out)
    summary.pop("n_objects")
    return summary


_CARDS: dict = {}


def batch_card(options: BatchOptions):
    """The card of the batch's model (cached per model and its hash)."""
    key = (options.model, options.model_sha256)
    if key not in _CARDS:
        _CARDS[key] = worker_model(replace(options, device="cpu", precision="auto")).card
    return _CARDS[key]
