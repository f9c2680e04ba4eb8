"""Seeded synthetic HPA-like fluorescence cell images with their ground truth.

There is no Human Protein Atlas data here, so the cell part of the annotate tools is tested on
images made like the competition's: four channels (red = microtubules, green = the protein of
interest, blue = nuclei, yellow = endoplasmic reticulum), cells of varied size and shape touching
in clusters, optical blur, shot and read noise. Each cell's green pattern is its class:
``nucleoplasm`` (protein in the nucleus), ``cytosol`` (in the cytoplasm) or ``negative``
(nothing above background) -- a cell's class is only visible from its pixels taken together.

Cells are the seeds' territories (a Voronoi partition with per-cell ruffled radii), so touching
cells share a border exactly as instance labels do; each nucleus is an ellipse kept inside its cell
with a margin, so nucleus id == cell id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

CHANNELS = ("red", "green", "blue", "yellow")  # HPA's order (microtubules, protein, nuclei, ER)
CLASSES = ("nucleoplasm", "cytosol", "negative")  # HPA label names, green pattern of a cell


@dataclass
class CellImage:
    """A synthetic image (H, W, 4) with cell and nucleus instance labels (same ids) and the class
    of each cell (``classes[id]`` is a name of :data:`CLASSES`)."""

    image: np.ndarray
    cells: np.ndarray
    nuclei: np.ndarray
    classes: dict
    seed: int

    def class_labels(self) -> np.ndarray:
        """(H, W) uint8: 0 background, 1 + index in :data:`CLASSES` inside each cell."""
        lut = np.zeros(int(self.cells.max()) + 1, np.uint8)
        for i, name in self.classes.items():
            lut[i] = 1 + CLASSES.index(name)
        return lut[self.cells]


def _smooth_noise(rng, shape, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean, unit standard deviation."""
    n = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (n - n.mean()) / max(float(n.std()), 1e-9)


def make_cells(size: int = 512, seed: int = 0, n_cells: int | None = None, dtype=np.uint8,
               classes=CLASSES) -> CellImage:
    """A ``size`` × ``size`` four-channel cell image drawn entirely from ``seed``.

    ``n_cells`` (default 20–60 from the seed) cells are placed as a few clusters; cell radii vary
    (about 25–55 px for 512²) and their outlines are ruffled, so shapes differ from cell to cell.
    ``dtype`` uint8 or uint16 (the competition had both). ``classes`` restricts the green patterns
    drawn (subset of :data:`CLASSES`)."""
    if size < 64:
        raise ValueError(f"size must be at least 64 px, got {size}")
    rng = np.random.default_rng([int(seed), 4177])
    n = int(n_cells if n_cells is not None else rng.integers(20, 61))
    scale = size / 512
    # centres: clusters of cells with a minimum spacing (cells of a cluster touch, clusters leave gaps)
    n_clusters = max(1, int(rng.integers(2, 6)))
    hubs = rng.uniform(0.15, 0.85, (n_clusters, 2)) * size
    spread = size * rng.uniform(0.12, 0.25)
    centres, radii = [], []
    tries = 0
    while len(centres) < n and tries < 20000:
        tries += 1
        r = rng.uniform(18, 38) * scale * (1.25 if n <= 30 else 1.0)
        c = hubs[rng.integers(n_clusters)] + rng.normal(0, spread, 2)
        if not (0 <= c[0] < size and 0 <= c[1] < size):
            continue
        if all(np.hypot(*(c - q)) > 0.85 * (r + rq) for q, rq in zip(centres, radii)):
            centres.append(c)
            radii.append(r)
    centres, radii = np.array(centres), np.array(radii)
    n = len(centres)
    # each cell's reach: its radius times a ruffle over the angle (3-5 lobes), stretched along an
    # axis; computed in a window around the seed that holds the whole reach (at most 2.3 r)
    best = np.full((size, size), np.inf, np.float32)
    owner = np.zeros((size, size), np.int32)
    windows = []
    for i, ((cy, cx), r) in enumerate(zip(centres, radii), start=1):
        reach = int(np.ceil(2.4 * r)) + 2
        win = (slice(max(0, int(cy) - reach), min(size, int(cy) + reach + 1)),
               slice(max(0, int(cx) - reach), min(size, int(cx) + reach + 1)))
        windows.append(win)
        yy, xx = np.mgrid[win].astype(np.float32)
        dy, dx = yy - cy, xx - cx
        theta = np.arctan2(dy, dx)
        lobes = rng.integers(2, 6)
        ruffle = 1 + 0.12 * np.sin(lobes * theta + rng.uniform(0, 2 * np.pi)) \
            + 0.06 * np.sin((lobes + 2) * theta + rng.uniform(0, 2 * np.pi))
        phi, stretch = rng.uniform(0, np.pi), rng.uniform(1.0, 1.5)
        u = dx * np.cos(phi) + dy * np.sin(phi)
        v = -dx * np.sin(phi) + dy * np.cos(phi)
        d = np.hypot(u / stretch, v * stretch ** 0.3) / (r * 1.3 * ruffle)  # < 1 inside the cell's reach
        take = (d < 1) & (d < best[win])
        best[win][take] = d[take]
        owner[win][take] = i
    # a cell is its seed's connected piece (a territory cut in two by a neighbour keeps the seed's side)
    cells = np.zeros((size, size), np.int32)
    nuclei = np.zeros((size, size), np.int32)
    kept = 0
    cls_of = {}
    for i, ((cy, cx), r, win) in enumerate(zip(centres, radii, windows), start=1):
        lab, _ = ndi.label(owner[win] == i)
        seed_at = lab[int(cy) - win[0].start, int(cx) - win[1].start]
        piece = lab == seed_at if seed_at else None
        if piece is None or piece.sum() < 200 * scale**2:
            continue
        kept += 1
        cells[win][piece] = kept
        # nucleus: an ellipse off the seed by up to a third of the radius (nuclei are seldom
        # central, so a cell's border is not simply halfway between nuclei), kept 4 px inside the cell
        inner = ndi.binary_erosion(piece, iterations=max(2, int(4 * scale)))
        a, b = r * rng.uniform(0.5, 0.65), r * rng.uniform(0.38, 0.52)
        phi = rng.uniform(0, np.pi)
        shift, towards = r * rng.uniform(0, 0.33), rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[win].astype(np.float32)
        dy, dx = yy - cy - shift * np.sin(towards), xx - cx - shift * np.cos(towards)
        u = dx * np.cos(phi) + dy * np.sin(phi)
        v = -dx * np.sin(phi) + dy * np.cos(phi)
        nuc = ((u / a) ** 2 + (v / b) ** 2 <= 1) & inner
        lab, count = ndi.label(nuc)
        if count > 1:
            nuc = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
        nuclei[win][nuc] = kept
        cls_of[kept] = classes[int(rng.integers(len(classes)))]
    image = _render(rng, cells, nuclei, cls_of, scale, dtype)
    return CellImage(image, cells, nuclei, cls_of, int(seed))


def _render(rng, cells, nuclei, classes, scale: float, dtype) -> np.ndarray:
    """The four channels in [0, 1], blurred, with shot and read noise, quantised to ``dtype``."""
    shape = cells.shape
    n = int(cells.max())
    inside = cells > 0
    cyto = inside & (nuclei == 0)
    per_cell = lambda lo, hi: np.concatenate([[0.0], rng.uniform(lo, hi, n)])[cells]  # noqa: E731
    # distance of a cytoplasm pixel from its nucleus relative to the cell's size (ER hugs the nucleus)
    dist_nuc = ndi.distance_transform_edt(nuclei == 0)
    cell_r = np.sqrt(np.bincount(cells.ravel(), minlength=n + 1) / np.pi)[cells]
    rel = np.clip(dist_nuc / np.maximum(cell_r, 1), 0, 1)
    fibre = np.abs(_smooth_noise(rng, shape, 1.2 * scale))  # thin filaments
    texture = _smooth_noise(rng, shape, 3.0 * scale)
    red = cyto * per_cell(0.35, 0.7) * (0.45 + 0.35 * np.clip(fibre, 0, 2) + 0.15 * texture) \
        + (nuclei > 0) * 0.12 * per_cell(0.5, 1.0)
    yellow = cyto * per_cell(0.35, 0.75) * np.clip(1.05 - rel, 0.1, 1) * (0.8 + 0.2 * texture) \
        + (nuclei > 0) * 0.08
    chrom = _smooth_noise(rng, shape, 1.5 * scale)
    blue = (nuclei > 0) * per_cell(0.45, 0.9) * np.clip(0.85 + 0.15 * chrom, 0.4, 1.2)
    # green: nucleoplasm (nucleus minus a few nucleoli), cytosol (cytoplasm), negative (faint haze)
    kind = np.zeros(n + 1, np.int8)
    for i, name in classes.items():
        kind[i] = {"nucleoplasm": 1, "cytosol": 2}.get(name, 0)
    k = kind[cells]
    nucleoli = _smooth_noise(rng, shape, 2.0 * scale) > 1.6
    gain = per_cell(0.35, 0.9)
    green = gain * ((k == 1) & (nuclei > 0) & ~nucleoli) * (0.9 + 0.1 * chrom) \
        + gain * ((k == 2) & cyto) * (0.75 + 0.25 * texture) * np.clip(1.1 - 0.4 * rel, 0.5, 1) \
        + inside * 0.04
    sigma = 1.2 * scale
    planes = []
    for plane, level in ((red, 0.03), (green, 0.02), (blue, 0.02), (yellow, 0.03)):
        p = ndi.gaussian_filter(np.clip(plane, 0, None).astype(np.float32), sigma) + level
        p = rng.poisson(p * 300) / 300 + rng.normal(0, 0.01, shape)  # shot + read noise
        planes.append(np.clip(p, 0, 1))
    top = np.iinfo(dtype).max
    return np.round(np.stack(planes, -1) * top).astype(dtype)


__all__ = ["CHANNELS", "CLASSES", "CellImage", "make_cells"]
