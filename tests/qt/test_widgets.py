"""The docks, opened through the installed manifest in a real viewer (pytest-qt under Xvfb)."""

import threading

import numpy as np
import pytest

from napari_ftu.evaluation.metrics import dice
from napari_ftu.io.images import write_tiff
from napari_ftu.steps import TileProgress, TrainStep
from napari_ftu.training.data import FINE_TUNE_LR, LR

napari = pytest.importorskip("napari")


def _segment_dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    widget.device.value = "cpu"
    widget.image.value = viewer.layers["kidney"]
    return widget


def test_segment_dock_runs_in_worker(viewer_with_slide, qtbot):
    import time

    from qtpy.QtCore import QTimer

    viewer, truth = viewer_with_slide
    widget = _segment_dock(viewer)
    widget._load()  # model loading is not part of the run's responsiveness
    ticks = []
    probe = QTimer()
    probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
    probe.start(10)
    worker = widget.run()
    assert worker is not None and not widget.run_button.enabled
    tiles = []
    worker.yielded.connect(lambda ev: isinstance(ev, TileProgress) and tiles.append(time.perf_counter()))
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    # First run: napari creates the result layers (its own cost, 75-330 ms on this 2-core machine
    # with software OpenGL); while the tiles are computed the loop stays free.
    during = [t for t in ticks if tiles[0] <= t <= tiles[-1]]
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert len(during) > 5
    print(f"first run, while tiles are computed: {len(during)} ticks, longest gap {max(gaps) * 1000:.0f} ms")
    assert max(gaps) < 0.1
    # A second run reuses the layers: from pressing Run to the result shown, no stall a user would
    # notice. Swapping the reused layers' data costs napari 50-76 ms here, while the worker's torch
    # threads hold both cores; a clean CI clone once measured 103 ms. So the limit is 150 ms: a
    # loop blocked by the run (0.5 s here) is still caught.
    ticks.clear()
    started = time.perf_counter()
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    qtbot.wait(200)
    probe.stop()
    during = [started] + [t for t in ticks if t >= started]
    gaps = [b - a for a, b in zip(during, during[1:])]
    print(f"second run, press to result: {len(during)} ticks, longest gap {max(gaps) * 1000:.0f} ms")
    assert max(gaps) < 0.15
    assert [lyr.name for lyr in viewer.layers].count("kidney FTUs") == 1
    labels = viewer.layers["kidney FTUs"]
    assert isinstance(labels, napari.layers.Labels)
    assert dice(labels.data, truth) >= 0.85
    assert "kidney probability" in viewer.layers
    assert "cpu" in widget.status.value and "FTUs" in widget.status.value
    assert widget.bar.value == widget.bar.max
    assert len(labels.features) == labels.data.max()


def test_cancel_stops_the_run(make_napari_viewer, qtbot):
    from napari_ftu.io.synthetic import make_slide

    viewer = make_napari_viewer()
    rgb, _, _ = make_slide(2048, 2048, seed=1, um_per_px=2.0)  # 64 tiles at the model's scale
    viewer.add_image(rgb, name="kidney", metadata={"um_per_px": 2.0})
    widget = _segment_dock(viewer)
    worker = widget.run()
    worker.yielded.connect(lambda ev: isinstance(ev, TileProgress) and ev.done >= 4 and widget.cancel())
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert widget.status.value == "cancelled"
    assert not [t for t in threading.enumerate() if t.name == "napari-ftu tile reader"]
    assert widget.bar.value < widget.bar.max
    assert "kidney FTUs" not in viewer.layers
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_bad_model_is_reported(viewer_with_slide, tmp_path):
    viewer, _ = viewer_with_slide
    widget = _segment_dock(viewer)
    folder = tmp_path / ("a long folder name " * 8)
    folder.mkdir()
    widget.add_model(folder)  # a folder without a model card
    assert widget.run() is None
    assert widget.status.value.startswith("Error:") and "model_card.json" in widget.status.value
    # the message wraps onto more lines: the dock does not widen over the canvas
    assert len(widget.status.value) > 200 and widget.status.native.minimumSizeHint().width() < 400

def test_segment_dock_runs_torchscript_only_when_trusted(viewer_with_slide, evil_model):
    """The "Trust model code" box is off by default; a TorchScript model is refused (its code
    never runs) until the user ticks it (issue 15)."""
    viewer, _ = viewer_with_slide
    widget = _segment_dock(viewer)
    assert widget.trust.value is False and "TorchScript runs its own code" in widget.trust.text
    folder, victim = evil_model
    widget.add_model(folder)
    assert widget.run() is None
    assert widget.status.value.startswith("Error:") and "Trust model code" in widget.status.value
    assert victim.read_bytes() == b"precious"
    widget.trust.value = True
    assert widget._load().card.name == "evil" and victim.read_bytes() == b"!!!!!!!!"
    widget.trust.value = False  # unticking forgets the loaded model: refused again
    with pytest.raises(Exception, match="--trust-model"):
        widget._load()


def test_segment_dock_shows_what_the_model_was_trained_on(viewer_with_slide, tmp_path):
    import json
    import shutil

    from napari_ftu._qt.segment import DEFAULT_MODEL, SYNTHETIC_MODEL
    from napari_ftu.models.card import CARD_NAME, ModelCard
    from napari_ftu.models.loading import default_model_path

    viewer, _ = viewer_with_slide
    widget = _segment_dock(viewer)  # the synthetic slide names the synthetic demo model
    assert widget.model.value == SYNTHETIC_MODEL
    assert "synthetic" in widget.domain.value and "demo" in widget.domain.value
    widget.model.value = DEFAULT_MODEL
    assert "kidney; PAS" in widget.domain.value
    viewer.add_image(viewer.layers["kidney"].data, name="real")  # an image naming no model keeps the choice
    widget.image.value = viewer.layers["real"]
    assert widget.model.value == DEFAULT_MODEL
    folder = tmp_path / "pas_kidney"
    shutil.copytree(default_model_path(), folder)
    card = ModelCard.read(folder / CARD_NAME)
    card.trained_on = {"organs": ["kidney"], "stain": "PAS", "source": "HuBMAP 2021", "um_per_px": [0.5, 0.5]}
    (folder / CARD_NAME).write_text(card.to_json())
    widget.add_model(folder)
    assert widget.domain.value == "trained on: kidney; PAS; 0.5 µm/px; HuBMAP 2021"
    old = json.loads(card.to_json())
    del old["trained_on"]  # a card written before the field existed still loads
    shutil.copytree(default_model_path(), tmp_path / "old_card")
    (tmp_path / "old_card" / CARD_NAME).write_text(json.dumps(old))
    widget.add_model(tmp_path / "old_card")
    assert widget.domain.value == "trained on: not stated in the model card"
    widget.add_model(tmp_path)  # a folder without a card: the error, and no stale domain
    assert widget.domain.value.startswith("trained on: (model not loaded)")


def test_load_dock_applies_pixel_size_and_reports_bad_files(make_napari_viewer, tmp_path, small_slide):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    rgb = small_slide[0]
    path = write_tiff(tmp_path / "slide.tif", rgb, 0.5)
    layer = widget.open(path)
    assert tuple(layer.scale) == (0.5, 0.5) and layer.metadata["um_per_px"] == 0.5
    assert "0.5 µm/px" in widget.status.value
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    assert widget.open(bad) is None
    assert "bad.png" in widget.status.value and len(viewer.layers) == 1


def test_export_dock_writes_rle_and_asks_before_overwrite(export_dock, tmp_path, monkeypatch):
    from napari_ftu.formats import rle

    viewer, truth, widget = export_dock
    assert widget.export() == tmp_path / "sub.csv"
    rid, text = (tmp_path / "sub.csv").read_text().splitlines()[1].split(",")
    assert rid == "kidney"
    np.testing.assert_array_equal(rle.decode(text, truth.shape), truth > 0)
    viewer.layers["kidney FTUs"].data = np.zeros_like(truth)
    monkeypatch.setattr(type(widget), "confirm_overwrite", lambda self, path: False)
    assert widget.export() is None
    assert (tmp_path / "sub.csv").read_text().splitlines()[1] == f"{rid},{text}"


def test_user_edits_are_exported(viewer_with_slide, tmp_path):
    """The path a user walks: segment, paint a correction, export the corrected mask."""
    from napari_ftu.engine.inference import segment
    from napari_ftu.formats import rle
    from napari_ftu.models.loading import load_model

    viewer, truth = viewer_with_slide
    seg = segment(viewer.layers["kidney"].data, load_model(None, "cpu"), um_per_px=1.0)
    layer = viewer.add_labels(seg.labels, name="kidney FTUs")
    layer.paint((10, 10), 99, refresh=True)  # napari's own brush, as a user would paint
    assert layer.data[10, 10] == 99
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Export")
    widget.labels_layer.value = layer
    widget.path.value = tmp_path / "fixed.csv"
    widget.export()
    text = (tmp_path / "fixed.csv").read_text().splitlines()[1].split(",")[1]
    np.testing.assert_array_equal(rle.decode(text, truth.shape), layer.data > 0)


def test_samples_open_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ftu", "ihc_colon")
    assert viewer.layers[-1].data.shape == (512, 512, 3)


def test_plugins_menu_lists_and_opens_the_docks(make_napari_viewer):
    viewer = make_napari_viewer()
    menu = viewer.window.plugins_menu
    ours = [a for a in menu.actions() if a.menu() is not None and "FTU segmentation" in a.text()]
    assert ours, [a.text() for a in menu.actions()]
    actions = {a.text(): a for a in ours[0].menu().actions()}
    assert {"Load", "Segment", "Export"} <= set(actions)
    actions["Segment"].trigger()
    assert any("Segment" in name for name in viewer.window.dock_widgets)


def test_added_model_survives_new_layers(viewer_with_slide, tmp_path):
    """napari resets every dock's choices when a layer is added (a run adds its results): the
    model folder the user added must stay chosen, not fall back to the built-in model."""
    import shutil

    from napari_ftu.models.loading import default_model_path

    viewer, _ = viewer_with_slide
    widget = _segment_dock(viewer)
    folder = tmp_path / "my_model"
    shutil.copytree(default_model_path(), folder)
    widget.add_model(folder)
    viewer.add_image(np.zeros((32, 32)), name="another image")
    assert widget.model.value == str(folder)
    assert str(folder) in widget.model.choices


def test_model_loads_after_the_viewer_has_opengl(tmp_path):
    """Opening the viewer first and the Segment dock second must not crash the process
    (triton's LLVM against Mesa's, see backend.import_smp)."""
    import subprocess
    import sys

    code = (
        "import napari\nfrom qtpy.QtWidgets import QApplication\n"
        "viewer = napari.Viewer(show=True)\nQApplication.processEvents()\n"
        "from napari_ftu.models.loading import load_model\nload_model(None, 'cpu')\nviewer.close()\nprint('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize("fmt", ["geojson", "coco", "ome-tiff", "vasculature"])
def test_export_dock_formats_round_trip(viewer_with_slide, tmp_path, fmt):
    from napari_ftu.formats.export import FORMATS, import_annotations

    viewer, truth = viewer_with_slide
    features = {"index": list(range(1, truth.max() + 1)), "class": ["glomerulus"] * truth.max(),
                "confidence": [0.9] * truth.max()}
    viewer.add_labels(truth, name="kidney FTUs", metadata={"source": "kidney", "um_per_px": 1.0},
                      features=features)
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Export")
    widget.labels_layer.value = viewer.layers["kidney FTUs"]
    widget.format.value = fmt
    assert str(widget.path.value).endswith(FORMATS[fmt].suffix)  # the suffix follows the format
    widget.path.value = tmp_path / f"out{FORMATS[fmt].suffix}"
    assert widget.export() is not None, widget.status.value
    (back,) = import_annotations(widget.path.value, fmt, truth.shape)
    np.testing.assert_array_equal(back.labels > 0, truth > 0)
    if FORMATS[fmt].multi_image:  # single-image files are named after their image instead
        assert back.image_id == "kidney"
    if fmt in ("geojson", "coco"):
        assert {tuple(c) for c in back.classes.values()} == {("glomerulus",)}


def test_export_dock_training_tiles(viewer_with_slide, tmp_path):
    viewer, truth = viewer_with_slide
    viewer.add_labels(truth, name="kidney FTUs")
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Export")
    widget.labels_layer.value = viewer.layers["kidney FTUs"]
    widget.image.value = viewer.layers["kidney"]
    widget.tiles_dir.value = tmp_path / "tiles"
    widget.tile.value = 256
    widget.target_um.value = 2.0
    rows = widget.export_tiles()
    assert rows and (tmp_path / "tiles" / "manifest.csv").is_file()
    assert all(r["height"] == 256 and float(r["um_per_px"]) == 2.0 for r in rows)


def test_npe2_writer_saves_labels_layer(make_napari_viewer, tmp_path, small_slide):
    from napari_ftu.formats.export import import_annotations

    viewer = make_napari_viewer()
    truth = small_slide[1]
    viewer.add_labels(truth, name="slide7 FTUs")
    paths = viewer.layers.save(str(tmp_path / "slide7.geojson"), selected=True, plugin="napari-ftu")
    assert paths == [str(tmp_path / "slide7.geojson")]
    (back,) = import_annotations(paths[0], "geojson", truth.shape)
    np.testing.assert_array_equal(back.labels, truth)


def test_load_dock_pyramid_then_segment_it(make_napari_viewer, qtbot, tmp_path):
    from napari_ftu.io.synthetic import make_slide, write_slide

    viewer = make_napari_viewer()
    paths = write_slide(tmp_path / "pyr", 1400, 1200, seed=31, um_per_px=0.5, pyramid=True)
    _, load = viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    layer = load.open(paths["image"])
    assert layer.multiscale and len(layer.data) == 2 and tuple(layer.scale) == (0.5, 0.5)
    assert "2 levels" in load.status.value
    _, seg = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    seg.device.value = "cpu"
    seg.image.value = layer
    seg.run()  # the model wants 2 µm/px: the engine reads level 1 (1 µm/px) and resamples tiles
    # the layers appear before the job has finished (and a Run meanwhile is ignored): wait for both
    qtbot.waitUntil(lambda: seg.run_button.enabled and "pyr FTUs" in viewer.layers, timeout=120_000)
    labels = viewer.layers["pyr FTUs"]
    # a pyramid streams into a zarr store on the model's grid, shown at its place on the slide
    assert labels.data.shape == (350, 300) and tuple(labels.scale) == (2.0, 2.0)
    assert seg.last_result.store is not None and (seg.last_result.store / "labels").is_dir()
    _, truth, _ = make_slide(1400, 1200, seed=31, um_per_px=0.5)
    assert dice(np.asarray(labels.data), truth[2::4, 2::4]) >= 0.85
    # a second run updates the layers in place; the first run's temporary store is then deleted
    first = seg.last_result.store
    assert seg.run() is not None
    qtbot.waitUntil(lambda: seg.run_button.enabled and seg.last_result.store != first, timeout=120_000)
    assert not first.parent.exists() and seg.last_result.store.is_dir()
    assert viewer.layers["pyr FTUs"].metadata["store"] == str(seg.last_result.store)
    assert dice(np.asarray(viewer.layers["pyr FTUs"].data), truth[2::4, 2::4]) >= 0.85


def test_load_dock_dataset_browser(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    _, load = viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    item = load.open_dataset(shared_data / "sarder_frozen_kidney_glomeruli")
    assert item is not None and "1 / 20" in load.status.value
    assert not load.prev_button.enabled and load.next_button.enabled
    names = [lyr.name for lyr in viewer.layers]
    load.next_button.changed.emit(True)
    assert "2 / 20" in load.status.value and load.prev_button.enabled
    assert len(viewer.layers) == 2 and [lyr.name for lyr in viewer.layers] != names
    assert isinstance(viewer.layers[-1], napari.layers.Labels) and "class" in viewer.layers[-1].features


def test_load_dock_adds_geojson_and_keeps_layers_on_errors(make_napari_viewer, tmp_path, small_slide):
    from napari_ftu.formats.annotations import Annotations
    from napari_ftu.formats.export import export_annotations

    viewer = make_napari_viewer()
    rgb, truth, _ = small_slide
    image = write_tiff(tmp_path / "kid.tif", rgb, 1.0)
    export_annotations(Annotations("kid", truth, default_class="glomerulus"), tmp_path / "kid.geojson", "geojson")
    _, load = viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    load.open(image)
    layer = load.add_annotations(tmp_path / "kid.geojson")
    np.testing.assert_array_equal(layer.data, truth)
    assert set(layer.features["class"]) == {"glomerulus"}
    (tmp_path / "broken.geojson").write_text('{"type": "FeatureCollection", "features": [{"geometry": 3}]}')
    before = [lyr.name for lyr in viewer.layers]
    assert load.add_annotations(tmp_path / "broken.geojson") is None
    assert "broken.geojson, feature 0" in load.status.value
    assert [lyr.name for lyr in viewer.layers] == before


def test_load_dock_writes_a_pyramid_for_a_flat_slide(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import tifffile

    import napari_ftu.io.slides as slides
    from napari_ftu.io.synthetic import make_slide

    monkeypatch.setattr(slides, "FLAT_PYRAMID_MIN", 1000)
    rgb, _, _ = make_slide(1600, 1200, seed=5)
    tifffile.imwrite(tmp_path / "flat.tif", rgb, photometric="rgb", tile=(256, 256))
    viewer = make_napari_viewer()
    _, load = viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    load.open(tmp_path / "flat.tif")
    assert load.pyramid_button.enabled and "no stored pyramid" in load.status.value
    worker = load.write_pyramid()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: "flat.pyramid" in viewer.layers, timeout=10_000)
    assert (tmp_path / "flat.pyramid.ome.tif").is_file() and viewer.layers["flat.pyramid"].multiscale
    assert load.bar.value == load.bar.max


def test_train_dock_retrains_on_corrections_and_offers_the_model(viewer_with_slide, qtbot, tmp_path):
    viewer, truth = viewer_with_slide
    viewer.add_labels(truth, name="kidney corrected")
    _, seg = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Train")
    widget.source.value = "layers in the viewer"
    widget.image.value = viewer.layers["kidney"]
    widget.labels_layer.value = viewer.layers["kidney corrected"]
    widget.steps.value, widget.batch.value, widget.crop.value = 4, 2, 128
    widget.device.value = "cpu"
    widget.out.value = tmp_path / "retrained"
    widget.start.value = "fine-tune the built-in model"
    assert widget.lr.value == FINE_TUNE_LR  # a smaller step from trained weights
    widget.start.value = "new model"
    assert widget.lr.value == LR
    worker = widget.run()
    assert worker is not None, widget.status.value
    with qtbot.waitSignal(worker.finished, timeout=180_000):
        pass
    assert len(widget.history["loss"]) == 4 and widget.history["val"]
    assert (tmp_path / "retrained" / "model.safetensors").is_file()
    assert "best validation Dice" in widget.status.value
    assert str(tmp_path / "retrained") in seg.model.choices  # offered to the Segment dock
    assert seg.model.value == str(tmp_path / "retrained") and "kidney" in seg.domain.value  # its data, in the card
    assert widget._figure.axes  # the live plot was drawn


def test_train_dock_cancel_saves_nothing(make_napari_viewer, qtbot, tmp_path, shared_data):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Train")
    widget.folder.value = shared_data / "sarder_frozen_kidney_glomeruli"
    widget.val_match.value = "O27_1[5-9]_|O27_20_"
    widget.steps.value, widget.batch.value, widget.crop.value = 200, 2, 128
    widget.device.value = "cpu"
    widget.out.value = tmp_path / "never"
    worker = widget.run()
    assert "training on 14 images, validating on 6" in widget.status.value
    worker.yielded.connect(lambda ev: isinstance(ev, TrainStep) and ev.step >= 2 and widget.cancel())
    with qtbot.waitSignal(worker.finished, timeout=180_000):
        pass
    assert widget.status.value == "cancelled; nothing saved" and not (tmp_path / "never").exists()


def test_load_dock_cancelled_pyramid_leaves_no_file(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import threading

    import tifffile

    import napari_ftu.io.slides as slides

    monkeypatch.setattr(slides, "FLAT_PYRAMID_MIN", 1000)
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((3000, 2600, 3), np.uint8), photometric="rgb", tile=(256, 256))
    viewer = make_napari_viewer()
    _, load = viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    load.open(tmp_path / "flat.tif")
    threads = threading.active_count()
    worker = load.write_pyramid()
    worker.yielded.connect(lambda ev: ev.done >= 3 and load.cancel())
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: threading.active_count() <= threads, timeout=10_000)  # writer thread gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.tif"]
    assert "cancelled" in load.status.value


def test_segment_dock_shows_rows_as_they_finish(viewer_with_slide, qtbot):
    viewer, _ = viewer_with_slide
    widget = _segment_dock(viewer)
    widget.batch.value = 1
    seen = []

    def look(event):
        live = "kidney probability (running)"
        if isinstance(event, TileProgress) and live in viewer.layers:
            seen.append((event.done, event.total, float(np.asarray(viewer.layers[live].data).max())))

    worker = widget.run()
    worker.yielded.connect(look)
    qtbot.waitUntil(lambda: widget.run_button.enabled and "kidney FTUs" in viewer.layers, timeout=120_000)
    early = [s for s in seen if s[0] < s[1]]
    assert early and early[-1][2] > 0.5  # glomeruli visible before the last tile was computed
    assert "kidney probability" in viewer.layers and "kidney probability (running)" not in viewer.layers


def test_threshold_re_derives_objects_without_running_the_model(viewer_with_slide, qtbot, monkeypatch):
    from napari_ftu.engine.postprocess import instances
    from napari_ftu.models.loading import FTUModel
    from napari_ftu.models.onnx import OnnxModel

    viewer, _ = viewer_with_slide
    widget = _segment_dock(viewer)
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.enabled and "kidney FTUs" in viewer.layers, timeout=120_000)
    seg = widget.last_result
    prob = seg.probability.copy()
    calls = []
    monkeypatch.setattr(FTUModel, "predict", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(OnnxModel, "predict", lambda *a, **k: calls.append(1))
    widget.threshold.value = 0.95
    qtbot.waitUntil(lambda: "no model run" in widget.status.value and widget.worker is None, timeout=30_000)
    labels = viewer.layers["kidney FTUs"]
    np.testing.assert_array_equal(labels.data, instances(prob, 0.95, seg.min_area_px))
    assert not calls and labels.metadata["threshold"] == 0.95
    assert len(labels.features) == labels.data.max()
    # after a hand edit, moving the threshold keeps the edit and says so
    labels.paint((5, 5), 99)
    before = labels.data.copy()
    widget.threshold.value = 0.5
    assert "your edits" in widget.status.value
    np.testing.assert_array_equal(labels.data, before)


def test_worker_error_reaches_the_user_and_the_next_run_works(viewer_with_slide, qtbot, monkeypatch):
    import torch

    from napari_ftu.models.card import ModelCard
    from napari_ftu.models.loading import FTUModel

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("weights are NaN")

    viewer, _ = viewer_with_slide
    widget = _segment_dock(viewer)
    good = widget._load()
    broken = FTUModel(Broken(), ModelCard(), "cpu")
    monkeypatch.setattr("napari_ftu._qt.segment.cached", lambda *args, **kwargs: broken)
    with qtbot.capture_exceptions() as raised:  # napari re-raises worker errors in tests
        widget.run()
        qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    assert "weights are NaN" in widget.status.value
    assert all("weights are NaN" in str(exc[1]) for exc in raised)
    assert widget.worker is None and not widget.cancel_button.enabled
    assert not [t for t in threading.enumerate() if t.name == "napari-ftu tile reader"]
    monkeypatch.setattr("napari_ftu._qt.segment.cached", lambda *args, **kwargs: good)
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.enabled and "kidney FTUs" in viewer.layers, timeout=120_000)
