"""The Load dock's batch section: a folder segmented in a worker, then browsed image by image."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")


def test_load_dock_batch_segments_a_folder_and_browses_the_results(make_napari_viewer, qtbot, tmp_path):
    from napari_ftu.batch.runner import COMBINED
    from napari_ftu.io.images import read_image
    from napari_ftu.io.synthetic import write_slide

    for i, seed in enumerate((305, 313)):
        write_slide(tmp_path / "slides" / f"kidney_{i}", 512, 576, seed=seed, um_per_px=1.0)
    viewer = make_napari_viewer()
    _, load = viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    worker = load.batch_segment(tmp_path / "slides")  # 0 Dask workers: in napari's process
    assert worker is not None and not load.batch_button.enabled
    qtbot.waitUntil(lambda: load.batch_button.enabled, timeout=180_000)
    out = tmp_path / "slides" / "napari-ftu-batch"
    assert (out / COMBINED).read_text().count("\n") == 3  # header + 2 slides (not their label files)
    assert "2 done" in load.status.value and "1 / 2: kidney_0" in load.status.value
    image, labels = viewer.layers
    assert isinstance(labels, napari.layers.Labels) and labels.data.shape == image.data.shape[:2]
    np.testing.assert_array_equal(labels.data, read_image(out / "kidney_0" / "kidney_0_labels.ome.tif").data)
    assert labels.data.max() > 0 and tuple(labels.scale) == (1.0, 1.0)
    load.next_button.changed.emit(True)
    assert "2 / 2: kidney_1" in load.status.value and not load.next_button.enabled
    assert [lyr.name for lyr in viewer.layers] == ["kidney_1", "kidney_1 labels"]
