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
    viewer.add_image(image, name=PATCH, metadata={"um_per_px": 4.0})
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotate")
    return viewer, widget, truth


def test_scribbles_train_into_an_objects_layer_and_save(dock, qtbot, tmp_path):
    from napari_ftu.engine.models import load_model

    viewer, widget, truth = dock
    assert widget.um_per_px.value == 4.0
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
