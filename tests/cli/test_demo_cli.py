import csv
import json

import numpy as np
import pytest

from napari_ftu.cli import main
from napari_ftu.formats import rle
from napari_ftu.io.images import read_image, write_tiff


def test_headless_demo_json(tmp_path, capsys):
    assert main(["demo", "--headless", "--json", "--size", "1024", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"dice", "n_objects", "seconds", "device", "outputs"} <= set(result)
    assert result["dice"] >= 0.85
    assert result["n_objects"] > 0 and result["device"] == "cpu"
    for path in result["outputs"]:
        assert (tmp_path / path.split("/")[-1]).is_file()
    with open(tmp_path / "prediction_rle.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    labels = read_image(tmp_path / "prediction_labels.tif").data
    np.testing.assert_array_equal(rle.decode(row["rle"], labels.shape), labels > 0)


def test_segment_command(tmp_path, small_slide, capsys):
    rgb, truth, spec = small_slide
    image = write_tiff(tmp_path / "kidney_a.tif", rgb, spec.um_per_px)
    out = tmp_path / "pred.csv"
    assert main(["segment", str(image), "--out", str(out), "--labels", str(tmp_path / "l.tif"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["id"] == "kidney_a" and summary["um_per_px"] == pytest.approx(1.0)
    with open(out, newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    mask = rle.decode(row["rle"], truth.shape)
    from napari_ftu.evaluation.metrics import dice

    assert dice(mask, truth) >= 0.85


def test_segment_writes_the_probability_map_on_the_model_grid(tmp_path, small_slide, capsys, default_model):
    import tifffile

    from napari_ftu.engine.inference import segment

    rgb, truth, spec = small_slide  # 768 px at 1 µm/px: the model grid is 384 px at 2 µm/px
    image = write_tiff(tmp_path / "kidney_p.tif", rgb, spec.um_per_px)
    prob_path = tmp_path / "prob.tif"
    assert main(["segment", str(image), "--out", str(tmp_path / "p.csv"), "--probability", str(prob_path),
                 "--device", "cpu", "--json"]) == 0
    assert str(prob_path) in json.loads(capsys.readouterr().out)["outputs"]
    prob = tifffile.imread(prob_path)
    assert prob.dtype == np.float32 and prob.shape == (384, 384) and 0 <= prob.min() and prob.max() <= 1
    assert read_image(prob_path).um_per_px == pytest.approx(2.0)
    direct = segment(rgb, default_model, um_per_px=1.0, full_resolution=False).probability
    np.testing.assert_allclose(prob, direct, atol=1e-4)  # the CLI ran ONNX Runtime: torch's within 1e-4
    assert not list(tmp_path.glob(".*part*"))  # written atomically: no temporary left

    before = image.read_bytes()  # an output that is the input is refused, even with --overwrite
    assert main(["segment", str(image), "--out", str(tmp_path / "q.csv"), "--probability", str(image),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-ftu: error:") and "is the input" in err
    assert image.read_bytes() == before and not (tmp_path / "q.csv").exists()


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    assert main(["segment", str(bad), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-ftu: error:") and "broken.tif" in err and "\n" not in err
    assert main(["segment", str(tmp_path / "none.png"), "--out", "x.csv"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_export_command_refuses_to_overwrite(tmp_path, small_slide, capsys):
    rgb, truth, spec = small_slide
    labels = write_tiff(tmp_path / "truth.tif", truth, 1.0)
    image = write_tiff(tmp_path / "kid.tif", rgb, 1.0)
    out = tmp_path / "gt.csv"
    assert main(["export", str(labels), "--image", str(image), "--out", str(out), "--tiles", str(tmp_path / "t"),
                 "--tile", "256"]) == 0
    before = out.read_text()
    assert main(["export", str(labels), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == before
    with open(tmp_path / "t" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(int(r["n_objects"]) >= 0 for r in rows)


def test_train_command_on_exported_tiles(tmp_path, small_slide, capsys):
    from napari_ftu.models.loading import load_model
    from napari_ftu.training.tiles import export_tiles

    rgb, labels, _ = small_slide
    export_tiles(rgb, labels, tmp_path / "tiles", "s", tile=256, negative_fraction=0.3)
    out = tmp_path / "model"
    assert main(["train", "--tiles", str(tmp_path / "tiles"), "--val-tiles", str(tmp_path / "tiles"), "--out", str(out),
                 "--steps", "3", "--batch-size", "2", "--crop", "128", "--val-every", "3", "--um-per-px", "1.0",
                 "--device", "cpu"]) == 0
    assert "best validation Dice" in capsys.readouterr().out
    model = load_model(out, device="cpu")
    assert model.card.um_per_px == 1.0 and model.card.notes["training"]["steps"] == 3


def test_gui_demo_runs_and_saves_a_screenshot(tmp_path):
    """The README's main command with a window (under Xvfb), closed after its screenshot."""
    import subprocess
    import sys

    import imageio.v3 as iio

    shot = tmp_path / "demo.png"
    out = subprocess.run([sys.executable, "-m", "napari_ftu.cli", "demo", "--size", "512", "--device", "cpu",
                          "--screenshot", str(shot)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    image = iio.imread(shot)
    assert image.shape[0] > 400 and image.shape[1] > 600


def test_export_command_converts_between_formats(tmp_path, small_slide):
    from napari_ftu.formats.export import import_annotations

    rgb, truth, _ = small_slide
    labels = write_tiff(tmp_path / "truth.tif", truth, 1.0)
    image = write_tiff(tmp_path / "kid.tif", rgb, 1.0)
    geo = tmp_path / "kid.geojson"
    assert main(["export", str(labels), "--image", str(image), "--out", str(geo), "--class", "glomerulus"]) == 0
    coco = tmp_path / "kid.json"
    assert main(["export", str(geo), "--from", "geojson", "--image", str(image), "--out", str(coco)]) == 0
    ome = tmp_path / "kid.ome.tif"
    assert main(["export", str(coco), "--from", "coco", "--out", str(ome)]) == 0
    (back,) = import_annotations(ome, "ome-tiff")
    np.testing.assert_array_equal(back.labels, truth)
    (via_coco,) = import_annotations(coco, "coco")
    assert set(map(tuple, via_coco.classes.values())) == {("glomerulus",)}
    assert main(["export", str(labels), "--out", str(tmp_path / "x.txt")]) == 2
