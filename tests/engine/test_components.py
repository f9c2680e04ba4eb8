"""The strip-wise labeller equals scipy's whole-image fill-holes + label, whatever the strips."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ftu.engine.components import label_instances


def _reference(prob, threshold, min_area):
    labels, _ = ndi.label(ndi.binary_fill_holes(prob >= threshold))
    areas = np.bincount(labels.ravel())
    small = areas < max(min_area, 1)
    small[0] = False
    labels[small[labels]] = 0
    ids = np.unique(labels)
    lut = np.zeros(labels.max() + 1, np.int32)
    lut[ids[ids > 0]] = np.arange(1, (ids > 0).sum() + 1)
    return lut[labels]


@pytest.mark.parametrize("seed", range(12))
def test_strips_equal_the_whole_image(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 220, 2)
    prob = ndi.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 4))
    prob = (prob - prob.min()) / (np.ptp(prob) + 1e-9)
    threshold, min_area, strip = rng.uniform(0.3, 0.7), int(rng.integers(0, 30)), int(rng.integers(1, 64))
    ref = _reference(prob, threshold, min_area)
    out = np.full((h, w), -1, np.int32)
    inst = label_instances(prob, threshold, min_area, out, strip=strip)
    np.testing.assert_array_equal(out, ref)
    assert inst.count == ref.max()
    if inst.count:
        np.testing.assert_array_equal(inst.area[1:], np.bincount(ref.ravel())[1:])
        np.testing.assert_allclose(inst.prob_sum[1:], ndi.sum_labels(prob, ref, np.arange(1, inst.count + 1)))
        centroids = np.array(ndi.center_of_mass(ref > 0, ref, np.arange(1, inst.count + 1)))
        np.testing.assert_allclose(inst.y_sum[1:] / inst.area[1:], centroids[:, 0])
        boxes = [(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in ndi.find_objects(ref)]
        np.testing.assert_array_equal(inst.boxes[1:], boxes)


def test_a_ring_spanning_strips_is_filled_and_counted_once():
    prob = np.zeros((60, 60))
    prob[10:50, 10:50] = 1
    prob[20:40, 20:40] = 0  # a hole crossing several strips
    out = np.zeros(prob.shape, np.int32)
    inst = label_instances(prob, 0.5, 0, out, strip=7)
    assert inst.count == 1 and (out[10:50, 10:50] == 1).all() and out.sum() == 40 * 40
    prob[30, :] = 0  # a background channel to the border: not a hole any more
    prob[30, 10:50] = 0
    inst = label_instances(prob, 0.5, 0, out, strip=7)
    assert inst.count == 2 and out[30].max() == 0
