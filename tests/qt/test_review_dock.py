"""The Review dock in a real viewer (pytest-qt under Xvfb): every operation through the widget,
undo/redo (buttons and Ctrl+Z across napari's painting), keys, selection, autosave, windows."""

import numpy as np
import pytest
from skimage.draw import disk

from napari_ftu.boxes import box_at

napari = pytest.importorskip("napari")
WINDOW_A, WINDOW_B = box_at(1000, 1000, 300, 300), box_at(1100, 1100, 256, 256)  # overlapping windows of a store


def _scene():
    lab = np.zeros((300, 300), np.int32)
    lab[20:60, 20:60] = 1
    lab[disk((150, 80), 30, shape=lab.shape)] = 2
    lab[disk((150, 135), 30, shape=lab.shape)] = 2  # two touching discs under one id
    lab[230:270, 200:240] = 3
    lab[230:234, 30:34] = 4  # a speck
    lab[250:256, 100:106] = 5
    lab[40:44, 40:44] = 0  # a hole in 1
    return lab


@pytest.fixture
def dock(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FTU_SESSIONS", str(tmp_path / "sessions"))
    viewer = make_napari_viewer()
    rgb = np.full((300, 300, 3), 230, np.uint8)
    viewer.add_image(rgb, name="kidney", scale=(0.5, 0.5), metadata={"um_per_px": 0.5})
    features = {"index": [1, 2, 3, 4, 5], "class": ["glomerulus"] * 5, "confidence": [0.9, 0.3, 0.6, 0.5, 0.8],
                "area_um2": [0.0] * 5}
    viewer.add_labels(_scene(), name="kidney FTUs", scale=(0.5, 0.5), features=features,
                      metadata={"um_per_px": 0.5, "source": "kidney"})
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
    return viewer, widget


def _key(viewer, key, modifier=None):
    """A real key press on the canvas, through napari's key handling."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    QTest.keyClick(canvas, key, modifier or Qt.KeyboardModifier.NoModifier)


def test_table_counts_and_selection(dock):
    viewer, w = dock
    layer = viewer.layers["kidney FTUs"]
    assert w.table.rowCount() == 5 and w.counts.value.startswith("0 / 5 reviewed")
    w.sort.value = "low confidence first"
    assert [int(w.table.item(i, 0).text()) for i in range(5)] == [2, 4, 3, 5, 1]
    assert w.table.item(0, 3).text() == "0.30" and w.table.item(0, 4).text() == "unreviewed"
    w.table.selectRow(2)  # object 3, as a user clicks a row
    assert layer.selected_label == 3
    centre = layer.data_to_world(w.session.review.rows[3].centroid)
    assert np.allclose(viewer.scene.camera.center[-2:], centre, atol=0.5)
    assert viewer.scene.camera.zoom > 1  # zoomed in on a 20 µm object
    layer.selected_label = 5  # clicking an object (picker) selects its row
    assert w.selected_ids() == [5]
    w.status_filter.value = "accepted"
    assert w.table.rowCount() == 0


def test_every_operation_and_its_undo_through_the_widget(dock):
    viewer, w = dock
    layer = viewer.layers["kidney FTUs"]
    states = [layer.data.copy()]

    def did(check):
        assert check(layer.data), "operation did not do what it should"
        states.append(layer.data.copy())

    w.select([1])
    w.fill_holes()
    did(lambda d: (d[40:44, 40:44] == 1).all())
    w.select([3])
    w.grow(1)
    did(lambda d: (d == 3).sum() > 1600)
    w.select([3])
    w.grow(-1)
    did(lambda d: (d == 3).sum() == 1600)
    w.select([1, 3])
    w.merge()
    did(lambda d: not (d == 3).any() and (d[250, 220] == 1))
    w.min_area.value = 5.0  # µm² = 20 px at 0.5 µm/px: removes the 16 px speck, keeps the 36 px one
    w.remove_small()
    did(lambda d: not (d == 4).any() and (d == 5).any())
    w._helper("points", "FTU seeds", "add").data = np.array([[150, 70], [150, 145]])  # same frame as the labels
    w.split_watershed()
    did(lambda d: len(set(np.unique(d[150, 60:160])) - {0}) == 2)
    nxt = w.session.next_free_id()
    cut = w._helper("shapes", "FTU cut", "add_line")
    cut.add_lines(np.array([[10, 40], [70, 40]]))
    w.select([1])
    w.split_by_line()
    did(lambda d: (d == nxt).sum() > 100)
    w.select([2])
    w.delete()
    did(lambda d: not (d == 2).any())
    w.relabel()
    did(lambda d: set(np.unique(d)) == set(range(int(d.max()) + 1)))
    new = w.new_object("polygon")
    assert layer.mode == "polygon" and new == w.session.next_free_id()
    layer.paint_polygon(np.array([[280, 280], [280, 295], [295, 295], [295, 280]]), new)  # napari's polygon tool
    did(lambda d: (d == new).sum() > 100 and new in w.session.review.rows)
    layer.mode = "pan_zoom"
    assert len(w.session.history) == len(states) - 1 == 10
    for k in range(len(states) - 1, 0, -1):  # undo everything, napari's painting included
        w.undo()
        assert (layer.data == states[k - 1]).all(), f"undo of step {k} is wrong"
    assert not w.undo_button.enabled
    for k in range(1, len(states)):
        w.redo()
        assert (layer.data == states[k]).all()
    assert w.session.review.rows[new].status == "edited"


def test_ctrl_z_undoes_our_edits_and_napari_painting_in_order(dock, qtbot):
    from qtpy.QtCore import Qt

    viewer, w = dock
    layer = viewer.layers["kidney FTUs"]
    viewer.layers.selection.active = layer
    original = layer.data.copy()
    w.select([3])
    w.delete()
    after_delete = layer.data.copy()
    layer.selected_label = 9
    layer.brush_size = 10
    layer.paint((100, 250), 9)
    assert (layer.data == 9).any()
    ctrl = Qt.KeyboardModifier.ControlModifier
    _key(viewer, Qt.Key.Key_Z, ctrl)
    assert (layer.data == after_delete).all()  # the paint went first
    _key(viewer, Qt.Key.Key_Z, ctrl)
    assert (layer.data == original).all()
    _key(viewer, Qt.Key.Key_Z, ctrl | Qt.KeyboardModifier.ShiftModifier)
    assert (layer.data == after_delete).all()


def test_review_keys_accept_reject_next(dock):
    from qtpy.QtCore import Qt

    viewer, w = dock
    layer = viewer.layers["kidney FTUs"]
    viewer.layers.selection.active = layer
    w.sort.value = "low confidence first"
    _key(viewer, Qt.Key.Key_N)
    assert w.selected_ids() == [2]
    _key(viewer, Qt.Key.Key_A)  # accept, then the next unreviewed
    assert w.session.review.rows[2].status == "accepted" and w.selected_ids() == [4]
    _key(viewer, Qt.Key.Key_R)  # reject removes the object
    assert w.session.review.rows[4].status == "rejected" and not (layer.data == 4).any()
    w.cls.value = "vessel"
    _key(viewer, Qt.Key.Key_C)
    assert w.session.review.rows[3].cls == "vessel"
    assert w.counts.value.startswith("2 / 5 reviewed")
    assert w.table.rowCount() == 5  # the rejected row stays in the table
    colours = layer.colormap.color_dict
    assert np.allclose(colours[2][:3], np.array([0x33, 0xD1, 0x7A]) / 255)  # accepted objects are green


def test_autosave_restores_edits_and_statuses_on_reopen(make_napari_viewer, tmp_path, qtbot, monkeypatch):
    from napari_ftu.io.images import write_tiff
    from napari_ftu.review.autosave import DEFAULT_INTERVAL_S

    monkeypatch.setenv("NAPARI_FTU_SESSIONS", str(tmp_path / "unused"))
    slide = tmp_path / "slide.tif"
    write_tiff(slide, np.full((300, 300, 3), 200, np.uint8))

    def open_viewer():
        viewer = make_napari_viewer()
        viewer.add_image(np.full((300, 300, 3), 200, np.uint8), name="slide", metadata={"path": str(slide)})
        viewer.add_labels(_scene(), name="slide FTUs", metadata={"source": "slide"})
        _, w = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
        return viewer, w

    viewer, w = open_viewer()
    assert w.interval.value == DEFAULT_INTERVAL_S <= 30
    w.interval.value = 1
    w.select([2])
    w.accept()
    w.select([3])
    w.delete()
    edited = viewer.layers["slide FTUs"].data.copy()
    store = tmp_path / "slide.tif.ftu" / "slide_FTUs.session.npz"  # the sidecar beside the slide
    qtbot.waitUntil(store.exists, timeout=5000)  # the timer saved it, nobody asked
    viewer.close()

    viewer2, w2 = open_viewer()
    assert (viewer2.layers["slide FTUs"].data == edited).all()
    assert w2.session.review.rows[2].status == "accepted" and 3 not in w2.session.review.rows


def test_large_slide_window_edit_and_save(dock, tmp_path):
    from napari_ftu.review.label_store import LabelStore

    viewer, w = dock
    store = LabelStore.create(tmp_path / "big.zarr", (20_000, 20_000))
    win = store.read_window(box_at(15_000, 15_000, 200, 200))
    win[50:150, 50:150] = 7
    store.write_window(box_at(15_000, 15_000, 200, 200), win)
    shown = w.open_store(tmp_path / "big.zarr")
    assert shown.multiscale and len(shown.data) == len(store.levels)
    box = box_at(14_900, 14_900, 512, 512)
    layer = w.edit_window(box)
    assert layer.data.shape == (512, 512) and set(w.session.review.rows) == {7}
    assert np.allclose(layer.translate, np.asarray(shown.translate) + 14_900 * np.asarray(shown.scale))
    w.select([7])
    w.grow(1)
    assert (layer.data == 7).sum() > 100 * 100
    w.save_window()
    assert (store.read_window(box) == layer.data).all()
    lvl2 = np.asarray(store.levels[2][3725:3853, 3725:3853])
    assert (lvl2 == np.asarray(layer.data[::4, ::4])).all()  # lower levels follow the edit
    viewer.scene.camera.center = tuple(shown.data_to_world((15_100, 15_100)))  # the view decides the window
    viewer.scene.camera.zoom = 2 / abs(shown.scale[-1])  # 2 screen px per slide px
    w.window_button.native.click()  # the button's own value (False) is not taken for a box
    view = w.layer
    assert view is not layer and view.name.endswith("window")
    (y, x), (h, wd) = view.metadata["window_offset"], view.data.shape
    assert y < 15_100 < y + h and x < 15_100 < x + wd and 100 < h <= 4096 and 100 < wd <= 4096
    assert (view.data == np.asarray(store.read_window(box_at(y, x, h, wd)))).all() and 7 in view.data
    layer = view
    viewer.scene.camera.zoom = 0.01 / abs(shown.scale[-1])  # zoomed far out: the view is too big
    assert w.edit_window() is None and "at most 4096" in w.counts.value
    assert w.edit_window(box_at(0, 0, 5000, 5000)) is None  # too big a window is refused, with a message
    assert "at most 4096" in w.counts.value and w.layer is layer


def test_retrain_button_opens_the_train_dock_on_the_corrections(dock):
    viewer, w = dock
    train = w.retrain()
    assert train.source.value == "layers in the viewer"
    assert train.labels_layer.value is viewer.layers["kidney FTUs"] and train.image.value is viewer.layers["kidney"]


def test_a_mouse_click_on_an_object_selects_its_row(dock, qtbot):
    """A real left click on the canvas (pan/zoom mode) over object 3 selects its row; a click on
    the background changes nothing."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    viewer, w = dock
    viewer.window.show()  # the canvas gets mouse events only when shown
    layer = viewer.layers["kidney FTUs"]
    viewer.layers.selection.active = layer
    layer.mode = "pan_zoom"
    w.table.selectRow(0)
    assert w.selected_ids() == [1]
    viewer.scene.camera.center = tuple(layer.data_to_world((250, 220)))  # the middle of object 3
    viewer.scene.camera.zoom = 4
    canvas = viewer.window._qt_viewer.canvas.native
    middle = QPoint(canvas.width() // 2, canvas.height() // 2)
    QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, middle)
    qtbot.waitUntil(lambda: w.selected_ids() == [3], timeout=2000)
    assert layer.selected_label == 3
    rows = [i.row() for i in w.table.selectionModel().selectedRows()]
    assert [int(w.table.item(r, 0).text()) for r in rows] == [3]  # the highlighted row
    QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(5, 5))
    qtbot.wait(100)
    assert w.selected_ids() == [3]  # a click on the background keeps the selection


def test_image_series_keeps_each_image_s_review(make_napari_viewer, tmp_path, monkeypatch):
    """Image ▶ / ◀ step through a dataset open in the Load dock; each image's edits and statuses
    are saved on leaving it and restored on coming back."""
    import imageio.v3 as iio

    monkeypatch.setenv("NAPARI_FTU_SESSIONS", str(tmp_path / "sessions"))
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for name in ("a", "b"):
        iio.imwrite(tmp_path / "data" / "images" / f"{name}.png", np.full((300, 300, 3), 220, np.uint8))
        iio.imwrite(tmp_path / "data" / "masks" / f"{name}.png", (_scene() > 0).astype(np.uint8) * 255)
    viewer = make_napari_viewer()
    _, load = viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    _, w = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
    load.open_dataset(tmp_path / "data")
    first = w.layer  # the dock follows the labels layer the Load dock adds
    assert first is [lyr for lyr in viewer.layers if isinstance(lyr, napari.layers.Labels)][0]
    n = len(w.session.review.rows)
    obj = sorted(w.session.review.rows)[0]
    w.select([obj])
    w.reject()
    assert obj not in np.unique(first.data) and w.session.review.counts()["rejected"] == 1
    w.step_image(1)
    assert load.index == 1
    assert w.layer is not first and len(w.session.review.rows) == n
    assert w.session.review.counts()["rejected"] == 0  # image b has its own, untouched review
    w.step_image(-1)
    assert load.index == 0 and w.session.review.counts()["rejected"] == 1
    assert obj not in np.unique(w.layer.data)


# --- autosave: nothing saved is ever lost --------------------------------------------------------

def _slide_viewer(make_napari_viewer, slide, interval=30):
    viewer = make_napari_viewer()
    viewer.add_image(np.full((300, 300, 3), 200, np.uint8), name="slide", metadata={"path": str(slide)})
    viewer.add_labels(_scene(), name="slide FTUs", metadata={"source": "slide"})
    _, w = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
    w.interval.value = interval
    return viewer, w


def _slide(tmp_path, monkeypatch):
    from napari_ftu.io.images import write_tiff

    monkeypatch.setenv("NAPARI_FTU_SESSIONS", str(tmp_path / "unused"))
    slide = tmp_path / "slide.tif"
    write_tiff(slide, np.full((300, 300, 3), 200, np.uint8))
    return slide, tmp_path / "slide.tif.ftu" / "slide_FTUs.session.npz"


def test_closing_the_viewer_saves_the_last_edits_and_frees_the_session(make_napari_viewer, tmp_path, monkeypatch):
    from napari_ftu.review.autosave import SessionStore

    slide, session_file = _slide(tmp_path, monkeypatch)
    viewer, w = _slide_viewer(make_napari_viewer, slide, interval=30)
    w.select([2])
    w.accept()
    assert not session_file.exists()  # the 30 s interval has not passed
    assert session_file.with_name("slide_FTUs.session.lock").exists()  # this viewer writes the session
    viewer.close()
    saved = SessionStore(session_file.parent, "slide FTUs").load()
    assert saved.review.rows[2].status == "accepted"
    assert not session_file.with_name("slide_FTUs.session.lock").exists()


def test_a_damaged_session_is_kept_aside_reported_and_edits_still_autosave(make_napari_viewer, tmp_path,
                                                                          monkeypatch):
    import napari_ftu._qt.review as dock_module
    from napari_ftu.review.autosave import SessionStore

    slide, session_file = _slide(tmp_path, monkeypatch)
    viewer, w = _slide_viewer(make_napari_viewer, slide)
    w.select([2])
    w.accept()
    viewer.close()
    damaged = session_file.read_bytes()[:-200]  # truncated: zipfile.BadZipFile
    session_file.write_bytes(damaged)
    errors = []
    monkeypatch.setattr(dock_module, "show_error", errors.append)
    viewer, w = _slide_viewer(make_napari_viewer, slide)
    assert len(errors) == 1 and "cannot read the saved session" in errors[0] and "kept it as" in errors[0]
    assert w.save_label.value.startswith("Error:") and str(session_file) in w.save_label.value
    [aside] = [p for p in session_file.parent.iterdir() if ".damaged-" in p.name]
    assert aside.read_bytes() == damaged
    assert w.session is not None and w.autosaver is not None  # a fresh session ...
    w.select([3])
    w.reject()  # ... records the edits ...
    w.save_now()  # ... and saves them
    saved = SessionStore(session_file.parent, "slide FTUs").load()
    assert saved.review.rows[3].status == "rejected" and 3 not in saved.labels
    assert aside.read_bytes() == damaged


def test_a_second_viewer_on_the_same_slide_is_warned_and_overwrites_nothing(make_napari_viewer, tmp_path,
                                                                            monkeypatch):
    import napari_ftu._qt.review as dock_module
    from napari_ftu.review.autosave import SessionStore

    slide, session_file = _slide(tmp_path, monkeypatch)
    warnings = []
    monkeypatch.setattr(dock_module, "show_warning", warnings.append)
    first_viewer, first = _slide_viewer(make_napari_viewer, slide)
    first.select([2])
    first.accept()
    first.save_now()
    before = session_file.read_bytes()
    assert not warnings
    second_viewer, second = _slide_viewer(make_napari_viewer, slide)
    assert len(warnings) == 1 and "another viewer is saving this review" in warnings[0]
    assert second.session.review.rows[2].status == "accepted"  # it starts from the first viewer's save
    assert second.save_label.value == warnings[0]
    second.select([1])
    second.reject()
    second.save_now()
    assert session_file.read_bytes() == before  # the first viewer's session is untouched
    assert "viewer-" in second.save_label.value
    mine = second.autosaver.store.save_path
    assert mine != session_file and 1 not in np.load(mine)["labels"]
    first.select([3])
    first.accept()
    first.save_now()
    saved = SessionStore(session_file.parent, "slide FTUs").load()
    assert saved.review.rows[3].status == "accepted" and 1 in saved.labels  # the first viewer goes on as before


def _store_with_objects_7_and_8(w, tmp_path, shape):
    """A label store holding objects 7 and 8 in window A, opened in the dock: ``(store, A's pixels)``."""
    from napari_ftu.review.label_store import LabelStore

    store = LabelStore.create(tmp_path / "big.zarr", shape)
    win = store.read_window(WINDOW_A)
    win[100:200, 100:200] = 7
    win[20:60, 20:60] = 8
    store.write_window(WINDOW_A, win)
    w.open_store(tmp_path / "big.zarr")
    return store, win


def test_each_full_resolution_window_keeps_its_unsaved_edits(dock, tmp_path):
    """Window A edited but not written to the label store; window B edited; back to A: A's edits."""

    viewer, w = dock
    store, win = _store_with_objects_7_and_8(w, tmp_path, (20_000, 20_000))
    a = w.edit_window(WINDOW_A)
    w.select([7])
    w.grow(1)
    w.select([8])
    w.accept()
    edited_a = a.data.copy()
    b = w.edit_window(WINDOW_B)  # overlaps A; A's layer is replaced
    assert a not in viewer.layers and b.data.shape == (256, 256)
    w.select([7])
    w.delete()
    w.edit_window(box_at(900, 900, 128, 128))  # B's edits are saved in B's session
    a2 = w.edit_window(WINDOW_A)
    assert (a2.data == edited_a).all()  # A's unsaved edits came back, not the store's pixels
    assert w.session.review.rows[8].status == "accepted"
    assert (store.read_window(WINDOW_A) == win).all()  # nothing was written into the store
    b2 = w.edit_window(WINDOW_B)
    assert 7 not in b2.data  # and B's came back too


def test_a_window_saved_into_the_store_shows_later_store_changes(dock, tmp_path):
    """A's edits went into the store; B (overlapping) then changed the store: reopening A shows
    the store, not A's older session, and keeps A's review of the objects B did not touch."""

    viewer, w = dock
    store, win = _store_with_objects_7_and_8(w, tmp_path, (4000, 4000))
    w.edit_window(WINDOW_A)
    w.select([8])
    w.accept()
    w.select([7])
    w.set_class()
    w.save_window()
    w.edit_window(WINDOW_B)
    w.select([7])
    w.delete()
    w.save_window()
    a = w.edit_window(WINDOW_A)
    assert 7 not in a.data and (a.data == store.read_window(WINDOW_A)).all()
    assert w.session.review.rows[8].status == "accepted" and 7 not in w.session.review.rows
    w.edit_window(box_at(0, 0, 64, 64))
    a = w.edit_window(WINDOW_A)  # and unsaved edits of a window still win over the store
    w.select([8])
    w.delete()
    w.edit_window(box_at(0, 0, 64, 64))
    assert 8 not in w.edit_window(WINDOW_A).data and 8 in store.read_window(WINDOW_A)


def test_a_view_over_a_window_with_unsaved_edits_reopens_that_window(dock, tmp_path):
    """Opening a window from the view (never the same box twice) finds the overlapping window whose
    edits are not in the store yet, instead of starting a second, conflicting edit of its pixels."""
    from napari_ftu.review.autosave import pending_windows
    from napari_ftu.review.label_store import LabelStore

    viewer, w = dock
    store = LabelStore.create(tmp_path / "big.zarr", (4000, 4000))
    win = store.read_window(WINDOW_A)
    win[100:200, 100:200] = 7
    store.write_window(WINDOW_A, win)
    shown = w.open_store(tmp_path / "big.zarr")
    a = w.edit_window(WINDOW_A)
    w.select([7])
    w.grow(1)
    edited = a.data.copy()
    viewer.scene.camera.center = tuple(shown.data_to_world((1150, 1200)))
    viewer.scene.camera.zoom = 2 / abs(shown.scale[-1])
    again = w.edit_window()
    assert again.metadata["window_offset"] == (1000, 1000) and (again.data == edited).all()
    assert pending_windows(w._session_folder(shown), f"{shown.name} window") == [WINDOW_A]
    w.save_window()
    assert pending_windows(w._session_folder(shown), f"{shown.name} window") == []
    view = w.edit_window()  # now the view itself
    assert view.metadata["window_offset"] != (1000, 1000) and (view.data == 7).sum() == (edited == 7).sum()
