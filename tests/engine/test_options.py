"""One way to segment a slide: the options object (validated where numbers enter, resolved once
against the model card), the size rules, the CLI and the dock going through the same core."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_ftu.engine.options import (
    MAX_FULL_RES_PIXELS,
    STORE_ABOVE_PIXELS,
    OptionError,
    SegmentOptions,
    check_positive,
    plan_outputs,
)
from napari_ftu.errors import InputError, ModelError
from napari_ftu.models.card import ModelCard


@pytest.mark.parametrize("changes, problem", [
    ({"batch_size": 0}, "batch size"), ({"batch_size": -1}, "batch size"), ({"batch_size": 2.5}, "batch size"),
    ({"threshold": 2}, "threshold"), ({"threshold": math.nan}, "threshold"), ({"threshold": -0.1}, "threshold"),
    ({"tile_size": 16}, "tile size"), ({"tile_size": 16384}, "tile size"), ({"overlap": -1}, "overlap"),
    ({"tile_size": 64, "overlap": 64}, "smaller than the tile"), ({"min_object_um2": -5}, "minimum object"),
    ({"min_object_um2": math.inf}, "minimum object"), ({"blend": "nearest"}, "blend"),
    ({"prob_dtype": "float64"}, "dtype"), ({"tta": "yes"}, "tta"), ({"class_index": -1}, "class index"),
])
def test_options_refuse_numbers_no_run_can_use(changes, problem):
    with pytest.raises(OptionError, match=problem):
        SegmentOptions(**changes)


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, "abc", True])
def test_pixel_sizes_must_be_finite_and_positive(value):
    with pytest.raises(OptionError, match="µm/px"):
        check_positive(value)
    assert check_positive(None) is None and check_positive("0.5") == 0.5


def test_options_are_resolved_once_against_the_card():
    card = ModelCard(classes=["glomerulus", "vessel"], thresholds={"vessel": 0.3}, tile_size=128, overlap=16,
                     min_object_um2=50)
    resolved = SegmentOptions(class_index=1).resolve(card)
    assert (resolved.tile_size, resolved.overlap, resolved.threshold, resolved.min_object_um2) == (128, 16, 0.3, 50)
    assert resolved.resolved and not SegmentOptions().resolved
    mine = SegmentOptions(tile_size=256, overlap=0, threshold=0.7, min_object_um2=0).resolve(card)
    assert (mine.tile_size, mine.overlap, mine.threshold, mine.min_object_um2) == (256, 0, 0.7, 0)
    with pytest.raises(OptionError, match="overlap 16 with tile size 16|smaller than the tile"):
        SegmentOptions(tile_size=32, overlap=40)
    with pytest.raises(OptionError, match="smaller than the tile"):
        SegmentOptions(tile_size=32).resolve(ModelCard(tile_size=256, overlap=64))
    with pytest.raises(OptionError, match="class index 2"):
        SegmentOptions(class_index=2).resolve(card)
    with pytest.raises(AttributeError):  # frozen
        resolved.threshold = 0.1


def test_card_tile_size_is_bounded_at_card_validation():
    base = json.loads(ModelCard().to_json())
    with pytest.raises(ModelError, match="tile_size"):
        ModelCard.from_dict({**base, "tile_size": 16384}, "card.json")
    assert ModelCard.from_dict({**base, "tile_size": 1024}, "card.json").tile_size == 1024


def test_size_rules_decide_memory_store_resolution_and_bands():
    small = plan_outputs((3000, 2000), (750, 500))
    assert small.full_resolution and not small.store and not small.banded
    big_grid = plan_outputs((9000, 9000), (9000, 9000))  # 81 MP on the model grid
    assert big_grid.store and not big_grid.full_resolution and not big_grid.banded
    slide = plan_outputs((50_000, 50_000), (12_500, 12_500))
    assert slide.store and not slide.full_resolution and slide.banded
    assert 50_000**2 > MAX_FULL_RES_PIXELS and 12_500**2 > STORE_ABOVE_PIXELS
    viewed = plan_outputs((1400, 1200), (350, 300), pyramid_view=True)
    assert viewed.store and not viewed.full_resolution
    assert plan_outputs((1000, 1000), (1000, 1000), band_above=900_000).banded


# --- the CLI -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, problem", [
    (["--batch", "0"], "batch size"), (["--batch", "-1"], "batch size"),
    (["--um-per-px", "nan"], "um-per-px"), (["--um-per-px", "-1"], "um-per-px"), (["--um-per-px", "0"], "um-per-px"),
    (["--threshold", "2"], "threshold"), (["--threshold", "nan"], "threshold"), (["--tile", "8"], "tile size"),
    (["--tile", "64", "--overlap", "64"], "smaller than the tile"),
])
def test_cli_refuses_bad_numbers_in_one_line(tmp_path, capsys, flags, problem):
    from napari_ftu.cli import main

    image = tmp_path / "slide.png"
    image.write_bytes(b"not read: the options are checked first")
    for target in ([str(image)], [str(tmp_path)]):  # one image, and a batch
        out = tmp_path / ("x.csv" if target[0] == str(image) else "batch_out")
        assert main(["segment", *target, "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("napari-ftu: error:") and problem in err[0], err
        assert not out.exists()


@pytest.mark.parametrize("argv, problem", [
    (["train", "--synthetic", "1", "--steps", "0"], "--steps"), (["train", "--synthetic", "1", "--lr", "nan"], "--lr"),
    (["train", "--synthetic", "1", "--batch-size", "-2"], "--batch-size"),
    (["export", "labels.tif", "--out", "x.csv", "--tile", "3"], "--tile"),
    (["export", "labels.tif", "--out", "x.csv", "--negative-fraction", "2"], "--negative-fraction"),
])
def test_cli_refuses_bad_training_and_export_numbers(tmp_path, capsys, monkeypatch, argv, problem):
    from napari_ftu.cli import main

    monkeypatch.chdir(tmp_path)
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "model")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("napari-ftu: error:") and problem in err[0], err
    assert not (tmp_path / "model").exists() and not (tmp_path / "x.csv").exists()


def _tiff_with_metadata(path, **kwargs):
    import tifffile

    from napari_ftu.io.synthetic import make_slide

    rgb, _, _ = make_slide(384, 384, seed=7, um_per_px=2.0)
    tifffile.imwrite(path, rgb, photometric="rgb", **kwargs)
    return path


@pytest.mark.parametrize("kind", ["ome-negative", "ome-nan", "aperio-zero"])
def test_invalid_pixel_size_in_the_file_is_refused_naming_the_file(tmp_path, capsys, kind):
    from napari_ftu.cli import main
    from napari_ftu.io.images import read_image
    from napari_ftu.io.slides import open_slide

    if kind.startswith("ome"):
        value = -1.0 if kind == "ome-negative" else "NaN"
        path = _tiff_with_metadata(tmp_path / "bad.ome.tif", metadata={"axes": "YXS", "PhysicalSizeX": value,
                                                                        "PhysicalSizeY": 1.0})
    else:
        path = _tiff_with_metadata(tmp_path / "bad.svs", description="Aperio Image Library v12\n384x384 |MPP = 0")
    for read in (open_slide, read_image):
        with pytest.raises(InputError, match=r"bad\.(ome\.tif|svs).*pixel size"):
            read(path)
    out = tmp_path / "x.csv"
    assert main(["segment", str(path), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad." in err[0] and "--um-per-px" in err[0] and not out.exists()
    # the user knows better: the file's value is not consulted
    assert open_slide(path, um_per_px=2.0).um_per_px == 2.0
    assert main(["segment", str(path), "--out", str(out), "--device", "cpu", "--um-per-px", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["um_per_px"] == 2.0


def test_cli_opens_the_slide_lazily_and_matches_the_engine(tmp_path, capsys, monkeypatch, default_model):
    """``segment IMAGE`` never decodes the slide with ``read_image``; its RLE is the engine's."""
    from napari_ftu.cli import main
    from napari_ftu.engine.inference import segment
    from napari_ftu.formats.export import import_annotations
    from napari_ftu.io import images
    from napari_ftu.io.synthetic import make_slide, write_slide

    paths = write_slide(tmp_path / "kidney", 700, 600, seed=313, um_per_px=1.0)
    rgb, _, _ = make_slide(700, 600, seed=313, um_per_px=1.0)

    def refuse(*args, **kwargs):
        raise AssertionError("read_image decodes whole slides; segment must open them lazily")

    monkeypatch.setattr(images, "read_image", refuse)
    out = tmp_path / "x.csv"
    assert main(["segment", str(paths["image"]), "--out", str(out), "--device", "cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    (written,) = import_annotations(out, "hubmap", (700, 600))
    ref = segment(rgb, default_model, um_per_px=1.0)
    assert summary["n_objects"] == len(ref.objects) > 0
    assert written.labels.shape == (700, 600)
    np.testing.assert_array_equal(written.labels > 0, ref.labels > 0)


def test_cli_streams_a_large_slide_through_a_temporary_store(tmp_path, capsys, monkeypatch, default_model):
    """Above the size rule the outputs stay on the model grid in a zarr store, deleted after."""
    import tempfile

    from napari_ftu.cli import main
    from napari_ftu.engine import options
    from napari_ftu.engine.inference import segment
    from napari_ftu.io.images import read_image
    from napari_ftu.io.synthetic import write_slide

    paths = write_slide(tmp_path / "kidney", 700, 600, seed=313, um_per_px=1.0)
    monkeypatch.setattr(options, "STORE_ABOVE_PIXELS", 0)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out, labels = tmp_path / "x.csv", tmp_path / "labels.tif"
    assert main(["segment", str(paths["image"]), "--out", str(out), "--labels", str(labels), "--device", "cpu",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labels_downsample"] == 2.0 and summary["um_per_px"] == 2.0
    assert list(scratch.iterdir()) == []  # the temporary store is gone
    grid = read_image(labels)
    ref = segment(read_image(paths["image"]).data, default_model, um_per_px=1.0, full_resolution=False)
    assert grid.data.shape == (350, 300) and grid.um_per_px == pytest.approx(2.0)
    np.testing.assert_array_equal(grid.data > 0, ref.labels > 0)


# --- the dock ----------------------------------------------------------------------------------


def test_segment_dock_spin_boxes_hold_only_valid_values(make_napari_viewer):
    from napari_ftu.models.card import MAX_TILE_SIZE

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    assert (widget.tile.min, widget.tile.max, widget.batch.min, widget.overlap.min) == (0, MAX_TILE_SIZE, 1, -1)
    widget.tile.value = 5
    assert widget.tile.value == 32  # 0 (the card's) or a tile the engine can run
    widget.tile.value = 128
    assert widget.overlap.max == 127  # the overlap stays below the tile
    with pytest.raises(ValueError):
        widget.overlap.value = 128
    widget.tile.value = 0
    assert widget.overlap.max == MAX_TILE_SIZE - 1
    widget.overlap.value = 40
    options = widget.options()
    assert options.tile_size is None and options.overlap == 40 and options.threshold == widget.threshold.value
    assert options.resolve(ModelCard(tile_size=256)).tile_size == 256


def test_segment_dock_refuses_an_invalid_layer_pixel_size(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="kidney", metadata={"um_per_px": -1.0})
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    widget.device.value = "cpu"
    widget.image.value = viewer.layers["kidney"]
    assert widget.run() is None and widget.worker is None
    assert "µm/px" in widget.status.value and "kidney" in widget.status.value
