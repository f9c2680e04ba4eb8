"""Memory budgets per file, and damaged images that must not read as zeros.

A file of a few kB can claim gigabytes: an image header, many images or rows in one file, one
polygon whose edges cross every row. Readers hand over one image at a time and check what that
image needs before allocating it, naming the file and the size; the budget is set here with
NAPARI_FTU_MEMORY_BUDGET so that the outcome does not depend on this machine's free memory.
"""

import json
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import tifffile

from napari_ftu.cli import main
from napari_ftu.errors import FormatError, InputError
from napari_ftu.formats import coco_rle
from napari_ftu.formats.export import import_annotations
from napari_ftu.io import budget
from napari_ftu.io.images import read_image
from napari_ftu.io.slides import open_slide

MB = 10**6


def _peak(fn, *args, error=(FormatError, InputError)):
    """The error ``fn`` raises and the peak traced allocation (bytes) until then."""
    tracemalloc.start()
    try:
        with pytest.raises(error) as info:
            fn(*args)
        return str(info.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- the budget ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [("2G", 2 * 10**9), ("512M", 512 * 10**6), ("1.5 GB", 1.5e9),
                                        ("64MiB", 64 * 2**20), ("1000", 1000), (" 3k ", 3000)])
def test_budget_sizes(monkeypatch, text, size):
    monkeypatch.setenv(budget.ENV, text)
    assert budget.memory_budget() == int(size)


def test_a_bad_budget_setting_is_named(monkeypatch):
    monkeypatch.setenv(budget.ENV, "lots")
    with pytest.raises(ValueError, match="NAPARI_FTU_MEMORY_BUDGET='lots' is not a size"):
        budget.memory_budget()


def test_budget_follows_available_memory_without_psutil(monkeypatch):
    import builtins

    monkeypatch.delenv(budget.ENV, raising=False)
    with_psutil = budget.available_memory()
    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    from_proc = budget.available_memory()  # /proc/meminfo
    assert from_proc and with_psutil and abs(from_proc - with_psutil) < 0.2 * with_psutil
    assert budget.memory_budget() == pytest.approx(budget.SHARE * from_proc, rel=0.2)


def test_the_message_names_the_file_the_need_and_the_budget(monkeypatch):
    monkeypatch.setenv(budget.ENV, "3.1G")
    with pytest.raises(InputError) as info:
        budget.check_memory(4.8e9, "x.tif", error=InputError)
    assert str(info.value) == ("x.tif: decoding needs 4.8 GB, more than the 3.1 GB memory budget "
                               "(NAPARI_FTU_MEMORY_BUDGET)")
    budget.check_memory(3.0e9, "x.tif")  # within it


# --- whole-image decodes ------------------------------------------------------------------------


def _claiming_tiff(path, h, w, bytecount=None):
    """A 64 x 64 zlib TIFF (a few hundred bytes) whose header is edited to claim h x w pixels."""
    return _fuzz()._claiming_tiff(path, h, w, bytecount)


def _fuzz():
    """bench/fuzz.py, whose adversarial files these tests share (loaded as tests/hardening/test_fuzz.py does)."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "napari_ftu_bench_fuzz"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[2] / "bench" / "fuzz.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _zero_tiles(n, tile=4096):
    for _ in range(n):
        yield np.zeros((tile, tile), np.uint8)


def test_a_tiny_tiff_claiming_40000_squared_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setenv(budget.ENV, "1G")
    path = _claiming_tiff(tmp_path / "x.tif", 40_000, 40_000)
    assert path.stat().st_size < 1000
    message, peak = _peak(read_image, path)
    assert message == f"{path}: file is damaged (27 compressed bytes claim 1600000000 bytes of pixels, more than " \
                      "deflate can hold)"
    assert peak < MB


def test_a_valid_compressed_tiff_over_the_budget_still_opens_lazily(tmp_path, monkeypatch):
    path = tmp_path / "big.tif"  # 20 000 x 20 000 zeros in 25 zlib tiles: 425 kB on disk, 400 MB decoded
    tifffile.imwrite(path, _zero_tiles(25), shape=(20_000, 20_000), dtype=np.uint8, tile=(4096, 4096),
                     compression="zlib")
    monkeypatch.setenv(budget.ENV, "100M")
    message, peak = _peak(read_image, path)
    assert "decoding needs 41" in message and "100.0 MB memory budget" in message and peak < MB
    slide = open_slide(path)  # the lazy path is untouched: levels read tile by tile
    try:
        assert slide.size == (20_000, 20_000) and slide.flat
        assert not np.asarray(slide.levels[0][10_000:10_100, 5_000:5_100]).any()
        with pytest.raises(InputError, match="reading it whole needs 400.0 MB"):
            slide.read()
    finally:
        slide.close()


def test_cli_export_and_evaluate_say_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(budget.ENV, "1G")
    path = _claiming_tiff(tmp_path / "x.tif", 40_000, 40_000)
    for argv in (["export", str(path), "--out", str(tmp_path / "x.csv")], ["evaluate", str(path), str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"napari-ftu: error: {path}: file is damaged (27 compressed")
    assert not (tmp_path / "x.csv").exists()


def test_tiff_strips_without_data_are_refused_not_read_as_zeros(tmp_path, capfd):
    path = _claiming_tiff(tmp_path / "zero.tif", 64, 64, bytecount=0)
    with tifffile.TiffFile(path) as tif:  # what tifffile alone does: zeros, no error
        assert not tif.asarray().any()
    for reader in (read_image, open_slide):
        with pytest.raises(InputError,
                           match=r"zero.tif: file is damaged \(1 of 1 strips or tiles of page 0 have no data"):
            reader(path)
    tiled = tmp_path / "tiled.tif"
    tifffile.imwrite(tiled, np.ones((512, 512), np.uint8), tile=(256, 256), compression="zlib")
    data = bytearray(tiled.read_bytes())
    with tifffile.TiffFile(tiled) as tif:
        tag = tif.pages[0].tags["TileByteCounts"]
        struct.pack_into("<I", data, tag.valueoffset + 4 * 2, 0)  # the third tile of four
    tiled.write_bytes(bytes(data))
    with pytest.raises(InputError, match="1 of 4 strips or tiles"):
        read_image(tiled)
    assert capfd.readouterr().err == ""  # nothing of tifffile's logging printed around the error


def test_tifffile_log_lines_do_not_print(tmp_path):
    """In a fresh process (pytest's own log handler would hide them here): tifffile logs that
    the series shape does not match the page, then fails; the CLI user sees our one line only
    (the CLI quiets library loggers unless --verbose)."""
    import os
    import subprocess
    import sys

    path = _claiming_tiff(tmp_path / "x.tif", 300, 200)  # the strip holds 64 x 64
    code = "import sys; from napari_ftu.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", code, "export", str(path), "--out", str(tmp_path / "x.csv")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(f"napari-ftu: error: {path}: cannot read image")


def _png(h, w, rows=None, cut=None, interlace=0):
    """A grey PNG of h x w whose image data holds only ``rows`` rows or is cut after ``cut`` bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes([7]) * w for _ in range(h if rows is None else rows))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, interlace))
            + chunk(b"IDAT", zlib.compress(raw)[:cut]) + chunk(b"IEND", b""))


def test_png_with_short_image_data_is_refused(tmp_path):
    import imageio.v3 as iio

    good, short, cut = tmp_path / "good.png", tmp_path / "short.png", tmp_path / "cut.png"
    good.write_bytes(_png(20, 30))
    short.write_bytes(_png(20, 30, rows=5))  # a complete zlib stream of 5 rows of 20
    cut.write_bytes(_png(20, 30, cut=10))
    assert (read_image(good).data == 7).all()
    assert not iio.imread(short)[5:].any()  # what Pillow alone does: zeros, no error
    with pytest.raises(InputError, match=r"short.png: image data is truncated \(155 of the 620 bytes"):
        read_image(short)
    with pytest.raises(InputError, match="cut.png"):
        open_slide(cut)


def test_pngs_of_every_kind_still_read(tmp_path):
    import imageio.v3 as iio
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (33, 17, 3), dtype=np.uint8), rng.integers(0, 255, (33, 17, 4), dtype=np.uint8),
              rng.integers(0, 65535, (33, 17), dtype=np.uint16), rng.random((40, 41)) > 0.5,
              np.zeros((1, 1), np.uint8)]
    for k, arr in enumerate(arrays):
        iio.imwrite(tmp_path / f"{k}.png", arr)
        np.testing.assert_array_equal(read_image(tmp_path / f"{k}.png").data, arr)
    Image.fromarray(arrays[0]).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").data.shape == (33, 17, 3)
    (tmp_path / "adam7.png").write_bytes(_interlaced_png(13, 7))
    assert read_image(tmp_path / "adam7.png").data.shape == (13, 7)


def _interlaced_png(h, w):
    from napari_ftu.io.images import _ADAM7

    n = sum(-(-(h - y0) // dy) * (1 + -(-(w - x0) // dx)) for x0, y0, dx, dy in _ADAM7 if w > x0 and h > y0)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 1))
            + chunk(b"IDAT", zlib.compress(b"\x00" * n)) + chunk(b"IEND", b""))


def test_a_png_claiming_a_huge_size_is_refused_from_its_header(tmp_path, monkeypatch):
    monkeypatch.setenv(budget.ENV, "50M")
    path = tmp_path / "x.png"
    path.write_bytes(_png(9000, 9000, rows=1))  # 81 Mpx claimed in 60 bytes of data
    message, peak = _peak(read_image, path)
    assert message.startswith(f"{path}: decoding needs 162.0 MB, more than the 50.0 MB memory budget")
    assert peak < MB


def test_unreadable_images_give_one_line_without_install_hints(tmp_path):
    for name in ("x.jpg", "x.png", "x.bmp"):
        (tmp_path / name).write_bytes(b"not an image at all")
        with pytest.raises(InputError) as info:
            read_image(tmp_path / name)
        assert "\n" not in str(info.value) and "pip install" not in str(info.value)
        assert str(info.value).startswith(str(tmp_path / name))


# --- files of many items ------------------------------------------------------------------------


def _write(path, text):
    path.write_text(text)
    return path


def _streamed_peak(items) -> tuple[list, int]:
    """Shapes of the items, taken one at a time and dropped, and the peak traced allocation."""
    tracemalloc.start()
    try:
        shapes = []
        for a in items:
            shapes.append(a.shape)
            del a  # a consumer that keeps nothing
        return shapes, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_coco_file_of_many_images_is_read_one_image_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv(budget.ENV, "200M")
    images = [{"id": i, "height": 3000, "width": 3000} for i in range(30)]  # 36 MB each, 1.1 GB in all
    path = _write(tmp_path / "c.json", json.dumps({"images": images, "annotations": []}))
    assert path.stat().st_size < 2000
    shapes, peak = _streamed_peak(import_annotations(path, "coco"))
    assert shapes == [(3000, 3000)] * 30
    assert peak < 1.5 * 36 * MB  # one label image at a time, never the file's 30
    images[7] = {"id": 7, "height": 8000, "width": 8000}  # 256 MB: this one image is over the budget
    path = _write(tmp_path / "big.json", json.dumps({"images": images, "annotations": []}))
    message, peak = _peak(import_annotations, path, "coco")  # refused from the file's sizes, before any image
    assert message.startswith(f"{path}, image '7': image of 8000 x 8000: decoding needs 256.0 MB, more than the 200.0")
    assert peak < 2 * MB


def _zigzag(n, height):
    """A polygon whose n edges each cross every one of ``height`` rows, in a box 8 px wide."""
    return [[i % 2 * 8.0, 0.0 if i % 2 else float(height)] for i in range(n)]


def test_a_polygon_whose_edges_span_every_row_is_filled_band_by_band(tmp_path, monkeypatch):
    from napari_ftu.formats import polygons

    monkeypatch.setenv(budget.ENV, "1G")
    ring = [[x + i * 1e-3, y] for i, (x, y) in enumerate(_zigzag(2000, 10_000))]  # drifting: it covers pixels
    # 2000 x 10 000 row crossings: 1.6 GB of scanline arrays at once, in 30 kB
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]}}
    path = _write(tmp_path / "g.geojson", json.dumps(feature))
    shapes, peak = _streamed_peak(import_annotations(path, "geojson", (10_000, 10)))
    assert shapes == [(10_000, 10)] and peak < 250 * MB  # a band of 2 million crossings, not 20 million
    coco = {"images": [{"id": 1, "height": 10_000, "width": 10}],
            "annotations": [{"image_id": 1, "segmentation": [sum(ring, [])]}]}
    (a,) = import_annotations(_write(tmp_path / "c.json", json.dumps(coco)), "coco")
    monkeypatch.setattr(polygons, "BAND_CROSSINGS", 10**9)  # the same polygon filled in one go
    assert (a.labels > 0).sum() > 0 and ((a.labels > 0) == polygons.rasterize([[np.array(ring)]], (10_000, 10))).all()


def test_a_polygon_whose_box_exceeds_the_budget_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(budget.ENV, "1G")
    square = [[0, 0], [12_000, 0], [12_000, 12_000], [0, 12_000], [0, 0]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}}
    path = _write(tmp_path / "g.geojson", json.dumps(feature))
    message, peak = _peak(import_annotations, path, "geojson", (12_000, 12_000))
    assert message.startswith(f"{path}: reading its labels needs 1.2 GB, more than the 1.0 GB memory budget")
    assert peak < 2 * MB


def test_many_small_polygons_cost_their_boxes_not_the_image(tmp_path):
    squares = [[[x, y], [x + 4, y], [x + 4, y + 4], [x, y + 4], [x, y]] for x in range(0, 3000, 100)
               for y in range(0, 3000, 100)]  # 900 features on a 3000 x 3000 image
    doc = {"type": "FeatureCollection",
           "features": [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [s]}} for s in squares]}
    path = _write(tmp_path / "g.geojson", json.dumps(doc))
    tracemalloc.start()
    try:
        (a,) = import_annotations(path, "geojson", (3000, 3000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(a.ids()) == 900 and (a.labels > 0).sum() == 900 * 16
    assert peak < 36 * MB + 4 * MB  # the int32 label image; was one 9 MB mask per feature on top


@pytest.mark.parametrize("fmt", ["hubmap", "hpa"])
def test_csv_of_many_rows_is_read_one_row_at_a_time(tmp_path, monkeypatch, fmt):
    monkeypatch.setenv(budget.ENV, "200M")
    sizes = [(3000, 3000)] * 30 + [(8000, 8000)]  # 1.1 GB in all; the last row alone is over the budget
    if fmt == "hubmap":
        text = "id,rle,img_height,img_width\n" + "".join(f"a{i},1 2,{h},{w}\n" for i, (h, w) in enumerate(sizes))
    else:
        text = "ImageID,ImageWidth,ImageHeight,PredictionString\n" + "".join(
            f"a{i},{w},{h},\n" for i, (h, w) in enumerate(sizes))
    path = _write(tmp_path / "x.csv", text)
    assert path.stat().st_size < 2000
    message, peak = _peak(import_annotations, path, fmt)  # refused from the file's sizes, before any row
    assert message.startswith(f"{path}, line 32: image of 8000 x 8000: decoding needs 256.0 MB, more than the 200.0")
    assert peak < 2 * MB
    path.write_text(text.rsplit("\n", 2)[0] + "\n")  # without that row
    shapes, peak = _streamed_peak(import_annotations(path, fmt))
    assert shapes == [(3000, 3000)] * 30 and peak < 1.5 * 45 * MB  # a row's labels and decode, never 30


def test_vasculature_tile_with_a_zigzag_polygon_is_refused(tmp_path, monkeypatch):
    from napari_ftu.formats.datasets import open_dataset
    from napari_ftu.io.images import write_tiff

    (tmp_path / "train").mkdir()
    write_tiff(tmp_path / "train" / "t0.tif", np.zeros((4000, 8), np.uint8))
    ring = _zigzag(1000, 4000)  # 4 million crossings, filled in bands of 2 million: 168 MB
    (tmp_path / "polygons.jsonl").write_text(json.dumps({"id": "t0", "annotations": [
        {"type": "blood_vessel", "coordinates": [ring]}]}))
    monkeypatch.setenv(budget.ENV, "100M")
    ds = open_dataset(tmp_path)
    message, peak = _peak(ds.load, 0)
    assert "polygons.jsonl, tile t0: reading its labels needs 168." in message and peak < 2 * MB
    monkeypatch.setenv(budget.ENV, "1G")
    item = ds.load(0)  # within a larger budget the same tile loads
    assert item.annotations.shape == (4000, 8) and item.annotations.classes == {1: ["blood_vessel"]}


def test_oid_mask_whose_counts_need_more_than_the_budget(monkeypatch):
    mask = np.zeros((1000, 1000), bool)
    mask[::2] = True  # a million runs: 100 MB to parse
    text = coco_rle.oid_encode(mask)
    monkeypatch.setenv(budget.ENV, "50M")
    with pytest.raises(FormatError, match="mask of 1000 x 1000: decoding needs 101.0 MB"):
        coco_rle.oid_decode(text, 1000, 1000)
    monkeypatch.setenv(budget.ENV, "1G")
    np.testing.assert_array_equal(coco_rle.oid_decode(text, 1000, 1000), mask)


# --- scores ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_scores_are_refused(tmp_path, score):
    ann = {"image_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2]], "score": "@"}
    coco = json.dumps({"images": [{"id": 1, "height": 3, "width": 3}], "annotations": [ann]}).replace('"@"', score)
    with pytest.raises(FormatError, match="annotation 0: score .* is not a finite number"):
        import_annotations(_write(tmp_path / "c.json", coco), "coco")
    feature = json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 2]]]},
                          "properties": {"measurements": {"Confidence": "@"}}}).replace('"@"', score)
    with pytest.raises(FormatError, match="feature 0: score .* is not a finite number"):
        import_annotations(_write(tmp_path / "g.geojson", feature), "geojson", (3, 3))
    one = coco_rle.oid_encode(np.ones((2, 2), bool))
    hpa = f"ImageID,ImageWidth,ImageHeight,PredictionString\na,2,2,0 {score.lower()} {one}\n"
    with pytest.raises(FormatError, match="line 2: score .* is not a finite number"):
        import_annotations(_write(tmp_path / "h.csv", hpa), "hpa")


FAIL_FAST = """
import sys
from napari_ftu.cli import main
try:
    code = main(sys.argv[1:])
finally:
    print("torch imported:", "torch" in sys.modules)
sys.exit(code)
"""


def test_segment_refuses_a_deflate_bomb_before_torch_loads(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    bomb = _claiming_tiff(tmp_path / "bomb.tif", 60_000, 60_000)  # 3.6 GB claimed in one strip, 283 bytes
    src = str(Path(__file__).parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop(budget.ENV, None)  # the machine's own budget: the claim fits it, deflate cannot hold it
    run = subprocess.run([sys.executable, "-c", FAIL_FAST, "segment", str(bomb), "--out", str(tmp_path / "o.csv")],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"napari-ftu: error: {bomb}: file is damaged (27 compressed bytes claim 3600000000 bytes of pixels, more "
        "than deflate can hold)"]
    assert run.stdout.strip() == "torch imported: False"


def test_deflate_strips_of_every_length_still_open(tmp_path):
    data = np.zeros((1000, 3000), np.uint8)
    data[-1, :7] = 9  # the last strip: one row of a 64-row strip size, a few bytes compressed
    tifffile.imwrite(tmp_path / "s.tif", data, compression="zlib", rowsperstrip=999)
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((5000, 5000), np.uint8), compression="zlib", tile=(1024, 1024))
    assert read_image(tmp_path / "s.tif").data[-1, :8].tolist() == [9] * 7 + [0]
    assert open_slide(tmp_path / "t.tif").size == (5000, 5000)
