"""Debug dock: a prediction against ground truth, as numbers, error layers and plots.

Metrics (Dice, IoU, TP/FP/FN, F1, AP@0.6) with an optional second prediction side by side and
a difference layer; a TP/FP/FN overlay with an object table whose rows move the camera; a live
threshold slider on a probability layer with the Dice-vs-threshold curve; TTA uncertainty and
the tile grid to inspect seams; a per-image Dice histogram over a dataset; PNG + CSV export.
The numbers come from the Qt-free :mod:`napari_ftu.evaluation.evaluate`; long work runs in workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import napari
import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from napari_ftu._qt.common import Dock, level0, level0_array, plot_canvas, status_line
from napari_ftu._qt.jobs import call_steps, start_job
from napari_ftu.errors import FormatError, ModelError, OptionError
from napari_ftu.evaluation.compare import ONLY_A, ONLY_B, compare, object_scores, write_comparison
from napari_ftu.evaluation.evaluate import (
    FN,
    FP,
    TP,
    evaluate_paths,
    write_report,
)
from napari_ftu.evaluation.plots import draw_histogram, draw_threshold_curve, save_png

ERROR_COLOURS = {TP: (0.15, 0.8, 0.25, 1.0), FP: (0.95, 0.15, 0.15, 1.0), FN: (0.2, 0.45, 1.0, 1.0)}
DIFF_COLOURS = {ONLY_A: (1.0, 0.6, 0.0, 1.0), ONLY_B: (0.0, 0.85, 0.9, 1.0)}
METRICS = [("dice", "Dice"), ("iou", "IoU"), ("n_pred", "objects"), ("n_truth", "true objects"), ("tp", "TP"),
           ("fp", "FP"), ("fn", "FN"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
           ("ap", "AP@0.6"), ("pq", "PQ"), ("sq", "SQ"), ("rq", "RQ"), ("aji", "AJI")]
OBJECT_COLUMNS = ["kind", "id", "IoU", "area px", "y", "x"]


def _colormap(colours: dict) -> DirectLabelColormap:
    return DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), **colours})


class DebugWidget(Dock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.result = None
        self.dataset_rows = None
        self._pending = False

        # --- what to compare
        self.pred = create_widget(annotation=napari.layers.Labels, label="prediction (A)")
        self.truth = create_widget(annotation=Optional[napari.layers.Labels], label="ground truth")
        self.other = create_widget(annotation=Optional[napari.layers.Labels], label="compare with (B)")
        self.prob = create_widget(annotation=Optional[napari.layers.Image], label="probability")
        self.iou = FloatSpinBox(label="match at IoU ≥", value=0.5, min=0.05, max=1.0, step=0.05)
        self.mode = ComboBox(label="errors as", choices=["objects", "pixels"], value="objects")
        self.evaluate_button = PushButton(text="Evaluate")
        inputs = Container(widgets=[self.pred, self.truth, self.other, self.prob, self.iou, self.mode,
                                    self.evaluate_button])
        self.metrics_table = _table(["metric"], rows=len(METRICS))
        _fit_height(self.metrics_table)
        self.objects_table = _table(OBJECT_COLUMNS, height=170)
        self.objects_table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.objects_table.setSelectionMode(QAbstractItemView.SingleSelection)

        # --- threshold
        self.threshold = FloatSlider(label="threshold", value=0.5, min=0.01, max=0.99, step=0.01,
                                     tooltip="re-derives instances from the probability layer")
        self.min_area = SpinBox(label="min area px", value=0, min=0, max=10**9, step=10)
        self.apply_best = PushButton(text="Apply best threshold", enabled=False)
        thresholds = Container(widgets=[self.threshold, self.min_area, self.apply_best])
        self._curve_fig, self._curve_canvas = plot_canvas()

        # --- model views
        self.image = create_widget(annotation=Optional[napari.layers.Image], label="image")
        self.tile = SpinBox(label="tile (model px)", value=256, min=16, max=8192, step=32)
        self.overlap = SpinBox(label="overlap", value=32, min=0, max=4096, step=8)
        self.uncertainty_button = PushButton(text="Uncertainty (TTA)")
        self.grid_button = PushButton(text="Tile grid")
        self.bar = ProgressBar(label="tiles", value=0, min=0, max=1, visible=False)
        views = Container(widgets=[self.image, self.tile, self.overlap, self.uncertainty_button, self.grid_button,
                                   self.bar])

        # --- dataset and export
        self.data_pred = FileEdit(label="dataset predictions", mode="r",
                                  tooltip="label images folder, or a CSV/JSON of any supported format")
        self.data_truth = FileEdit(label="dataset truth", mode="r")
        self.dataset_button = PushButton(text="Evaluate dataset")
        dataset = Container(widgets=[self.data_pred, self.data_truth, self.dataset_button])
        self._hist_fig, self._hist_canvas = plot_canvas()
        self._hist_canvas.setVisible(False)
        self.out = FileEdit(label="save to", mode="d", value="napari-ftu-debug")
        self.export_button = PushButton(text="Export plots (PNG) + report (CSV)")
        self.status = status_line("choose a prediction and its ground truth, then Evaluate")
        export = Container(widgets=[self.out, self.export_button, self.status])

        self.extend([inputs])
        layout = self.native.layout()
        for w in (self.metrics_table, self.objects_table, thresholds.native, self._curve_canvas, views.native,
                  dataset.native, self._hist_canvas, export.native):
            layout.addWidget(w)
        self._sections = [thresholds, views, dataset, export]  # magicgui refreshes their layer choices
        self._load_card_defaults()

        self.evaluate_button.changed.connect(self.evaluate)
        self.threshold.changed.connect(self._threshold_changed)
        self.apply_best.changed.connect(self.apply_best_threshold)
        self.uncertainty_button.changed.connect(self.uncertainty)
        self.grid_button.changed.connect(self.tile_grid)
        self.dataset_button.changed.connect(self.evaluate_dataset)
        self.export_button.changed.connect(self.export)
        self.objects_table.itemSelectionChanged.connect(self._object_selected)

    def reset_choices(self, *args):
        super().reset_choices(*args)
        for section in getattr(self, "_sections", []):
            section.reset_choices()

    def _load_card_defaults(self):
        try:
            from napari_ftu.models.loading import cached_model

            card = cached_model(None, device="cpu").card
            self.tile.value, self.overlap.value = card.tile_size, card.overlap
        except Exception:  # the defaults above stand
            pass

    # --- evaluation ------------------------------------------------------------------------------
    def evaluate(self):
        """Score the prediction (and B) in a worker; the views update when it returns."""
        if self.worker is not None:  # the slider moved while a run was going: run again after it
            self._pending = True
            return self.worker
        pred_layer, truth_layer, other_layer, prob_layer = (self.pred.value, self.truth.value, self.other.value,
                                                            self.prob.value)
        if pred_layer is None or (truth_layer is None and other_layer is None):
            return self._fail("choose a prediction and its ground truth (or a second prediction to compare)")
        try:
            pred = level0_array(pred_layer)
            truth = None if truth_layer is None else level0_array(truth_layer)
            other = None if other_layer is None else level0_array(other_layer)
            prob = None if prob_layer is None else _probability(prob_layer)
            for name, arr in (("ground truth", truth), ("B", other), ("probability", prob)):
                if arr is not None and arr.shape != pred.shape:
                    raise FormatError(f"{name} is {arr.shape}, the prediction {pred.shape}: they must match")
        except FormatError as exc:
            return self._fail(exc)
        scores = object_scores(pred, prob, pred_layer.features)
        other_scores = object_scores(other, prob, other_layer.features) if other_layer is not None else {}
        self.status.value = "evaluating …"
        self.evaluate_button.enabled = False
        self.worker = start_job(call_steps(compare, pred, truth, other, prob, self.iou.value, scores, other_scores,
                                           self.mode.value == "pixels"), "Evaluating",
                                on_done=lambda out: self._show(out, pred_layer, truth_layer), on_error=self._fail,
                                on_finished=self._evaluated)
        return self.worker

    def _evaluated(self):
        self.worker = None
        self.evaluate_button.enabled = True
        if self._pending:
            self._pending = False
            self.evaluate()

    def _show(self, out: dict, pred_layer, truth_layer):
        self.result = out
        _fill(self.metrics_table, ["metric"] + out["columns"],
              [[label] + [_fmt(row[key]) for row in out["rows"]] for key, label in METRICS])
        _fit_height(self.metrics_table)
        self._object_layers = {"FN": truth_layer, "FP": pred_layer, "TP": pred_layer}
        _fill(self.objects_table, OBJECT_COLUMNS,
              [[r["kind"], r["id"], f"{r['iou']:.2f}", r["area_px"], f"{r['centroid_y']:.0f}",
                f"{r['centroid_x']:.0f}"] for r in out["objects"]])
        ref = truth_layer or pred_layer
        if out["errors"] is not None:
            self._put_labels("errors (TP green, FP red, FN blue)", out["errors"], ref, ERROR_COLOURS)
        if out["diff"] is not None:
            self._put_labels("difference (only A orange, only B cyan)", out["diff"], ref, DIFF_COLOURS)
        if out["curve"] is not None:
            thresholds, curve, best = out["curve"]
            draw_threshold_curve(self._curve_fig, thresholds, curve, best, self.threshold.value)
            self._curve_canvas.draw_idle()
            self.apply_best.enabled = True
            self.apply_best.text = f"Apply best threshold ({best[0]:.2f})"
        first = out["rows"][0] if out["rows"] else None
        if first is not None:
            ap = "n/a" if first["ap"] is None else f"{first['ap']:.3f}"
            self.status.value = (f"{out['columns'][0]}: Dice {first['dice']:.3f}, F1 {first['f1']:.3f}, "
                                 f"AP@0.6 {ap}; {first['fp']} FP, {first['fn']} FN")

    def _put_labels(self, name, data, ref, colours):
        kwargs = {"scale": ref.scale[-2:], "translate": ref.translate[-2:]}
        if name in self._viewer.layers:
            self._viewer.layers[name].data = data
        else:
            self._viewer.add_labels(data, name=name, colormap=_colormap(colours), opacity=0.6, **kwargs)

    def _object_selected(self):
        rows = self.objects_table.selectionModel().selectedRows()
        if not rows or self.result is None:
            return
        obj = self.result["objects"][rows[0].row()]
        self.go_to(obj)

    def go_to(self, obj: dict):
        """Centre the camera on an object of the table (in world coordinates)."""
        layer = self._object_layers.get(obj["kind"])
        if layer is None:
            return
        world = np.asarray(layer.data_to_world([obj["centroid_y"], obj["centroid_x"]]))
        camera(self._viewer).center = tuple(world[-2:])

    # --- threshold ---------------------------------------------------------------------------------
    def _threshold_changed(self):
        layer = self.prob.value
        if layer is None:
            return
        from napari_ftu.engine.postprocess import instances

        labels = instances(_probability(layer), self.threshold.value, self.min_area.value)
        name = f"{layer.name} @ threshold"
        if name in self._viewer.layers:
            self._viewer.layers[name].data = labels
        else:
            self._viewer.add_labels(labels, name=name, scale=layer.scale[-2:], translate=layer.translate[-2:],
                                    opacity=0.5)
            self.reset_choices()
        self.pred.value = self._viewer.layers[name]
        if self.result is not None and self.result["curve"] is not None:
            thresholds, curve, best = self.result["curve"]
            draw_threshold_curve(self._curve_fig, thresholds, curve, best, self.threshold.value)
            self._curve_canvas.draw_idle()
        if self.truth.value is not None or self.other.value is not None:
            self.evaluate()

    def apply_best_threshold(self):
        """Set the slider to the threshold of the curve's highest Dice (re-derives the labels)."""
        if self.result is None or self.result["curve"] is None:
            return self._fail("evaluate with a probability layer first")
        self.threshold.value = round(self.result["curve"][2][0], 2)
        return self.threshold.value

    # --- uncertainty and tiles ---------------------------------------------------------------------
    def uncertainty(self):
        """Run the model with test-time augmentation in a worker; add the views' disagreement."""
        from napari_ftu.engine.options import SegmentOptions, check_positive
        from napari_ftu.engine.run import segment_slide_steps
        from napari_ftu.models.loading import cached_model

        layer = self.image.value
        if layer is None:
            return self._fail("choose the image to run the model on")
        try:
            model = cached_model(None, device="auto")
            options = SegmentOptions(tta=True)
            options.resolve(model.card)  # bad options or pixel size: refused here, not in the worker
            um = check_positive(layer.metadata.get("um_per_px"), f"{layer.name}: µm/px")
        except (ModelError, OptionError) as exc:
            return self._fail(exc)
        data = list(layer.data) if layer.multiscale else layer.data
        steps = segment_slide_steps(data, model, options, um_per_px=um, pyramid_view=layer.multiscale)
        self.bar.visible = True
        self.uncertainty_button.enabled = False
        self.status.value = f"running the model with TTA on {model.device} …"
        self.worker_tta = start_job(steps, f"TTA uncertainty of {layer.name}", bar=self.bar, on_error=self._fail,
                                    on_done=lambda seg: self._tta_done(layer, seg), on_finished=self._tta_finished)
        return self.worker_tta

    def _tta_done(self, layer, seg):
        unc = np.asarray(seg.uncertainty, np.float32)
        scale = float(getattr(seg, "prob_scale", 1.0) or 1.0)
        if np.issubdtype(np.asarray(seg.uncertainty[:1]).dtype, np.integer):
            unc = unc / scale
        factor = float(getattr(seg, "downsample", 1.0) or 1.0)
        self._viewer.add_image(unc, name=f"{layer.name} uncertainty (TTA)", colormap="viridis", blending="additive",
                               contrast_limits=(0, max(float(unc.max()), 1e-3)),
                               scale=[s * factor for s in layer.scale[-2:]], translate=layer.translate[-2:])
        self.status.value = f"TTA uncertainty: mean {unc.mean():.4f}, max {unc.max():.3f}"
        show_info(self.status.value)
        if seg.store is not None:  # a temporary store: the layer holds the numbers now
            import shutil

            shutil.rmtree(Path(seg.store).parent, ignore_errors=True)

    def _tta_finished(self):
        self.bar.visible = False
        self.uncertainty_button.enabled = True

    def tile_grid(self):
        """Add the engine's tile grid as rectangles (model tiles mapped onto the layer)."""
        from napari_ftu.engine.inference import edge_margins
        from napari_ftu.engine.tiling import tile_grid

        layer = self.pred.value or self.image.value
        if layer is None:
            return self._fail("choose a prediction or an image layer for the tile grid")
        try:
            from napari_ftu.models.loading import cached_model

            model_um = cached_model(None, device="cpu").card.um_per_px
        except Exception:
            model_um = None
        um = layer.metadata.get("um_per_px")
        factor = um / model_um if um and model_um else 1.0  # model pixels per layer pixel
        h, w = level0(layer).shape[:2]
        work = (max(1, round(h * factor)), max(1, round(w * factor)))
        t = self.tile.value
        top, bottom, left, right = edge_margins(work, t, self.overlap.value)  # mirrored margins, as the engine's
        try:
            grid = [(y - top, x - left) for y, x in tile_grid((work[0] + top + bottom, work[1] + left + right), t,
                                                              self.overlap.value)]
        except ValueError as exc:
            return self._fail(exc)
        rects = [np.array([[max(y, 0) / factor, max(x, 0) / factor],
                           [min(y + t, work[0]) / factor, min(x + t, work[1]) / factor]]) for y, x in grid]
        name = "tile grid"
        if name in self._viewer.layers:
            self._viewer.layers.remove(name)
        self._viewer.add_shapes(rects, shape_type="rectangle", name=name, edge_color="yellow",
                                face_color=[0, 0, 0, 0], edge_width=max(1.0, 2 / factor if factor < 1 else 2.0),
                                scale=layer.scale[-2:], translate=layer.translate[-2:])
        self.status.value = f"{len(rects)} tiles of {t} px (model pixels), overlap {self.overlap.value}"
        return self._viewer.layers[name]

    # --- dataset -----------------------------------------------------------------------------------
    def evaluate_dataset(self):
        """Evaluate a folder/file of predictions against ground truth in a worker; plot the Dice histogram."""
        pred, truth = Path(self.data_pred.value), Path(self.data_truth.value)
        if str(pred) in ("", ".") or str(truth) in ("", "."):
            return self._fail("choose the dataset's predictions and ground truth")
        self.status.value = "evaluating the dataset …"
        self.worker_data = start_job(call_steps(evaluate_paths, pred, truth, iou_threshold=self.iou.value),
                                     "Evaluating dataset", on_done=self._dataset_done, on_error=self._fail)
        return self.worker_data

    def _dataset_done(self, result):
        rows, summary, missing = result
        self.dataset_rows = (rows, summary)
        dice = [r["dice"] for r in rows if r["class"] == "all"]
        draw_histogram(self._hist_fig, dice)
        self._hist_canvas.setVisible(True)
        self._hist_canvas.draw_idle()
        s = summary[0]
        self.status.value = (f"{s['images']} images: mean Dice {s['dice']:.3f}, F1 {s['f1']:.3f}"
                             + (f"; {len(missing)} without prediction" if missing else ""))

    # --- export ------------------------------------------------------------------------------------
    def export(self) -> list[Path]:
        """Write the plots as PNG and the metrics and object table as CSV into the chosen folder."""
        folder = Path(self.out.value)
        written = []
        try:
            if self.result is not None:
                written += write_comparison(folder, self.result)
                if self.result["curve"] is not None:
                    written.append(Path(save_png(self._curve_fig, folder / "dice_vs_threshold.png")))
            if self.dataset_rows is not None:
                written.append(write_report(folder / "dataset_report.csv", *self.dataset_rows))
                written.append(Path(save_png(self._hist_fig, folder / "dice_histogram.png")))
        except OSError as exc:
            self._fail(exc)
            return []
        if not written:
            self._fail("nothing to export yet: Evaluate first")
            return []
        self.status.value = f"wrote {len(written)} files to {folder}"
        show_info(self.status.value)
        return written


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def _probability(layer) -> np.ndarray:
    prob = level0_array(layer)
    if prob.ndim == 3 and prob.shape[0] <= 8:  # several classes: the first
        prob = prob[0]
    if prob.ndim != 2:
        raise FormatError(f"{layer.name}: a probability map must be 2-D, got {prob.shape}")
    return prob.astype(np.float32) / 255.0 if prob.dtype == np.uint8 else prob



def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(columns, rows: int = 0, height: int = 160) -> QTableWidget:
    table = QTableWidget(rows, len(columns))
    table.setHorizontalHeaderLabels(columns)
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.NoEditTriggers)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
    table.setMinimumHeight(height)
    return table


def _fill(table: QTableWidget, columns, rows):
    table.clearContents()
    table.setColumnCount(len(columns))
    table.setHorizontalHeaderLabels(columns)
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.setItem(r, c, QTableWidgetItem(str(value)))


def _fit_height(table: QTableWidget):
    """Show every row of a short table without a scroll bar."""
    table.resizeRowsToContents()
    rows = sum(table.rowHeight(r) for r in range(table.rowCount()))
    table.setFixedHeight(rows + table.horizontalHeader().sizeHint().height() + 2 * table.frameWidth() + 2)

