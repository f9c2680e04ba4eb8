"""The slide-scale engine: seams, tissue skipping, pyramids, zarr streaming, TTA, out-of-memory
halving, cancel and instance options."""

import threading

import numpy as np
import pytest
import torch

from napari_ftu.engine.inference import relabel, segment, segment_steps
from napari_ftu.engine.postprocess import instances
from napari_ftu.engine.tile_source import TileSource
from napari_ftu.engine.tiling import BLENDS, predict_untiled, seam_ratio
from napari_ftu.evaluation.metrics import dice
from napari_ftu.models.card import ModelCard
from napari_ftu.models.loading import FTUModel
from napari_ftu.steps import Band, LabelProgress, Outputs, TileProgress


def small_cnn(seed=0):
    """Three 3x3 convolutions: a receptive field of 3 pixels each side."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 1, 3, padding=1)).eval()


def cnn_model(tile=64, overlap=16, **card):
    return FTUModel(small_cnn(), ModelCard(tile_size=tile, overlap=overlap, um_per_px=1.0, **card), "cpu")


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("overlap", [0, 16, 40])
def test_a_pixelwise_model_tiled_equals_untiled_everywhere(blend, overlap, rng):
    """Only a network without spatial context (1x1 convolutions) gives tile-independent pixels:
    for it the blended tiles must reproduce one whole-image pass exactly, borders included."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1)).eval()
    model = FTUModel(net, ModelCard(tile_size=64, overlap=overlap, um_per_px=1.0), "cpu")
    image = rng.integers(0, 256, (200, 237, 3)).astype(np.uint8)
    tiled = segment(image, model, blend=blend, skip_background=False).probability
    np.testing.assert_allclose(tiled, predict_untiled(model, image)[0], atol=1e-5, rtol=0)


def test_no_visible_seams_on_real_tissue(shared_data, default_model):
    """The real criterion for networks whose receptive field exceeds the overlap (GUIDE §5): on a
    real H&E image, |dp| at the tile stride is barely above a single untiled pass (the old
    window, zero within half the overlap of inner edges, measured 4.2 across x and 3.1 across y
    here)."""
    import imageio.v3 as iio

    rgb = np.asarray(iio.imread(shared_data / "slides" / "tiatoolbox_target_image.png"))[..., :3]
    card = default_model.card
    prob = segment(rgb, default_model, skip_background=False).probability
    untiled = predict_untiled(default_model, rgb)[0]
    stride = card.tile_size - card.overlap
    assert seam_ratio(prob, untiled, stride, axis=1) <= 1.3
    assert seam_ratio(prob, untiled, stride, axis=0) <= 1.3


def test_glass_tiles_are_skipped_without_changing_tissue(default_model):
    from napari_ftu.io.synthetic import make_slide

    rgb, truth, _ = make_slide(1024, 1024, seed=4242, um_per_px=2.0)
    rgb = rgb.copy()
    rgb[:, :600] = (238, 238, 240)  # 60 % glass
    truth = truth.copy()
    truth[:, :600] = 0
    fast = segment(rgb, default_model, um_per_px=2.0)
    slow = segment(rgb, default_model, um_per_px=2.0, skip_background=False)
    assert slow.n_skipped == 0 and fast.n_skipped / (fast.n_tiles + fast.n_skipped) == 2 / 5  # 2 of 5 columns
    tissue = np.zeros(rgb.shape[:2], bool)
    tissue[:, 600:] = True
    np.testing.assert_allclose(fast.probability[tissue], slow.probability[tissue], atol=1e-6)
    np.testing.assert_array_equal(fast.labels, slow.labels)
    assert dice(fast.labels, truth) > 0.85
    # labelling skipped the glass columns, and still labels as the whole image would
    assert slow.covered == (0, 1024, 0, 1024) and fast.covered[2] >= 600 - default_model.card.tile_size
    assert (fast.probability[:, : fast.covered[2]] == 0).all()
    # the same when the outputs are resampled to the image's pixels (scanned at 0.5 µm/px)
    fine = segment(np.repeat(np.repeat(rgb[:512], 4, 0), 4, 1), default_model, um_per_px=0.5)
    assert fine.labels.shape == (2048, 4096) and fine.covered[2] > 0
    np.testing.assert_array_equal(fine.labels, instances(fine.probability, fine.threshold, fine.min_area_px))


def test_labelling_the_covered_box_misses_nothing_interpolation_spreads(rng):
    """Outputs resampled 5x from the model grid spread the edge of the computed tiles by linear
    interpolation into the glass beside them; with a low threshold those pixels are objects
    too, and the box that labelling covers must hold them."""
    net = torch.nn.Conv2d(3, 1, 1)
    torch.nn.init.zeros_(net.weight)
    torch.nn.init.constant_(net.bias, 10.0)  # certain everywhere a tile is computed
    model = FTUModel(net.eval(), ModelCard(tile_size=64, overlap=16, um_per_px=1.0), "cpu")
    image = np.clip(rng.normal((190, 110, 160), 25, (640, 960, 3)), 0, 255).astype(np.uint8)
    image[:, :480] = (238, 238, 240)  # glass on the left half
    seg = segment(image, model, um_per_px=0.2, threshold=0.1)
    assert seg.n_skipped > 0 and seg.labels.shape == (640, 960) and seg.covered[2] > 0
    np.testing.assert_array_equal(seg.labels, instances(seg.probability, 0.1, seg.min_area_px))


def test_pyramid_level_nearest_the_model_scale_is_read(default_model):
    from napari_ftu.io.synthetic import make_slide

    rgb, truth, _ = make_slide(1024, 1024, seed=4242, um_per_px=1.0)
    levels = [rgb, rgb[::2, ::2], rgb[::4, ::4]]
    source = TileSource(levels, 1.0, default_model.card.um_per_px)
    assert source.level == 1 and source.exact and source.shape == (512, 512)
    seg = segment(levels, default_model, um_per_px=1.0)
    assert seg.downsample == 2.0 and seg.labels.shape == (512, 512)
    assert dice(seg.labels, truth[::2, ::2]) > 0.85
    flat = segment(rgb, default_model, um_per_px=1.0, full_resolution=False)
    assert dice(seg.labels, flat.labels) > 0.95


def test_zarr_store_matches_the_in_memory_run(tmp_path, default_model, small_slide):
    import zarr

    rgb, _, spec = small_slide
    mem = segment(rgb, default_model, um_per_px=spec.um_per_px, full_resolution=False, tta=True)
    disk = segment(rgb, default_model, um_per_px=spec.um_per_px, store=tmp_path / "out.zarr", tta=True)
    assert isinstance(disk.labels, zarr.Array) and disk.prob_scale == 255
    stored = disk.class_probability()[...]
    assert disk.probability.shape == (1, *stored.shape)  # stores keep the class axis
    assert stored.dtype == np.uint8
    assert np.abs(stored / 255 - mem.probability).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(disk.labels[...], instances(stored / 255, disk.threshold, disk.min_area_px))
    assert len(disk.objects) == len(mem.objects)
    assert np.abs(disk.uncertainty[...] / 255 - mem.uncertainty).max() <= 0.5 / 255 + 1e-6
    reopened = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert set(reopened.array_keys()) == {"probability", "uncertainty", "labels"}


class _OutOfMemoryAbove(torch.nn.Module):
    """A network that fails like a full GPU when a batch holds more than ``limit`` tiles."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.inner(x)


def test_out_of_memory_halves_the_batch_and_completes(rng):
    image = rng.integers(0, 256, (300, 300, 3)).astype(np.uint8)
    card = ModelCard(tile_size=64, overlap=16, um_per_px=1.0)
    net = _OutOfMemoryAbove(small_cnn(), limit=2)
    seg = segment(image, FTUModel(net, card, "cpu"), batch_size=8, skip_background=False)
    ref = segment(image, cnn_model(), batch_size=8, skip_background=False)
    assert seg.batch_size == 2 and max(s for s in net.sizes if s <= 2) == 2
    np.testing.assert_allclose(seg.probability, ref.probability, atol=1e-6)


def test_other_errors_are_not_swallowed(rng):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch in layer 3")

    image = rng.integers(0, 256, (100, 100, 3)).astype(np.uint8)
    with pytest.raises(RuntimeError, match="layer 3"):
        segment(image, FTUModel(Broken(), ModelCard(tile_size=64, overlap=16), "cpu"), skip_background=False)


def _readers():
    return [t for t in threading.enumerate() if t.name == "napari-ftu tile reader"]


def test_cancel_stops_within_a_batch_and_ends_the_reader(rng):
    image = rng.integers(0, 256, (400, 400, 3)).astype(np.uint8)
    steps = segment_steps(image, cnn_model(), batch_size=1, skip_background=False, edge_margin=0)  # an 8 x 8 grid
    assert next(steps) == TileProgress(0, 64)
    assert isinstance(next(steps), Outputs)
    assert next(steps) == TileProgress(1, 64)
    assert _readers()
    steps.close()
    assert not _readers()
    early = segment_steps(image, cnn_model(), skip_background=False)
    next(early)  # cancelled before the first tile
    early.close()
    assert not _readers()


def test_a_failing_read_reaches_the_caller():
    class Unreadable:
        shape, dtype, ndim = (300, 300, 3), np.dtype(np.uint8), 3

        def __getitem__(self, key):
            raise OSError("tile 3 of the slide is corrupt")

    with pytest.raises(OSError, match="corrupt"):
        segment([Unreadable()], cnn_model(), skip_background=False)
    assert not _readers()


def test_rows_are_handed_over_while_the_run_goes_on(default_model, small_slide):
    rgb, _, spec = small_slide
    events = []
    steps = segment_steps(rgb, default_model, um_per_px=spec.um_per_px, batch_size=1)
    while True:
        try:
            events.append(next(steps))
        except StopIteration:
            break
    bands = [e for e in events if isinstance(e, Band)]
    tiles = [e for e in events if isinstance(e, TileProgress)]
    first_band = events.index(bands[0])
    assert first_band < events.index(tiles[-1])  # before the last tile
    assert bands[0].y0 == 0 and all(a.y1 == b.y0 for a, b in zip(bands, bands[1:]))
    assert any(isinstance(e, LabelProgress) for e in events)


def test_threshold_is_re_derived_from_the_cached_probability(default_model, small_slide):
    rgb, _, spec = small_slide
    seg = segment(rgb, default_model, um_per_px=spec.um_per_px)
    prob = seg.probability.copy()
    relabel(seg, 0.9)
    np.testing.assert_array_equal(seg.probability, prob)
    np.testing.assert_array_equal(seg.labels, instances(prob, 0.9, seg.min_area_px))
    assert seg.threshold == 0.9 and len(seg.objects) == seg.labels.max()


def test_watershed_splits_touching_objects():
    yy, xx = np.mgrid[:120, :200]
    disks = ((yy - 60) ** 2 + (xx - 70) ** 2 < 35**2) | ((yy - 60) ** 2 + (xx - 130) ** 2 < 35**2)
    prob = disks.astype(np.float32)
    from napari_ftu.engine.inference import Segmentation

    seg = Segmentation(probability=prob, labels=np.zeros(prob.shape, np.int32), min_area_px=100)
    assert len(relabel(seg, 0.5).objects) == 1
    split = relabel(seg, 0.5, watershed=True)
    assert len(split.objects) == 2 and set(np.unique(split.labels)) == {0, 1, 2}
    left, right = sorted(split.objects, key=lambda o: o["centroid_x"])
    assert abs(left["centroid_x"] - 70) < 3 and abs(right["centroid_x"] - 130) < 3
    assert left["area_px"] + right["area_px"] == disks.sum()


def test_multi_class_models_give_one_probability_per_class(rng, tmp_path):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 3, 3, padding=1)).eval()
    card = ModelCard(tile_size=64, overlap=16, um_per_px=1.0, classes=["background", "glomerulus", "vessel"],
                     thresholds={"vessel": 0.2}, min_object_um2=0)
    model = FTUModel(net, card, "cpu")
    image = rng.integers(0, 256, (150, 170, 3)).astype(np.uint8)
    seg = segment(image, model, skip_background=False, class_index=2)
    assert seg.probability.shape == (3, 150, 170)
    np.testing.assert_allclose(seg.probability.sum(0), 1, atol=1e-5)  # softmax over the classes
    assert seg.threshold == 0.2  # the card's threshold for "vessel"
    np.testing.assert_array_equal(seg.labels, instances(seg.probability[2], 0.2, 0))
    half = segment(image, model, skip_background=False, store=tmp_path / "f16.zarr", prob_dtype="float16")
    assert half.probability.dtype == np.float16 and half.prob_scale == 1.0
    assert np.abs(half.probability[...] - seg.probability).max() < 1e-3
    with pytest.raises(Exception, match="class index 3"):
        segment(image, model, class_index=3)
