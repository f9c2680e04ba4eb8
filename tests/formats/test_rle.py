import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_ftu.errors import FormatError
from napari_ftu.formats import rle

csv.field_size_limit(2**31 - 1)  # real RLE rows are megabytes long


def test_guide_vector():
    mask = np.zeros((3, 4), np.uint8)
    mask[0, 0] = mask[1, 0] = mask[2, 3] = 1
    assert rle.encode(mask) == "1 2 12 1"
    np.testing.assert_array_equal(rle.decode("1 2 12 1", (3, 4)), mask)


def test_first_and_last_pixels_round_trip():
    # Some public encoders zero the first and last pixel; ours must not.
    mask = np.ones((5, 7), np.uint8)
    assert rle.encode(mask) == "1 35"
    np.testing.assert_array_equal(rle.decode(rle.encode(mask), mask.shape), mask)


def test_empty_mask_is_empty_string():
    assert rle.encode(np.zeros((4, 4))) == ""
    assert not rle.decode("", (4, 4)).any()


@settings(max_examples=200, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_round_trip(mask):
    np.testing.assert_array_equal(rle.decode(rle.encode(mask), mask.shape).astype(bool), mask)


@settings(max_examples=200, deadline=None)
@given(arrays(np.int32, st.tuples(st.integers(1, 30), st.integers(1, 30)), elements=st.integers(0, 3)),
       st.sampled_from(["C", "F"]), st.sampled_from([np.bool_, np.uint8, np.int32, np.uint16, np.int64]))
def test_any_layout_and_dtype_encodes_the_foreground(labels, order, dtype):
    mask = np.asarray(labels.astype(dtype), order=order)
    flat = (labels != 0).T.ravel()
    expected = []  # a plain per-pixel walk over the column-major pixels
    for i, v in enumerate(flat):
        if v and (i == 0 or not flat[i - 1]):
            expected += [i + 1, 1]
        elif v:
            expected[-1] += 1
    assert rle.encode(mask) == " ".join(map(str, expected))


@pytest.mark.parametrize(
    "text, problem",
    [("1 2 3", "odd number"), ("1 x", "integers"), ("0 2", "1-indexed"), ("1 0", "positive"),
     ("5 2 1 2", "sorted"), ("1 3 2 2", "overlap"), ("10 5", "ends at pixel 14")],
)
def test_malformed_rle_is_refused_with_reason(text, problem):
    with pytest.raises(FormatError, match=problem):
        rle.decode(text, (3, 4))


def test_huge_claim_is_refused_before_allocating():
    with pytest.raises(FormatError, match="too large"):
        rle.decode("1 2", (10**6, 10**6))


def test_oracle_10078(shared_data):
    folder = shared_data / "hubmap2022_rle"
    with open(folder / "gunesevitan_test_metadata_10078_selfannotated.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    h, w = int(row["image_height"]), int(row["image_width"])
    truth = np.load(folder / "gunesevitan_10078_selfannotated_mask.npy")[:, :w]
    decoded = rle.decode(row["rle"], (h, w))
    np.testing.assert_array_equal(decoded.astype(bool), truth.astype(bool))
    assert rle.encode(decoded) == " ".join(row["rle"].split())


def test_real_train_rows_decode_to_stated_size(shared_data):
    with open(shared_data / "hubmap2022_rle" / "train_rows_subset.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 141
    for row in rows:
        shape = (int(row["img_height"]), int(row["img_width"]))
        mask = rle.decode(row["rle"], shape)
        assert mask.shape == shape
        assert 0 < mask.mean() < 1
        assert rle.encode(mask) == " ".join(row["rle"].split())


def test_encode_bands_equals_encode_whatever_the_band(monkeypatch):
    import zarr

    rng = np.random.default_rng(3)
    mask = (rng.random((50, 37)) < 0.5).astype(np.uint8)
    mask[:, 10:20] = 1  # runs that continue across band boundaries
    lazy = zarr.array(mask, chunks=(16, 8))
    for band in (1, 8 * 50, 2**28):
        monkeypatch.setattr(rle, "BAND_BYTES", band)
        assert rle.encode_bands(lazy) == rle.encode(mask)
    assert rle.encode_bands(zarr.zeros((40, 40), chunks=(8, 8), dtype=np.uint8)) == ""


def test_export_of_a_label_image_to_rle_reads_it_by_bands(tmp_path, monkeypatch):
    from napari_ftu.cli import main
    from napari_ftu.formats.export import import_annotations
    from napari_ftu.io.images import write_labels_ome_tiff
    from napari_ftu.io.synthetic import make_slide

    _, labels, _ = make_slide(512, 640, seed=305, um_per_px=1.0)
    write_labels_ome_tiff(tmp_path / "lab.ome.tif", labels, 1.0, pyramid=True)
    monkeypatch.setattr(rle, "BAND_BYTES", 512 * 64)  # several bands
    assert main(["export", str(tmp_path / "lab.ome.tif"), "--out", str(tmp_path / "x.csv")]) == 0
    (back,) = import_annotations(tmp_path / "x.csv", "hubmap", labels.shape)
    assert back.image_id == "lab" and ((back.labels > 0) == (labels > 0)).all() and labels.max() > 1
