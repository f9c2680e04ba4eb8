import csv

import imageio.v3 as iio
import numpy as np
import pytest

from napari_ftu.export import ExportError, export_tiles, read_rle_csv, safe_id, write_rle_csv


def test_rle_csv_round_trip(tmp_path, small_slide):
    _, labels, _ = small_slide
    path = write_rle_csv(tmp_path / "sub.csv", [("img1", labels > 0), ("empty", np.zeros((5, 6)))])
    masks = read_rle_csv(path, {"img1": labels.shape, "empty": (5, 6)})
    np.testing.assert_array_equal(masks["img1"], labels > 0)
    assert not masks["empty"].any()
    assert path.read_text().splitlines()[0] == "id,rle"


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/b", "a\\b", "", "a,b", ".."])
def test_unsafe_ids_are_refused(bad):
    with pytest.raises(ExportError):
        safe_id(bad)


def test_failed_write_keeps_previous_file(tmp_path):
    path = write_rle_csv(tmp_path / "sub.csv", [("a", np.ones((2, 2)))])
    before = path.read_text()
    with pytest.raises(ExportError):
        write_rle_csv(path, [("b", np.ones((2, 2))), ("../evil", np.ones((2, 2)))])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]  # no temporary left behind


def test_training_tiles_and_manifest(tmp_path, small_slide):
    rgb, labels, _ = small_slide
    rows = export_tiles(rgb, labels, tmp_path, "slide1", tile=256, overlap=0, um_per_px=1.0, negative_fraction=0.0)
    with open(tmp_path / "manifest.csv", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    assert len(manifest) == len(rows) > 0
    for row in manifest:
        y, x = int(row["y"]), int(row["x"])
        img = iio.imread(tmp_path / row["image"])
        mask = iio.imread(tmp_path / row["mask"])
        np.testing.assert_array_equal(img, rgb[y : y + 256, x : x + 256])
        np.testing.assert_array_equal(mask, labels[y : y + 256, x : x + 256])
        assert int(row["n_objects"]) == np.unique(mask[mask > 0]).size > 0
    # with all negatives kept, every tile of the grid is written
    all_rows = export_tiles(rgb, labels, tmp_path / "all", "slide1", tile=256, negative_fraction=1.0)
    assert len(all_rows) == 9
