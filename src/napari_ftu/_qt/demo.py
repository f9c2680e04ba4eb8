"""``napari-ftu demo``: the sample slide in napari with the docks, segmented by the synthetic demo model."""

from __future__ import annotations

from pathlib import Path


def run_gui(size: int | None = None, seed: int | None = None, device: str = "auto",
            screenshot: Path | None = None) -> int:
    """Open the viewer, dock Load/Segment/Export and start the run; with ``screenshot``, save
    a picture of the whole window once the run has finished and close."""
    import napari
    from qtpy.QtCore import QTimer

    from napari_ftu.plugin.demo import DEMO_SEED
    from napari_ftu.plugin.sample import SAMPLE_SIZE, synthetic_layers

    viewer = napari.Viewer(title="napari-ftu demo")
    for data, kwargs, kind in synthetic_layers(size or SAMPLE_SIZE, DEMO_SEED if seed is None else seed):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    truth = viewer.layers["ground truth"]
    truth.contour = 3  # outlines, so the prediction underneath stays visible
    truth.opacity = 1.0
    viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    viewer.window.add_plugin_dock_widget("napari-ftu", "Export")
    _, seg = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    seg.device.value = device
    seg.image.value = viewer.layers["synthetic kidney"]  # its metadata picks the synthetic demo model
    worker = seg.run()
    if screenshot is not None and worker is not None:
        viewer.window._qt_window.resize(1600, 1000)

        def snap():
            hide_notices(viewer)
            viewer.layers.move(viewer.layers.index(truth), len(viewer.layers))
            viewer.reset_view()
            viewer.screenshot(str(screenshot), canvas_only=False)
            viewer.close()

        worker.finished.connect(lambda: QTimer.singleShot(1000, snap))
    napari.run()
    return 0


def hide_notices(viewer) -> None:
    """Hide napari's notification toasts (start-up notices), which would cover a screenshot."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.hide()
