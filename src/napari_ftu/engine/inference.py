"""Tile-wise segmentation of images and whole slides as a generator, so that any caller can show
progress, display finished rows and cancel.

``segment_steps`` yields events and returns a :class:`Segmentation`:

- :class:`~napari_ftu.steps.TileProgress` after each batch of tiles (total counts tiles with tissue);
- :class:`~napari_ftu.steps.Outputs` once: the array the rows are written into;
- :class:`~napari_ftu.steps.Band` when output rows ``y0:y1`` of the probability are final
  (progressive display);
- :class:`~napari_ftu.steps.LabelProgress` while instances are derived.

The slide is read tile by tile at the model's µm/px from the best pyramid level
(:mod:`.tile_source`); glass tiles are skipped (:mod:`.tissue`); a background thread prefetches
tiles so the model never waits for the disk; predictions are blended without seams and streamed
a row of tiles at a time into the output (:mod:`.tiling`), a zarr store for slides, so memory does
not grow with slide size; instances come from a strip-wise labeller (:mod:`.components`).
Closing the generator (what a cancelled worker does) stops within one batch and ends the
prefetch thread.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ftu.engine.components import label_steps
from napari_ftu.engine.options import SegmentOptions, check_positive, plan_outputs
from napari_ftu.engine.postprocess import objects_from, split_touching
from napari_ftu.engine.tile_source import TileSource
from napari_ftu.engine.tiling import Stitcher, tile_grid
from napari_ftu.engine.tissue import tiles_with_tissue, tissue_mask
from napari_ftu.io.resample import resample_image
from napari_ftu.models.loading import FTUModel, is_out_of_memory
from napari_ftu.steps import Band, Outputs, TileProgress, drain


@dataclass
class Segmentation:
    """What a run produced, and how: the outputs plus what is needed to read them back.

    Parameters
    ----------
    probability : array-like
        ``(C, H, W)``, or ``(H, W)`` for one class: numpy float32, or a zarr array in a store.
    labels : array-like
        ``(H, W)`` int32 instances of the chosen class, numpy or zarr.
    objects : list of dict
        The object table (:func:`~napari_ftu.engine.postprocess.object_table`).
    uncertainty : array-like, optional
        ``(H, W)`` standard deviation of the TTA views (with ``tta``).
    prob_scale : float
        The stored value of probability 1 (255 for uint8 stores).
    downsample : float
        Slide pixels per output pixel.
    um_per_px : float, optional
        Pixel size of the output grid.
    image_shape : tuple
        ``(H, W)`` of the image (level 0).
    threshold, min_area_px, class_index
        The settings the labels were made with (re-thresholding starts from them).
    edge_min_area_px : int, optional
        The smallest object kept where it touches the image's edge (half of ``min_area_px``
        when the run had edge margins: a cut object shows only part of itself).
    device : str
        Where the model ran.
    backend : str
        What ran it: ``"torch"`` or ``"onnxruntime"``.
    seconds, n_tiles, n_skipped : float, int, int
        Time, tiles run and background tiles skipped.
    batch_size : int
        Tiles per model call after any out-of-memory halving.
    store : Path, optional
        The zarr store folder when outputs stream to disk.
    covered : tuple of int, optional
        ``(row0, row1, col0, col1)`` of the outputs that computed tiles cover: outside it the
        probability is 0, so labelling skips it (skipped glass). ``None``: everywhere.
    """
    probability: object  # (C, H, W) or (H, W) for one class: numpy float32, or a zarr array in a store
    labels: object  # (H, W) int32 instances of the chosen class, numpy or zarr
    objects: list = field(default_factory=list)
    uncertainty: object = None  # (H, W) std of the TTA views (with ``tta``)
    prob_scale: float = 1.0  # the stored value of probability 1 (255 for uint8 stores)
    downsample: float = 1.0  # slide pixels per output pixel
    um_per_px: float | None = None  # of the output grid
    image_shape: tuple = ()  # (H, W) of the image (level 0)
    threshold: float = 0.5
    min_area_px: int = 0
    edge_min_area_px: int | None = None  # objects touching the image's edge: kept from this size
    class_index: int = 0
    device: str = "cpu"
    backend: str = "torch"
    seconds: float = 0.0
    n_tiles: int = 0
    n_skipped: int = 0
    batch_size: int = 0  # after any out-of-memory halving
    store: Path | None = None
    covered: tuple | None = None  # (row0, row1, col0, col1): the probability is 0 outside

    def class_probability(self):
        """The 2-D probability of the chosen class (a lazy view for stores)."""
        prob = self.probability
        if prob.ndim == 2:
            return prob
        return prob[self.class_index] if isinstance(prob, np.ndarray) else _ClassView(prob, self.class_index)


class _ClassView:
    """One class of a ``(C, H, W)`` zarr array, read only where indexed."""

    def __init__(self, array, index: int):
        self.array, self.index = array, index
        self.shape, self.dtype, self.ndim = tuple(array.shape[1:]), array.dtype, 2

    def __getitem__(self, key):
        return self.array[(self.index,) + (key if isinstance(key, tuple) else (key,))]


def segment_steps(image, model: FTUModel, options: SegmentOptions | None = None, *, um_per_px: float | None = None,
                  store: str | Path | None = None, full_resolution: bool | None = None, margins=None, **changes):
    """Segment ``image`` (an array, or a list of pyramid levels, full resolution first) as the
    engine's generator; :func:`napari_ftu.engine.run.segment_slide_steps` decides ``store`` and
    ``full_resolution`` for slides and files.

    ``options`` (:class:`SegmentOptions`, with any ``changes`` applied) are resolved against
    the model card here. ``um_per_px`` is the pixel size of the image (level 0); ``None`` means
    it already matches the model. With ``store`` (a folder) probability and labels are written
    there as zarr (probability as ``options.prob_dtype``); otherwise they are numpy arrays.
    ``full_resolution`` returns outputs at the image's own size instead of the model grid
    (default: for one in-memory array, by :func:`plan_outputs`).

    Parameters
    ----------
    image : array-like or list of array-like
        One array, or pyramid levels full resolution first.
    model : FTUModel
    options : SegmentOptions, optional
        Defaults to the model card's settings.
    um_per_px : float, optional
        Pixel size of level 0.
    store : str or Path, optional
        Folder of the zarr outputs.
    full_resolution : bool, optional
        Outputs at the image's size rather than the model grid.
    margins : tuple of int, optional
        Mirrored model pixels past the top, bottom, left and right edges (default: the
        options' ``edge_margin`` on every side); a band of a slide mirrors only the slide's edges.
    **changes
        Fields of ``options`` to replace for this run.

    Yields
    ------
    TileProgress, LabelProgress, Band
        Progress, and finished bands of rows for viewers that draw as the run goes.

    Returns
    -------
    Segmentation
    """
    start = time.perf_counter()
    card = model.card
    opts = SegmentOptions.of(options, **changes).resolve(card)
    um_per_px = check_positive(um_per_px, "the image's µm/px")
    tile, overlap, threshold, class_index = opts.tile_size, opts.overlap, opts.threshold, opts.class_index
    batch_size, tta = opts.batch_size, opts.tta
    source = TileSource(image, um_per_px, card.um_per_px)
    # Tiles run over the image with mirrored margins, so an object cut by the image's edge gets
    # context (its mirror image) as objects inside do; the margins are cut off the outputs.
    top, bottom, left, right = margins if margins is not None else edge_margins(source.shape, tile, opts.edge_margin)
    padded = (source.shape[0] + top + bottom, source.shape[1] + left + right)
    edge = "symmetric" if any((top, bottom, left, right)) else "reflect"
    grid = [(y - top, x - left) for y, x in tile_grid(padded, tile, overlap)]  # image coordinates
    keep = np.ones(len(grid), bool)
    if opts.skip_background:
        thumb, scale = source.thumbnail()
        keep = tiles_with_tissue(tissue_mask(thumb), scale, grid, tile, margin_px=overlap)
    todo = [g for g, k in zip(grid, keep) if k]

    n_classes = len(card.classes)
    out = _Outputs(source.shape, n_classes, tta, store, opts.prob_dtype, tile - overlap)
    bands: list = []

    def finished(y0, y1):
        y0, y1 = max(0, y0 - top), min(source.shape[0], y1 - top)
        if y1 > y0:
            bands.append(Band(y0, y1))

    stitcher = Stitcher(padded, n_classes + int(tta), tile, overlap, _Cropped(out.write, top, left, source.shape),
                        opts.blend, done=finished)
    reader = _Prefetcher(source, todo, tile, batch_size, opts.prefetch, edge)
    done = 0
    try:  # from here on, closing the generator (cancel) must end the reader thread
        yield TileProgress(0, len(todo))
        yield Outputs(out.probability, 1.0 / source.factor)  # filled as rows finish
        for coords, tiles in reader:
            i = 0
            while i < len(coords):
                try:
                    pred = _predict(model, tiles[i : i + batch_size], tta)
                except Exception as exc:
                    if not is_out_of_memory(exc) or batch_size == 1:
                        raise
                    batch_size //= 2  # halve and retry the same tiles
                    _empty_cache(model)
                    continue
                for (y, x), p in zip(coords[i : i + len(pred)], pred):
                    stitcher.add(y + top, x + left, p)
                i += len(pred)
                done += len(pred)
                yield TileProgress(done, len(todo))
                yield from _take(bands)
        stitcher.finish()
        yield from _take(bands)
    finally:
        reader.close()
    del stitcher  # its band of tile rows is not needed while instances are derived

    # Outputs at the image's own size when that is cheap, else on the model grid.
    in_memory = isinstance(image, np.ndarray) or (isinstance(image, (list, tuple)) and len(image) == 1
                                                  and isinstance(image[0], np.ndarray))
    if full_resolution is None:
        full_resolution = in_memory and store is None and plan_outputs(source.full_shape, source.shape).full_resolution
    prob, unc, downsample = out.probability, out.uncertainty, 1.0 / source.factor
    if full_resolution and source.shape != source.full_shape:
        prob = np.stack([resample_image(np.asarray(p, np.float32), source.full_shape) for p in prob])
        unc = None if unc is None else resample_image(np.asarray(unc, np.float32), source.full_shape)
        out.replace(prob, unc)
        prob, unc, downsample = out.probability, out.uncertainty, 1.0
    covered = _covered(todo, tile, source.shape, prob.shape[-2:])
    out_um = um_per_px * downsample if um_per_px else None
    pixel_um2 = (out_um or card.um_per_px) ** 2
    min_area = int(opts.min_object_um2 / pixel_um2)
    seg = Segmentation(
        probability=prob[0] if n_classes == 1 and isinstance(prob, np.ndarray) else prob,
        labels=out.labels,
        uncertainty=unc,
        prob_scale=out.scale,
        downsample=downsample,
        um_per_px=out_um,
        image_shape=tuple(source.full_shape),
        threshold=threshold,
        min_area_px=min_area,
        edge_min_area_px=edge_min_area(min_area, (top, bottom, left, right)),
        class_index=class_index,
        device=str(model.device),
        backend=getattr(model, "backend", "torch"),
        n_tiles=len(todo),
        n_skipped=len(grid) - len(todo),
        batch_size=batch_size,
        store=out.path,
        covered=covered,
    )
    seg.objects = yield from relabel_steps(seg, threshold, watershed=opts.watershed)
    seg.seconds = time.perf_counter() - start
    return seg


def relabel_steps(seg: Segmentation, threshold: float, watershed: bool = False):
    """Derive instances again from the cached probability (no model run): writes ``seg.labels``
    in place, sets ``seg.threshold``; yields label progress, returns the object table.

    Parameters
    ----------
    seg : Segmentation
        A finished run; its labels are rewritten.
    threshold : float
        The new probability threshold (0..1).
    watershed : bool
        Split touching objects.

    Yields
    ------
    LabelProgress

    Returns
    -------
    list of dict
        The new object table.
    """
    prob = seg.class_probability()
    box = seg.covered if seg.threshold > 0 else None  # labels from a threshold of 0 cover everything
    inst = yield from label_steps(prob, threshold, seg.min_area_px, seg.labels,
                                  strip=_strip_rows(prob.shape[1]), scale=seg.prob_scale, box=box,
                                  edge_min_area_px=seg.edge_min_area_px)
    objects = objects_from(inst, seg.um_per_px)
    if watershed and objects:
        radius = np.sqrt(max(seg.min_area_px, 16) / np.pi)
        objects = split_touching(seg.labels, prob, objects, radius, seg.prob_scale, seg.um_per_px)
    seg.threshold = threshold
    return objects


def segment(image, model: FTUModel, options: SegmentOptions | None = None, progress=None, **kwargs) -> Segmentation:
    """Run :func:`segment_steps` to the end; ``progress(done, total)`` is called per tile batch.

    Parameters
    ----------
    image, model, options
        As for :func:`segment_steps`.
    progress : callable, optional
        ``progress(done, total)``, for callers without an event loop.
    **kwargs
        The keyword arguments of :func:`segment_steps`.

    Returns
    -------
    Segmentation
    """
    report = None if progress is None else (
        lambda e: progress(e.done, e.total) if isinstance(e, TileProgress) else None)
    return drain(segment_steps(image, model, options, **kwargs), report)


def relabel(seg: Segmentation, threshold: float, watershed: bool = False) -> Segmentation:
    """:func:`relabel_steps` run to the end.

    Parameters
    ----------
    seg, threshold, watershed
        As for :func:`relabel_steps`.

    Returns
    -------
    Segmentation
        ``seg``, with new labels and object table.
    """
    seg.objects = drain(relabel_steps(seg, threshold, watershed))
    return seg


def edge_margins(shape, tile: int, margin: int) -> tuple:
    """Mirrored margins (top, bottom, left, right) of an image of ``shape`` on the model grid:
    ``margin`` along an axis that one tile spans, 0 along longer ones. Over a longer axis the
    margin would shift the whole tile grid, and the built-in model's objects move with where
    tiles cut them (ccf test tiles: pixel Dice 0.905 with the grid as it is, 0.888 shifted by
    the overlap; docs/models-and-training.md).

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` on the model grid.
    tile : int
        Tile size.
    margin : int
        The options' ``edge_margin``.

    Returns
    -------
    tuple of int
    """
    rows, cols = (margin if n <= tile else 0 for n in shape[:2])
    return rows, rows, cols, cols


def edge_min_area(min_area_px: int, margins) -> int | None:
    """The smallest object kept at the image's edge: half the minimum where edges are mirrored
    (a cut object with its mirror image would pass), else the minimum.

    Parameters
    ----------
    min_area_px : int
        The minimum object area inside the image.
    margins : tuple of int
        The run's mirrored margins (:func:`edge_margins`).

    Returns
    -------
    int or None
        ``None``: the same minimum everywhere.
    """
    return min_area_px // 2 if any(margins) else None


def _take(events: list):
    while events:
        yield events.pop(0)


def _covered(todo: list, tile: int, grid_shape, out_shape) -> tuple:
    """The box of the outputs that the computed tiles cover, in output pixels (a pixel wider
    when the outputs were resampled from the model grid, for interpolation)."""
    if not todo:
        return (0, 0, 0, 0)
    ys, xs = np.array(todo).T
    box = np.array([ys.min(), ys.max() + tile, xs.min(), xs.max() + tile], np.float64)
    box = np.maximum(box, 0)  # tiles in the mirrored margins start before the image
    if tuple(out_shape) == tuple(grid_shape):
        return tuple(int(v) for v in np.minimum(box, np.repeat(grid_shape, 2)))
    fy, fx = out_shape[0] / grid_shape[0], out_shape[1] / grid_shape[1]
    my, mx = int(np.ceil(fy)) + 2, int(np.ceil(fx)) + 2
    box = np.floor(box * [fy, fy, fx, fx]) + [-my, my, -mx, mx]
    return tuple(int(v) for v in np.clip(box, 0, np.repeat(out_shape, 2)))


def _strip_rows(width: int) -> int:
    """Rows per labelling strip: about 4 megapixels (a few hundred MB of temporaries)."""
    return max(64, int(4e6 // max(width, 1)))


def _predict(model: FTUModel, tiles: np.ndarray, tta: bool) -> np.ndarray:
    if not tta:
        return model.predict(tiles)
    mean, std = model.predict(tiles, tta=True, with_std=True)
    return np.concatenate([mean, std[:, :1]], axis=1)  # uncertainty of the first class


def _empty_cache(model: FTUModel) -> None:
    if model.device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


class _Outputs:
    """Where the stitched rows go: numpy arrays, or zarr arrays in ``store`` chunked by tile rows."""

    def __init__(self, shape, n_classes: int, tta: bool, store, prob_dtype: str, step: int):
        self.path = None if store is None else Path(store)
        self.n_classes = n_classes
        if self.path is None:
            self.scale = 1.0
            self.probability = np.zeros((n_classes, *shape), np.float32)
            self.uncertainty = np.zeros(shape, np.float32) if tta else None
            self.labels = np.zeros(shape, np.int32)
            return
        import zarr

        self.scale = 255.0 if prob_dtype == "uint8" else 1.0
        self.group = zarr.open_group(str(self.path), mode="w")
        rows = max(64, min(step, shape[0]))
        cols = max(64, min(1024, shape[1]))
        self.probability = self.group.create_array("probability", shape=(n_classes, *shape), dtype=prob_dtype,
                                                   chunks=(1, rows, cols), fill_value=0)
        self.uncertainty = (self.group.create_array("uncertainty", shape=shape, dtype=prob_dtype,
                                                    chunks=(rows, cols), fill_value=0) if tta else None)
        self.labels = self.group.create_array("labels", shape=shape, dtype="int32", chunks=(rows, cols),
                                              fill_value=0)

    def write(self, y0: int, x0: int, block: np.ndarray) -> None:
        rows, cols = slice(y0, y0 + block.shape[1]), slice(x0, x0 + block.shape[2])
        self.probability[:, rows, cols] = self._encode(block[: self.n_classes])
        if self.uncertainty is not None:
            self.uncertainty[rows, cols] = self._encode(block[self.n_classes])

    def replace(self, prob: np.ndarray, unc) -> None:
        """Outputs resampled to full resolution (in memory only)."""
        self.probability, self.uncertainty = prob, unc
        self.labels = np.zeros(prob.shape[1:], np.int32)

    def _encode(self, block):
        if self.scale == 255.0:
            return np.clip(np.rint(block * 255), 0, 255).astype(np.uint8)
        return block


class _Cropped:
    """A stitcher's sink on the image with margins: blocks shifted to image coordinates, the
    margins cut off."""

    def __init__(self, sink, top: int, left: int, shape):
        self.sink, self.top, self.left, self.shape = sink, top, left, shape

    def __call__(self, y0: int, x0: int, block: np.ndarray) -> None:
        y0, x0 = y0 - self.top, x0 - self.left
        a, b = max(0, -y0), min(block.shape[1], self.shape[0] - y0)
        c, d = max(0, -x0), min(block.shape[2], self.shape[1] - x0)
        if b > a and d > c:
            self.sink(y0 + a, x0 + c, block[:, a:b, c:d])


class _Prefetcher:
    """Reads batches of tiles in a background thread, a few batches ahead of the model."""

    def __init__(self, source: TileSource, coords: list, tile: int, batch: int, depth: int, edge: str = "reflect"):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source, coords, tile, batch, edge), daemon=True,
                                        name="napari-ftu tile reader")
        self._thread.start()

    def _run(self, source, coords, tile, batch, edge):
        try:
            for i in range(0, len(coords), batch):
                chunk = coords[i : i + batch]
                item = (chunk, np.stack([source.read(y, x, tile, edge) for y, x in chunk]))
                if not self._put(item):
                    return
            self._put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
