"""The Measurements dock in a real viewer: one point per object, a click selects and centres the
object (the Review dock follows), a drag narrows the review queue, edits update the plot and the
layer's features."""

import numpy as np
import pytest
from skimage.draw import disk
from skimage.measure import regionprops

napari = pytest.importorskip("napari")


def _scene():
    lab = np.zeros((300, 300), np.int32)
    lab[20:60, 20:60] = 1
    lab[disk((150, 80), 30, shape=lab.shape)] = 2
    lab[230:270, 190:250] = 3
    lab[230:236, 30:36] = 4
    lab[disk((60, 220), 40, shape=lab.shape)] = 5
    return lab


@pytest.fixture
def docks(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FTU_SESSIONS", str(tmp_path / "sessions"))
    viewer = make_napari_viewer()
    rgb = np.full((300, 300, 3), 230, np.uint8)
    rgb[_scene() > 0] = (120, 60, 160)  # stained objects on pale glass
    viewer.add_image(rgb, name="kidney", scale=(0.5, 0.5), metadata={"um_per_px": 0.5})
    viewer.add_labels(_scene(), name="kidney FTUs", scale=(0.5, 0.5), metadata={"um_per_px": 0.5, "source": "kidney"})
    _, review = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
    _, measure = viewer.window.add_plugin_dock_widget("napari-ftu", "Measure")
    return viewer, review, measure


def _press(canvas, x, y, kind="button_press_event"):
    from matplotlib.backend_bases import MouseEvent

    MouseEvent(kind, canvas, x, y, button=1)._process()


def _display(w, k):
    """Display coordinates of the k-th point of the scatter."""
    canvas = w.canvas
    canvas.draw()
    ax = w.figure.axes[0]
    return ax.transData.transform(w._points.get_offsets()[k])


def test_one_point_per_object_and_features_equal_regionprops(docks):
    viewer, review, w = docks
    layer = viewer.layers["kidney FTUs"]
    assert len(w._points.get_offsets()) == 5
    assert (w.x.value, w.y.value) == ("area_um2", "circularity")
    props = regionprops(_scene())
    assert list(layer.features["index"]) == [p.label for p in props]
    assert np.allclose(layer.features["area_um2"], [p.area * 0.25 for p in props])
    assert np.allclose(layer.features["perimeter_um"], [p.perimeter * 0.5 for p in props])
    assert list(layer.features["status"]) == ["unreviewed"] * 5
    assert float(layer.features["hematoxylin_mean"][0]) > 0.02  # stained, not glass
    assert np.allclose(w._points.get_offsets()[:, 0], layer.features["area_um2"])


def test_a_click_selects_and_centres_the_object(docks, qtbot):
    viewer, review, w = docks
    layer = viewer.layers["kidney FTUs"]
    x, y = _display(w, 2)  # object 3
    _press(w.canvas, x, y)
    assert layer.selected_label == 3
    assert review.selected_ids() == [3]
    centre = layer.data_to_world(regionprops(_scene())[2].centroid)
    assert np.allclose(viewer.scene.camera.center[-2:], centre, atol=0.5)


def test_a_drag_narrows_the_review_queue_and_clearing_restores_it(docks):
    viewer, review, w = docks
    assert review.table.rowCount() == 5
    w.canvas.draw()
    ax = w.figure.axes[0]
    areas = w._points.get_offsets()[:, 0]
    big = np.sort(areas)[-3:]  # the three largest objects
    (x0, y0), (x1, y1) = ax.transData.transform([(big[0], ax.get_ylim()[0]), (big[-1], ax.get_ylim()[1])])
    x0, x1, y0, y1 = x0 - 3, x1 + 3, y0 + 1, y1 - 1  # 3 screen pixels around the points, inside the axes
    _press(w.canvas, x0, y0)
    _press(w.canvas, (x0 + x1) / 2, (y0 + y1) / 2, "motion_notify_event")
    _press(w.canvas, x1, y1, "motion_notify_event")  # the selector takes its extent from motion
    _press(w.canvas, x1, y1, "button_release_event")
    want = {r["id"] for r in w.rows if r["area_um2"] >= big[0]}
    assert w.selection == want and len(want) == 3
    assert {int(review.table.item(i, 0).text()) for i in range(review.table.rowCount())} == want
    w.clear_button.clicked()
    assert review.table.rowCount() == 5 and w.state.queue_ids is None


def test_histogram_range_selects_by_size(docks):
    viewer, review, w = docks
    w.kind.value = "histogram"
    w._on_span(0, 500)  # µm²: objects 1 (400) and 4 (9)
    assert w.selection == {1, 4}
    assert review.table.rowCount() == 2


def test_an_edit_updates_plot_and_features(docks, qtbot):
    viewer, review, w = docks
    layer = viewer.layers["kidney FTUs"]
    review.select([4], focus=False)
    review.delete()
    qtbot.waitUntil(lambda: len(w.rows) == 4, timeout=3000)
    assert len(w._points.get_offsets()) == 4 and 4 not in list(layer.features["index"])
    review.select([1], focus=False)
    review.accept()
    qtbot.waitUntil(lambda: next(r for r in w.rows if r["id"] == 1)["status"] == "accepted", timeout=3000)
    assert layer.features["status"][0] == "accepted"


def test_a_large_layer_is_measured_in_a_worker(docks, qtbot):
    viewer, review, w = docks
    layer = viewer.layers["kidney FTUs"]
    layer.features = {}
    w.measure(background=True)
    assert w.worker is not None and w.status.value == "measuring …"
    qtbot.waitUntil(lambda: w.worker is None, timeout=10000)
    assert len(w.rows) == 5 and len(w._points.get_offsets()) == 5
    assert np.allclose(layer.features["area_um2"], [p.area * 0.25 for p in regionprops(_scene())])
