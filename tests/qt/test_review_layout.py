"""The Review dock beside the Segment dock: the queue knows each object's confidence and area
in µm² whatever order the docks were opened in, and the two docks fit a laptop screen
(1080 px) together. The screenshot is saved to the test's temporary folder for a look."""

from __future__ import annotations

import math

import numpy as np
import pytest

napari = pytest.importorskip("napari")

SCREEN_HEIGHT = 1080  # a laptop screen


def _wait(qtbot, worker):
    with qtbot.waitSignal(worker.finished, timeout=180_000):
        pass


def test_review_dock_opened_before_the_run_knows_confidence_and_area(make_napari_viewer, qtbot, tmp_path,
                                                                      monkeypatch):
    from napari_ftu.io.synthetic import make_slide

    monkeypatch.setenv("NAPARI_FTU_SESSIONS", str(tmp_path / "sessions"))
    viewer = make_napari_viewer()
    rgb, _, _ = make_slide(384, 384, seed=3, um_per_px=2.0)
    viewer.add_image(rgb, name="kidney")  # no pixel size: the Segment dock assumes the model's
    _, review = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")  # before the run
    _, segment = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    um = segment._load().card.um_per_px
    _wait(qtbot, segment.run())
    layer = viewer.layers["kidney FTUs"]
    assert review.layer is layer and review.session.labels is layer.data
    rows = review.session.review.rows
    assert rows, "the run found no objects"
    feature_conf = dict(zip(layer.features["index"], layer.features["confidence"]))
    for obj, row in rows.items():
        assert not math.isnan(row.confidence) and row.confidence == pytest.approx(feature_conf[obj])
        assert row.area_um2 == pytest.approx(row.area_px * um**2)  # the pixel size the Segment dock assumed
    assert layer.metadata["um_per_px"] == um
    review.sort.value = "low confidence first"
    shown = [float(review.table.item(i, 3).text()) for i in range(review.table.rowCount())]
    assert shown == sorted(shown) and len(shown) == len(rows)
    first = rows[int(review.table.item(0, 0).text())]
    assert review.table.item(0, 2).text() == f"{first.area_px * um**2:.0f}"

    # a new threshold replaces the layer's objects (nobody edited them): the queue follows, confidences known
    before = layer.data
    segment.threshold.value = 0.3
    qtbot.waitUntil(lambda: segment.worker is None, timeout=60_000)
    assert layer.data is not before and review.session.labels is layer.data
    assert set(review.session.review.rows) == set(np.unique(layer.data)) - {0}
    assert all(not math.isnan(r.confidence) for r in review.session.review.rows.values())


def test_segment_and_review_docks_fit_a_laptop_screen(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_ftu.io.synthetic import make_slide

    monkeypatch.setenv("NAPARI_FTU_SESSIONS", str(tmp_path / "sessions"))
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1500, 950)
    rgb, truth, _ = make_slide(256, 256, seed=1, um_per_px=2.0)
    viewer.add_image(rgb, name="kidney", metadata={"um_per_px": 2.0})
    viewer.add_labels(truth, name="kidney FTUs", metadata={"um_per_px": 2.0, "source": "kidney"})
    _, review = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
    _, segment = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    qtbot.wait(300)
    path = tmp_path / "segment_and_review.png"
    viewer.screenshot(str(path), canvas_only=False)
    assert window.minimumSizeHint().height() <= SCREEN_HEIGHT, window.minimumSizeHint()
    assert window.height() <= SCREEN_HEIGHT, f"the window is {window.height()} px tall"
    review.more.expand(animate=False)  # the folded controls scroll, they do not grow the window
    qtbot.wait(100)
    assert window.minimumSizeHint().height() <= SCREEN_HEIGHT and window.height() <= SCREEN_HEIGHT
    assert review.table.isVisible() and review.accept_button.native.isVisible()


def test_review_dock_is_built_from_named_sections(make_napari_viewer, monkeypatch, tmp_path):
    from qtpy.QtWidgets import QLabel

    from napari_ftu._qt.review import SECTIONS

    monkeypatch.setenv("NAPARI_FTU_SESSIONS", str(tmp_path / "sessions"))
    viewer = make_napari_viewer()
    _, review = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
    layout = review.page.layout()
    order = [layout.itemAt(i).widget().objectName() for i in range(layout.count())]
    assert order == [f"review-{name}" for name in SECTIONS]  # learning from reviews sits between edit and more
    assert review.learning.learn_button.native.isVisibleTo(review.native)
    with pytest.raises(ValueError, match="learn"):
        review.add_section("learn", QLabel("twice"))
