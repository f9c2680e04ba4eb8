"""The Segment dock's backend choice: which runtime ran is in its status, and both agree."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")


def test_segment_dock_backend_choice(viewer_with_slide, qtbot):
    viewer, _ = viewer_with_slide
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    widget.device.value = "cpu"
    widget.image.value = viewer.layers["kidney"]
    labels = {}
    for backend in ("onnxruntime", "torch"):
        widget.backend.value = backend
        assert widget._load().backend == backend
        widget.run()
        qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
        assert f"on cpu, {backend}" in widget.status.value, widget.status.value
        labels[backend] = np.asarray(viewer.layers["kidney FTUs"].data).copy()
    assert labels["torch"].max() > 0
    np.testing.assert_array_equal(labels["torch"] > 0, labels["onnxruntime"] > 0)
    from napari_ftu.models.backends import gpu_present

    widget.backend.value = "auto"
    assert widget._load().backend == ("torch" if gpu_present() else "onnxruntime")
