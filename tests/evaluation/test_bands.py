"""Large label images are scored band by band with the figures of the whole-image path."""

import numpy as np
import pytest
import tifffile

from napari_ftu.evaluation import bands
from napari_ftu.evaluation.evaluate import evaluate_paths
from napari_ftu.evaluation.metrics import overlap_table
from napari_ftu.formats.annotations import instances_of


def _blobs(rng, shape, n, binary):
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        h, w = rng.integers(2, 30), rng.integers(2, 12)
        labels[y : y + h, x : x + w] = 1 if binary else k
    return labels


@pytest.mark.parametrize("rows", [1, 3, 7, 64, 500])
@pytest.mark.parametrize("binary", [(True, True), (False, True), (False, False)])
def test_the_banded_table_is_the_whole_images_table(rows, binary, rng):
    pred = _blobs(rng, (90, 70), 25, binary[0]).astype(np.uint16)
    truth = _blobs(rng, (90, 70), 20, binary[1]).astype(np.uint8)
    truth[40:50] = np.where(truth[40:50] > 0, truth[40:50], 1 if binary[1] else 3)  # a wide object across bands
    whole = overlap_table(instances_of(pred), instances_of(truth))
    banded = bands.overlap_table_banded(pred, truth, rows)
    for name in ("pred_ids", "pred_areas", "truth_ids", "truth_areas", "pair_pred", "pair_truth", "inter"):
        np.testing.assert_array_equal(getattr(banded, name), getattr(whole, name), err_msg=name)


def test_two_label_tiffs_give_the_same_report_by_bands(rng, tmp_path, monkeypatch):
    pred, truth = tmp_path / "pred.tif", tmp_path / "truth.tif"
    tifffile.imwrite(pred, _blobs(rng, (300, 200), 40, True).astype(np.uint8) * 255, rowsperstrip=16,
                     compression="zlib")
    tifffile.imwrite(truth, _blobs(rng, (300, 200), 30, False).astype(np.uint16), rowsperstrip=16)
    expected = evaluate_paths(pred, truth)
    assert not bands.banded_pair(pred, truth)  # small: the usual path
    monkeypatch.setattr(bands, "BAND_PIXELS", 200 * 13)
    monkeypatch.setattr(bands, "BANDED_ABOVE_PX", 1000)
    assert bands.banded_pair(pred, truth)
    assert bands.evaluate_banded(pred, truth) == expected
