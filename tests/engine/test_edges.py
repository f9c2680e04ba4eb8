"""Objects cut by the image's edge: tiles past the edge see the image mirrored, and a cut object
keeps a lower minimum area (bench/edge_cut.py measures the built-in model on cut glomeruli)."""

import numpy as np
import pytest
import torch

from napari_ftu.engine.components import label_instances
from napari_ftu.engine.inference import edge_margins, segment
from napari_ftu.engine.tile_source import TileSource
from napari_ftu.engine.tiling import predict_untiled
from napari_ftu.models.card import ModelCard
from napari_ftu.models.loading import FTUModel


def cnn_model(tile=64, overlap=16):
    """Three 3x3 convolutions: a receptive field of 3 pixels each side, zero-padded."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 1, 3, padding=1)).eval()
    return FTUModel(net, ModelCard(tile_size=tile, overlap=overlap, um_per_px=1.0), "cpu")


@pytest.mark.parametrize("y, x", [(-16, -16), (-5, 30), (70, 90), (90, -20)])
def test_tiles_past_the_edge_are_the_image_mirrored(y, x, rng):
    image = rng.integers(0, 256, (120, 140, 3)).astype(np.uint8)
    source = TileSource(image, None, 1.0)
    mirrored = np.pad(image, ((64, 64), (64, 64), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(source.read(y, x, 64, "symmetric"), mirrored[64 + y : 128 + y, 64 + x : 128 + x])
    small = image[:40, :50]  # smaller than a tile: mirrored on every side
    np.testing.assert_array_equal(TileSource(small, None, 1.0).read(-8, -8, 64, "symmetric"),
                                  np.pad(small, ((8, 16), (8, 6), (0, 0)), mode="symmetric")[:64, :64])


def test_pixels_at_the_edge_are_predicted_with_the_mirrored_context(rng):
    """With edge margins the border pixels are what one pass over the mirrored image gives (up
    to the blending of tiles, as inside), not what the network's zero padding makes of them."""
    image = rng.integers(0, 256, (100, 120, 3)).astype(np.uint8)  # one tile spans it: mirrored margins
    model = cnn_model(tile=128, overlap=16)
    mirrored = predict_untiled(model, np.pad(image, ((16, 16), (16, 16), (0, 0)), mode="symmetric"))[0, 16:-16, 16:-16]
    edge = np.zeros(image.shape[:2], bool)
    edge[:2], edge[-2:], edge[:, :2], edge[:, -2:] = True, True, True, True
    with_margin = segment(image, model, skip_background=False).probability
    without = segment(image, model, skip_background=False, edge_margin=0).probability
    assert with_margin.shape == without.shape == image.shape[:2]
    inside = np.abs(with_margin - mirrored)[~edge].max()
    assert np.abs(with_margin - mirrored)[edge].max() <= max(2 * inside, 2e-3)
    assert np.abs(without - mirrored)[edge].max() > 10 * inside  # the network's zero padding shows


def test_an_object_cut_by_the_edge_keeps_a_lower_minimum_area():
    prob = np.zeros((100, 100), np.float32)
    prob[0:6, 40:50] = 1  # 60 px touching the top edge
    prob[40:46, 40:50] = 1  # 60 px inside
    prob[94:98, 0:10] = 1  # 40 px touching the left edge
    out = np.zeros(prob.shape, np.int32)
    assert label_instances(prob, 0.5, 100, out).count == 0
    inst = label_instances(prob, 0.5, 100, out, edge_min_area_px=50)
    assert inst.count == 1 and out[0:6, 40:50].all() and not out[40:46].any() and not out[94:98].any()


def test_edge_margin_is_checked(rng):
    image = rng.integers(0, 256, (80, 80, 3)).astype(np.uint8)
    with pytest.raises(ValueError, match="edge margin"):
        segment(image, cnn_model(tile=64, overlap=16), edge_margin=64)
    with pytest.raises(ValueError, match="edge margin"):
        segment(image, cnn_model(tile=64, overlap=16), edge_margin=-1)


def test_margins_go_where_one_tile_spans_the_image():
    """A longer axis keeps its tile grid as it was: shifting it moves where tiles cut objects."""
    assert edge_margins((256, 256), 256, 32) == (32, 32, 32, 32)
    assert edge_margins((200, 800), 256, 32) == (32, 32, 0, 0)
    assert edge_margins((600, 800), 256, 32) == (0, 0, 0, 0)
    assert edge_margins((200, 200), 256, 0) == (0, 0, 0, 0)
