"""The Debug dock on the synthetic sample slide, segmented by the synthetic demo model, against its
ground truth: numbers, error overlay and table, threshold slider and curve, compare mode,
tile grid, TTA uncertainty, dataset histogram and export."""

from __future__ import annotations

import csv

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ftu._qt.debug import camera
from napari_ftu.evaluation.metrics import dice, match_objects

UM = 2.0
SCALE, TRANSLATE = (UM, UM), (10.0, 20.0)


@pytest.fixture(scope="module")
def slide():
    """A synthetic sample slide at the model's 2 µm/px, 768 px wide, with 14 glomeruli
    (the session's 1 µm/px test slide holds only one: too few for object metrics)."""
    from napari_ftu.io.synthetic import make_slide

    rgb, truth, _ = make_slide(768, 768, seed=777, um_per_px=UM)
    assert truth.max() == 14
    return rgb, truth


@pytest.fixture(scope="module")
def segmentation(slide, synthetic_model):
    from napari_ftu.engine.inference import segment

    return segment(slide[0], synthetic_model, um_per_px=UM)


def _wait(widget, qtbot):
    qtbot.waitUntil(lambda: widget.worker is None and not widget._pending, timeout=60_000)


@pytest.fixture
def dock(make_napari_viewer, slide, segmentation):
    """The viewer with slide, truth, a damaged prediction (one glomerulus missed, one false
    object) and the probability, all with a scale and translate, and the dock."""
    from napari_ftu._qt.debug import DebugWidget

    rgb, truth = slide
    pred = np.array(segmentation.labels, np.int32)
    ids, areas = np.unique(pred[pred > 0], return_counts=True)
    missed = int(ids[np.argmax(areas)])
    pred[pred == missed] = 0
    yy, xx = np.ogrid[:768, :768]
    false_obj = (yy - 40) ** 2 + (xx - 700) ** 2 <= 15**2
    assert not truth[false_obj].any()
    pred[false_obj] = pred.max() + 1
    viewer = make_napari_viewer()
    kw = {"scale": SCALE, "translate": TRANSLATE, "metadata": {"um_per_px": UM}}
    viewer.add_image(rgb, name="slide", **kw)
    viewer.add_labels(truth, name="truth", **kw)
    viewer.add_labels(pred, name="pred", **kw)
    viewer.add_image(np.asarray(segmentation.probability, np.float32), name="prob", visible=False, **kw)
    widget = DebugWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Debug")
    widget.pred.value, widget.truth.value = viewer.layers["pred"], viewer.layers["truth"]
    widget.prob.value = viewer.layers["prob"]
    return viewer, widget, pred, truth, false_obj


def _world(yx):
    return np.asarray(yx) * SCALE + TRANSLATE


def test_metrics_error_overlay_and_table_jump(dock, qtbot):
    viewer, widget, pred, truth, false_obj = dock
    widget.evaluate()
    _wait(widget, qtbot)
    row = widget.result["rows"][0]
    m = match_objects(pred, truth, 0.5)
    assert row["dice"] == pytest.approx(dice(pred, truth)) and 0.8 < row["dice"] < 0.99
    assert (row["tp"], row["fp"], row["fn"]) == (m.tp, m.fp, m.fn) and row["fn"] >= 1 and row["fp"] >= 1
    cells = {widget.metrics_table.item(r, 0).text(): widget.metrics_table.item(r, 1).text()
             for r in range(widget.metrics_table.rowCount())}
    assert cells["Dice"] == f"{dice(pred, truth):.4f}" and cells["FN"] == str(m.fn)
    from napari_ftu.evaluation.metrics import aggregated_jaccard, overlap_table, panoptic

    table = overlap_table(pred, truth)
    assert cells["PQ"] == f"{panoptic(table).pq:.4f}" and cells["AJI"] == f"{aggregated_jaccard(table):.4f}"

    errors = viewer.layers["errors (TP green, FP red, FN blue)"].data
    assert (errors[false_obj] == 2).all()  # the false object is FP
    for fn_id in m.fn_ids:
        assert (errors[truth == fn_id] == 3).all()

    kinds = [widget.objects_table.item(r, 0).text() for r in range(widget.objects_table.rowCount())]
    assert kinds.count("FN") == m.fn and kinds.count("FP") == m.fp and kinds.count("TP") == m.tp
    # The missed glomerulus: selecting its row centres the camera on its centroid.
    fn_row = kinds.index("FN")
    fn_id = int(widget.objects_table.item(fn_row, 1).text())
    assert fn_id in m.fn_ids
    widget.objects_table.selectRow(fn_row)
    expected = _world(ndi.center_of_mass(truth == fn_id))
    assert np.asarray(camera(viewer).center)[-2:] == pytest.approx(expected, abs=1e-3)
    # And the false object's row centres on it.
    fp_row = next(r for r in range(len(kinds)) if kinds[r] == "FP"
                  and int(widget.objects_table.item(r, 1).text()) == pred[false_obj][0])
    widget.objects_table.selectRow(fp_row)
    assert np.asarray(camera(viewer).center)[-2:] == pytest.approx(_world((40, 700)), abs=0.5)


def test_threshold_slider_curve_and_apply_best(dock, qtbot):
    viewer, widget, pred, truth, _ = dock
    prob = np.asarray(viewer.layers["prob"].data)
    widget.evaluate()
    _wait(widget, qtbot)
    widget.threshold.value = 0.9
    layer = viewer.layers["prob @ threshold"]
    assert widget.pred.value is layer
    high = np.asarray(layer.data).copy()
    assert (prob[high > 0] >= 0.9).mean() > 0.99  # only holes filled below the threshold
    widget.threshold.value = 0.2
    low = np.asarray(layer.data)
    assert (low > 0).sum() > (high > 0).sum() and (low[high > 0] > 0).all()
    _wait(widget, qtbot)
    assert widget.result["rows"][0]["dice"] == pytest.approx(dice(low, truth))

    thresholds = np.linspace(0.01, 0.99, 99)
    brute = [dice(prob >= t, truth) for t in thresholds]
    best = widget.apply_best_threshold()
    assert best == pytest.approx(thresholds[int(np.argmax(brute))])
    assert widget.threshold.value == pytest.approx(best)
    _wait(widget, qtbot)
    ax = widget._curve_fig.axes[0]
    curve_line = ax.lines[0]
    assert np.asarray(curve_line.get_ydata()) == pytest.approx(brute)
    marker = [ln for ln in ax.lines if len(ln.get_xdata()) == 1][0]
    assert marker.get_xdata()[0] == pytest.approx(best) and marker.get_ydata()[0] == pytest.approx(max(brute))


def test_compare_two_predictions_side_by_side(dock, qtbot, segmentation):
    viewer, widget, pred, truth, _ = dock
    other = np.asarray(segmentation.labels)
    viewer.add_labels(other, name="model B", scale=SCALE, translate=TRANSLATE)
    widget.other.value = viewer.layers["model B"]
    widget.evaluate()
    _wait(widget, qtbot)
    assert widget.result["columns"] == ["A vs truth", "B vs truth", "A vs B"]
    a, b, ab = widget.result["rows"]
    assert a["dice"] == pytest.approx(dice(pred, truth)) and b["dice"] == pytest.approx(dice(other, truth))
    assert ab["dice"] == pytest.approx(dice(pred, other)) and b["dice"] > a["dice"]
    assert widget.metrics_table.columnCount() == 4
    diff = viewer.layers["difference (only A orange, only B cyan)"].data
    assert ((diff == 1) == ((pred > 0) & (other == 0))).all()
    assert ((diff == 2) == ((other > 0) & (pred == 0))).all() and (diff == 2).any()


def test_tile_grid_matches_the_engine(dock, default_model):
    from napari_ftu.engine.tiling import tile_grid

    viewer, widget, *_ = dock
    layer = widget.tile_grid()
    card = default_model.card
    assert (widget.tile.value, widget.overlap.value) == (card.tile_size, card.overlap)
    factor = UM / card.um_per_px  # model pixels per slide pixel
    work = (round(768 * factor),) * 2
    grid = tile_grid(work, card.tile_size, card.overlap)
    assert len(layer.data) == len(grid) and layer.nshapes == len(grid)
    assert tuple(layer.scale) == SCALE
    corners = np.asarray(layer.data[-1])
    assert corners.min(axis=0) == pytest.approx(np.asarray(grid[-1]) / factor)
    assert corners.max(axis=0) == pytest.approx([768, 768])


def test_uncertainty_from_tta(dock, qtbot):
    viewer, widget, _, truth, _ = dock
    widget.image.value = viewer.layers["slide"]
    worker = widget.uncertainty()
    assert worker is not None, widget.status.value
    qtbot.waitUntil(lambda: "slide uncertainty (TTA)" in viewer.layers, timeout=300_000)
    qtbot.waitUntil(lambda: widget.uncertainty_button.enabled, timeout=10_000)
    layer = viewer.layers["slide uncertainty (TTA)"]
    unc = np.asarray(layer.data)
    assert unc.dtype == np.float32 and unc.min() >= 0 and unc.max() <= 0.5 + 1e-6
    assert np.allclose(np.asarray(layer.scale) * unc.shape, np.asarray(SCALE) * truth.shape, rtol=0.01)
    # The augmented views disagree on glomerulus borders, not on empty glass or tissue far away.
    fg = truth > 0
    edge = ndi.binary_dilation(fg, iterations=3) & ~ndi.binary_erosion(fg, iterations=3)
    far = ~ndi.binary_dilation(fg, iterations=25)
    if unc.shape != truth.shape:
        from skimage.transform import resize

        unc = resize(unc, truth.shape, order=1)
    assert unc[edge].mean() > 3 * unc[far].mean()


def test_dataset_histogram_and_export(dock, qtbot, tmp_path):
    from napari_ftu.io.images import write_tiff

    viewer, widget, pred, truth, _ = dock
    widget.evaluate()
    _wait(widget, qtbot)
    for side in ("gt", "pred"):
        (tmp_path / side).mkdir()
    shifted = np.roll(truth, 6, axis=1)
    write_tiff(tmp_path / "gt" / "a.tif", truth.astype(np.uint16))
    write_tiff(tmp_path / "gt" / "b.tif", truth.astype(np.uint16))
    write_tiff(tmp_path / "pred" / "a.tif", pred.astype(np.uint16))
    write_tiff(tmp_path / "pred" / "b.tif", shifted.astype(np.uint16))
    widget.data_pred.value, widget.data_truth.value = tmp_path / "pred", tmp_path / "gt"
    widget.evaluate_dataset()
    qtbot.waitUntil(lambda: widget.dataset_rows is not None, timeout=60_000)
    rows, summary = widget.dataset_rows
    assert [r["dice"] for r in rows] == pytest.approx([dice(pred, truth), dice(shifted, truth)])
    assert summary[0]["dice"] == pytest.approx((dice(pred, truth) + dice(shifted, truth)) / 2)
    counts = [p.get_height() for p in widget._hist_fig.axes[0].patches]
    assert sum(counts) == 2

    widget.out.value = tmp_path / "report"
    written = {p.name for p in widget.export()}
    assert written == {"metrics.csv", "objects.csv", "dice_vs_threshold.png", "dice_vs_threshold.csv",
                       "dataset_report.csv", "dice_histogram.png"}
    for png in ("dice_vs_threshold.png", "dice_histogram.png"):
        img = iio.imread(tmp_path / "report" / png)
        assert img.ndim == 3 and img.shape[0] > 200 and img.std() > 10  # a drawn plot, not blank
    metrics = list(csv.DictReader(open(tmp_path / "report" / "metrics.csv")))
    assert float(metrics[0]["dice"]) == pytest.approx(dice(pred, truth), abs=1e-6)
    objects = list(csv.DictReader(open(tmp_path / "report" / "objects.csv")))
    m = match_objects(pred, truth, 0.5)
    assert sum(o["kind"] == "FN" for o in objects) == m.fn
    report = list(csv.DictReader(open(tmp_path / "report" / "dataset_report.csv")))
    assert [r["image"] for r in report] == ["a", "b", "(summary)"]


def test_mismatched_layers_are_reported(dock, qtbot):
    viewer, widget, *_ = dock
    viewer.add_labels(np.zeros((10, 10), np.int32), name="small")
    widget.truth.value = viewer.layers["small"]
    assert widget.evaluate() is None
    assert widget.status.value.startswith("Error:") and "must match" in widget.status.value
    assert "errors (TP green, FP red, FN blue)" not in viewer.layers
