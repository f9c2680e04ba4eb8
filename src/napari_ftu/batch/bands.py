"""Row bands of very large slides: each band a task whose tiles coincide with the whole-slide
grid, then one task that derives the instances over the assembled probability."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_ftu.batch.plan import BatchOptions, SlideJob
from napari_ftu.batch.slide import batch_card, segment_slide, torch_threads, worker_model, write_outputs
from napari_ftu.engine.options import plan_outputs


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


def plan_bands(shape, tile: int, overlap: int, band_rows: int, margin: int = 0) -> tuple[list, list]:
    """Cores ``[c0, c1)`` (multiples of ``band_rows``) and the spans of tile rows that cover them:
    from the last tile row lying wholly above the core to the first lying wholly below it, so
    that the band's own first and last tile rows (whose blending windows differ from the whole
    slide's) touch no owned row. The grid is the whole slide's, with ``margin`` mirrored rows
    above and below it: the first and last spans start before row 0 or end past the last row."""
    from napari_ftu.engine.tiling import tile_starts

    h = int(shape[0])
    starts = [s - margin for s in tile_starts(h + 2 * margin, tile, overlap)]
    cuts = list(range(0, h, band_rows)) + [h]
    cores, spans = [], []
    for c0, c1 in zip(cuts[:-1], cuts[1:]):
        first = max([j for j, s in enumerate(starts) if s + tile <= c0], default=0)
        last = min([j for j, s in enumerate(starts) if s >= c1], default=len(starts) - 1)
        cores.append((c0, c1))
        spans.append((starts[first], min(h + margin, starts[last] + tile)))
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
    from napari_ftu.engine.inference import edge_margins
    from napari_ftu.engine.tile_source import TileSource
    from napari_ftu.io.slides import open_slide

    slide = open_slide(job.path, um_per_px=job.um_per_px)
    try:
        if not plan_outputs(slide.size, slide.size, band_above=options.band_above_px).banded:
            return None  # (banding depends on the slide's size only: no model needed to know)
        card = batch_card(options)
        source = TileSource(slide.levels, slide.um_per_px, card.um_per_px)
    finally:
        slide.close()
    resolved = options.segment.resolve(card)
    tile, overlap = resolved.tile_size, resolved.overlap
    band_rows = max(tile, int(options.band_pixels // max(source.shape[1], 1)))
    cores, spans = plan_bands(source.shape, tile, overlap, band_rows,
                              edge_margins(source.shape, tile, resolved.edge_margin)[0])
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



def segment_band(job: SlideJob, options: BatchOptions, plan: BandPlan, index: int) -> dict:
    """Run the model on one band (its span) and write the rows it owns into the shared store."""
    import zarr

    from napari_ftu.engine.inference import edge_margins, segment
    from napari_ftu.engine.tile_source import TileSource
    from napari_ftu.io.slides import open_slide

    start = time.perf_counter()
    model = worker_model(options)
    slide = open_slide(job.path, um_per_px=job.um_per_px)
    try:
        source = TileSource(slide.levels, slide.um_per_px, model.card.um_per_px)
        resolved = options.segment.resolve(model.card)
        side = edge_margins(source.shape, resolved.tile_size, resolved.edge_margin)[2]
        s0, s1 = plan.spans[index]  # the span on the grid with mirrored margins: only the slide's edges are mirrored
        margins = (max(0, -s0), max(0, s1 - source.shape[0]), side, side)
        s0, s1 = max(0, s0), min(source.shape[0], s1)
        c0, c1 = plan.cores[index]
        levels = [_ModelGridRows(source, s0, s1)]
        if options.segment.skip_background:  # the band's rows of the slide's coarsest level, for tissue detection
            coarse = slide.levels[-1]
            per_row = coarse.shape[0] / source.shape[0]  # coarse rows per model row
            r0, r1 = int(math.floor(s0 * per_row)), max(int(math.ceil(s1 * per_row)), int(math.floor(s0 * per_row)) + 1)
            levels.append(_RowCrop(coarse, r0, min(r1, coarse.shape[0]), source._rgb))
        with torch_threads(options.threads, model):
            seg = segment(levels, model, options.segment, um_per_px=None, full_resolution=False, margins=margins)
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

    from napari_ftu.engine.inference import Segmentation, edge_margins, edge_min_area, relabel_steps
    from napari_ftu.steps import drain

    start = time.perf_counter() - sum(b["seconds"] for b in bands)
    card = batch_card(options)
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
                       min_area_px=(min_area := int(resolved.min_object_um2 / (out_um or card.um_per_px) ** 2)),
                       edge_min_area_px=edge_min_area(min_area, edge_margins(plan.shape, resolved.tile_size,
                                                                             resolved.edge_margin)),
                       class_index=resolved.class_index)
    objects = drain(relabel_steps(seg, resolved.threshold, watershed=resolved.watershed))
    info = {"height": size[0], "width": size[1], "um_per_px": um, "downsample": round(1.0 / plan.factor, 6),
            "bands": len(bands), "tiles": sum(b["tiles"] for b in bands)}
    row = write_outputs(job, Path(out), options, group["labels"], objects, out_um, info, start)
    shutil.rmtree(plan.store, ignore_errors=True)
    return row


def run_slide_in_process(job: SlideJob, out, options: BatchOptions) -> dict:
    """One slide the way the cluster would run it (bands in turn for a large slide)."""
    plan = band_plan(job, out, options)
    if plan is None:
        return segment_slide(job, str(out), options)
    bands = [segment_band(job, options, plan, i) for i in range(len(plan.cores))]
    return finish_bands(job, str(out), options, plan, bands)
