"""Bad input: the fuzz targets of bench/fuzz.py with fewer examples, and the cases they found.

Every decoder and reader must return a well-formed result or raise one of the project's own
error types; sizes claimed by a file are refused before anything is allocated.
"""

import base64
import importlib.util
import json
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_ftu.errors import FormatError, ModelError
from napari_ftu.formats import coco_rle, rle
from napari_ftu.formats.annotations import Annotations, safe_id
from napari_ftu.formats.export import import_annotations
from napari_ftu.formats.polygons import rasterize
from napari_ftu.models.card import ModelCard

_spec = importlib.util.spec_from_file_location("napari_ftu_bench_fuzz", Path(__file__).parents[2] / "bench" / "fuzz.py")
fuzz = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # one definition of the targets
_spec.loader.exec_module(fuzz)


@pytest.mark.parametrize("name", sorted(fuzz.TARGETS))
@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_only_project_errors_come_out(name, data, tmp_path_factory):
    target = fuzz.TARGETS[name]
    case = data.draw(target.strategy)
    folder = tmp_path_factory.mktemp(name.replace("-", "_"))
    # check() lets only target.allowed errors (with a message) through, and checks what is returned
    fuzz.check(target, case, folder)


# --- sizes claimed by a tiny input are refused before allocating --------------------------------


def _peak(fn, *args):
    """The error raised and the peak traced allocation (bytes) while raising it."""
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as info:
            fn(*args)
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", ["rle", "oid", "coco-rle", "coco-image", "geojson", "hpa-csv", "hubmap-csv",
                                  "memory"])
def test_huge_claims_are_refused_before_allocating(tmp_path, case, monkeypatch):
    tera = 10**6  # 10**6 x 10**6 = 10**12 pixels
    if case == "rle":
        exc, peak = _peak(rle.decode, "1 2", (tera, tera))
    elif case == "oid":
        exc, peak = _peak(coco_rle.oid_decode, coco_rle.oid_encode(np.ones((2, 2), bool)), tera, tera)
    elif case == "coco-rle":
        exc, peak = _peak(coco_rle.coco_to_mask, {"size": [tera, tera], "counts": [tera * tera]})
    elif case == "coco-image":
        doc = {"images": [{"id": 1, "height": tera, "width": tera}], "annotations": []}
        exc, peak = _peak(import_annotations, _write(tmp_path / "c.json", json.dumps(doc)), "coco")
    elif case == "geojson":
        exc, peak = _peak(import_annotations, _write(tmp_path / "g.geojson", '{"type": "FeatureCollection", '
                                                     '"features": []}'), "geojson", (tera, tera))
    elif case == "hpa-csv":
        exc, peak = _peak(import_annotations, _write(tmp_path / "h.csv", "ImageID,ImageWidth,ImageHeight,"
                                                     f"PredictionString\na,{tera},{tera},\n"), "hpa")
    elif case == "hubmap-csv":
        exc, peak = _peak(import_annotations, _write(tmp_path / "t.csv", "id,rle,img_height,img_width\n"
                                                     f"a,1 2,{tera},{tera}\n"), "hubmap")
    else:  # below MAX_PIXELS but more than the memory budget
        monkeypatch.setenv("NAPARI_FTU_MEMORY_BUDGET", "1G")
        exc, peak = _peak(rle.decode, "1 2", (2**16, 2**16))  # 4.3 GB of uint8 against a 1 GB budget
        assert "decoding needs 4.3 GB, more than the 1.0 GB memory budget" in str(exc)
    assert "too large" in str(exc) or "memory" in str(exc)
    assert peak < 2**20, f"{peak} bytes allocated before refusing"


def test_zlib_bomb_for_a_small_mask_is_not_inflated():
    bomb = base64.b64encode(zlib.compress(b"0" * 50_000_000, 9)).decode()  # 50 MB of counts in 49 kB
    exc, peak = _peak(coco_rle.oid_decode, bomb, 10, 10)
    assert "inflates to more than" in str(exc)
    assert peak < 2**21


# --- regressions: each input below escaped as a non-project error before this suite -------------

COCO_IMAGE = {"id": 1, "height": 3, "width": 3}
POLY = [[0, 0], [2, 0], [2, 2]]


def _coco(**changes):
    return json.dumps({"images": [COCO_IMAGE], "annotations": [], **changes})


def _feature(geometry=None, properties=None):
    return json.dumps({"type": "Feature", "geometry": geometry or {"type": "Polygon", "coordinates": [POLY]},
                       "properties": properties or {}})


@pytest.mark.parametrize("text, problem", [
    ("1 2\u20035 1", "only non-negative integers"),  # Unicode space: numpy ValueError
    ("1 2\x1c5 1", "only non-negative integers"),  # ASCII file separator matched \s
])
def test_rle_text_regressions(text, problem):
    with pytest.raises(FormatError, match=problem):
        rle.decode(text, (5, 5))


@pytest.mark.parametrize("shape", [("a", 5), (None, 2), (float("inf"), 3), (3,)])
def test_rle_bad_sizes(shape):
    with pytest.raises(FormatError, match="size"):
        rle.decode("1 2", shape)


@pytest.mark.parametrize("rle_dict, problem", [
    ({"size": [3, 3], "counts": "o" * 30 + "0"}, "digits"),  # was OverflowError
    ({"size": [3, 3], "counts": [1.5, "x"]}, "non-negative integers"),  # was ValueError
    ({"size": ["a", 3], "counts": [9]}, "not two integers"),
    ({"size": [float("inf"), 3], "counts": [9]}, "not two integers"),  # was OverflowError
    ({"size": [3, 3], "counts": [2**64]}, "non-negative integers"),  # was OverflowError
    ({"size": [3, 3], "counts": [2**62, 2**62, 2**62, 9]}, "larger than"),  # sum overflowed int64
    ({"size": [3, 3], "counts": "é"}, "non-ASCII"),
])
def test_coco_rle_regressions(rle_dict, problem):
    with pytest.raises(FormatError, match=problem):
        coco_rle.coco_to_mask(rle_dict)


@pytest.mark.parametrize("text, problem", [
    ("[" * 100_000 + "]" * 100_000, "RecursionError"),
    ("1" * 5000, "4300 digits"),
    (_coco(annotations=5), "'annotations' must be a list"),
    (_coco(annotations=["x"]), "annotation 0: an annotation must be a JSON object"),
    (json.dumps({"images": [{"id": 1, "height": -3, "width": 3}]}), "must be positive"),
    ('{"images": [{"id": 1, "height": 1e999, "width": 3}]}', "integer height and width"),
    (_coco(annotations=[{"image_id": 1, "segmentation": {"size": [2, 2], "counts": [4]}}]), "differs from the image"),
    (_coco(annotations=[{"image_id": 1, "segmentation": [{}]}]), "annotation 0"),
    (_coco(annotations=[{"image_id": 1, "object_id": 1e30, "segmentation": [sum(POLY, [])]}]), "object id"),
    (_coco(annotations=[{"image_id": [1], "segmentation": [sum(POLY, [])]}]), "image_id must be a number"),
    (_coco(annotations=[{"image_id": 1, "category_id": {}, "segmentation": [sum(POLY, [])]}]), "category_id"),
    (_coco(categories=[{"id": [], "name": "x"}]), "category id"),
    (json.dumps({"images": [{"id": 1, "height": 3, "width": 3, "um_per_px": "abc"}]}), "um_per_px"),
])
def test_coco_reader_regressions(tmp_path, text, problem):
    with pytest.raises(FormatError, match=problem):
        import_annotations(_write(tmp_path / "c.json", text), "coco")


@pytest.mark.parametrize("text, problem", [
    (json.dumps({"type": "FeatureCollection", "features": 5}), "'features' must be a list"),
    (_feature(properties=[1]), "'properties' must be a JSON object"),
    (_feature(properties={"ftu_id": 1e300}), "object id"),
    (_feature(properties={"ftu_id": 2**40}), "object id"),  # int32 overflow on assignment
    (_feature({"type": "Polygon", "coordinates": [[]]}), "bad polygon"),
    (_feature({"type": "MultiPolygon", "coordinates": 7}), "MultiPolygon coordinates"),
    (_feature(properties={"measurements": {"Confidence": []}}), "score"),
])
def test_geojson_reader_regressions(tmp_path, text, problem):
    with pytest.raises(FormatError, match=problem):
        import_annotations(_write(tmp_path / "g.geojson", text), "geojson", (4, 4))
    text = text.replace("1e300", "1e999")  # Infinity in JSON: was OverflowError
    with pytest.raises(FormatError):
        import_annotations(_write(tmp_path / "g.geojson", text), "geojson", (4, 4))


@pytest.mark.parametrize("text, fmt, problem", [
    ("id,rle,img_height,img_width,pixel_size\na,1 2,3,3,abc\n", "hubmap", "pixel_size"),  # was ValueError
    ("id,rle,img_height,img_width,pixel_size\na,1 2,3,3,-1\n", "hubmap", "pixel_size"),
])
def test_csv_reader_regressions(tmp_path, text, fmt, problem):
    with pytest.raises(FormatError, match=problem):
        import_annotations(_write(tmp_path / "x.csv", text), fmt)


def test_a_byte_order_mark_does_not_hide_the_first_column(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes("id,rle,img_height,img_width\na,1 2,3,3\n".encode("utf-8-sig"))  # as Excel saves it
    (a,) = import_annotations(path, "hubmap")
    assert a.image_id == "a" and a.labels.sum() == 2


def test_hpa_row_with_many_masks_holds_one_mask_at_a_time(tmp_path):
    one = coco_rle.oid_encode(np.ones((300, 300), bool))
    row = " ".join(f"0 0.5 {one}" for _ in range(200))  # 200 masks of 90 000 pixels
    path = _write(tmp_path / "h.csv", f"ImageID,ImageWidth,ImageHeight,PredictionString\na,300,300,{row}\n")
    tracemalloc.start()
    try:
        (a,) = import_annotations(path, "hpa")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert a.classes == {1: ["0"] * 200}
    assert peak < 40 * 90_000 + 4 * 2**20  # not 200 masks kept side by side (18 MB)


@pytest.mark.parametrize("polygons", [None, 5, [[]], [5], [[{}]], [[[[0, 0], [1, float("nan")], [2, 2]]]]])
def test_rasterize_raises_value_errors_only(polygons):
    with pytest.raises(ValueError):
        rasterize(polygons, (4, 4))


def test_rasterizer_follows_the_centre_rule_and_scales_with_crossings():
    from skimage.draw import polygon as draw_polygon

    rng = np.random.default_rng(5)
    for _ in range(300):
        ring = rng.uniform(-5, 35, (int(rng.integers(3, 12)), 2))  # random floats: no centre on an edge
        shape = tuple(int(v) for v in rng.integers(1, 30, 2))
        ref = np.zeros(shape, bool)
        rr, cc = draw_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape)
        ref[rr, cc] = True
        np.testing.assert_array_equal(rasterize([[ring]], shape), ref)
    # 20 000 vertices over 1000 x 1000 pixels: 47 s with a per-pixel test, here as fast as a square
    t = np.linspace(0, 2 * np.pi, 20_000, endpoint=False)
    circle = np.c_[500 + 480 * np.cos(t), 500 + 480 * np.sin(t)]
    yy, xx = np.mgrid[:1000, :1000] + 0.5
    r = np.hypot(xx - 500, yy - 500)
    sure = np.abs(r - 480) > 1e-3  # the polygon is within 3e-4 px of the circle
    np.testing.assert_array_equal(rasterize([[circle]], (1000, 1000))[sure], (r < 480)[sure])


def test_rasterizer_takes_vertices_at_the_end_of_the_float_range():
    # (0.5 y - 0.5 ya) / (0.5 yb - 0.5 ya): the plain difference 1e308 - (-1e308) is inf and put
    # every crossing of that edge at its first vertex, leaving these pixels out
    huge = [[-1e308, -1e308], [1e308, 2], [3, 1e308]]
    assert rasterize([[huge]], (4, 4)).all()
    assert not rasterize([[[[-1.7e308, -1.7e308], [-1.7e308, 1.7e308], [-1e308, 1.7e308]]]], (4, 4)).any()


@pytest.mark.parametrize("bad", ["a\n", "x" * 201, "a\x00b", "\u0661", "C:x", "a b"])
def test_more_unsafe_ids(bad):
    with pytest.raises(FormatError):
        safe_id(bad)
    with pytest.raises(FormatError):
        Annotations(bad, np.zeros((2, 2)))


# --- model cards -------------------------------------------------------------------------------


@pytest.mark.parametrize("patch, problem", [
    ({1: 2}, "field names must be text"),  # was TypeError from sorting mixed keys
    ({"um_per_px": float("inf")}, "um_per_px"),
    ({"um_per_px": 1e-9}, "um_per_px"),
    ({"mean": "abc"}, "mean"),
    ({"std": [0.2, 0, 0.2]}, "std > 0"),
    ({"tile_size": 10**9}, "tile_size"),
    ({"min_object_um2": float("nan")}, "min_object_um2"),
    ({"classes": [None]}, "classes"),
    ({"arch_kwargs": [1]}, "arch_kwargs"),
    ({"in_channels": 0}, "in_channels"),
    ({"notes": {"x": list(range(20_000))}}, "more than"),
])
def test_card_regressions(patch, problem):
    data = json.loads(ModelCard().to_json())
    data.update(patch)
    with pytest.raises(ModelError, match=problem):
        ModelCard.from_dict(data, "card.json")


@pytest.mark.parametrize("payload", fuzz.YAML_PAYLOADS[:4])
def test_yaml_cards_cannot_run_code_or_explode(tmp_path, payload):
    marker = tmp_path / "ran"
    path = tmp_path / "model_card.yaml"
    path.write_text(payload.replace(str(fuzz.MARKER), str(marker)))
    with pytest.raises(ModelError, match="model_card.yaml"):
        ModelCard.read(path)
    assert not marker.exists()


def test_deeply_nested_card_is_refused_before_parsing(tmp_path):
    path = tmp_path / "model_card.yaml"
    path.write_text("[" * 10_000 + "]" * 10_000)  # PyYAML spent 116 s on this
    with pytest.raises(ModelError, match="nested deeper"):
        ModelCard.read(path)
