"""The strip-wise labeller equals scipy's whole-image fill-holes + label, whatever the strips."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ftu.engine import components
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


@pytest.fixture(params=[0, 10**9], ids=["box by box", "all boxes of a strip at once"])
def box_cost(request, monkeypatch):
    """Both ways of searching the boxes for holes."""
    monkeypatch.setattr(components, "BOX_COST_PX", request.param)


@pytest.mark.parametrize("seed", range(12))
def test_strips_equal_the_whole_image(seed, box_cost):
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


@pytest.mark.parametrize("seed", range(6))
def test_a_box_labels_as_the_whole_image_and_touches_nothing_outside(seed, box_cost):
    """Where no tile was computed the probability is 0: labelling only the box that tiles cover
    gives the whole image's labels and object facts, and never reads or writes outside it."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(40, 200, 2)
    prob = ndi.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 4))
    prob = (prob - prob.min()) / (np.ptp(prob) + 1e-9)
    top, left = rng.integers(0, h // 3), rng.integers(0, w // 3)
    bottom, right = rng.integers(top + 1, h + 1), rng.integers(left + 1, w + 1)
    inside = np.zeros((h, w), bool)
    inside[top:bottom, left:right] = True
    prob[~inside] = 0
    threshold, min_area, strip = rng.uniform(0.3, 0.7), int(rng.integers(0, 30)), int(rng.integers(1, 64))
    ref = _reference(prob, threshold, min_area)
    whole = label_instances(prob, threshold, min_area, np.zeros((h, w), np.int32), strip=strip)
    out = np.where(inside, 0, -7).astype(np.int32)  # -7: must stay untouched
    boxed = label_instances(np.where(inside, prob, 1.0), threshold, min_area, out, strip=strip,
                            box=(top, bottom, left, right))  # 1 outside: any read there would add objects
    np.testing.assert_array_equal(out[inside], ref[inside])
    assert (out[~inside] == -7).all()
    assert boxed.count == whole.count == ref.max()
    for a, b in ((boxed.area, whole.area), (boxed.prob_sum, whole.prob_sum), (boxed.y_sum, whole.y_sum),
                 (boxed.x_sum, whole.x_sum), (boxed.boxes, whole.boxes)):
        np.testing.assert_allclose(a, b)


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


def _shapes():
    """Masks where hole filling is easy to get wrong strip by strip."""
    diamond = np.zeros((30, 30))
    for k in range(10):  # one-pixel pieces touching only at corners: 8-connected rim, a hole inside
        for y, x in ((5 + k, 15 + k), (15 + k, 25 - k), (25 - k, 15 - k), (15 - k, 5 + k)):
            diamond[y, x] = 1
    nested = np.zeros((50, 50))
    nested[2:48, 2:48] = 1
    nested[6:44, 6:44] = 0
    nested[12:38, 12:38] = 1  # an object in the ring's hole, with a hole of its own and a speck in it
    nested[16:34, 16:34] = 0
    nested[25, 25] = 1
    border = np.zeros((40, 40))
    border[0:30, 0:30] = 1
    border[5:20, 0:10] = 0  # a notch open to the image border: not a hole
    border[10:15, 15:20] = 0  # a hole
    wide = np.zeros((24, 90))
    wide[1:23, 1:89] = 1
    wide[4:20, 4:86] = 0  # a hole wider than a strip's pixel budget at small strips
    wide[10:14, 30:60] = 1
    return [diamond, nested, border, wide]


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("strip", [1, 2, 3, 5, 16, 100])
@pytest.mark.parametrize("min_area", [0, 30, 400])
def test_holes_with_corner_rims_nested_objects_and_border_notches(index, strip, min_area, box_cost):
    prob = _shapes()[index]
    out = np.full(prob.shape, -1, np.int32)
    inst = label_instances(prob, 0.5, min_area, out, strip=strip)
    ref = _reference(prob, 0.5, min_area)
    np.testing.assert_array_equal(out, ref)
    assert inst.count == ref.max()
    if inst.count:
        np.testing.assert_array_equal(inst.area[1:], np.bincount(ref.ravel())[1:])
        boxes = [(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in ndi.find_objects(ref)]
        np.testing.assert_array_equal(inst.boxes[1:], boxes)


def test_diamond_rim_is_filled_into_one_object():
    prob = _shapes()[0]
    out = np.zeros(prob.shape, np.int32)
    inst = label_instances(prob, 0.5, 0, out, strip=4)
    assert inst.count == 1 and out[15, 15] == 1 and inst.area[1] == ndi.binary_fill_holes(prob > 0).sum()


class _Store:
    """An array-like that, like a zarr store, hands out copies, and fails on any read or write
    larger than ``most`` pixels: what the labeller holds at a time."""

    def __init__(self, array, most):
        self.array, self.most = array, most
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def _check(self, key):
        size = np.empty(self.shape, bool)[key].size
        assert size <= self.most, f"read {size} pixels at once"

    def __getitem__(self, key):
        self._check(key)
        return self.array[key].copy()

    def __setitem__(self, key, value):
        self._check(key)
        self.array[key] = value


@pytest.mark.parametrize("seed", range(4))
def test_stores_are_read_a_few_strips_at_a_time(seed, box_cost):
    rng = np.random.default_rng(seed)
    h, w, strip = 240, 90, 16
    prob = ndi.gaussian_filter(rng.random((h, w)), 2.0)
    prob = (prob - prob.min()) / np.ptp(prob)
    prob[20:200, 5:8] = prob[20:200, 82:85] = prob[20:23, 5:85] = prob[197:200, 5:85] = 1  # a ring taller than a strip
    out = np.zeros((h, w), np.int32)
    inst = label_instances(_Store(prob, 2 * strip * w), 0.6, 5, _Store(out, 2 * strip * w), strip=strip)
    ref = _reference(prob, 0.6, 5)
    np.testing.assert_array_equal(out, ref)
    assert inst.count == ref.max()
