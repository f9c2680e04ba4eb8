import numpy as np
import pytest

from napari_ftu.engine import tiling
from napari_ftu.engine.tiling import BLENDS, Stitcher, read_tile, tile_grid, tile_starts, window_1d


def _stitch(image, tile, overlap, blend, keep=None):
    """Stitch identity predictions of ``image`` (C, H, W) into a fresh array via the sink."""
    out = np.full(image.shape, -1.0, np.float32)
    bands = []

    def sink(y0, x0, block):
        if x0 == 0:
            bands.append((y0, y0 + block.shape[1]))
        out[:, y0 : y0 + block.shape[1], x0 : x0 + block.shape[2]] = block

    stitcher = Stitcher(image.shape[1:], image.shape[0], tile, overlap, sink, blend)
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


def test_skipped_tiles_leave_zeros_and_the_rest_exact(rng):
    image = rng.integers(1, 256, (1, 700, 300)).astype(np.uint8)
    out, _ = _stitch(image, 128, 32, "gaussian", keep=lambda y, x: y < 200 or y >= 480)
    assert (out[0, 330:460] == 0).all()  # a whole band of skipped tile rows
    np.testing.assert_array_equal(np.rint(out[0, :150]), image[0, :150])
    np.testing.assert_array_equal(np.rint(out[0, -150:]), image[0, -150:])


def test_window_is_zero_near_inner_edges_only():
    w = window_1d(96, 128, 1000, 32)  # an inner tile
    assert (w[:16] == 0).all() and (w[-16:] == 0).all() and (w[16:-16] > 0).all()
    first = window_1d(0, 128, 1000, 32)
    assert first[0] > 0 and (first[-16:] == 0).all()
    assert window_1d(0, 128, 100, 32).shape == (100,)  # clipped to a small image
    with pytest.raises(ValueError, match="blend"):
        window_1d(0, 128, 1000, 32, "median")


def test_tiles_cover_and_stay_inside():
    starts = tile_starts(1000, 256, 64)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:]))
    assert tile_starts(100, 256, 64) == [0]
    with pytest.raises(ValueError):
        tile_starts(100, 64, 64)
