import csv
import os
import stat

import imageio.v3 as iio
import numpy as np
import pytest

from napari_ftu.errors import FormatError
from napari_ftu.formats.annotations import Annotations, safe_id
from napari_ftu.formats.export import FORMATS, export_annotations, import_annotations
from napari_ftu.training.tiles import export_tiles


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/b", "a\\b", "", "a,b", "..", "x/../../y"])
def test_unsafe_ids_are_refused(bad):
    with pytest.raises(FormatError):
        safe_id(bad)
    with pytest.raises(FormatError):
        Annotations(bad, np.zeros((2, 2)))


def test_overwrite_needs_consent(tmp_path):
    a = Annotations("a", np.ones((2, 2), np.int32))
    path = export_annotations(a, tmp_path / "sub.csv", "hubmap")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_annotations(a, path, "hubmap")
    export_annotations(Annotations("b", np.zeros((2, 2))), path, "hubmap", overwrite=True)
    assert path.read_text().splitlines()[1] == "b,"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_failing_writer_keeps_the_previous_file(tmp_path, fmt, monkeypatch):
    good = Annotations("img", np.eye(8, dtype=np.int32), um_per_px=0.5, default_class="0")
    path = tmp_path / f"out{FORMATS[fmt].suffix}"
    export_annotations(good, path, fmt)
    before = path.read_bytes()

    import napari_ftu.atomic as atomic

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        export_annotations(Annotations("img", np.ones((8, 8), np.int32), default_class="0"), path, fmt,
                           overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_folder_gives_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(PermissionError):
        export_annotations(Annotations("a", np.ones((2, 2))), folder / "x.csv", "hubmap")


def test_training_tiles_and_manifest(tmp_path, small_slide):
    rgb, labels, _ = small_slide
    rows = export_tiles(rgb, labels, tmp_path, "slide1", tile=256, um_per_px=1.0, negative_fraction=0.0)
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
    all_rows = export_tiles(rgb, labels, tmp_path / "all", "slide1", tile=256, negative_fraction=1.0, fmt="tif")
    assert len(all_rows) == 9  # every tile of the 3 x 3 grid
    from napari_ftu.io.images import read_image

    tif = read_image(tmp_path / "all" / all_rows[4]["mask"])
    np.testing.assert_array_equal(tif.data, labels[256:512, 256:512])


def test_tiles_are_reproducible_and_resampled(tmp_path, small_slide):
    rgb, labels, _ = small_slide
    kw = dict(tile=128, um_per_px=1.0, target_um_per_px=2.0, keep="tissue", negative_fraction=0.3, seed=4)
    a = export_tiles(rgb, labels, tmp_path / "a", "s", **kw)
    b = export_tiles(rgb, labels, tmp_path / "b", "s", **kw)
    assert a == b and len(a) > 0
    img = iio.imread(tmp_path / "a" / a[0]["image"])
    assert img.shape == (128, 128, 3) and a[0]["height"] == 128 and float(a[0]["um_per_px"]) == 2.0
    assert {(r["y"], r["x"]) for r in a} <= {(y, x) for y in range(0, 768, 256) for x in range(0, 768, 256)} | {
        (r["y"], r["x"]) for r in a}


def test_tiles_capped_per_class(tmp_path):
    labels = np.zeros((512, 512), np.int32)
    for k, (y, x) in enumerate([(10, 10), (10, 140), (10, 270), (10, 400), (300, 10)], start=1):
        labels[y : y + 20, x : x + 20] = k
    classes = {1: "common", 2: "common", 3: "common", 4: "common", 5: "rare"}
    rgb = np.full((512, 512, 3), 200, np.uint8)
    rows = export_tiles(rgb, labels, tmp_path, "s", tile=128, negative_fraction=0.0, classes=classes,
                        max_per_class=2, seed=1)
    counts = [r["classes"] for r in rows]
    assert sum("common" in c for c in counts) == 2 and sum("rare" in c for c in counts) == 1


def test_tiles_from_a_pyramidal_slide_without_loading_it(tmp_path):
    import tifffile
    import zarr

    from napari_ftu.io.synthetic import make_slide, write_slide

    paths = write_slide(tmp_path / "big", 1200, 1100, seed=3, pyramid=True)
    image = zarr.open(tifffile.imread(paths["image"], aszarr=True, level=0), mode="r")
    labels = zarr.open(tifffile.imread(paths["labels"], aszarr=True, level=0), mode="r")
    assert not isinstance(image, np.ndarray)
    rows = export_tiles(image, labels, tmp_path / "tiles", "big", tile=256, um_per_px=1.0, negative_fraction=0.0)
    _, truth, _ = make_slide(1200, 1100, seed=3)
    assert rows and all(int(r["n_objects"]) > 0 for r in rows)
    r = rows[0]
    mask = iio.imread(tmp_path / "tiles" / r["mask"])
    np.testing.assert_array_equal(mask > 0, truth[r["y"] : r["y"] + 256, r["x"] : r["x"] + 256] > 0)


def test_readers_name_the_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,something\nx,1\n")
    with pytest.raises(FormatError, match="missing columns"):
        import_annotations(bad, "hubmap")
    bad.write_text("id,rle,img_height,img_width\nx,5 9,3,3\n")
    with pytest.raises(FormatError, match="line 2.*ends at pixel"):
        import_annotations(bad, "hubmap")
    bad.write_text("ImageID,ImageWidth,ImageHeight,PredictionString\nx,4,4,0 0.5 notbase64!\n")
    with pytest.raises(FormatError, match="base64"):
        import_annotations(bad, "hpa")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FormatError, match="bad.json"):
        import_annotations(tmp_path / "bad.json", "coco")
