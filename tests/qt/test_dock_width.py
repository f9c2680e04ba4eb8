"""The Segment dock keeps to a napari dock's width (350-450 px) on a 1500-px window: long text
(the model's "trained on" paragraph, errors naming files, model paths) wraps or elides instead
of widening the dock over the canvas. The screenshot is saved to the test's temporary folder for a look.
Every dock names its fields."""

from __future__ import annotations

from pathlib import Path

from napari_ftu._qt.segment import SegmentWidget

MAX_DOCK_WIDTH = 450


def test_segment_dock_keeps_a_dock_width(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    widget = SegmentWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, area="right", name="Segment")
    window = viewer.window._qt_window
    window.resize(1500, 900)
    long_path = "/data/projects/" + "very_long_folder_name/" * 6 + "a_model_trained_on_everything"
    widget.status.value = f"Error: {long_path}/weights.safetensors: not a model folder (no model_card.json in it)"
    widget._paths[long_path] = Path(long_path)
    widget.model.reset_choices()
    widget.model.value = long_path  # its card cannot be read: the status says so, naming the path
    widget.domain.value = ("trained on: kidney, liver, spleen, lung, prostate, large intestine; H&E, PAS, Jones "
                           "silver, "
                           "trichrome; 0.25–4 µm/px; HuBMAP 2021 and 2022, Sarder frozen biopsies, CCF tiles. "
                           "A long note on the domain that goes on and on about stains and scanners. " * 3)
    qtbot.waitUntil(lambda: window.width() >= 1400, timeout=5000)
    qtbot.wait(300)
    path = tmp_path / "segment_dock_width.png"
    viewer.screenshot(str(path), canvas_only=False)
    assert path.is_file()
    assert window.width() >= 1400, window.width()
    assert dock.width() <= MAX_DOCK_WIDTH, f"the Segment dock is {dock.width()} px wide on a {window.width()}-px window"
    assert widget.native.width() <= MAX_DOCK_WIDTH


def test_segment_dock_says_when_it_assumes_the_pixel_size(make_napari_viewer, qtbot):
    from napari_ftu.io.synthetic import make_slide

    viewer = make_napari_viewer()
    rgb, _, _ = make_slide(256, 256, seed=1, um_per_px=2.0)
    viewer.add_image(rgb, name="kidney")  # no µm/px in its metadata
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    assert widget.scale_note.native.isHidden()
    worker = widget.run()
    assert not widget.scale_note.native.isHidden() and widget.scale_note.value == (
        "kidney has no pixel size; assumed 2 µm/px (the model's); set µm/px in the Load dock")
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    viewer.layers["kidney"].metadata["um_per_px"] = 2.0  # given: nothing to say
    worker = widget.run()
    assert widget.scale_note.native.isHidden() and widget.scale_note.value == ""
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass


def test_annotate_and_train_docks_say_when_they_assume_the_pixel_size(make_napari_viewer, qtbot, tmp_path):
    from napari_ftu._qt.annotate import AnnotateWidget
    from napari_ftu._qt.train import SOURCES, TrainWidget
    from napari_ftu.io.synthetic import make_slide

    viewer = make_napari_viewer()
    rgb, truth, _ = make_slide(192, 192, seed=2, um_per_px=2.0)
    viewer.add_image(rgb, name="patch")  # no µm/px in its metadata
    labels = viewer.add_labels(truth, name="patch labels")
    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(annotate)
    annotate.image.value = viewer.layers["patch"]
    assert annotate.scale_note.value == "patch has no pixel size; assumed 1 µm/px (this dock's); set µm/px above"
    viewer.add_image(rgb, name="known", metadata={"um_per_px": 2.0})
    annotate.reset_choices()
    annotate.image.value = viewer.layers["known"]
    assert annotate.scale_note.value == "" and annotate.um_per_px.value == 2.0
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.source.value = SOURCES[1]
    train.reset_choices()
    train.image.value, train.labels_layer.value = viewer.layers["patch"], labels
    train.steps.value, train.minutes.value = 1, 0
    train.out.value = str(tmp_path / "m")
    worker = train.run()
    assert worker is not None
    assert train.scale_note.value == ("patch has no pixel size; assumed 2 µm/px (the model's); set µm/px in the "
                                      "Load dock")
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass


def test_every_dock_names_its_fields_in_a_viewer_without_layers(make_napari_viewer):
    """A dock attribute must not shadow magicgui's ``Container.labels`` (the switch for field
    names): a Labels-layer chooser stored there hid every name when the viewer had no Labels layer."""
    from magicgui.widgets import Container

    def fields(container):
        assert isinstance(container.labels, bool), f"{container!r}: labels is {container.labels!r}"
        for w in container:
            if isinstance(w, Container):
                yield from fields(w)
            elif w._labeled_widget() is not None:
                yield w

    viewer = make_napari_viewer()
    for name in ("Load", "Segment", "Export", "Train", "Debug", "Review", "Annotate", "Measure"):
        _, dock = viewer.window.add_plugin_dock_widget("napari-ftu", name)
        assert list(fields(dock)), f"the {name} dock shows its fields without their names"
