"""Per-object measurements equal scikit-image's regionprops, follow the pixel size, stream from
lazy labels, and summarise a slide; ``napari-ftu measure`` writes them as CSV."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from skimage.measure import regionprops

from napari_ftu.measure.objects import (
    MORPHOLOGY,
    ImageSource,
    Measurement,
    ObjectInfo,
    find_boxes,
    measure_objects,
    stain_densities,
)
from napari_ftu.measure.summary import summarize, tissue_area_mm2

PROPS = {"area_px": "area", "equivalent_diameter_um": "equivalent_diameter_area",
         "major_axis_um": "axis_major_length", "minor_axis_um": "axis_minor_length",
         "eccentricity": "eccentricity", "solidity": "solidity", "perimeter_um": "perimeter"}


@pytest.fixture(scope="module")
def slide4():
    """A 1024 × 1024 synthetic slide at 1 µm/px with four glomeruli."""
    from napari_ftu.io.synthetic import make_slide

    rgb, labels, _ = make_slide(1024, 1024, seed=2, um_per_px=1.0)
    assert labels.max() == 4
    return rgb, labels


def _read(path):
    from napari_ftu.io.slides import open_slide

    slide = open_slide(path)
    return slide


def _check_equal(rows, labels, scale=1.0):
    props = regionprops(labels)
    assert [r["id"] for r in rows] == [p.label for p in props]
    h, w = labels.shape
    for r, p in zip(rows, props):
        for col, attr in PROPS.items():
            unit = 1.0 if col in ("area_px", "eccentricity", "solidity") else scale
            assert r[col] == pytest.approx(float(getattr(p, attr)) * unit, rel=1e-9, abs=1e-9), (p.label, col)
        assert r["area_um2"] == pytest.approx(p.area * scale**2)
        assert (r["centroid_y_px"], r["centroid_x_px"]) == pytest.approx(p.centroid, abs=1e-9)
        assert (r["bbox_y0_px"], r["bbox_x0_px"], r["bbox_y1_px"], r["bbox_x1_px"]) == p.bbox
        assert r["circularity"] == pytest.approx(4 * math.pi * p.area / p.perimeter**2)
        assert r["border"] == int(p.bbox[0] == 0 or p.bbox[1] == 0 or p.bbox[2] == h or p.bbox[3] == w)


def test_equal_to_regionprops_on_every_ccf_instance_tile(shared_data):
    folder = shared_data / "hubmap_ccf_kidney_glomeruli" / "instances"
    files = sorted(folder.glob("ccf_*.png"))
    assert len(files) == 120
    n = 0
    for f in files:
        labels = np.asarray(_read(f).levels[0])
        rows = list(measure_objects(labels, how=Measurement(1.0)))
        _check_equal(rows, labels)
        n += len(rows)
    assert n == 490  # the glomeruli of the data's README


def test_two_pixel_sizes_scale_lengths_and_areas(shared_data):
    labels = np.asarray(_read(shared_data / "hubmap_ccf_kidney_glomeruli" / "instances" / "ccf_test_33.png")
                        .levels[0])
    fine = list(measure_objects(labels, how=Measurement(0.5)))
    coarse = list(measure_objects(labels, how=Measurement(2.0)))
    _check_equal(fine, labels, 0.5)
    _check_equal(coarse, labels, 2.0)
    for a, b in zip(fine, coarse):
        assert b["area_um2"] == pytest.approx(16 * a["area_um2"])
        for col in ("perimeter_um", "equivalent_diameter_um", "major_axis_um", "centroid_x_um", "bbox_width_um"):
            assert b[col] == pytest.approx(4 * a[col])
        assert b["circularity"] == pytest.approx(a["circularity"]) and b["solidity"] == a["solidity"]
    # regionprops' own physical units agree where it offers them
    for r, p in zip(coarse, regionprops(labels, spacing=(2.0, 2.0))):
        assert r["area_um2"] == pytest.approx(p.area)
        assert r["major_axis_um"] == pytest.approx(p.axis_major_length)


def test_boxes_found_block_by_block_match_find_objects(rng):
    from scipy import ndimage as ndi

    labels = np.zeros((300, 260), np.uint32)
    for k in range(1, 40):
        y, x = rng.integers(0, 280), rng.integers(0, 240)
        labels[y : y + rng.integers(3, 60), x : x + rng.integers(3, 60)] = k * 1000  # large, sparse ids
    want = {i: [s[0].start, s[1].start, s[0].stop, s[1].stop]
            for i, s in enumerate(ndi.find_objects(labels), start=1) if s is not None}
    assert len(want) > 30 and find_boxes(labels, block=37) == want


def test_label_store_is_measured_lazily_like_an_array(tmp_path, slide4):
    from napari_ftu.review.label_store import LabelStore

    _, labels = slide4
    store = LabelStore.create(tmp_path / "s.zarr", labels.shape, chunks=256)
    store.write_window(np.s_[0 : labels.shape[0], 0 : labels.shape[1]], labels)
    lazy = list(measure_objects(LabelStore.open(tmp_path / "s.zarr", "r").levels[0], how=Measurement(1.0)))
    assert lazy == list(measure_objects(labels.astype(np.uint32), how=Measurement(1.0)))
    assert len(lazy) == 4


def test_review_info_and_unknown_pixel_size(slide4):
    _, labels = slide4
    how = Measurement(None, {1: ObjectInfo("glomerulus", "accepted", 0.9)}, ObjectInfo("vessel"))
    rows = list(measure_objects(labels, how=how))
    assert (rows[0]["class"], rows[0]["status"], rows[0]["confidence"]) == ("glomerulus", "accepted", 0.9)
    assert (rows[1]["class"], rows[1]["status"], rows[1]["confidence"]) == ("vessel", "unreviewed", None)
    assert rows[0]["area_um2"] == rows[0]["area_px"] and "1 µm/px assumed" in how.assumed
    assert list(rows[0]) == MORPHOLOGY


def test_stain_columns_are_the_deconvolution_inside_each_object(shared_data):
    from skimage.color import rgb2hed

    d = shared_data / "hubmap_ccf_kidney_glomeruli"
    labels = np.asarray(_read(d / "instances" / "ccf_test_33.png").levels[0])
    slide = _read(d / "images" / "ccf_test_33.jpg")
    rgb = np.asarray(slide.levels[0])
    hed = rgb2hed(rgb)
    rows = list(measure_objects(labels, ImageSource(slide, labels.shape), Measurement(1.0)))
    for r in rows:
        inside = labels == r["id"]
        assert r["stain_matrix"] == "H&E"
        for k, name in enumerate(("hematoxylin", "eosin", "dab")):
            assert r[f"{name}_mean"] == pytest.approx(hed[..., k][inside].mean(), rel=1e-6)
            assert r[f"{name}_sd"] == pytest.approx(hed[..., k][inside].std(), rel=1e-5)
    # The same labels on a grid half as fine read the image under each label pixel's centre.
    half = labels[::2, ::2]
    coarse = list(measure_objects(half, ImageSource(slide, half.shape), Measurement(2.0, stain="H-PAS")))
    hpx = stain_densities(rgb[1::2, 1::2], "H-PAS")  # the image pixel under each label pixel's centre
    for r in coarse:
        assert r["pas_mean"] == pytest.approx(hpx[..., 1][half == r["id"]].mean(), rel=1e-6)


def test_fluorescence_channels_get_a_mean_each():
    from napari_ftu.io.slides import Slide

    img = np.stack([np.full((40, 50), v, np.uint16) for v in (100, 2000)], axis=0)
    img[1, 10:20, 10:20] = 3000
    slide = Slide([img], 1.0, "f", None, "channels", 0, ["DAPI", "CD31 (green)"])
    labels = np.zeros((40, 50), np.uint8)
    labels[10:20, 10:20] = 1
    (row,) = measure_objects(labels, ImageSource(slide, labels.shape), Measurement(1.0))
    assert (row["dapi_mean"], row["cd31_green_mean"], row["cd31_green_sd"]) == (100.0, 3000.0, 0.0)


def test_summary_counts_density_and_sizes(shared_data):
    d = shared_data / "hubmap_ccf_kidney_glomeruli"
    labels = np.asarray(_read(d / "instances" / "ccf_test_33.png").levels[0])
    slide = _read(d / "images" / "ccf_test_33.jpg")
    tissue = tissue_area_mm2(slide, 1.0)
    assert 0.5 < tissue <= 1.92 + 1e-9  # a 1600 × 1200 tile at 1 µm/px is 1.92 mm²
    assert tissue_area_mm2(slide, 2.0) == pytest.approx(4 * tissue)
    rows = list(measure_objects(labels, how=Measurement(1.0, {2: ObjectInfo("glomerulus", "accepted")})))
    s = summarize(rows, tissue)
    areas = [r["area_um2"] for r in rows]
    assert s["n_objects"] == 5 and s["classes"] == "FTU=4;glomerulus=1"
    assert (s["n_accepted"], s["n_unreviewed"], s["n_border"]) == (1, 4, sum(r["border"] for r in rows))
    assert s["density_per_mm2"] == pytest.approx(5 / tissue, rel=1e-5)
    assert s["ftu_fraction"] == pytest.approx(sum(areas) / (tissue * 1e6), rel=1e-5)
    assert s["area_median_um2"] == np.median(areas)
    assert s["area_iqr_um2"] == pytest.approx(np.percentile(areas, 75) - np.percentile(areas, 25))
    assert summarize([], None)["n_objects"] == 0


def _cli(*args):
    from napari_ftu.cli import main

    return main([str(a) for a in args])


def test_cli_writes_measurements_and_summary(shared_data, tmp_path, capsys):
    d = shared_data / "hubmap_ccf_kidney_glomeruli"
    out, summary = tmp_path / "m.csv", tmp_path / "s.csv"
    assert _cli("measure", d / "instances" / "ccf_test_33.png", "--image", d / "images" / "ccf_test_33.jpg",
                "--out", out, "--summary", summary) == 0
    text = capsys.readouterr().out
    assert "1 µm/px assumed" in text  # the PNG carries no pixel size
    rows = list(csv.DictReader(out.open()))
    assert [int(r["id"]) for r in rows] == [1, 2, 3, 4, 5]
    assert {"slide", "area_um2", "perimeter_um", "hematoxylin_mean", "border"} <= set(rows[0])
    (s,) = csv.DictReader(summary.open())
    assert s["slide"] == "ccf_test_33" and s["n_objects"] == "5" and float(s["tissue_area_mm2"]) > 0
    assert _cli("measure", d / "instances" / "ccf_test_33.png", "--out", out, "--um-per-px", 0.5, "--json",
                "--overwrite") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["notes"] == [] and report["objects"] == 5
    assert float(next(csv.DictReader(out.open()))["area_um2"]) == pytest.approx(float(rows[0]["area_um2"]) / 4)
    assert _cli("measure", d / "instances" / "ccf_test_33.png", "--out", out) == 2  # no --overwrite
    assert "exists" in capsys.readouterr().err
    assert _cli("measure", d / "images" / "ccf_test_33.jpg", "--out", tmp_path / "x.csv") == 2
    assert "not labels" in capsys.readouterr().err


def test_cli_measures_a_review_session_and_a_batch_folder(tmp_path, slide4, capsys):
    from napari_ftu.io.images import write_labels_ome_tiff, write_tiff
    from napari_ftu.review.autosave import SessionStore
    from napari_ftu.review.session import ReviewSession

    rgb, labels = slide4
    slide = write_tiff(tmp_path / "slide.tif", rgb, 1.0)
    session = ReviewSession(labels.astype(np.int32).copy(), um_per_px=1.0)
    session.review.set_status([1], "accepted")
    store = SessionStore(tmp_path / "slide.tif.ftu", "labels")
    store.claim()
    store.save(session)
    store.release()
    out = tmp_path / "m.csv"
    assert _cli("measure", slide, "--out", out) == 0
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["status"] == "accepted" and {r["status"] for r in rows[1:]} == {"unreviewed"}
    assert "hematoxylin_mean" in rows[0]
    batch = tmp_path / "batch" / "s1"
    batch.mkdir(parents=True)
    write_labels_ome_tiff(batch / "s1_labels.ome.tif", labels, 1.0)
    (batch / "done.json").write_text(json.dumps({"source": str(slide), "row": {"labels_um_per_px": 1.0}}))
    assert _cli("measure", tmp_path / "batch", "--out", tmp_path / "b.csv", "--summary", tmp_path / "bs.csv") == 0
    (s,) = csv.DictReader((tmp_path / "bs.csv").open())
    assert s["slide"] == "s1" and int(s["n_objects"]) == len(rows) and float(s["density_per_mm2"]) > 0


def test_every_column_is_defined_in_the_docs():
    from pathlib import Path

    from napari_ftu.measure.objects import COLUMNS
    from napari_ftu.measure.summary import SUMMARY_COLUMNS

    page = (Path(__file__).resolve().parents[2] / "docs" / "measurements.md").read_text(encoding="utf-8")
    missing = [c for c in [*COLUMNS, *SUMMARY_COLUMNS] if f"| `{c}` |" not in page]
    assert not missing, f"docs/measurements.md does not define {missing}"


def test_layer_features_reach_the_geojson_measurements(slide4, tmp_path):
    """The Measure dock's features (``as_features``) saved through napari's GeoJSON writer: each
    object's measurements, under the CSV's column names, as QuPath lists them."""
    from napari_ftu.measure.run import as_features
    from napari_ftu.plugin.writers import write_geojson

    _, labels = slide4
    rows = list(measure_objects(labels, how=Measurement(0.5)))
    features = as_features(rows)
    assert list(features)[:3] == ["index", "class", "confidence"] and "circularity" in features
    (path,) = write_geojson(str(tmp_path / "x.geojson"), labels, {"features": features,
                                                                  "metadata": {"um_per_px": 0.5}})
    written = json.loads(open(path).read())["features"]
    assert [f["properties"]["ftu_id"] for f in written] == [r["id"] for r in rows]
    for f, r in zip(written, rows):
        m = f["properties"]["measurements"]
        assert m["area_um2"] == pytest.approx(r["area_um2"]) and m["border"] == r["border"]
        assert m["major_axis_um"] == pytest.approx(r["major_axis_um"]) and "status" not in m


def test_a_binary_mask_is_measured_as_its_components(shared_data, tmp_path, capsys):
    """``masks/ccf_test_33.png`` (0/255) joins the two touching glomeruli of the instance image:
    measured, it holds four objects, the joined one with the two glomeruli's area."""
    d = shared_data / "hubmap_ccf_kidney_glomeruli"
    assert _cli("measure", d / "masks" / "ccf_test_33.png", "--out", tmp_path / "m.csv", "--um-per-px", 1) == 0
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    inst = np.asarray(_read(d / "instances" / "ccf_test_33.png").levels[0])
    areas = sorted(float(r["area_um2"]) for r in rows)
    sizes = np.bincount(inst.ravel())[1:]
    assert len(rows) == 4 and max(areas) == sizes[0] + sizes[1]  # glomeruli 1 and 2 touch
