"""Load dock: slides (lazily, with pixel size), dataset folders with previous/next, and
annotation files onto the current image. Errors become notifications; open layers stay."""

from __future__ import annotations

from pathlib import Path

import napari
from magicgui.widgets import FileEdit, FloatSpinBox, ProgressBar, PushButton, SpinBox
from napari.utils.notifications import show_info

from napari_ftu._qt.common import Dock, special, status_line
from napari_ftu._qt.jobs import start_job
from napari_ftu.batch.plan import BatchOptions, plan_inputs
from napari_ftu.batch.runner import batch_steps
from napari_ftu.errors import FormatError, InputError
from napari_ftu.formats.datasets import labels_layer_data, open_dataset
from napari_ftu.io.backends import is_dicom_folder
from napari_ftu.io.slides import open_slide, pyramid_steps, slide_layer_data

FILTER = ("Slides and images (*.tif *.tiff *.svs *.ndpi *.scn *.btf *.dcm *.mrxs *.bif *.vms *.vmu *.svslide *.png "
          "*.jpg *.jpeg *.bmp)")
ERRORS = (InputError, FormatError, OSError, ValueError)


class LoadWidget(Dock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)  # self.state: the open dataset and image index, shared with the Review dock
        self.slide = None
        self.dataset_slide = False
        self.path = FileEdit(label="file", mode="r", filter=FILTER)
        self.um_per_px = FloatSpinBox(label="µm/px", value=0.0, min=0.0, max=100.0, step=0.05,
                                      tooltip="lowest value = read from the file's metadata")
        special(self.um_per_px, "from the file")
        self.open_button = PushButton(text="Open")
        self.pyramid_button = PushButton(text="Write pyramid next to it", enabled=False,
                                         tooltip="a flat slide opens lazily but pans slowly; a pyramid fixes that")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.bar = ProgressBar(label="pyramid", value=0, min=0, max=1, visible=False)
        self.folder = FileEdit(label="dataset", mode="d")
        self.dataset_button = PushButton(text="Open dataset")
        self.prev_button = PushButton(text="◀ Previous", enabled=False)
        self.next_button = PushButton(text="Next ▶", enabled=False)
        self.annotations = FileEdit(label="annotations", mode="r", filter="Annotations (*.geojson *.json)")
        self.annotations_button = PushButton(text="Add annotations to the image")
        self.batch_folder = FileEdit(label="batch folder", mode="d", tooltip="slides to segment (every image file)")
        self.batch_out = FileEdit(label="batch output", mode="d",
                                  tooltip="empty: <batch folder>/napari-ftu-batch; a rerun skips finished slides")
        self.batch_workers = SpinBox(label="Dask workers", value=0, min=0, max=256,
                                     tooltip="none: in napari's process; N: a local Dask cluster of N processes")
        special(self.batch_workers, "none (in napari)")
        self.batch_button = PushButton(text="Batch segment folder…")
        self.batch_bar = ProgressBar(label="batch", value=0, min=0, max=1, visible=False)
        self.status = status_line("")
        self.extend([self.path, self.um_per_px, self.open_button, self.pyramid_button, self.cancel_button, self.bar,
                     self.folder, self.dataset_button, self.prev_button, self.next_button, self.annotations,
                     self.annotations_button, self.batch_folder, self.batch_out, self.batch_workers,
                     self.batch_button, self.batch_bar, self.status])
        self.open_button.changed.connect(self.open)
        self.pyramid_button.changed.connect(self.write_pyramid)
        self.cancel_button.changed.connect(self.cancel)
        self.dataset_button.changed.connect(self.open_dataset)
        self.prev_button.changed.connect(lambda: self.show_item(self.index - 1))
        self.next_button.changed.connect(lambda: self.show_item(self.index + 1))
        self.annotations_button.changed.connect(self.add_annotations)
        self.batch_button.changed.connect(self.batch_segment)
        self.state.events.index.connect(self.show_item)  # another dock asked for another image

    @property
    def dataset(self):
        return self.state.dataset

    @property
    def index(self) -> int:
        return self.state.index

    # --- single slides ----------------------------------------------------------------------
    def open(self, path: str | Path | None = None):
        """Open a slide as an Image layer scaled in µm (multiscale when it has levels)."""
        path = Path(path or self.path.value)
        try:
            slide = open_slide(path)
        except ERRORS as exc:
            return self._fail(exc)
        self.slide, self.dataset_slide = slide, False
        data, kwargs, _ = slide_layer_data(slide, self.um_per_px.value or None)
        layers = self._viewer.add_image(data, **kwargs)
        um = kwargs["metadata"]["um_per_px"]
        levels = f", {len(slide.levels)} levels" if len(slide.levels) > 1 else ""
        self.status.value = (f"{slide.name}: {slide.size[0]} × {slide.size[1]} px{levels}, "
                             + (f"{um:g} µm/px" if um else "pixel size unknown") + f" ({slide.backend})"
                             + (f"; {slide.note}" if slide.note else "")
                             + (" — no stored pyramid: panning is slow until you write one" if slide.flat else ""))
        self.pyramid_button.enabled = slide.flat
        return layers

    def write_pyramid(self, out: str | Path | None = None):
        """Write ``<name>.pyramid.ome.tif`` next to a flat slide in a worker, then open it."""
        if self.slide is None or not self.slide.flat:
            return self._fail("Open a large flat slide first.")
        out = Path(out) if out else self.slide.path.with_name(self.slide.name + ".pyramid.ome.tif")
        steps = pyramid_steps(self.slide, out)
        self.bar.visible = True
        self.pyramid_button.enabled, self.cancel_button.enabled = False, True

        def on_finished():
            self.pyramid_button.enabled, self.cancel_button.enabled = self.slide.flat, False

        self.worker = start_job(
            steps, f"Writing {out.name}", bar=self.bar, on_error=self._fail, on_finished=on_finished,
            on_done=lambda path: (self.open(path), show_info(f"wrote {path}")),
            on_abort=lambda: setattr(self.status, "value", "pyramid cancelled; nothing written"))
        return self.worker

    def cancel(self):
        if self.worker is not None:
            self.worker.quit()

    # --- datasets ---------------------------------------------------------------------------
    def open_dataset(self, path: str | Path | None = None):
        """Recognise a dataset folder's layout and show its first image (a DICOM WSI folder is
        one slide: it opens as one)."""
        path = Path(path or self.folder.value)
        if is_dicom_folder(path):
            return self.open(path)
        try:
            self.state.dataset = open_dataset(path)
        except ERRORS as exc:
            return self._fail(exc)
        return self.show_item(0)

    def show_item(self, index: int):
        """Show image ``index`` of the dataset (image + labels), replacing the previous one."""
        if self.dataset is None or not 0 <= index < len(self.dataset):
            return None
        try:
            item = self.dataset.load(index)
        except ERRORS as exc:
            return self._fail(exc)
        for layer in [lyr for lyr in self._viewer.layers if lyr.metadata.get("dataset_item")]:
            self._viewer.layers.remove(layer)
        if self.slide is not None and self.slide.path != item.slide.path and self.dataset_slide:
            self.slide.close()
        with self.state.events.index.blocked():  # this dock is the one showing it
            self.state.index = index
        self.slide, self.dataset_slide = item.slide, True
        data, kwargs, _ = slide_layer_data(item.slide)
        kwargs["metadata"] = {**kwargs["metadata"], **item.info, "dataset_item": True}
        self._viewer.add_image(data, **kwargs)
        if item.annotations is not None:
            labels, lkw, _ = labels_layer_data(item.annotations, item.slide, item.info)
            lkw["metadata"]["dataset_item"] = True
            self._viewer.add_labels(labels, **lkw)
        facts = ", ".join(f"{k} {v}" for k, v in item.info.items() if v not in (None, ""))
        n = len(item.annotations.ids()) if item.annotations is not None else 0
        self.status.value = (f"{self.dataset.layout}: {index + 1} / {len(self.dataset)}: {self.dataset.ids[index]}"
                             f" — {n} objects" + (f" ({facts})" if facts else ""))
        self.prev_button.enabled = index > 0
        self.next_button.enabled = index < len(self.dataset) - 1
        return item

    # --- batch ---------------------------------------------------------------------------------
    def batch_segment(self, folder: str | Path | None = None, out: str | Path | None = None):
        """Segment every slide of a folder with the default model (skipping finished ones) in a
        worker, then browse the results with Previous/Next (image + predicted labels)."""
        folder = Path(folder or self.batch_folder.value)
        out = Path(out) if out else (Path(self.batch_out.value) if str(self.batch_out.value) not in ("", ".")
                                     else folder / "napari-ftu-batch")
        try:
            jobs = plan_inputs([folder])
            if not jobs:
                raise InputError(f"{folder}: no slides to segment")
        except ERRORS as exc:
            return self._fail(exc)
        steps = batch_steps(jobs, out, BatchOptions(), workers=self.batch_workers.value)
        self.batch_bar.visible = True
        self.batch_button.enabled, self.cancel_button.enabled = False, True

        def on_event(event):
            row = event.row
            if row is not None:
                what = f"{row['n_objects']} objects" if row["status"] != "failed" else f"failed: {row['error']}"
                self.status.value = f"batch {event.done}/{event.total}: {row['id']} {what}"

        def on_done(result):
            s = result.summary()
            self.status.value = (f"batch: {s['done']} done ({s['skipped']} earlier), {s['failed']} failed, "
                                 f"{s['seconds']:.0f} s — results in {out}")
            show_info(self.status.value)
            if result.done:
                status = self.status.value
                self.open_dataset(out)
                self.status.value = status + "; " + self.status.value

        def on_finished():
            self.batch_button.enabled, self.cancel_button.enabled = True, False

        self.worker = start_job(steps, f"Batch segmenting {folder.name}", bar=self.batch_bar, total=len(jobs),
                                on_event=on_event, on_done=on_done, on_error=self._fail, on_finished=on_finished,
                                on_abort=lambda: setattr(self.status, "value", "batch cancelled; finished slides kept"))
        return self.worker

    # --- annotations --------------------------------------------------------------------------
    def add_annotations(self, path: str | Path | None = None):
        """Rasterise a QuPath GeoJSON or COCO file onto the current image as a Labels layer."""
        from napari_ftu.formats.export import format_of, import_annotations

        if self.slide is None:
            return self._fail("Open the slide the annotations belong to first.")
        path = Path(path or self.annotations.value)
        try:
            fmt = format_of(path)
            items = list(import_annotations(path, fmt, self.slide.size))
            a = next((x for x in items if x.image_id == self.slide.name), items[0] if len(items) == 1 else None)
            if a is None:
                raise FormatError(f"{path}: no annotations for image {self.slide.name!r}")
            if a.shape != tuple(self.slide.size):
                raise FormatError(f"{path}: annotations are {a.shape}, the image is {self.slide.size}")
        except ERRORS as exc:
            return self._fail(exc)
        labels, kwargs, _ = labels_layer_data(a, self.slide)
        kwargs["name"] = f"{self.slide.name} {path.stem}"
        layer = self._viewer.add_labels(labels, **kwargs)
        self.status.value = f"{len(a.ids())} annotations from {path.name}"
        return layer
