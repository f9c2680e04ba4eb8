"""A DICOM WSI folder is one slide to every command; what it gives lines up with the SVS it was
made from (same labels, same GeoJSON in full-resolution pixel coordinates)."""

import csv
import json
import shutil

import numpy as np
import pytest

from napari_ftu.batch.plan import is_batch_input, plan_inputs
from napari_ftu.cli import main
from napari_ftu.io.images import read_image


def _rle(path):
    with open(path, newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    return row


@pytest.fixture(scope="module")
def segmented(svs, dicom_copy, tmp_path_factory):
    """Both slides segmented by the CLI, labels exported to GeoJSON. The synthetic demo model finds
    objects on this skin slide (the kidney model rightly finds none), so there is something to compare."""
    out = tmp_path_factory.mktemp("seg")
    for name, source in (("svs", svs), ("dicom", dicom_copy)):
        assert main(["segment", str(source), "--out", str(out / f"{name}.csv"), "--model", "synthetic-demo",
                     "--labels", str(out / f"{name}.tif")]) == 0
        assert main(["export", str(out / f"{name}.tif"), "--out", str(out / f"{name}.geojson")]) == 0
    return out


def test_segmenting_the_dicom_folder_gives_the_svs_labels(segmented, dicom_copy):
    svs_labels = read_image(segmented / "svs.tif").data
    dicom_labels = read_image(segmented / "dicom.tif").data
    assert svs_labels.shape == (2967, 2220) and svs_labels.max() > 0
    np.testing.assert_array_equal(dicom_labels, svs_labels)
    assert _rle(segmented / "dicom.csv")["id"] == dicom_copy.name  # one slide, named for its folder
    assert _rle(segmented / "dicom.csv")["rle"] == _rle(segmented / "svs.csv")["rle"]


def test_geojson_from_the_dicom_slide_is_in_its_full_resolution_pixels(segmented):
    ours = json.loads((segmented / "dicom.geojson").read_text())["features"]
    theirs = json.loads((segmented / "svs.geojson").read_text())["features"]
    assert len(ours) == len(theirs) > 0
    assert [f["geometry"] for f in ours] == [f["geometry"] for f in theirs]
    xs = [x for f in ours for ring in f["geometry"]["coordinates"] for x, _ in ring]
    assert max(xs) > 2220 / 2  # full resolution, not a reduced level


def test_info_says_which_backend_opened_it(dicom_pyramid, svs, capsys):
    assert main(["info", str(dicom_pyramid), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "dicom" and info["levels"] == 5 and info["size"] == [2967, 2220]
    assert info["um_per_px"] == pytest.approx(0.499)
    assert main(["info", str(svs), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "tifffile"


def test_batch_takes_a_dicom_folder_per_slide(dicom_copy, svs, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copytree(dicom_copy, slides / "case_a")
    shutil.copy(svs, slides / "case_b.svs")
    (slides / "case_c.mrxs").write_bytes(b"[GENERAL]\n")  # planned by its suffix, opened by OpenSlide later
    (slides / "notes").mkdir()  # a folder without DICOM files is no slide
    assert not is_batch_input(slides / "case_a") and is_batch_input(slides)
    for inputs in ([slides], [str(slides / "case_*")]):
        jobs = plan_inputs(inputs)
        assert [j.id for j in jobs] == ["case_a", "case_b", "case_c"]
    assert [j.id for j in plan_inputs([str(slides / "*.mrxs")])] == ["case_c"]
    (job,) = plan_inputs([slides / "case_a"])
    assert job.path == str((slides / "case_a").resolve())


def test_bad_dicom_is_one_error_line(dicom_copy, tmp_path, capsys):
    folder = tmp_path / "cut"
    shutil.copytree(dicom_copy, folder)
    for file in folder.iterdir():
        file.write_bytes(file.read_bytes()[:100])  # no DICOM header left
    assert main(["info", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-ftu: error: ") and str(folder) in err and "\n" not in err
