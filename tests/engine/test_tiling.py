import numpy as np
import pytest

from napari_ftu.engine import tiling
from napari_ftu.engine.tiling import BLENDS, Stitcher, read_tile, seam_ratio, tile_grid, tile_starts, window_1d


def _stitch(image, tile, overlap, blend, keep=None):
    """Stitch identity predictions of ``image`` (C, H, W) into a fresh array via the sink."""
    out = np.full(image.shape, -1.0, np.float32)  # -1: never written
    bands = []

    def sink(y0, x0, block):
        out[:, y0 : y0 + block.shape[1], x0 : x0 + block.shape[2]] = block

    stitcher = Stitcher(image.shape[1:], image.shape[0], tile, overlap, sink, blend,
                        done=lambda y0, y1: bands.append((y0, y1)))
    for i, (y, x) in enumerate(tile_grid(image.shape[1:], tile, overlap)):
        if keep is None or keep(y, x):
            patch = read_tile(np.moveaxis(image, 0, -1), y, x, tile)
            assert patch.shape[:2] == (tile, tile)
            stitcher.add(y, x, np.moveaxis(patch, -1, 0).astype(np.float32))
    stitcher.finish()
    return out, bands


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("shape, tile, overlap", [((300, 517), 128, 32), ((97, 50), 64, 16), ((40, 33), 64, 8),
                                                  ((512, 512), 128, 0), ((1000, 999), 256, 100)])
def test_identity_model_reproduces_image_exactly(shape, tile, overlap, blend, rng, monkeypatch):
    monkeypatch.setattr(tiling, "FLUSH_COLUMNS", 200)  # several column chunks per band
    image = rng.integers(0, 256, (3, *shape)).astype(np.uint8)
    out, bands = _stitch(image, tile, overlap, blend)
    np.testing.assert_array_equal(np.rint(out).astype(np.uint8), image)
    assert np.abs(out - image).max() < 1e-3
    # rows are handed over in order, each once, covering the image
    assert bands[0][0] == 0 and bands[-1][1] == shape[0]
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))


def test_skipped_tiles_are_never_written_and_the_rest_exact(rng, monkeypatch):
    """Glass is not written: pixels no tile covers keep what the outputs started with (0), whether
    a whole band of tile rows or the columns of one side were skipped; every row is still reported."""
    monkeypatch.setattr(tiling, "FLUSH_COLUMNS", 64)
    image = rng.integers(1, 256, (1, 700, 300)).astype(np.uint8)
    out, bands = _stitch(image, 128, 32, "gaussian", keep=lambda y, x: (y < 200 or y >= 480) and x >= 96)
    assert (out[0, 330:460] == -1).all()  # a whole band of skipped tile rows
    assert (out[0, :, :96] == -1).all()  # the skipped columns
    np.testing.assert_array_equal(np.rint(out[0, :150, 96:]), image[0, :150, 96:])
    np.testing.assert_array_equal(np.rint(out[0, -150:, 96:]), image[0, -150:, 96:])
    assert bands[0][0] == 0 and bands[-1][1] == 700 and all(a[1] == b[0] for a, b in zip(bands, bands[1:]))


@pytest.mark.parametrize("blend", BLENDS)
def test_window_stays_positive_across_the_overlap(blend):
    """No pixel switches hard from one tile to the next: every weight is positive, and the share
    of each tile in the blend changes by a small step per pixel."""
    length, tile, overlap = 1000, 128, 32
    starts = tile_starts(length, tile, overlap)
    for s in starts:
        assert (window_1d(s, tile, length, overlap, blend) > 0).all()
    total = np.zeros(length)
    shares = []
    for s in starts:
        w = np.zeros(length)
        w[s : s + tile] = window_1d(s, tile, length, overlap, blend)
        shares.append(w)
        total += w
    step = max(np.abs(np.diff(w / total)).max() for w in shares)
    # the old window jumped from 1 to 0 between two pixels; the taper changes by at most about
    # pi / (2 * overlap) per pixel, the Gaussian's thin tails make a steeper (still soft) change
    assert step < {"taper": 0.06, "gaussian": 0.35}[blend]
    assert window_1d(0, 128, 100, 32, blend).shape == (100,)  # clipped to a small image
    with pytest.raises(ValueError, match="blend"):
        window_1d(0, 128, 1000, 32, "median")


def test_taper_is_a_cosine_ramp_over_the_real_overlap():
    length, tile, overlap = 1000, 128, 32
    starts = tile_starts(length, tile, overlap)  # ..., 864, 872: the last tile overlaps by 120
    # away from the last two tiles, neighbours' ramps sum to 1 (a partition of unity)
    for a, b in zip(starts[:-3], starts[1:-2]):
        left, right = window_1d(a, tile, length, overlap), window_1d(b, tile, length, overlap)
        np.testing.assert_allclose(left[-overlap:] + right[:overlap], 1, atol=1e-12)
    inner = window_1d(starts[1], tile, length, overlap)
    assert (inner[overlap:-overlap] == 1).all() and inner[0] < 0.01
    assert window_1d(0, tile, length, overlap)[0] == 1  # no neighbour at the image border: full weight
    last = window_1d(starts[-1], tile, length, overlap)
    assert last[-1] == 1 and last[starts[-2] + tile - starts[-1] - 1] > 0.99  # ramps over all 120 px
    assert window_1d(0, tile, length, 0).min() == 1  # no overlap, no ramp


def test_seam_ratio_sees_steps_at_the_tile_stride_only(rng):
    smooth = np.cumsum(rng.random((100, 400)), axis=1) / 400  # real structure: changes everywhere
    assert seam_ratio(smooth, smooth, 50) == pytest.approx(1)
    seams = smooth + 0.2 * ((np.arange(400) // 50) % 2)  # value jumps every 50 columns
    assert seam_ratio(seams, smooth, 50, axis=1) > 3
    assert seam_ratio(seams, smooth, 50, axis=0) == pytest.approx(1, abs=0.2)  # rows: no seams


def test_tiles_cover_and_stay_inside():
    starts = tile_starts(1000, 256, 64)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:]))
    assert tile_starts(100, 256, 64) == [0]
    with pytest.raises(ValueError):
        tile_starts(100, 64, 64)


def test_tissue_mask_steps_equal_scipy(rng):
    """The fast opening and hole filling of the tissue overview are scipy's, pixel for pixel."""
    from scipy import ndimage as ndi

    from napari_ftu.engine.tissue import _fill_holes, _opening

    for _ in range(200):
        mask = rng.random(tuple(rng.integers(1, 40, 2))) < rng.uniform(0.2, 0.95)
        np.testing.assert_array_equal(_opening(mask), ndi.binary_opening(mask, iterations=1))
        np.testing.assert_array_equal(_fill_holes(mask), ndi.binary_fill_holes(mask))
