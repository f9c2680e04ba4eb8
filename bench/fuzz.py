"""Property-based fuzzing (hypothesis) of every decoder and reader that takes files from outside.

Each target draws inputs that are partly valid (a real file, then mutated: a value replaced by
any JSON value, a key deleted, characters inserted or removed, a cell swapped for a hostile
one) and partly arbitrary (any text, bytes, nesting 100 000 deep, a zlib bomb), runs the reader
and checks that it either returns a well-formed result or raises one of the project's own error
types (:data:`ALLOWED`) - never a KeyError, TypeError, OverflowError, RecursionError, ... Sizes
claimed by the input are drawn either small or impossible (above ``rle.MAX_PIXELS``), so a
reader that allocates before checking would show up as a MemoryError or a huge peak.

    OMP_NUM_THREADS=1 python bench/fuzz.py [--examples 1000] [--only rle,oid]

prints per target the number of cases run, the outcomes seen (ok or error type), the slowest
case and the largest traced allocation. ``tests/hardening/test_fuzz.py`` runs the same targets with
fewer examples. The ``many-items`` and ``bad-polygons`` targets read whole files under a fixed
memory budget and fail when a case's traced peak goes past it.

    OMP_NUM_THREADS=1 python bench/fuzz.py --cases [--src OTHER/src]

reads fixed adversarial files (a TIFF header claiming 40 000 x 40 000, COCO files of 100 large
images, a polygon whose edges span every row, ...) each in a fresh process and prints the
outcome and the peak RSS per case, then runs whole ``napari-ftu export`` / ``evaluate`` commands
on such files under ``/usr/bin/time`` (peak RSS of the process a user starts); ``--src`` runs
the same files against another checkout.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import copy
import io
import json
import shutil
import tempfile
import time
import tracemalloc
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_ftu.errors import FormatError, InputError, ModelError
from napari_ftu.formats import coco_rle, rle
from napari_ftu.formats.annotations import Annotations
from napari_ftu.formats.polygons import mask_to_polygons, rasterize
from napari_ftu.models.card import ModelCard

ALLOWED = (FormatError, FormatError, InputError, ModelError)
MARKER = Path(tempfile.gettempdir()) / "napari-ftu-fuzz-code-ran"  # a crafted card must never create it

# --- building blocks ----------------------------------------------------------------------------

HOSTILE_TEXT = ["", " ", "../x", "/etc/passwd", "a/b", "a\x00b", "x" * 300, "1e999", "-1e999", "NaN", "nan",
                "Infinity", "-1", "0", "9" * 5000, "\u202e", "\ufeffid", "1.5", "0x10", "  7 ", "\"", ",", "\n",
                "é", "1 2 3", "C:\\\\x"]
HOSTILE_NUMBERS = [0, -1, 1, 2, 7, 64, 4096, 2**31, 2**35, 2**63, 2**64, 10**12, 10**30, 1.5, 1e300,
                   float("nan"), float("inf"), -0.0, True, False]
KEYS = ["images", "annotations", "categories", "id", "height", "width", "file_name", "segmentation", "size",
        "counts", "image_id", "category_id", "object_id", "score", "type", "features", "geometry", "coordinates",
        "properties", "ftu_id", "classification", "measurements", "Confidence", "name", "um_per_px",
        "FeatureCollection", "Feature", "Polygon", "MultiPolygon"]

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
           | st.sampled_from(HOSTILE_TEXT) | st.sampled_from(HOSTILE_NUMBERS) | st.sampled_from(KEYS))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6),
                                                                         inner, max_size=5),
    max_leaves=20)
small_dim = st.integers(1, 24)
# Either small or impossible (above MAX_PIXELS whatever the other side): never "merely huge".
claimed_dim = st.integers(-2, 48) | st.sampled_from([2**35, 10**12, 2**62])
label_images = st.builds(
    lambda h, w, seed, n: np.random.default_rng(seed).integers(0, n + 1, (h, w)).astype(np.int32),
    small_dim, small_dim, st.integers(0, 2**32 - 1), st.integers(0, 4))


def _slots(doc, out=None):
    """Every (container, key) of a JSON document, for mutation."""
    out = [] if out is None else out
    if isinstance(doc, dict):
        for k in list(doc):
            out.append((doc, k))
            _slots(doc[k], out)
    elif isinstance(doc, list):
        for i in range(len(doc)):
            out.append((doc, i))
            _slots(doc[i], out)
    return out


@st.composite
def mutated(draw, base):
    """A valid document with 0-3 values replaced by any JSON value, deleted, or given a new key."""
    doc = copy.deepcopy(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        slots = _slots(doc)
        if not slots:
            break
        container, key = slots[draw(st.integers(0, len(slots) - 1))]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            container[key] = draw(json_values)
        elif action == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[draw(st.sampled_from(KEYS))] = draw(json_values)
    return doc


@st.composite
def edited_text(draw, base_text):
    """Character-level damage: inserted, deleted or replaced characters, or a truncation."""
    text = draw(base_text)
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "truncate"]))
        if kind == "insert":
            text = text[:i] + draw(st.text(alphabet=st.sampled_from('{}[],:"0123456789-.eE \n\x00\\ué'), min_size=1,
                                           max_size=4)) + text[i:]
        elif kind == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i]
    return text


def _dumps(doc) -> str:
    return json.dumps(doc, allow_nan=True)


deep_json = st.one_of(  # nesting past Python's recursion limit, an integer past its digit limit
    st.integers(10, 100_000).map(lambda n: "[" * n + "]" * n),
    st.integers(10, 100_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(4301, 20_000).map(lambda n: "1" * n))


def json_texts(base_docs):
    """Text of a mutated valid document, damaged text, a deep/huge-number document or any JSON."""
    return st.one_of(mutated(base_docs).map(_dumps), edited_text(mutated(base_docs).map(_dumps)), deep_json,
                     json_values.map(_dumps), st.text(max_size=40))


# --- valid documents to mutate -------------------------------------------------------------------

_WORK = Path(tempfile.mkdtemp(prefix="napari-ftu-fuzz-"))
atexit.register(shutil.rmtree, _WORK, True)


def _written(fmt: str, labels: np.ndarray) -> str:
    from napari_ftu.formats.export import FORMATS

    path = _WORK / f"base{FORMATS[fmt].suffix}"
    a = Annotations("img-1", labels, {i: ["3"] for i in range(1, 5)}, {i: 0.5 for i in range(1, 5)}, um_per_px=0.5)
    FORMATS[fmt].write(path, [a])
    return path.read_text(encoding="utf-8")


coco_docs = label_images.map(lambda lab: json.loads(_written("coco", lab)))
geojson_docs = label_images.map(lambda lab: json.loads(_written("geojson", lab)))


def _jsonl_doc(lab):
    anns = [{"type": "blood_vessel", "coordinates": [p[0].tolist()]}
            for i in range(1, int(lab.max()) + 1) for p in mask_to_polygons(lab == i)]
    return {"id": "t0", "annotations": anns}


jsonl_docs = label_images.map(_jsonl_doc)
card_docs = st.just(json.loads(ModelCard().to_json()))

# --- targets -----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    what: str
    strategy: st.SearchStrategy
    run: Callable  # (case, folder) -> result, checked by ``check``
    allowed: tuple = ALLOWED
    stats: Counter = field(default_factory=Counter)


def _check_mask(mask, shape):
    assert isinstance(mask, np.ndarray) and mask.shape == tuple(int(v) for v in shape), (mask.shape, shape)
    assert set(np.unique(mask).tolist()) <= {0, 1}


def _check_annotations(items):
    """Each item well-formed; taken one at a time and dropped, as readers hand them over."""
    for a in items:
        assert isinstance(a, Annotations) and a.labels.ndim == 2 and a.labels.dtype == np.int32
        assert a.labels.min(initial=0) >= 0
        del a


# RLE ----------------------------------------------------------------------------------------------
rle_texts = st.one_of(
    st.lists(st.integers(0, 2**64), max_size=12).map(lambda v: " ".join(map(str, v))),
    st.builds(lambda v, sep: sep.join(map(str, v)), st.lists(st.integers(1, 600), max_size=14),
              st.sampled_from([" ", "  ", "\t", "\n", " \u2003", ",", "\x00"])),
    st.text(alphabet=st.sampled_from("0123456789 \t\n-+.,e\x00\u2003\u0663\x1c"), max_size=40),
    st.text(max_size=30), st.none(), st.sampled_from(["nan", "", "   "]))
shapes = st.one_of(st.tuples(claimed_dim, claimed_dim),
                   st.sampled_from([("a", 3), (None, 2), (1.5, 2), (float("inf"), 1), (10**6, 10**6), (3,)]))


def run_rle(case, folder):
    text, shape = case
    mask = rle.decode(text, shape)
    _check_mask(mask, shape)


# OID (HPA / vasculature masks) ------------------------------------------------------------------
def _b64z(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data)).decode()


oid_texts = st.one_of(
    st.builds(lambda m: coco_rle.oid_encode(m), st.builds(
        lambda h, w, s: np.random.default_rng(s).random((h, w)) < 0.3, small_dim, small_dim, st.integers(0, 99))),
    st.binary(max_size=40).map(_b64z),
    st.lists(st.integers(-(2**40), 2**40), max_size=10).map(lambda c: _b64z(coco_rle.compress_counts(c))),
    st.integers(1, 2_000_000).map(lambda n: _b64z(b"0" * n)),  # zlib bombs: 2 MB of '0' in ~2 kB
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=40))


def _damaged_oid(mask, cut, flip):
    """A valid mask string with its compressed counts cut short or a byte changed."""
    counts = bytearray(coco_rle.compress_counts(coco_rle.counts_from_mask(mask)))
    if flip is not None and counts:
        counts[flip % len(counts)] = 48 + (counts[flip % len(counts)] + 7) % 64
    return _b64z(bytes(counts[: cut if cut is not None else len(counts)])), *mask.shape


matching_oid = st.builds(  # the size matches the string: the decoder gets past its size checks
    _damaged_oid, st.builds(lambda h, w, s: np.random.default_rng(s).random((h, w)) < 0.3, small_dim, small_dim,
                            st.integers(0, 99)), st.none() | st.integers(0, 40), st.none() | st.integers(0, 40))


def run_oid(case, folder):
    text, h, w = case
    mask = coco_rle.oid_decode(text, h, w)
    _check_mask(mask, (h, w))


def run_coco_rle(case, folder):
    mask = coco_rle.coco_to_mask(case)
    _check_mask(mask, case["size"])


coco_rle_dicts = st.one_of(
    st.builds(lambda m: coco_rle.mask_to_coco(m), st.builds(
        lambda h, w, s: np.random.default_rng(s).random((h, w)) < 0.4, small_dim, small_dim, st.integers(0, 99))),
    st.fixed_dictionaries({"size": st.lists(claimed_dim, min_size=0, max_size=3) | json_values,
                           "counts": st.lists(st.integers(-5, 2**64), max_size=8) | st.binary(max_size=30)
                           | st.text(max_size=30) | json_values}))


def run_counts(case, folder):
    counts = coco_rle.decompress_counts(case)
    assert all(isinstance(c, int) for c in counts)


# Polygons -----------------------------------------------------------------------------------------
def _circle(n, r=40.0):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.c_[50 + r * np.cos(t), 50 + r * np.sin(t)].tolist()


polygons = st.one_of(json_values, st.integers(3, 50_000).map(lambda n: [[_circle(n)]]),
                     st.lists(st.lists(st.lists(st.tuples(st.floats(-1e308, 1e308), st.floats(-1e308, 1e308)),
                                                max_size=6), max_size=3), max_size=3))


def run_rasterize(case, folder):
    polys, shape = case
    out = rasterize(polys, shape)
    assert out.shape == shape and out.dtype == bool


# JSON readers -----------------------------------------------------------------------------------
def run_geojson(case, folder):
    from napari_ftu.formats.json_formats import read_geojson

    text, shape = case
    path = folder / "x.geojson"
    path.write_text(text, encoding="utf-8")
    _check_annotations([read_geojson(path, shape)])


def run_coco(case, folder):
    from napari_ftu.formats.export import import_annotations

    path = folder / "x.json"
    path.write_text(case, encoding="utf-8")
    _check_annotations(import_annotations(path, "coco"))


def run_jsonl(case, folder):
    """The vasculature layout: polygons.jsonl beside train/t0.tif (a 40 x 48 image)."""
    from napari_ftu.formats.datasets import open_dataset

    root = folder / "vasc"
    if not (root / "train" / "t0.tif").is_file():
        from napari_ftu.io.images import write_tiff

        (root / "train").mkdir(parents=True)
        write_tiff(root / "train" / "t0.tif", np.zeros((40, 48, 3), np.uint8))
    (root / "polygons.jsonl").write_text("\n".join(case), encoding="utf-8")
    ds = open_dataset(root)
    for i in range(min(len(ds), 3)):
        _check_annotations([ds.load(i).annotations])


jsonl_lines = st.lists(st.one_of(mutated(jsonl_docs).map(_dumps), edited_text(jsonl_docs.map(_dumps)), deep_json,
                                 json_values.map(_dumps)), min_size=1, max_size=3)


# CSV readers ------------------------------------------------------------------------------------
HOSTILE_CELLS = HOSTILE_TEXT + [str(n) for n in HOSTILE_NUMBERS] + ["1 2", "1 99999999999999999999", "0 0.5 eJw=",
                                                                     "x" * 200_000, "\x00\x00", "\"a,b\""]


@st.composite
def csv_bytes(draw, fmt):
    """A valid CSV written by our writer, then cells replaced, characters damaged, re-encoded."""
    text = _written(fmt, draw(label_images))
    rows = [r.split(",") for r in text.splitlines()]
    for _ in range(draw(st.integers(0, 3))):
        r = draw(st.integers(0, len(rows) - 1))
        c = draw(st.integers(0, max(0, len(rows[r]) - 1)))
        if rows[r]:
            rows[r][c] = draw(st.sampled_from(HOSTILE_CELLS) | st.text(max_size=10))
    text = "\n".join(",".join(r) for r in rows)
    if draw(st.booleans()):
        text = draw(edited_text(st.just(text)))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


def run_csv(case, folder):
    from napari_ftu.formats.export import import_annotations

    fmt, data, shape = case
    path = folder / "x.csv"
    path.write_bytes(data)
    _check_annotations(import_annotations(path, fmt, shape))


csv_cases = st.sampled_from(["hubmap", "hubmap-train", "hpa", "vasculature"]).flatmap(
    lambda fmt: st.tuples(st.just(fmt), csv_bytes(fmt) | st.binary(max_size=60), st.tuples(small_dim, small_dim)))


def run_train_csv(case, folder):
    """The HuBMAP 2022 layout: train.csv beside train_images/100.tiff (a 12 x 10 image)."""
    from napari_ftu.formats.datasets import open_dataset

    root = folder / "hubmap"
    if not (root / "train_images" / "100.tiff").is_file():
        from napari_ftu.io.images import write_tiff

        (root / "train_images").mkdir(parents=True)
        write_tiff(root / "train_images" / "100.tiff", np.zeros((12, 10, 3), np.uint8))
    (root / "train.csv").write_bytes(case)
    ds = open_dataset(root)
    for i in range(min(len(ds), 3)):
        item = ds.load(i)
        if item.annotations is not None:
            _check_annotations([item.annotations])


@st.composite
def train_csv(draw):
    lab = np.random.default_rng(draw(st.integers(0, 99))).random((12, 10)) < 0.3
    cells = {"id": "100", "organ": "kidney", "data_source": "HPA", "img_height": "12", "img_width": "10",
             "pixel_size": "0.4", "tissue_thickness": "4", "rle": rle.encode(lab), "age": "60", "sex": "Male"}
    for _ in range(draw(st.integers(0, 3))):
        cells[draw(st.sampled_from(sorted(cells)))] = draw(st.sampled_from(HOSTILE_CELLS) | st.text(max_size=10))
    columns = list(cells)
    if draw(st.booleans()):
        columns.remove(draw(st.sampled_from(columns)))
    buf = io.StringIO()
    import csv

    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerow([cells[c] for c in columns])
    text = buf.getvalue()
    if draw(st.booleans()):
        text = draw(edited_text(st.just(text)))
    return text.encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1"])), errors="replace")


# Model cards -------------------------------------------------------------------------------------
YAML_PAYLOADS = [
    f'!!python/object/apply:os.system ["touch {MARKER}"]',
    f"architecture: !!python/object/apply:builtins.open ['{MARKER}', 'w']",
    "notes: !!python/name:os.system",
    # a "billion laughs": 9 levels of 9 aliases, 387 million values from 300 bytes
    "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))
    + "notes: {bomb: *i}\n",
    "1: 2\nclasses: [a]", "? [a, b]\n: c", "[1, 2]", "null", "architecture: Unet\n  bad: indent"]


def run_card(case, folder):
    suffix, text = case
    path = folder / f"model_card{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        card = ModelCard.read(path)
        assert isinstance(card, ModelCard) and 0 < card.threshold < 1 and card.tile_size >= 32
    finally:
        assert not MARKER.exists(), "a crafted model card ran code"


card_cases = st.one_of(
    st.tuples(st.sampled_from([".json", ".yaml"]), json_texts(card_docs)),
    st.tuples(st.just(".yaml"), st.sampled_from(YAML_PAYLOADS) | st.text(max_size=60)))


# Whole files of many items, adversarial polygons: the memory budget ------------------------------
FUZZ_BUDGET = 200 * 10**6  # bytes; set for these targets so that outcomes do not depend on the machine
# Either small, or large enough that a few items (or one) exceed FUZZ_BUDGET
item_dim = st.integers(1, 40) | st.sampled_from([3000, 7000, 20_000, 10**5])


def _square(x, y, size):
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]


@st.composite
def many_items(draw):
    """A whole file of many items: COCO images or annotations, GeoJSON features, HuBMAP or HPA rows."""
    fmt = draw(st.sampled_from(["coco-images", "coco-annotations", "geojson", "hubmap", "hpa"]))
    n = draw(st.integers(1, 300 if fmt in ("geojson", "coco-annotations") else 2000))  # drawing costs ~1 ms each
    h, w = draw(item_dim), draw(item_dim)
    size = draw(st.sampled_from([1, 4, 100]))
    rle_text = draw(st.sampled_from(["", "1 2", f"1 {min(h * w, 10**6)}"]))
    if fmt == "coco-images":
        doc = {"images": [{"id": i, "height": h, "width": w} for i in range(n)],
               "annotations": [{"image_id": i, "segmentation": [sum(_square(0, 0, size)[:4], [])]} for i in range(n)]}
        return fmt, json.dumps(doc), None
    if fmt == "coco-annotations":
        seg = (lambda i: {"size": [h, w], "counts": [0, h * w]}) if draw(st.booleans()) else (
            lambda i: [sum(_square(i % max(1, w - size), i % max(1, h - size), size)[:4], [])])
        doc = {"images": [{"id": 1, "height": h, "width": w}],
               "annotations": [{"image_id": 1, "segmentation": seg(i)} for i in range(n)]}
        return fmt, json.dumps(doc), None
    if fmt == "geojson":
        feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            _square(i % max(1, w - size), (i * 7) % max(1, h - size), size)]}} for i in range(n)]
        return fmt, json.dumps({"type": "FeatureCollection", "features": feats}), (h, w)
    if fmt == "hubmap":
        return fmt, "id,rle,img_height,img_width\n" + "".join(f"a{i},{rle_text},{h},{w}\n" for i in range(n)), None
    mask = coco_rle.oid_encode(np.ones((2, 2), bool)) if (h, w) == (2, 2) else ""
    rows = "".join(f"a{i},{w},{h},{'0 0.5 ' + mask if mask else ''}\n" for i in range(n))
    return fmt, "ImageID,ImageWidth,ImageHeight,PredictionString\n" + rows, None


def _adversarial_ring(draw):
    kind = draw(st.sampled_from(["zigzag", "huge", "star", "spiral"]))
    n = draw(st.integers(3, 5000))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "zigzag":  # every edge spans every row
        top, bottom = draw(st.sampled_from([-1e6, -5.0, 0.0])), draw(st.sampled_from([40.0, 3000.0, 1e6]))
        return [[float(i % 7), bottom if i % 2 else top] for i in range(n)]
    if kind == "huge":
        big = draw(st.sampled_from([1e9, 1e15, 1e300, 1.7e308]))
        return (rng.choice([-1.0, 1.0], (n, 2)) * big * rng.random((n, 2))).tolist()
    if kind == "star":  # random vertices: edges cross each other everywhere
        return (rng.random((n, 2)) * draw(st.sampled_from([40.0, 3000.0, 20_000.0]))).tolist()
    t = np.linspace(0, 40 * np.pi, n)  # a spiral crossing itself when closed
    r = 1 + t * draw(st.sampled_from([1.0, 30.0]))
    return np.c_[r * np.cos(t), r * np.sin(t)].tolist()


@st.composite
def adversarial_polygons(draw):
    """One GeoJSON feature or COCO annotation of rings that span every row, reach +-1e308,
    intersect themselves or spiral, on an image small or large."""
    rings = [_adversarial_ring(draw) for _ in range(draw(st.integers(1, 3)))]
    h, w = draw(item_dim), draw(item_dim)
    if draw(st.booleans()):
        feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings}}
        return "geojson", json.dumps(feature), (h, w)
    doc = {"images": [{"id": 1, "height": h, "width": w}],
           "annotations": [{"image_id": 1, "segmentation": [sum(r, []) for r in rings]}]}
    return "coco", json.dumps(doc), None


def run_budgeted(case, folder):
    """Read a whole file under FUZZ_BUDGET; the traced peak must stay within it (plus what
    parsing the text itself takes, which is bounded by the file's size)."""
    import os

    fmt, text, shape = case
    path = folder / ("x.json" if fmt.startswith("coco") else "x.geojson" if fmt == "geojson" else "x.csv")
    path.write_text(text, encoding="utf-8")
    reader = {"coco-images": "coco", "coco-annotations": "coco", "coco": "coco"}.get(fmt, fmt)
    from napari_ftu.formats.export import import_annotations

    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before, old = tracemalloc.get_traced_memory()[0], os.environ.get("NAPARI_FTU_MEMORY_BUDGET")
    os.environ["NAPARI_FTU_MEMORY_BUDGET"] = str(FUZZ_BUDGET)
    try:
        items = import_annotations(path, reader, shape)
        _check_annotations(items)
    finally:
        peak = tracemalloc.get_traced_memory()[1] - before
        if started:
            tracemalloc.stop()
        if old is None:
            del os.environ["NAPARI_FTU_MEMORY_BUDGET"]
        else:
            os.environ["NAPARI_FTU_MEMORY_BUDGET"] = old
        limit = FUZZ_BUDGET + 40 * len(text) + 2**24
        assert peak <= limit, f"peak {peak / 1e6:.0f} MB over the {FUZZ_BUDGET / 1e6:.0f} MB budget"


TARGETS = {t.name: t for t in [
    Target("rle", "HuBMAP RLE decode", st.tuples(rle_texts, shapes), run_rle),
    Target("oid", "OID/HPA mask decode", st.tuples(oid_texts, claimed_dim, claimed_dim) | matching_oid, run_oid),
    Target("coco-rle", "COCO RLE dict decode", coco_rle_dicts, run_coco_rle),
    Target("coco-counts", "COCO compressed counts", st.binary(max_size=60) | st.text(max_size=40), run_counts),
    Target("rasterize", "polygon rasterizer (contract: ValueError)",
           st.tuples(polygons, st.tuples(small_dim, small_dim)), run_rasterize, allowed=(ValueError,)),
    Target("geojson", "QuPath GeoJSON reader",
           st.tuples(json_texts(geojson_docs), st.tuples(small_dim, small_dim) | st.just((10**6, 10**6))),
           run_geojson),
    Target("coco", "COCO JSON reader", json_texts(coco_docs), run_coco),
    Target("jsonl", "vasculature polygons.jsonl dataset", jsonl_lines, run_jsonl),
    Target("csv", "HuBMAP / HPA / vasculature CSV readers", csv_cases, run_csv),
    Target("train-csv", "HuBMAP 2022 train.csv dataset", train_csv() | st.binary(max_size=80), run_train_csv),
    Target("model-card", "model card parser (JSON, YAML)", card_cases, run_card),
    Target("many-items", "whole files of many items (COCO, GeoJSON, HuBMAP, HPA) under a budget", many_items(),
           run_budgeted),
    Target("bad-polygons", "adversarial polygons (GeoJSON, COCO) under a budget", adversarial_polygons(),
           run_budgeted),
]}


def check(target: Target, case, folder: Path) -> str:
    """Run one case; return the outcome ("ok" or the error type). Anything else fails."""
    try:
        target.run(case, folder)
        return "ok"
    except target.allowed as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        return type(exc).__name__


# --- the benchmark ------------------------------------------------------------------------------


def _short(case) -> str:
    text = repr(case)
    return text if len(text) < 120 else f"{text[:100]}... ({len(text)} chars)"


def fuzz(target: Target, examples: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"fuzz-{target.name}-"))
    atexit.register(shutil.rmtree, folder, True)
    outcomes, slowest, biggest, failures = Counter(), (0.0, None), (0, None), []

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def one(case):
        nonlocal slowest, biggest
        tracemalloc.reset_peak()
        start = time.perf_counter()
        try:
            outcome = check(target, case, folder)
        except BaseException as exc:  # report, and let hypothesis shrink it
            failures.append((type(exc).__name__, str(exc)[:200], _short(case)))
            raise
        took = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        outcomes[outcome] += 1
        if took > slowest[0]:
            slowest = (took, _short(case))
        if peak > biggest[0]:
            biggest = (peak, _short(case))

    try:
        one()
    except BaseException:
        pass
    return {"cases": sum(outcomes.values()), "outcomes": outcomes, "slowest": slowest, "biggest": biggest,
            "failures": failures}


# --- per-file budget cases, each read in a fresh process: outcome and peak RSS -------------------

CASE_BUDGET = "1G"  # NAPARI_FTU_MEMORY_BUDGET for these cases, so that outcomes do not depend on the machine
CASE_LIMIT = 6 * 2**30  # address-space limit of the child: old code fails with MemoryError, not the machine

_CHILD = """
import json, os, resource, sys, time
kind, path, shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[4]), int(sys.argv[4])))
from napari_ftu.formats.datasets import open_dataset
from napari_ftu.formats.export import import_annotations
from napari_ftu.io.images import read_image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    if kind == "image":
        result = read_image(path).data.shape
    elif kind in ("export", "segment"):  # the command line, as a user runs it
        from napari_ftu.cli import main
        out = os.path.join(os.path.dirname(path), "out.csv")
        code = main([kind, path, "--out", out])
        result = f"exit {code}, torch imported: {'torch' in sys.modules}"
    elif kind == "dataset":
        result = open_dataset(path).load(0).annotations.shape
    else:
        result = [a.shape for a in import_annotations(path, kind, shape)][:1]
    outcome, message = "ok", str(result)
except BaseException as exc:
    outcome, message = type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""
print(json.dumps({"outcome": outcome, "message": message, "seconds": time.perf_counter() - start,
                  "base_mb": base / 1024, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _claiming_tiff(path: Path, h: int, w: int, bytecount=None) -> Path:
    """A 64 x 64 zlib TIFF whose header is edited to claim h x w pixels in one strip."""
    import struct

    import tifffile

    tifffile.imwrite(path, np.full((64, 64), 7, np.uint8), compression="zlib", rowsperstrip=64)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        edits = {"ImageWidth": w, "ImageLength": h, "RowsPerStrip": h}
        if bytecount is not None:
            edits["StripByteCounts"] = bytecount
        for name, value in edits.items():
            struct.pack_into("<H" if tags[name].dtype == 3 else "<I", data, tags[name].valueoffset, value)
    path.write_bytes(bytes(data))
    return path


def _png(h, w, rows):
    import struct

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes([7]) * w for _ in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _zigzag(n, height, width=8.0):
    return [[i % 2 * width + i * 1e-3, 0.0 if i % 2 else float(height)] for i in range(n)]


def _default_budget_cases(folder: Path) -> list:
    """``(name, kind, path, shape)`` of small files that claim gigabytes in many parts (rows,
    images, polygon crossings, tiles), read under the machine's own budget (80% of free memory):
    each must finish, or be refused with one line, at a peak of one image's worth."""
    import tifffile

    def text(name, content):
        (folder / name).write_text(content)
        return folder / name

    rows = "".join(f"r{i:02d},kidney,HuBMAP,7000,7000,0.5,1 2\n" for i in range(40))
    cases = [("train.csv: 40 rows of 7000 x 7000", "hubmap-train",
              text("train.csv", "id,organ,data_source,img_height,img_width,pixel_size,rle\n" + rows), None)]
    images = [{"id": i, "height": 10_000, "width": 10_000, "file_name": f"t{i}.tif"} for i in range(8)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "segmentation": {"size": [10_000, 10_000],
                                                                          "counts": [0, 100_000_000]}}
            for i in range(8)]  # one object covering each image: every page of its labels is written
    cases.append(("COCO: 8 images of 10 000 x 10 000, a full-image mask each", "coco", text("eight.json", json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "glomerulus"}]})), None))
    ring = _zigzag(3500, 10_000)
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}}
    cases.append(("GeoJSON: one zig-zag polygon, 3500 edges x 10 000 rows", "geojson",
                  text("zigzag-one.geojson", json.dumps(feature)), (10_000, 10)))
    tiles = (np.zeros((4096, 4096), np.uint8) for _ in range(100))
    tifffile.imwrite(folder / "zeros-zstd.tif", tiles, shape=(40_000, 40_000), dtype=np.uint8, tile=(4096, 4096),
                     compression="zstd")
    cases.append(("export: zstd TIFF of 40 000 x 40 000 zeros -> CSV", "export", folder / "zeros-zstd.tif", None))
    cases.append(("segment: deflate TIFF claiming 60 000 x 60 000", "segment",
                  _claiming_tiff(folder / "bomb.tif", 60_000, 60_000), None))
    return cases


def _case_files(folder: Path) -> list:
    """``(name, kind, path, shape)`` of each adversarial file."""
    import tifffile

    def text(name, content):
        (folder / name).write_text(content)
        return folder / name

    cases = [("TIFF header claiming 40 000 x 40 000", "image",
              _claiming_tiff(folder / "claim.tif", 40_000, 40_000), None),
             ("TIFF strip with 0 byte count", "image", _claiming_tiff(folder / "zero.tif", 64, 64, bytecount=0), None)]
    tiles = (np.zeros((4096, 4096), np.uint8) for _ in range(100))
    tifffile.imwrite(folder / "zeros.tif", tiles, shape=(40_000, 40_000), dtype=np.uint8, tile=(4096, 4096),
                     compression="zlib")
    cases.append(("valid zlib TIFF of 40 000 x 40 000 zeros", "image", folder / "zeros.tif", None))
    (folder / "short.png").write_bytes(_png(12_000, 12_000, rows=1))
    cases.append(("PNG claiming 12 000 x 12 000, one row of data", "image", folder / "short.png", None))
    images = [{"id": i, "height": 5000, "width": 5000} for i in range(100)]
    cases.append(("COCO: 100 images of 5000 x 5000", "coco",
                  text("images.json", json.dumps({"images": images, "annotations": []})), None))
    rles = [{"image_id": 1, "segmentation": {"size": [4000, 4000], "counts": [0, 16_000_000]}} for _ in range(100)]
    cases.append(("COCO: 100 full-image RLE masks on 4000 x 4000", "coco",
                  text("rles.json", json.dumps({"images": [{"id": 1, "height": 4000, "width": 4000}],
                                                "annotations": rles})), None))
    ring = _zigzag(2000, 10_000)
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}}
    cases.append(("GeoJSON: 2000 edges spanning 10 000 rows", "geojson", text("zigzag.geojson", json.dumps(feature)),
                  (10_000, 10)))
    squares = [[[x, y], [x + 4, y], [x + 4, y + 4], [x, y + 4], [x, y]] for x in range(0, 8000, 200)
               for y in range(0, 8000, 200)]
    feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [sq]}} for sq in squares]
    cases.append(("GeoJSON: 1600 small squares on 8000 x 8000", "geojson",
                  text("squares.geojson", json.dumps({"type": "FeatureCollection", "features": feats})), (8000, 8000)))
    huge = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[-1.7e308, -1.7e308], [1.7e308, -1e308], [1e308, 1.7e308], [-1.7e308, -1.7e308]]]}}
    cases.append(("GeoJSON: vertices at +-1.7e308 on 8000 x 8000", "geojson", text("huge.geojson", json.dumps(huge)),
                  (8000, 8000)))
    star = (np.random.default_rng(0).random((20_000, 2)) * 4000).tolist()
    star_feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [star]}}
    cases.append(("GeoJSON: self-intersecting 20 000-vertex star on 4000 x 4000", "geojson",
                  text("star.geojson", json.dumps(star_feature)), (4000, 4000)))
    cases.append(("HuBMAP CSV: 100 rows of 5000 x 5000", "hubmap",
                  text("hubmap.csv", "id,rle,img_height,img_width\n" + "".join(
                      f"a{i},1 2,5000,5000\n" for i in range(100))), None))
    cases.append(("HPA CSV: 100 rows of 5000 x 5000", "hpa",
                  text("hpa.csv", "ImageID,ImageWidth,ImageHeight,PredictionString\n" + "".join(
                      f"a{i},5000,5000,\n" for i in range(100))), None))
    one = coco_rle.oid_encode(np.ones((3000, 3000), bool))
    cases.append(("HPA CSV: one row of 300 full masks, 3000 x 3000", "hpa",
                  text("hpa-masks.csv", "ImageID,ImageWidth,ImageHeight,PredictionString\na,3000,3000,"
                       + " ".join(f"{k % 19} 0.5 {one}" for k in range(300)) + "\n"), None))
    vasc = folder / "vasc"
    (vasc / "train").mkdir(parents=True)
    from napari_ftu.io.images import write_tiff

    write_tiff(vasc / "train" / "t0.tif", np.zeros((8000, 16), np.uint8))
    (vasc / "polygons.jsonl").write_text(json.dumps({"id": "t0", "annotations": [
        {"type": "blood_vessel", "coordinates": [_zigzag(4000, 8000)]}]}))
    cases.append(("vasculature jsonl: 4000 edges spanning 8000 rows", "dataset", vasc, None))
    return cases


def _command_cases(folder: Path) -> list:
    """``(name, argv)`` of whole ``napari-ftu`` commands on small files claiming gigabytes:
    exports that convert many images, and two strip TIFFs of 40 000 x 40 000 labels."""
    import tifffile

    rows = "".join(f"r{i},kidney,HuBMAP,20000,20000,0.5,1 400000000\n" for i in range(6))  # full masks
    (folder / "train6.csv").write_text("id,organ,data_source,img_height,img_width,pixel_size,rle\n" + rows)
    images = [{"id": i, "height": 10_000, "width": 10_000, "file_name": f"t{i}.tif"} for i in range(8)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "segmentation": {"size": [10_000, 10_000],
                                                                          "counts": [0, 100_000_000]}}
            for i in range(8)]
    (folder / "eight.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                   "categories": [{"id": 1, "name": "glomerulus"}]}))
    labels = np.zeros((40_000, 40_000), np.uint8)  # calloc'd: only the pages written below are touched
    for i in range(5, 200, 20):
        labels[i * 200 + 50 : i * 200 + 150, 1000:30000:3] = i % 7 + 1
    tifffile.imwrite(folder / "strips.tif", labels, rowsperstrip=200, compression="zlib")
    del labels
    shutil.copy(folder / "strips.tif", folder / "strips2.tif")
    out = str(folder / "x.csv")
    return [
        ("export train.csv: 6 rows of 20 000 x 20 000 -> id,rle", ["export", "train6.csv", "--from", "hubmap-train",
                                                                    "--out", out, "--overwrite"], "9.6 GB"),
        ("export COCO: 8 images of 10 000 x 10 000, full masks -> CSV", ["export", "eight.json", "--from", "coco",
                                                                         "--out", out, "--overwrite"], "3.2 GB"),
        ("export LABELS.tif: 40 000² deflate, strips of 200 rows", ["export", "strips.tif", "--out", out,
                                                                    "--overwrite"], "1.8 GB"),
        ("evaluate two such TIFFs", ["evaluate", "strips.tif", "strips2.tif"], "1.6 GB, then refused"),
    ]


def run_commands(src: str | None = None) -> list[dict]:
    """Each command as a user runs it, a whole process under ``/usr/bin/time -f %M`` with the
    machine's own budget: exit status and peak RSS."""
    import os
    import subprocess
    import sys

    folder = Path(tempfile.mkdtemp(prefix="napari-ftu-commands-"))
    atexit.register(shutil.rmtree, folder, True)
    env = {k: v for k, v in os.environ.items() if k != "NAPARI_FTU_MEMORY_BUDGET"}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **({"PYTHONPATH": src} if src else {})})
    rows = []
    for name, argv, before in _command_cases(folder):
        size = sum((folder / a).stat().st_size for a in argv if (folder / a).is_file())
        start = time.perf_counter()
        run = subprocess.run(["/usr/bin/time", "-f", "peak %M", sys.executable, "-m", "napari_ftu.cli", *argv],
                             cwd=folder, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        peak = int(run.stderr.strip().splitlines()[-1].split()[-1]) / 1024
        said = (run.stdout.strip().splitlines() or run.stderr.strip().splitlines()[:-1] or [""])[-1]
        rows.append({"case": name, "bytes": size, "exit": run.returncode, "peak_mb": peak, "seconds": seconds})
        print(f"{name:<62} {size:>9} B  before {before:<21} exit {run.returncode}  peak RSS {peak:6.0f} MB  "
              f"{seconds:6.1f} s  {said[:100]}", flush=True)
    return rows


def run_cases(src: str | None = None) -> list[dict]:
    """Each case in a fresh process (so ru_maxrss is its own): file size, outcome, peak RSS."""
    import os
    import subprocess
    import sys

    folder = Path(tempfile.mkdtemp(prefix="napari-ftu-budget-"))
    atexit.register(shutil.rmtree, folder, True)
    env = {**os.environ, "NAPARI_FTU_MEMORY_BUDGET": CASE_BUDGET, "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    if src:
        env["PYTHONPATH"] = src
    rows = []
    default_env = {k: v for k, v in env.items() if k != "NAPARI_FTU_MEMORY_BUDGET"}
    print(f"{'case':<58} {'file':>11}  {'budget':<7} {'outcome':<12} {'peak RSS':>13}  {'seconds':>7}  message")
    (folder / "default").mkdir()
    both = [(c, env, CASE_BUDGET) for c in _case_files(folder)] + [
        (c, default_env, "machine") for c in _default_budget_cases(folder / "default")]
    for (name, kind, path, shape), case_env, budget in both:
        size = sum(p.stat().st_size for p in Path(path).rglob("*")) if Path(path).is_dir() else path.stat().st_size
        run = subprocess.run([sys.executable, "-c", _CHILD, kind, str(path), json.dumps(shape), str(CASE_LIMIT)],
                             capture_output=True, text=True, env=case_env)
        try:
            row = json.loads(run.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            row = {"outcome": f"exit {run.returncode}", "message": run.stderr.strip().splitlines()[-1:],
                   "seconds": float("nan"), "base_mb": float("nan"), "peak_mb": float("nan")}
        rows.append({"case": name, "bytes": size, "budget": budget, **row})
        print(f"{name:<58} {size:>9} B  {budget:<7} {row['outcome']:<12} peak RSS {row['peak_mb']:7.0f} MB "
              f"(+{row['peak_mb'] - row['base_mb']:.0f})  {row['seconds']:6.2f} s  {str(row['message'])[:110]}",
              flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--only", default="", help="comma-separated target names")
    parser.add_argument("--cases", action="store_true",
                        help=f"instead: adversarial files, each read in a fresh process (budget {CASE_BUDGET}): "
                             "outcome and peak RSS")
    parser.add_argument("--src", default=None, help="with --cases: the package source to test (PYTHONPATH)")
    args = parser.parse_args(argv)
    if args.cases:
        run_cases(args.src)
        run_commands(args.src)
        return 0
    names = [n for n in args.only.split(",") if n] or list(TARGETS)
    MARKER.unlink(missing_ok=True)
    tracemalloc.start()
    bad = 0
    print(f"{'target':<12} {'cases':>6}  {'slowest s':>9}  {'peak MiB':>8}  outcomes")
    for name in names:
        t0 = time.perf_counter()
        r = fuzz(TARGETS[name], args.examples)
        outcome = ", ".join(f"{k} {v}" for k, v in r["outcomes"].most_common())
        print(f"{name:<12} {r['cases']:>6}  {r['slowest'][0]:>9.3f}  {r['biggest'][0] / 2**20:>8.1f}  {outcome}"
              f"   [{time.perf_counter() - t0:.0f} s]", flush=True)
        print(f"{'':<12} slowest case: {r['slowest'][1]}")
        print(f"{'':<12} largest allocation: {r['biggest'][1]}")
        if r["failures"]:
            bad += 1
            kind, message, case = r["failures"][-1]  # the shrunk one
            print(f"{'':<12} FAILED with {kind}: {message}\n{'':<12} case: {case}")
    print(f"code ran from a crafted card: {MARKER.exists()}")
    return 1 if bad or MARKER.exists() else 0


if __name__ == "__main__":
    raise SystemExit(main())
