"""Every writer against its reader (hypothesis), and against independent implementations."""

import base64
import json
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_ftu.formats.annotations import Annotations
from napari_ftu.formats.coco_rle import mask_to_coco, oid_decode, oid_encode
from napari_ftu.formats.export import FORMATS, export_annotations, import_annotations

mask_utils = pytest.importorskip("pycocotools.mask")
shapely_geometry = pytest.importorskip("shapely.geometry")

label_images = arrays(np.int32, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.integers(0, 4))


def _same_objects(a, b):
    """Same partition of pixels into objects (ids may be renumbered)."""
    assert a.shape == b.shape
    assert ((a > 0) == (b > 0)).all()
    pairs = {(int(x), int(y)) for x, y in zip(a[a > 0], b[a > 0])}
    assert len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=label_images)
def test_round_trip_is_exact(tmp_path_factory, fmt, labels):
    # The HuBMAP formats hold one mask per image; the others keep every object.
    expected = (labels > 0).astype(np.int32) if fmt in ("hubmap", "hubmap-train") else labels
    a = Annotations("img-1", labels, {i: ["3"] for i in range(1, 5)}, {i: 0.5 + i / 10 for i in range(1, 5)},
                    um_per_px=0.5)
    path = tmp_path_factory.mktemp(fmt) / f"x{FORMATS[fmt].suffix}"
    export_annotations(a, path, fmt)
    (back,) = import_annotations(path, fmt, labels.shape)
    _same_objects(expected, back.labels)
    if fmt in ("hpa", "coco"):
        for i in np.unique(labels[labels > 0]):
            j = int(np.bincount(back.labels[labels == i]).argmax())
            assert back.classes[j] == ["3"] and back.scores[j] == pytest.approx(0.5 + i / 10, rel=1e-5)


def test_hpa_mask_with_several_classes_is_repeated(tmp_path):
    labels = np.zeros((20, 30), np.int32)
    labels[2:8, 3:9] = 1
    labels[10:15, 10:25] = 2
    a = Annotations("cellimg", labels, {1: ["0", "16"], 2: ["5"]}, {1: 0.9, 2: 0.4})
    path = export_annotations(a, tmp_path / "hpa.csv", "hpa")
    row = path.read_text().splitlines()[1].split(",")
    assert row[:3] == ["cellimg", "30", "20"]
    tokens = row[3].split()
    assert tokens[0::3] == ["0", "16", "5"] and tokens[2] == tokens[5]
    (back,) = import_annotations(path, "hpa")
    assert sorted(map(sorted, back.classes.values())) == [["0", "16"], ["5"]]


def test_guide_vectors_decode():
    mask = oid_decode("eNqLi8xJM7BOTjS08DT2NfI38DfyM/Q3NMAJgJJ+RkBs7JecF5tnAADw+Q9I", 1600, 1118)
    ys, xs = np.nonzero(mask)
    assert mask.sum() == 663 and (ys.min(), ys.max(), xs.min(), xs.max()) == (1063, 1090, 468, 493)
    mask = oid_decode("eNqLiYrLN7DNCjDMMIj0N/Iz9DcwBEIDfyN/QyA2AAsBRfxMPcKTA1MMADVADIo=", 1066, 1600)
    ys, xs = np.nonzero(mask)
    assert mask.sum() == 583 and (ys.min(), ys.max(), xs.min(), xs.max()) == (710, 753, 966, 982)
    small = np.zeros((3, 4), np.uint8)
    small[0, 0] = small[1, 0] = small[2, 3] = 1
    assert mask_to_coco(small)["counts"] == "029O"


@settings(max_examples=100, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_oid_strings_decode_with_pycocotools(mask):
    text = oid_encode(mask)
    counts = zlib.decompress(base64.b64decode(text))
    theirs = mask_utils.decode({"size": list(mask.shape), "counts": counts})
    np.testing.assert_array_equal(theirs.astype(bool), mask)
    ours = mask_to_coco(mask)
    assert ours["counts"].encode() == mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
    np.testing.assert_array_equal(oid_decode(text, *mask.shape).astype(bool), mask)


def test_geojson_is_valid_and_areas_match(tmp_path, small_slide):
    _, labels, _ = small_slide
    labels = labels.copy()
    labels[300:310, 300:310] = 0  # give one object a hole if it covers that spot
    a = Annotations("slide", labels, {i: ["glomerulus"] for i in range(1, labels.max() + 1)}, um_per_px=1.0)
    path = export_annotations(a, tmp_path / "a.geojson", "geojson")
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(a.ids())
    for feat in doc["features"]:
        geom = shapely_geometry.shape(feat["geometry"])
        assert geom.is_valid
        props = feat["properties"]
        assert props["objectType"] == "annotation" and props["classification"]["name"] == "glomerulus"
        assert len(props["classification"]["color"]) == 3
        assert geom.area == (labels == props["ftu_id"]).sum() == props["measurements"]["Area px"]


def test_coco_cross_checked_with_pycocotools(tmp_path, small_slide):
    from pycocotools.coco import COCO

    _, labels, _ = small_slide
    a = Annotations("slide", labels, {i: ["glomerulus"] for i in range(1, labels.max() + 1)})
    path = export_annotations(a, tmp_path / "c.json", "coco")
    coco = COCO(str(path))
    for ann in coco.loadAnns(coco.getAnnIds()):
        theirs = coco.annToMask(ann).astype(bool)
        ours = labels == ann["object_id"]
        # pycocotools rasterises polygons with its own rule: within one pixel of the boundary
        assert (theirs ^ ours).sum() <= 2 * np.sqrt(ours.sum()) * 4
        assert abs(int(theirs.sum()) - int(ours.sum())) <= 4 * np.sqrt(ours.sum())


def test_real_vasculature_coco_reads(shared_data):
    path = shared_data / "hubmap2023_vasculature" / "annotations_blood_vessel_coco.json"
    items = list(import_annotations(path, "coco"))
    doc = json.loads(path.read_text())
    assert len(items) == len(doc["images"])
    assert sum(len(a.ids()) for a in items) == len(doc["annotations"]) == 75
    from pycocotools.coco import COCO

    coco = COCO(str(path))
    by_name = {a.image_id: a for a in items}
    for ann in coco.loadAnns(coco.getAnnIds()):
        im = coco.loadImgs(ann["image_id"])[0]
        theirs = coco.annToMask(ann).astype(bool)
        a = by_name[im["file_name"].rsplit(".", 1)[0] if im["file_name"].endswith(".tif") else im["file_name"]]
        best = max((np.logical_and(theirs, a.labels == i).sum() / np.logical_or(theirs, a.labels == i).sum(), i)
                   for i in a.ids())
        assert best[0] > 0.8  # the same vessel, up to the two rasterisers' boundary rules


def test_ome_tiff_labels_carry_pixel_size_and_pyramid(tmp_path):
    import tifffile

    from napari_ftu.io.images import write_labels_ome_tiff

    labels = np.zeros((1100, 1300), np.uint16)
    labels[100:700, 200:900] = 7
    path = write_labels_ome_tiff(tmp_path / "l.ome.tif", labels, 0.25, pyramid=True)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and len(tif.series[0].levels) == 2
        np.testing.assert_array_equal(tif.series[0].levels[1].asarray(), labels[::2, ::2])
    (back,) = import_annotations(path, "ome-tiff")
    np.testing.assert_array_equal(back.labels, labels)
    assert back.um_per_px == pytest.approx(0.25)


def test_layer_features_written_once_read_back_by_every_reader():
    import math

    from napari_ftu.evaluation.compare import object_scores
    from napari_ftu.formats.annotations import Annotations, features_by_id, layer_features
    from napari_ftu.review.table import Review

    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6], labels[10:15, 10:15] = 3, 7
    features = layer_features([3, 7], [["glomerulus", "crypt"], "vessel"], [0.9, None], area_px=[16, 25])
    assert features["class"] == ["glomerulus, crypt", "vessel"] and math.isnan(features["confidence"][1])
    assert features_by_id(features)[3] == (["glomerulus", "crypt"], 0.9)
    a = Annotations.from_layer("x", labels, features)
    assert a.class_names(3) == ["glomerulus", "crypt"] and a.scores == {3: 0.9}
    review = Review.from_labels(labels, features=features)
    assert review.rows[7].cls == "vessel" and math.isnan(review.rows[7].confidence)
    assert object_scores(labels, None, features) == {3: 0.9}
