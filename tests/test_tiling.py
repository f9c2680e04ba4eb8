import numpy as np
import pytest

from napari_ftu.tiling import Stitcher, read_tile, tile_grid, tile_starts


@pytest.mark.parametrize("shape, tile, overlap", [((300, 517), 128, 32), ((97, 50), 64, 16), ((40, 33), 64, 8),
                                                  ((512, 512), 128, 0), ((1000, 999), 256, 100)])
def test_identity_model_reproduces_image_exactly(shape, tile, overlap, rng):
    image = rng.integers(0, 256, (3, *shape)).astype(np.uint8)
    stitcher = Stitcher(shape, 3, tile, overlap)
    for y, x in tile_grid(shape, tile, overlap):
        patch = read_tile(np.moveaxis(image, 0, -1), y, x, tile)
        assert patch.shape[:2] == (tile, tile)
        stitcher.add(y, x, np.moveaxis(patch, -1, 0).astype(np.float64))
    out = stitcher.result()
    assert out.shape == image.shape
    assert np.abs(out - image).max() < 1e-4
    np.testing.assert_array_equal(np.rint(out).astype(np.uint8), image)


def test_tiles_cover_and_stay_inside():
    starts = tile_starts(1000, 256, 64)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:]))
    assert tile_starts(100, 256, 64) == [0]
    with pytest.raises(ValueError):
        tile_starts(100, 64, 64)
