"""Our own outputs evaluate against the data they came from: ``segment`` a dataset's images into a
batch folder, then ``evaluate`` that folder against the dataset, for every layout we read. The
pairing must find a prediction for every ground-truth image (the batch keeps the image's file
stem, the readers drop ``slide_``/``mask_`` prefixes: both go through ``image_key``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from napari_ftu.cli import main
from napari_ftu.evaluation.evaluate import evaluate_paths
from napari_ftu.formats import rle
from napari_ftu.formats.annotations import image_key
from napari_ftu.formats.datasets import open_dataset
from napari_ftu.io.images import write_tiff
from napari_ftu.io.synthetic import make_slide

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SARDER = DATA / "sarder_frozen_kidney_glomeruli"
VASC = DATA / "hubmap2023_vasculature"
needs_sarder = pytest.mark.skipif(not SARDER.is_dir(), reason="../shared/data/sarder_frozen_kidney_glomeruli absent")
needs_vasc = pytest.mark.skipif(not VASC.is_dir(), reason="../shared/data/hubmap2023_vasculature absent")


def _segment_then_evaluate(images: Path, truth: Path, out: Path) -> tuple[list, list]:
    assert main(["segment", str(images), "--out", str(out), "--formats", "labels", "--workers", "0",
                 "--device", "cpu"]) == 0
    rows, _, missing = evaluate_paths(out, truth)
    return [r for r in rows if r["class"] == "all"], missing


def _assert_all_paired(rows, missing, truth: Path):
    n = len(open_dataset(truth))
    assert missing == []
    assert len(rows) == n and len({r["image"] for r in rows}) == n


def test_image_key_drops_prefixes_and_suffixes():
    assert image_key("slide_O27_10_180_992") == image_key("mask_O27_10_180_992") == "O27_10_180_992"
    assert image_key("kidney_3_labels") == image_key("kidney_3") == "kidney_3"
    assert image_key("slidey_1") == "slidey_1"  # only whole prefixes


def _sarder_pairs(k=3):
    images = sorted((SARDER / "images").glob("slide_*.png"))[:k]
    return [(p, SARDER / "masks" / p.name.replace("slide_", "mask_")) for p in images]


@needs_sarder
def test_sarder_layout_with_prefixes(tmp_path):
    root = tmp_path / "sarder"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for image, mask in _sarder_pairs():
        (root / "images" / image.name).symlink_to(image)
        (root / "masks" / mask.name).symlink_to(mask)
    rows, missing = _segment_then_evaluate(root / "images", root, tmp_path / "out")
    _assert_all_paired(rows, missing, root)
    assert sorted(r["image"] for r in rows) == sorted(image_key(p.stem) for p, _ in _sarder_pairs())


@needs_sarder
def test_image_mask_layout_without_prefixes(tmp_path):
    root = tmp_path / "plain"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for k, (image, mask) in enumerate(_sarder_pairs()):
        (root / "images" / f"biopsy{k}.png").symlink_to(image)
        (root / "masks" / f"biopsy{k}.png").symlink_to(mask)
    rows, missing = _segment_then_evaluate(root / "images", root, tmp_path / "out")
    _assert_all_paired(rows, missing, root)


def test_hubmap_train_csv_layout(tmp_path):
    root = tmp_path / "hubmap"
    (root / "train_images").mkdir(parents=True)
    with open(root / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "organ", "data_source", "img_height", "img_width", "pixel_size", "rle"])
        for k, seed in enumerate((305, 310)):
            rgb, labels, _ = make_slide(320, 288, seed, 1.0)
            write_tiff(root / "train_images" / f"{1000 + k}.tiff", rgb, 1.0)
            writer.writerow([1000 + k, "kidney", "HuBMAP", 320, 288, 1.0, rle.encode(labels > 0)])
    rows, missing = _segment_then_evaluate(root / "train_images", root, tmp_path / "out")
    _assert_all_paired(rows, missing, root)


def _coco_by_tile():
    doc = json.loads((VASC / "annotations_blood_vessel_coco.json").read_text())
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    out = {}
    for ann in doc["annotations"]:
        out.setdefault(names[ann["image_id"]], []).append(ann["segmentation"])
    return doc, out


@needs_vasc
def test_vasculature_jsonl_layout(tmp_path):
    root = tmp_path / "vasc"
    (root / "train").mkdir(parents=True)
    _, by_tile = _coco_by_tile()
    lines = []
    for name in sorted(by_tile)[:2]:
        (root / "train" / name).symlink_to(VASC / "tiles" / name)
        anns = [{"type": "blood_vessel", "coordinates": [np.reshape(ring, (-1, 2)).tolist() for ring in seg]}
                for seg in by_tile[name]]
        lines.append(json.dumps({"id": Path(name).stem, "annotations": anns}))
    (root / "polygons.jsonl").write_text("\n".join(lines))
    rows, missing = _segment_then_evaluate(root / "train", root, tmp_path / "out")
    _assert_all_paired(rows, missing, root)
    assert sum(r["n_truth"] for r in rows) == sum(len(by_tile[n]) for n in sorted(by_tile)[:2])


@needs_vasc
def test_coco_layout(tmp_path):
    root = tmp_path / "coco"
    (root / "tiles").mkdir(parents=True)
    doc, _ = _coco_by_tile()
    keep = doc["images"][:3]
    ids = {im["id"] for im in keep}
    for im in keep:
        (root / "tiles" / im["file_name"]).symlink_to(VASC / "tiles" / im["file_name"])
    (root / "vessels.json").write_text(json.dumps({**doc, "images": keep, "annotations": [
        a for a in doc["annotations"] if a["image_id"] in ids]}))
    rows, missing = _segment_then_evaluate(root / "tiles", root, tmp_path / "out")
    _assert_all_paired(rows, missing, root)
