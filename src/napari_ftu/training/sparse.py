"""Sparse training labels from a review: what the reviewer has looked at, and nothing else.

A slide under review knows three kinds of pixels. *FTU*: objects the reviewer accepted, edited
or drew. *Background*: objects the reviewer rejected, a margin ring around every reviewed
object, and regions marked done ("nothing else here"). *Unknown*: the rest — unreviewed
predictions and everything nobody has looked at yet. The loss ignores unknown pixels
(:func:`~napari_ftu.training.train.sparse_loss`), so a half-reviewed slide teaches what was
reviewed without teaching its unreviewed errors.

Crops are cut around reviewed objects and done regions from the (lazy) slide at the model's
µm/px, so memory is bounded by the crops whatever the slide's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

UNKNOWN = 255  # mask value of pixels the review does not know: no loss, no gradient
FTU_STATUSES = ("accepted", "edited")  # the reviewer says: this is an FTU (drawn objects are "edited")
RING_UM = 16.0  # background margin around each reviewed object: the reviewer saw it when deciding
CROP = 384  # model pixels around a reviewed object (training takes 256-px crops with jitter from it)
MAX_DONE_WINDOWS = 64  # per done region: a whole-slide "nothing else here" is sampled, not read whole
MAX_CROPS = 2000  # ~0.9 GB of 384² RGB + mask crops; more are subsampled (seeded)


@dataclass
class ReviewData:
    """One reviewed image: where its pixels come from and what the review says of them.

    Parameters
    ----------
    levels : list of array-like
        The image (pyramid levels, full resolution first; numpy, zarr or lazy tiles).
    um_per_px : float, optional
        Pixel size of level 0 (None: already at the model's).
    labels : ndarray
        The reviewed labels (a window of the slide, starting at ``offset``).
    statuses : dict
        Object id -> review status (``rejected`` ones are no longer in ``labels``).
    rejected : ndarray, optional
        The rejected objects' pixels (their ids), same shape as ``labels``.
    done : list of Box
        Regions (``labels`` coordinates) the reviewer marked "nothing else here".
    offset : tuple of int
        Where ``labels`` starts in level 0.
    name : str
        The slide's name, for the model card.
    """

    levels: list
    um_per_px: float | None
    labels: np.ndarray
    statuses: dict
    rejected: np.ndarray | None = None
    done: list = field(default_factory=list)
    offset: tuple = (0, 0)
    name: str = "image"

    @property
    def reviewed(self) -> list[int]:
        return [i for i, s in self.statuses.items() if s != "unreviewed"]

    @property
    def n_reviewed(self) -> int:
        return len(self.reviewed) + len(self.done)

    @classmethod
    def from_session(cls, session, levels, um_per_px, name: str = "image") -> ReviewData:
        """From a live :class:`~napari_ftu.review.session.ReviewSession` (the dock's)."""
        return cls(levels, um_per_px, session.labels, {i: r.status for i, r in session.review.rows.items()},
                   session.rejected, list(session.done), session.offset, name)


def sparse_mask(labels, statuses: dict, rejected=None, done=(), ring_px: float = 8.0, box=None) -> np.ndarray:
    """The review's knowledge of ``labels[box]`` as uint8: 1 FTU, 0 background, :data:`UNKNOWN`.

    Reviewed FTUs (:data:`FTU_STATUSES`) are 1; rejected objects, a ring of ``ring_px`` around
    every reviewed object and the ``done`` boxes are 0; unreviewed objects stay unknown even
    inside a done region (nobody decided on them).
    """
    from scipy import ndimage as ndi

    from napari_ftu.boxes import corners

    h, w = labels.shape
    y0, x0, y1, x1 = (0, 0, h, w) if box is None else corners(box)
    pad = int(np.ceil(ring_px)) + 1  # objects just outside the box ring into it
    py0, px0, py1, px1 = max(0, y0 - pad), max(0, x0 - pad), min(h, y1 + pad), min(w, x1 + pad)
    lab = np.asarray(labels[py0:py1, px0:px1])
    ftu_ids = [i for i, s in statuses.items() if s in FTU_STATUSES]
    rej_ids = [i for i, s in statuses.items() if s == "rejected"]
    unrev_ids = [i for i, s in statuses.items() if s == "unreviewed"]
    ftu = np.isin(lab, ftu_ids) if ftu_ids else np.zeros(lab.shape, bool)
    rej = np.zeros(lab.shape, bool)
    if rejected is not None and rej_ids:
        rej = np.isin(np.asarray(rejected[py0:py1, px0:px1]), rej_ids) & (lab == 0)
    out = np.full(lab.shape, UNKNOWN, np.uint8)
    for b in done:
        dy0, dx0, dy1, dx1 = corners(b)
        out[max(dy0 - py0, 0):max(dy1 - py0, 0), max(dx0 - px0, 0):max(dx1 - px0, 0)] = 0
    seen = ftu | rej
    if ring_px > 0 and seen.any():
        out[ndi.distance_transform_edt(~seen) <= ring_px] = 0
    if unrev_ids:
        out[np.isin(lab, unrev_ids)] = UNKNOWN
    else:
        out[(lab > 0) & ~ftu] = UNKNOWN  # objects without a row: unknown as well
    out[ftu] = 1
    return out[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]


def _windows(data: ReviewData, side: int, ring: int, rng) -> list[tuple[int, int, int, int]]:
    """Label-coordinate windows ``(y0, x0, y1, x1)`` to cut: tiles of the done regions (at most
    :data:`MAX_DONE_WINDOWS` each, seeded), then one around each reviewed object that no done
    tile already holds whole."""
    from scipy import ndimage as ndi

    from napari_ftu.boxes import corners

    h, w = data.labels.shape
    out = []
    for b in data.done:
        y0, x0, y1, x1 = corners(b)
        tiles = [(y, x) for y in range(y0, max(y0 + 1, y1 - side // 2), side) for x in
                 range(x0, max(x0 + 1, x1 - side // 2), side)]
        if len(tiles) > MAX_DONE_WINDOWS:
            tiles = [tiles[int(k)] for k in sorted(rng.choice(len(tiles), MAX_DONE_WINDOWS, replace=False))]
        for y, x in tiles:
            yy, xx = min(max(0, y), max(0, h - side)), min(max(0, x), max(0, w - side))
            out.append((yy, xx, min(h, yy + side), min(w, xx + side)))
    reviewed = [i for i in data.reviewed if data.statuses[i] in FTU_STATUSES]
    boxes = {}
    if reviewed:
        found = ndi.find_objects(np.where(np.isin(data.labels, reviewed), data.labels, 0))
        boxes.update({i + 1: b for i, b in enumerate(found) if b is not None and i + 1 in reviewed})
    rej = [i for i in data.reviewed if data.statuses[i] == "rejected"]
    if rej and data.rejected is not None:
        found = ndi.find_objects(np.where(np.isin(data.rejected, rej), data.rejected, 0))
        boxes.update({i + 1: b for i, b in enumerate(found) if b is not None and i + 1 in rej})
    for _, b in sorted(boxes.items()):
        by0, bx0, by1, bx1 = corners(b)
        if any(y0 <= by0 and x0 <= bx0 and by1 <= y1 and bx1 <= x1 for y0, x0, y1, x1 in out):
            continue
        sy, sx = max(side, by1 - by0 + 2 * ring), max(side, bx1 - bx0 + 2 * ring)
        cy, cx = (by0 + by1) // 2, (bx0 + bx1) // 2
        y0, x0 = min(max(0, cy - sy // 2), max(0, h - sy)), min(max(0, cx - sx // 2), max(0, w - sx))
        out.append((y0, x0, min(h, y0 + sy), min(w, x0 + sx)))
    return out


def review_crops(data: ReviewData, model_um: float, crop: int = CROP, ring_um: float = RING_UM,
                 seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(rgb, sparse mask), ...]`` at the model's µm/px, cut around the review's objects and
    done regions; only those windows of the slide are read."""
    from napari_ftu.boxes import from_corners
    from napari_ftu.engine.tile_source import TileSource
    from napari_ftu.io.resample import zoom_shape

    source = TileSource(data.levels, data.um_per_px, model_um)
    f = source.factor  # model px per level-0 px
    level0_um = data.um_per_px or model_um
    ring = max(1.0, ring_um / level0_um)
    side = max(32, round(crop / f))
    rng = np.random.default_rng(seed)
    oy, ox = data.offset
    out = []
    for y0, x0, y1, x1 in _windows(data, side, int(ring), rng):
        mask = sparse_mask(data.labels, data.statuses, data.rejected, data.done, ring, from_corners(y0, x0, y1, x1))
        if not (mask != UNKNOWN).any():
            continue
        my, mx = round((oy + y0) * f), round((ox + x0) * f)
        mh, mw = zoom_shape(mask.shape, f)
        mh, mw = min(mh, source.shape[0] - my), min(mw, source.shape[1] - mx)
        if mh < 8 or mw < 8:
            continue
        rgb = source.read(my, mx, max(mh, mw))[:mh, :mw]
        if mask.shape != (mh, mw):
            from skimage.transform import resize

            mask = resize(mask, (mh, mw), order=0, anti_aliasing=False, preserve_range=True).astype(np.uint8)
        out.append((np.ascontiguousarray(rgb), mask))
    return out


def pooled_crops(reviews: list[ReviewData], model_um: float, val_every: int = 0, seed: int = 0,
                 release: bool = False, **kw):
    """Training and validation crops pooled from several reviewed images: with ``val_every``
    (N > 0), every N-th crop holding a reviewed FTU validates — whole objects, never a strip.
    More than :data:`MAX_CROPS` crops are subsampled (seeded) to bound memory. With ``release``
    each review's label arrays are dropped once its crops are cut (headless training: a 4096²
    window's labels and rejected pixels are 128 MB)."""
    crops = []
    for k, r in enumerate(reviews):
        crops += review_crops(r, model_um, seed=seed + k, **kw)
        if release:
            r.labels = r.rejected = None
    if len(crops) > MAX_CROPS:
        keep = np.random.default_rng(seed).choice(len(crops), MAX_CROPS, replace=False)
        crops = [crops[int(k)] for k in sorted(keep)]
    if not val_every:
        return crops, []
    with_ftu = [k for k, (_, m) in enumerate(crops) if (m == 1).any()]
    val_ids = set(with_ftu[val_every - 1 :: val_every])
    return [c for k, c in enumerate(crops) if k not in val_ids], [c for k, c in enumerate(crops) if k in val_ids]


def learned_from(reviews: list[ReviewData]) -> dict:
    """The card note naming what a model learned from: slides and reviewed objects."""
    return {"slides": sorted({r.name for r in reviews}),
            "reviewed_objects": int(sum(len(r.reviewed) for r in reviews)),
            "done_regions": int(sum(len(r.done) for r in reviews))}


def saved_reviews(path: str | Path, um_per_px: float | None = None) -> list[ReviewData]:
    """The saved reviews of a slide or session (what the Review dock autosaves), opened lazily:
    the slide is read only where crops are cut. ``um_per_px`` is the slide's pixel size when its
    file does not say."""
    from napari_ftu.errors import InputError
    from napari_ftu.io.slides import open_slide
    from napari_ftu.review.saved import read_session, saved_sessions

    out = []
    for file, slide_path in saved_sessions(path):
        if slide_path is None:
            raise InputError(f"{file}: the slide it reviews is not beside its .ftu folder")
        saved = read_session(file)
        slide = open_slide(slide_path, um_per_px)
        out.append(ReviewData(list(slide.levels), slide.um_per_px or um_per_px, saved.labels,
                              {i: r.status for i, r in saved.review.rows.items()}, saved.rejected, saved.done,
                              saved.offset, slide_path.name))
    return out
