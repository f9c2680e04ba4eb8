"""Seeded synthetic H&E kidney slides with glomerulus ground truth, at any size.

Every structure is defined procedurally in micrometres from hashed lattice cells, so any window
of the slide (at any downsample) can be rendered on its own and agrees with its neighbours. That
is what lets a 50 000 x 50 000 pyramidal OME-TIFF be written tile by tile without ever holding
the image in memory. Colour comes from Beer-Lambert mixing of a hematoxylin and an eosin
optical density, with per-slide stain vectors, stain strength and FTU size drawn from the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PYRAMID_MIN_SIZE = 20_000  # slides this large (either side) are written as pyramidal OME-TIFF
TILE = 512
GLOM_CELL_UM = 350.0  # one candidate glomerulus per lattice cell of this size


@dataclass(frozen=True)
class SlideSpec:
    """Size, seed and pixel size of a synthetic slide; the seed also draws its style."""

    height: int
    width: int
    seed: int = 0
    um_per_px: float = 1.0
    style: dict = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"slide size must be positive, got {self.height} x {self.width}")
        if not self.um_per_px > 0:
            raise ValueError(f"pixel size must be positive, got {self.um_per_px}")
        rng = np.random.default_rng([self.seed, 7919])
        h_vec = np.array([0.65, 0.70, 0.29]) + rng.normal(0, 0.05, 3)
        e_vec = np.array([0.07, 0.99, 0.11]) + rng.normal(0, 0.05, 3)
        style = {
            "h_vec": np.abs(h_vec) / np.linalg.norm(h_vec),
            "e_vec": np.abs(e_vec) / np.linalg.norm(e_vec),
            "h_gain": rng.uniform(0.75, 1.3),
            "e_gain": rng.uniform(0.55, 1.0),
            "glom_radius_um": rng.uniform(48.0, 68.0),
            "glom_fraction": rng.uniform(0.45, 0.7),
            "tubule_cell_um": rng.uniform(38.0, 52.0),
            "tissue_threshold": rng.uniform(0.40, 0.47),
            "salt": int(rng.integers(1, 2**62)),
        }
        object.__setattr__(self, "style", style)


# --- hashing and noise ----------------------------------------------------------------------

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0xFF51AFD7ED558CCD)
_M4 = np.uint64(0xC4CEB9FE1A85EC53)


def _uniform(iy, ix, salt: int, k: int = 0) -> np.ndarray:
    """Deterministic uniform [0, 1) per integer lattice point (splitmix-style hash)."""
    iy = np.asarray(iy, dtype=np.int64).astype(np.uint64)
    ix = np.asarray(ix, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):  # wrapping multiplication is the point of the hash
        h = iy * _M1 ^ ix * _M2 ^ np.uint64((salt + 1013 * k) % 2**64)
        h = h ^ (h >> np.uint64(33))
        h = h * _M3
        h = h ^ (h >> np.uint64(33))
        h = h * _M4
        h = h ^ (h >> np.uint64(33))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _value_noise(y, x, cell: float, salt: int) -> np.ndarray:
    """Smooth noise in [0, 1) with features about ``cell`` micrometres across, at points."""
    gy, gx = y / cell, x / cell
    iy, ix = np.floor(gy), np.floor(gx)
    fy, fx = gy - iy, gx - ix
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    iy, ix = iy.astype(np.int64), ix.astype(np.int64)
    v00 = _uniform(iy, ix, salt)
    v01 = _uniform(iy, ix + 1, salt)
    v10 = _uniform(iy + 1, ix, salt)
    v11 = _uniform(iy + 1, ix + 1, salt)
    return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy


class _Lattice:
    """Lattice cells under a grid of pixel centres (1-D ``rows`` x ``cols`` in µm): hashes are
    computed once per cell in a small table and gathered per pixel (the image is separable)."""

    def __init__(self, rows, cols, cell: float, margin: int = 1):
        self.gy, self.gx = rows / cell, cols / cell
        self.iy, self.ix = np.floor(self.gy).astype(np.int64), np.floor(self.gx).astype(np.int64)
        self.y0, self.x0 = int(self.iy.min()) - margin, int(self.ix.min()) - margin
        ty = np.arange(self.y0, int(self.iy.max()) + margin + 1)
        tx = np.arange(self.x0, int(self.ix.max()) + margin + 1)
        self.ty, self.tx = np.meshgrid(ty, tx, indexing="ij")

    def table(self, salt: int, k: int = 0) -> np.ndarray:
        return _uniform(self.ty, self.tx, salt, k)

    def at(self, table, dy: int = 0, dx: int = 0) -> np.ndarray:
        """Per pixel, the table value of the cell offset by ``(dy, dx)`` from the pixel's cell."""
        return table[(self.iy - self.y0 + dy)[:, None], (self.ix - self.x0 + dx)[None, :]]


def _value_noise_grid(rows, cols, cell: float, salt: int) -> np.ndarray:
    """:func:`_value_noise` over a pixel grid, equal value for value."""
    lat = _Lattice(rows, cols, cell)
    fy, fx = lat.gy - lat.iy, lat.gx - lat.ix
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None, :]
    t = lat.table(salt)
    v00, v01, v10, v11 = lat.at(t), lat.at(t, 0, 1), lat.at(t, 1, 0), lat.at(t, 1, 1)
    return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy


def _uniform_grid(rows, cols, cell: float, salt: int, k: int) -> np.ndarray:
    """``_uniform`` of each pixel's lattice cell over a pixel grid."""
    lat = _Lattice(rows, cols, cell, margin=0)
    return lat.at(lat.table(salt, k))


def _worley(rows, cols, cell: float, salt: int, extra_k: int | None = None):
    """Over a pixel grid: distances to the nearest and second-nearest jittered lattice point,
    and (with ``extra_k``) a uniform value drawn for the nearest point's cell."""
    lat = _Lattice(rows, cols, cell)
    jy, jx = lat.table(salt, 1), lat.table(salt, 2)
    extra = lat.table(salt, extra_k) if extra_k is not None else None
    gy, gx = lat.gy[:, None], lat.gx[None, :]
    shape = (rows.size, cols.size)
    f1 = np.full(shape, np.inf)
    f2 = np.full(shape, np.inf)
    value = np.zeros(shape) if extra is not None else None
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            py = (lat.iy + dy)[:, None] + lat.at(jy, dy, dx)
            px = (lat.ix + dx)[None, :] + lat.at(jx, dy, dx)
            d = np.hypot(gy - py, gx - px) * cell
            closer = d < f1
            f2 = np.where(closer, f1, np.minimum(f2, d))
            f1 = np.where(closer, d, f1)
            if extra is not None:
                value = np.where(closer, lat.at(extra, dy, dx), value)
    return f1, f2, value


def _tissue_field(y, x, salt: int) -> np.ndarray:
    return 0.8 * _value_noise(y, x, 700.0, salt + 11) + 0.2 * _value_noise(y, x, 150.0, salt + 12)


# --- glomeruli ------------------------------------------------------------------------------


def glomeruli(spec: SlideSpec, y0_um=None, x0_um=None, y1_um=None, x1_um=None) -> list[dict]:
    """The glomeruli whose extent meets a window given in micrometres (default: the whole slide)."""
    s = spec.style
    y0_um = 0.0 if y0_um is None else y0_um
    x0_um = 0.0 if x0_um is None else x0_um
    y1_um = spec.height * spec.um_per_px if y1_um is None else y1_um
    x1_um = spec.width * spec.um_per_px if x1_um is None else x1_um
    reach = 1.3 * s["glom_radius_um"] * 1.3
    rows = np.arange(math.floor((y0_um - reach) / GLOM_CELL_UM), math.floor((y1_um + reach) / GLOM_CELL_UM) + 1)
    cols = np.arange(math.floor((x0_um - reach) / GLOM_CELL_UM), math.floor((x1_um + reach) / GLOM_CELL_UM) + 1)
    iy, ix = (a.ravel() for a in np.meshgrid(rows, cols, indexing="ij"))
    salt = s["salt"]
    # Centres stay in the middle of their cell so that neighbours never touch.
    cy = (iy + 0.3 + 0.4 * _uniform(iy, ix, salt, 21)) * GLOM_CELL_UM
    cx = (ix + 0.3 + 0.4 * _uniform(iy, ix, salt, 22)) * GLOM_CELL_UM
    radius = s["glom_radius_um"] * (0.75 + 0.5 * _uniform(iy, ix, salt, 23))
    tissue = _tissue_field(cy, cx, salt)
    keep = (_uniform(iy, ix, salt, 24) < s["glom_fraction"]) & (tissue > s["tissue_threshold"] + 0.04)
    keep &= (cy + 1.3 * radius > y0_um) & (cy - 1.3 * radius < y1_um)
    keep &= (cx + 1.3 * radius > x0_um) & (cx - 1.3 * radius < x1_um)
    out = []
    for k in np.flatnonzero(keep):
        out.append(
            {
                "id": int((iy[k] + 2) * 65536 + (ix[k] + 2)),
                "cy": float(cy[k]),
                "cx": float(cx[k]),
                "radius": float(radius[k]),
                "aspect": 0.8 + 0.2 * float(_uniform(iy[k], ix[k], salt, 25)),
                "angle": math.pi * float(_uniform(iy[k], ix[k], salt, 26)),
                "phase": 2 * math.pi * float(_uniform(iy[k], ix[k], salt, 27)),
            }
        )
    return out


def _glom_distance(g: dict, y, x) -> np.ndarray:
    """Normalised distance from a glomerulus centre: < 1 inside its capsule."""
    dy, dx = y - g["cy"], x - g["cx"]
    c, s = math.cos(g["angle"]), math.sin(g["angle"])
    u, v = c * dx + s * dy, -s * dx + c * dy
    phi = np.arctan2(v, u)
    wobble = 1 + 0.06 * np.sin(3 * phi + g["phase"]) + 0.04 * np.sin(5 * phi + 2 * g["phase"])
    return np.hypot(u, v / g["aspect"]) / (g["radius"] * wobble)


# --- rendering ------------------------------------------------------------------------------


def render(spec: SlideSpec, y0: int, x0: int, h: int, w: int, downsample: int = 1):
    """Render a window of the slide: ``(rgb uint8 (h, w, 3), labels uint32 (h, w))``.

    ``y0, x0, h, w`` are in pixels of the level ``downsample`` (1 = full resolution).
    Label values are stable glomerulus ids (the same object has the same id in every window).
    """
    rows, cols = _window_um(spec, y0, x0, h, w, downsample)
    s, salt, um = spec.style, spec.style["salt"], spec.um_per_px

    # Tissue versus glass, with a soft irregular edge.
    tissue_val = 0.8 * _value_noise_grid(rows, cols, 700.0, salt + 11) + 0.2 * _value_noise_grid(
        rows, cols, 150.0, salt + 12)
    tissue = np.clip((tissue_val - s["tissue_threshold"]) / 0.02, 0, 1)

    # Tubules: cellular (Worley) pattern, lumen in the middle, epithelium around, thin interstitium.
    cell = s["tubule_cell_um"]
    f1, f2, lumen_u = _worley(rows, cols, cell, salt + 31, extra_k=32)
    lumen_r = cell * (0.08 + 0.12 * lumen_u)
    edge = f2 - f1
    lumen = np.clip((lumen_r - f1) / 1.5, 0, 1)
    interstitium = np.clip((4.0 - edge) / 2.0, 0, 1)
    granular = _value_noise_grid(rows, cols, 3.0, salt + 33)
    nf1, _, _ = _worley(rows, cols, 7.0, salt + 34)
    nucleus = np.clip((2.6 - nf1) / 0.8, 0, 1)
    ring = (f1 > lumen_r + 1.5) & (f1 < lumen_r + 9.0)
    epi_nuclei = nucleus * ring * (interstitium < 0.5)
    int_nuclei = nucleus * (interstitium > 0.5) * (_uniform_grid(rows, cols, 7.0, salt, 35) < 0.25)

    hema = 0.9 * epi_nuclei + 0.8 * int_nuclei + 0.08
    eosin = (0.55 + 0.2 * granular) * (1 - lumen) * (1 - 0.6 * interstitium) + 0.05

    labels = np.zeros((h, w), np.uint32)
    for g, win, d in _glomerulus_windows(spec, rows, cols):
        labels[win][d < 1.0] = g["id"]
        rw, cw = rows[win[0]], cols[win[1]]
        tuft = np.clip((0.82 - d) / 0.03, 0, 1)
        capsule = np.clip(1 - np.abs(d - 0.965) / 0.035, 0, 1)
        space = np.clip((d - 0.82) / 0.03, 0, 1) * (d < 0.93)
        cf1, _, _ = _worley(rw, cw, 9.0, salt + 41)
        capillary = np.clip((3.0 - cf1) / 1.0, 0, 1)
        gf1, _, _ = _worley(rw, cw, 5.5, salt + 42)
        g_nuclei = np.clip((2.3 - gf1) / 0.7, 0, 1) * (1 - capillary)
        around = np.clip((1.15 - d) / 0.1, 0, 1)  # a little halo of interstitium
        tissue[win] = np.maximum(tissue[win], np.clip((1.3 - d) / 0.2, 0, 1))
        g_hema = tuft * (0.95 * g_nuclei + 0.18) + capsule * 0.1
        g_eosin = tuft * (0.45 + 0.2 * granular[win]) * (1 - 0.8 * capillary) + capsule * 0.55 + space * 0.04
        hema[win] = around * g_hema + (1 - around) * hema[win]
        eosin[win] = around * g_eosin + (1 - around) * eosin[win]

    grain = _uniform_grid(rows, cols, um, salt, 51) - 0.5
    od = (
        (s["h_gain"] * hema * tissue)[..., None] * s["h_vec"]
        + (s["e_gain"] * eosin * tissue)[..., None] * s["e_vec"]
        + (0.03 + 0.02 * grain)[..., None]
    )
    rgb = np.clip(255.0 * np.exp(-od), 0, 255).astype(np.uint8)
    return rgb, labels


def render_labels(spec: SlideSpec, y0: int, x0: int, h: int, w: int, downsample: int = 1) -> np.ndarray:
    """Only the ground-truth labels of a window (equal to ``render(...)[1]``, much cheaper)."""
    rows, cols = _window_um(spec, y0, x0, h, w, downsample)
    labels = np.zeros((h, w), np.uint32)
    for g, win, d in _glomerulus_windows(spec, rows, cols):
        labels[win][d < 1.0] = g["id"]
    return labels


def _window_um(spec: SlideSpec, y0: int, x0: int, h: int, w: int, downsample: int):
    """Pixel-centre coordinates in micrometres of a window of a pyramid level."""
    rows = ((y0 + np.arange(h)) * downsample + downsample / 2 - 0.5) * spec.um_per_px
    cols = ((x0 + np.arange(w)) * downsample + downsample / 2 - 0.5) * spec.um_per_px
    return rows, cols


def _glomerulus_windows(spec: SlideSpec, rows: np.ndarray, cols: np.ndarray):
    """Each glomerulus near the window, its sub-window slice and normalised distance there."""
    for g in glomeruli(spec, rows[0], cols[0], rows[-1], cols[-1]):
        r = 1.3 * g["radius"]
        i0, i1 = np.searchsorted(rows, [g["cy"] - r, g["cy"] + r])
        j0, j1 = np.searchsorted(cols, [g["cx"] - r, g["cx"] + r])
        if i0 >= i1 or j0 >= j1:
            continue
        yw, xw = np.meshgrid(rows[i0:i1], cols[j0:j1], indexing="ij")
        yield g, np.s_[i0:i1, j0:j1], _glom_distance(g, yw, xw)


def make_slide(height: int, width: int, seed: int = 0, um_per_px: float = 1.0):
    """A whole synthetic slide in memory: ``(rgb, labels, spec)``; labels numbered 1..n."""
    spec = SlideSpec(height, width, seed, um_per_px)
    rgb = np.empty((height, width, 3), np.uint8)
    raw = np.empty((height, width), np.uint32)
    for y0 in range(0, height, TILE):
        for x0 in range(0, width, TILE):
            h, w = min(TILE, height - y0), min(TILE, width - x0)
            rgb[y0 : y0 + h, x0 : x0 + w], raw[y0 : y0 + h, x0 : x0 + w] = render(spec, y0, x0, h, w)
    ids = np.unique(raw)
    ids = ids[ids > 0]
    labels = (np.searchsorted(ids, raw) + 1).astype(np.int32) * (raw > 0)
    return rgb, labels, spec


def _level_tiles(spec: SlideSpec, downsample: int, kind: str):
    """Full-size tiles of one pyramid level in row-major order (what tifffile's writer takes)."""
    h = -(-spec.height // downsample)
    w = -(-spec.width // downsample)
    for y0 in range(0, h, TILE):
        for x0 in range(0, w, TILE):
            th, tw = min(TILE, h - y0), min(TILE, w - x0)
            if kind == "image":
                out = render(spec, y0, x0, th, tw, downsample)[0]
            else:
                out = render_labels(spec, y0, x0, th, tw, downsample)
            if (th, tw) != (TILE, TILE):
                pad = [(0, TILE - th), (0, TILE - tw)] + [(0, 0)] * (out.ndim - 2)
                out = np.pad(out, pad, mode="edge")
            yield out


def write_slide(
    stem: str | Path, height: int, width: int, seed: int = 0, um_per_px: float = 1.0, pyramid: bool | None = None
) -> dict:
    """Write a synthetic slide and its ground-truth labels; return their paths.

    Small slides go to ``<stem>.tif`` / ``<stem>_labels.tif`` from memory. Slides of at least
    20 000 px a side (or ``pyramid=True``) are written tile by tile as tiled pyramidal
    OME-TIFFs (JPEG image, deflate labels) carrying the physical pixel size.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    spec = SlideSpec(height, width, seed, um_per_px)
    if pyramid is None:
        pyramid = max(height, width) >= PYRAMID_MIN_SIZE
    image_path = stem.with_name(stem.name + (".ome.tif" if pyramid else ".tif"))
    labels_path = stem.with_name(stem.name + ("_labels.ome.tif" if pyramid else "_labels.tif"))
    if not pyramid:
        from napari_ftu.io.images import write_tiff

        rgb, labels, _ = make_slide(height, width, seed, um_per_px)
        write_tiff(image_path, rgb, um_per_px)
        write_tiff(labels_path, labels, um_per_px)
        return {"image": image_path, "labels": labels_path, "spec": spec}

    from napari_ftu.io.images import pyramid_downsamples, write_pyramid

    downsamples = pyramid_downsamples((height, width), TILE)
    write_pyramid(image_path, lambda d: _level_tiles(spec, d, "image"), (height, width, 3), np.uint8, um_per_px,
                  downsamples)
    write_pyramid(labels_path, lambda d: _level_tiles(spec, d, "labels"), (height, width), np.uint32, um_per_px,
                  downsamples)
    return {"image": image_path, "labels": labels_path, "spec": spec}
