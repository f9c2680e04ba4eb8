import numpy as np
import pytest

from napari_ftu.engine.inference import segment, segment_steps
from napari_ftu.evaluation.metrics import dice
from napari_ftu.steps import Outputs, TileProgress


def test_default_model_finds_glomeruli(small_slide, default_model):
    rgb, truth, spec = small_slide
    calls = []
    seg = segment(rgb, default_model, progress=lambda d, t: calls.append((d, t)), um_per_px=spec.um_per_px)
    assert seg.probability.shape == truth.shape and seg.labels.shape == truth.shape
    assert calls[-1][0] == calls[-1][1] == seg.n_tiles
    assert dice(seg.labels, truth) >= 0.85
    assert abs(len(seg.objects) - truth.max()) <= 1
    obj = seg.objects[0]
    assert obj["area_um2"] == pytest.approx(obj["area_px"] * spec.um_per_px**2)
    assert 0.5 < obj["confidence"] <= 1


def test_pixel_size_is_honoured(small_slide, default_model):
    """The same tissue scanned at half the pixel size is resampled to the model's scale."""
    from napari_ftu.io.synthetic import make_slide

    rgb, truth, _ = make_slide(1536, 1536, seed=4242, um_per_px=0.5)
    seg = segment(rgb, default_model, um_per_px=0.5)
    assert seg.labels.shape == truth.shape
    assert dice(seg.labels, truth) >= 0.85


def test_generator_stops_between_batches(small_slide, default_model):
    rgb, _, spec = small_slide
    steps = segment_steps(rgb, default_model, um_per_px=spec.um_per_px, batch_size=1)
    seen = [next(steps), next(steps), next(steps)]
    steps.close()  # what a cancelled worker does: no further tile is computed
    assert seen[0] == TileProgress(0, 4) and isinstance(seen[1], Outputs) and seen[2] == TileProgress(1, 4)
    with pytest.raises(StopIteration):
        next(steps)


def test_threshold_changes_instances_not_probability(small_slide, default_model):
    rgb, _, spec = small_slide
    low = segment(rgb, default_model, um_per_px=spec.um_per_px, threshold=0.2)
    high = segment(rgb, default_model, um_per_px=spec.um_per_px, threshold=0.9)
    np.testing.assert_array_equal(low.probability, high.probability)
    assert (low.labels > 0).sum() > (high.labels > 0).sum()
