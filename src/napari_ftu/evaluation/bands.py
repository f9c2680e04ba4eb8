"""Two large label images scored band by band: the overlap table (from which every metric of
:mod:`.evaluate` derives) is summed over bands of rows, so two 40 000 x 40 000 label TIFFs cost
a few bands, not two int32 images. Binary masks become connected components as
:func:`~napari_ftu.formats.annotations.instances_of` numbers them (4-connected, in raster
order of their first pixel), joined across bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ftu.errors import InputError
from napari_ftu.evaluation.metrics import Overlap

BAND_PIXELS = 2**24  # pixels of one band of rows, per image
BANDED_ABOVE_PX = 2**26  # label images larger than this (8192 x 8192) are scored by bands
TIFF_SUFFIXES = (".tif", ".tiff")


def banded_pair(pred, truth, pred_format=None, truth_format=None) -> bool:
    """Whether ``pred`` and ``truth`` are two label TIFFs large enough to be scored by bands
    (smaller ones, and any other input, take :func:`~.evaluate.evaluate_paths`)."""
    from napari_ftu.formats.export import format_of

    paths = [Path(pred), Path(truth)]
    if pred_format not in (None, "ome-tiff") or truth_format not in (None, "ome-tiff"):
        return False
    if not all(p.is_file() and p.name.lower().endswith(TIFF_SUFFIXES) and format_of(p) in (None, "ome-tiff")
               for p in paths):
        return False
    shapes = [_shape(p) for p in paths]
    return max(s[0] * s[1] for s in shapes) > BANDED_ABOVE_PX


def _shape(path: Path) -> tuple:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tuple(int(n) for n in tif.series[0].levels[0].shape[:2])
    except Exception:  # not a TIFF we can read here: the usual path gives its error
        return (0, 0)


def evaluate_banded(pred, truth, iou_threshold: float = 0.5, ap_iou: float = 0.6):
    """:func:`~.evaluate.evaluate_paths` of two label TIFFs, read a band of rows at a time;
    the same rows, summary and (empty) missing list."""
    from napari_ftu.evaluation.evaluate import ImageResult, _class_result, summarize
    from napari_ftu.formats.annotations import safe_id
    from napari_ftu.io.slides import open_slide

    slides = [open_slide(Path(pred)), open_slide(Path(truth))]
    try:
        levels = [s.levels[0] for s in slides]
        shapes = [tuple(int(n) for n in lv.shape[:2]) for lv in levels]
        image_id = safe_id(slides[1].name)
        if shapes[0] != shapes[1]:
            raise InputError(f"{image_id}: prediction is {shapes[0][0]} x {shapes[0][1]}, "
                             f"ground truth {shapes[1][0]} x {shapes[1][1]}")
        rows = max(1, BAND_PIXELS // max(shapes[0][1], 1))
        table = overlap_table_banded(levels[0], levels[1], rows)
    finally:
        for s in slides:
            s.close()
    scores = np.ones(len(table.pred_ids))  # label images carry no confidences (Annotations' default 1)
    result = ImageResult(image_id, "")
    result.classes["all"] = _class_result(table, scores, iou_threshold, ap_iou)
    return result.rows(), summarize([result]), []


def _bands(level, rows: int):
    for r0 in range(0, int(level.shape[0]), rows):
        block = np.asarray(level[r0 : r0 + rows])
        yield block[..., 0] if block.ndim == 3 else block


def _values(level, rows: int) -> np.ndarray:
    """The distinct values of a label image, up to three (enough to tell a binary mask)."""
    seen = np.zeros(0, np.int64)
    for block in _bands(level, rows):
        seen = np.union1d(seen, np.unique(block).astype(np.int64))
        if seen.size > 2:
            break
    return seen


class _Side:
    """One label image as instance labels band by band: values as they are, or a binary mask's
    connected components numbered as ``instances_of`` numbers them."""

    def __init__(self, level, rows: int):
        self.level, self.rows = level, rows
        self.binary = _values(level, rows).size <= 2
        if self.binary:
            self._join()

    def _join(self):
        from scipy import ndimage as ndi
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n, above, links, self.offsets = 0, None, [], []
        for block in _bands(self.level, self.rows):
            lab, k = ndi.label(block != 0)
            lab = np.where(lab > 0, lab + n, 0)
            if above is not None:
                both = (above > 0) & (lab[0] > 0)
                links.append(np.stack([above[both], lab[0][both]]))
            above = lab[-1].copy()
            self.offsets.append(n)
            n += k
        pairs = np.concatenate(links, axis=1) if links else np.zeros((2, 0), np.int64)
        graph = coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(n + 1, n + 1))
        _, comp = connected_components(graph, directed=False)
        first = np.full(comp.max() + 1, np.iinfo(np.int64).max)
        np.minimum.at(first, comp[1:], np.arange(1, n + 1))  # provisional ids run in raster order
        used = np.unique(comp[1:])
        rank = np.zeros(comp.max() + 1, np.int64)
        rank[used[np.argsort(first[used])]] = np.arange(1, used.size + 1)
        self.lut = np.concatenate([[0], rank[comp[1:]]])

    def labels(self):
        from scipy import ndimage as ndi

        if not self.binary:
            for block in _bands(self.level, self.rows):
                yield block.astype(np.int32).astype(np.int64)  # as instances_of: int32 labels
            return
        for block, offset in zip(_bands(self.level, self.rows), self.offsets):
            lab, _ = ndi.label(block != 0)
            yield self.lut[np.where(lab > 0, lab + offset, 0)]


def _counts(parts) -> tuple:
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.concatenate([p[0] for p in parts])
    weights = np.concatenate([p[1] for p in parts])
    ids, inverse = np.unique(keys, return_inverse=True)
    return ids, np.bincount(inverse, weights=weights, minlength=ids.size).astype(np.int64)


def overlap_table_banded(pred_level, truth_level, rows: int) -> Overlap:
    """:func:`~.metrics.overlap_table` of two 2-D label images (arrays or lazy levels, binary
    masks as their components) summed over bands of ``rows`` rows."""
    pred, truth = _Side(pred_level, rows), _Side(truth_level, rows)
    areas = {"p": [], "t": []}
    pairs = []
    for p, t in zip(pred.labels(), truth.labels()):
        for key, lab in (("p", p), ("t", t)):
            ids, counts = np.unique(lab[lab != 0], return_counts=True)
            areas[key].append((ids, counts))
        both = (p != 0) & (t != 0)
        ids, counts = np.unique((p[both] << 32) | t[both], return_counts=True)
        pairs.append((ids, counts))
        del p, t, both
    pred_ids, pred_areas = _counts(areas["p"])
    truth_ids, truth_areas = _counts(areas["t"])
    keys, inter = _counts(pairs)
    return Overlap(pred_ids, pred_areas, truth_ids, truth_areas, np.searchsorted(pred_ids, keys >> 32),
                   np.searchsorted(truth_ids, keys & 0xFFFFFFFF), inter)
