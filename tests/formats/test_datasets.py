import csv
import json

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ftu.cli import main
from napari_ftu.errors import FormatError
from napari_ftu.formats import rle
from napari_ftu.formats.annotations import Annotations
from napari_ftu.formats.coco_rle import oid_encode
from napari_ftu.formats.datasets import labels_layer_data, open_dataset
from napari_ftu.formats.polygons import mask_to_polygons
from napari_ftu.io.images import write_tiff
from napari_ftu.io.synthetic import make_slide


@pytest.fixture(scope="module")
def slides():
    out = [make_slide(500, 400, seed=s, um_per_px=1.0)[:2] for s in (25, 26)]
    assert all(lab.max() >= 2 for _, lab in out)
    return out


def _same_instances(a, b):
    assert ((a > 0) == (b > 0)).all()
    assert len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


def _hubmap2022(root, slides, rows=None):
    (root / "train_images").mkdir(parents=True)
    out = []
    for k, (rgb, lab) in enumerate(slides):
        write_tiff(root / "train_images" / f"{100 + k}.tiff", rgb)
        out.append({"id": str(100 + k), "organ": "kidney", "data_source": "HPA", "img_height": 500, "img_width": 400,
                    "pixel_size": 0.4, "tissue_thickness": 4, "rle": rle.encode(lab), "age": 60, "sex": "Male"})
    rows = rows or out
    with open(root / "train.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def test_hubmap2022_layout(tmp_path, slides):
    _hubmap2022(tmp_path, slides)
    ds = open_dataset(tmp_path)
    assert ds.layout.startswith("HuBMAP + HPA 2022") and ds.ids == ["100", "101"]
    item = ds.load(1)
    _same_instances(item.annotations.labels, slides[1][1])
    assert item.slide.um_per_px == 0.4 and item.info["organ"] == "kidney"
    data, kwargs, kind = labels_layer_data(item.annotations, item.slide, item.info)
    assert kind == "labels" and kwargs["scale"] == (0.4, 0.4)
    assert set(kwargs["features"]["class"]) == {"kidney FTU"}
    assert len(kwargs["features"]["index"]) == data.max()


@pytest.mark.parametrize("change, problem", [
    ({"rle": "199990 20"}, "line 2 .id 100.*ends at pixel"),
    ({"rle": "1 99999999999999999999"}, "larger than the 500 x 400 mask"),
    ({"img_height": 501}, "mask size .501, 400. differs from image 100.tiff"),
    ({"img_height": "tall"}, "must be numbers"),
])
def test_hubmap2022_bad_rows_name_the_problem(tmp_path, slides, change, problem):
    rows = _hubmap2022(tmp_path, slides)
    rows[0].update(change)
    _hubmap2022(tmp_path / "bad", slides, rows)
    ds = open_dataset(tmp_path / "bad")
    with pytest.raises(FormatError, match=problem):
        ds.load(0)
    ds.load(1)  # the other images still load


def test_csv_missing_columns(tmp_path, slides):
    rows = [{k: v for k, v in r.items() if k != "pixel_size"} for r in _hubmap2022(tmp_path, slides)]
    _hubmap2022(tmp_path / "bad", slides, rows)
    with pytest.raises(FormatError, match=r"train.csv: missing columns \['pixel_size'\]"):
        open_dataset(tmp_path / "bad")


def test_hubmap2021_layout(tmp_path, slides):
    (tmp_path / "train").mkdir()
    rgb, lab = slides[0]
    write_tiff(tmp_path / "train" / "aaa111.tiff", rgb, 0.5)
    (tmp_path / "train.csv").write_text(f"id,encoding\naaa111,{rle.encode(lab)}\n")
    ds = open_dataset(tmp_path)
    assert ds.layout == "HuBMAP 2021 kidney"
    item = ds.load(0)
    _same_instances(item.annotations.labels, lab)
    assert item.slide.um_per_px == pytest.approx(0.5)


def _vasculature(root, slides, shift=0):
    (root / "train").mkdir(parents=True)
    lines = []
    for k, (rgb, lab) in enumerate(slides):
        write_tiff(root / "train" / f"tile{k}.tif", rgb)
        anns = []
        for i in range(1, lab.max() + 1):
            for poly in mask_to_polygons(lab == i):
                anns.append({"type": "glomerulus" if i % 2 else "blood_vessel",
                             "coordinates": [(poly[0] + shift).tolist()]})
        lines.append(json.dumps({"id": f"tile{k}", "annotations": anns}))
    (root / "polygons.jsonl").write_text("\n".join(lines) + "\n")
    (root / "tile_meta.csv").write_text("id,source_wsi,dataset,i,j\ntile0,1,1,0,0\ntile1,1,2,512,0\n")


def test_vasculature_jsonl_layout(tmp_path, slides):
    _vasculature(tmp_path, slides)
    ds = open_dataset(tmp_path)
    assert ds.layout == "HuBMAP vasculature 2023" and len(ds) == 2
    item = ds.load(1)
    _same_instances(item.annotations.labels, slides[1][1])
    assert {c for v in item.annotations.classes.values() for c in v} <= {"glomerulus", "blood_vessel"}
    assert item.info == {"source_wsi": "1", "dataset": "2", "i": "512", "j": "0"}


def test_polygons_outside_the_image(tmp_path, slides):
    _vasculature(tmp_path, slides, shift=1000)
    with pytest.raises(FormatError, match="polygons.jsonl, tile tile0, annotation 1: polygon reaches outside"):
        open_dataset(tmp_path).load(0)


def test_real_vasculature_coco_dataset(shared_data):
    ds = open_dataset(shared_data / "hubmap2023_vasculature")
    assert ds.layout == "COCO instances" and len(ds) == 8
    total = sum(len(ds.load(i).annotations.ids()) for i in range(len(ds)))
    assert total == 75


def test_hpa_channels_with_oid_masks(tmp_path, slides):
    rgb, lab = slides[0]
    image_id = "5b4c2e4c-bb9f-11e8-b2b9-ac1f6b6435d0"
    for k, c in enumerate(["red", "green", "blue", "yellow"]):
        iio.imwrite(tmp_path / f"{image_id}_{c}.png", rgb[..., k % 3])
    masks = " ".join(f"0 0.9 {oid_encode(lab == i)}" for i in range(1, lab.max() + 1))
    (tmp_path / "cells.csv").write_text(f"ImageID,ImageWidth,ImageHeight,PredictionString\n"
                                         f"{image_id},400,500,{masks}\n")
    ds = open_dataset(tmp_path)
    assert ds.layout == "HPA single-cell"
    item = ds.load(0)
    assert item.slide.kind == "channels" and item.slide.levels[0].shape == (4, 500, 400)
    from napari_ftu.io.slides import slide_layer_data

    _, kwargs, _ = slide_layer_data(item.slide)
    assert kwargs["colormap"] == ["red", "green", "blue", "yellow"] and kwargs["channel_axis"] == 0
    _same_instances(item.annotations.labels, lab)


def test_real_image_mask_pairs(shared_data):
    folder = shared_data / "sarder_frozen_kidney_glomeruli"
    ds = open_dataset(folder)
    assert ds.layout == "image/mask pairs" and len(ds) == 20
    item = ds.load(0)
    mask = iio.imread(folder / "masks" / f"mask_{ds.ids[0]}.png")
    mask = mask if mask.ndim == 2 else mask[..., 0]
    np.testing.assert_array_equal(item.annotations.labels > 0, mask > 0)
    assert item.annotations.labels.max() == ndi.label(mask > 0)[1]


def test_mismatched_image_and_mask(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    iio.imwrite(tmp_path / "images" / "slide_a.png", np.zeros((50, 40, 3), np.uint8))
    iio.imwrite(tmp_path / "masks" / "mask_a.png", np.zeros((50, 41), np.uint8))
    with pytest.raises(FormatError, match="mask_a.png: mask size .50, 41. differs from image slide_a.png"):
        open_dataset(tmp_path).load(0)


def test_unknown_folder_and_cli_errors(tmp_path, capsys):
    with pytest.raises(FormatError, match="not a dataset layout"):
        open_dataset(tmp_path)
    assert main(["info", str(tmp_path)]) == 2
    assert "not a dataset layout" in capsys.readouterr().err
    bad = tmp_path / "cut.tif"
    write_tiff(tmp_path / "ok.tif", np.full((300, 300, 3), 7, np.uint8))
    bad.write_bytes((tmp_path / "ok.tif").read_bytes()[:200])
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-ftu: error:") and "cut.tif" in err


def test_annotations_class_round_trip_through_dataset(tmp_path, slides):
    rgb, lab = slides[0]
    _hubmap2022(tmp_path, slides)
    item = open_dataset(tmp_path).load(0)
    assert isinstance(item.annotations, Annotations) and item.annotations.um_per_px == 0.4


def test_hubmap2022_test_split_has_images_only(tmp_path, slides):
    (tmp_path / "test_images").mkdir()
    write_tiff(tmp_path / "test_images" / "10078.tiff", slides[0][0])
    (tmp_path / "test.csv").write_text("id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness\n"
                                       "10078,spleen,Hubmap,500,400,0.4945,4\n")
    item = open_dataset(tmp_path).load(0)
    assert item.annotations is None and item.info["organ"] == "spleen" and item.slide.um_per_px == 0.4945


def test_dropping_a_dataset_folder(shared_data):
    from napari_ftu.plugin.reader import get_reader

    folder = str(shared_data / "sarder_frozen_kidney_glomeruli")
    layers = get_reader(folder)(folder)
    assert [kind for _, _, kind in layers] == ["image", "labels"]


def test_unknown_folders_are_left_to_other_readers(tmp_path):
    from napari_ftu.plugin.reader import get_reader

    assert get_reader(str(tmp_path)) is None
