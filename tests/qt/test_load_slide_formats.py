"""The Load dock and the reader open a DICOM WSI as a multiscale layer, reading tiles, not levels."""

import numpy as np
import pytest

from napari_ftu.plugin.reader import get_reader


def _tiles(level) -> int:
    return -(-level.shape[0] // level.tile[0]) * -(-level.shape[1] // level.tile[1])


def test_load_dock_opens_a_dicom_folder_as_multiscale_reading_only_tiles(make_napari_viewer, dicom_pyramid, svs_pixels):
    viewer = make_napari_viewer()
    _, load = viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    layer = load.open(dicom_pyramid)
    assert layer.multiscale and len(layer.data) == 5 and tuple(layer.scale) == pytest.approx((0.499, 0.499))
    assert "5 levels" in load.status.value and "(dicom)" in load.status.value
    viewer.screenshot(canvas_only=True)  # draw the first view
    levels = load.slide.levels
    # the slide fits the canvas: napari reads the level it shows (and the smallest, for the thumbnail);
    # the others only had their corner tiles checked at opening
    shown = layer.data_level
    assert shown > 0 and levels[0].reads == 2
    assert all(lvl.reads == 2 for k, lvl in enumerate(levels[:-1]) if k != shown)
    # zoomed in on a window at full resolution: that window's tiles only, and the right pixels
    viewer.camera.center = (1500 * 0.499, 1000 * 0.499)
    viewer.camera.zoom = 1 / 0.499
    viewer.screenshot(canvas_only=True)
    assert layer.data_level == 0 and 0 < levels[0].reads - 2 < _tiles(levels[0])
    np.testing.assert_array_equal(np.asarray(layer.data[0][1400:1600, 900:1100]), svs_pixels[1400:1600, 900:1100])


def test_the_dataset_field_opens_a_dicom_folder_as_one_slide(make_napari_viewer, dicom_copy):
    viewer = make_napari_viewer()
    _, load = viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    layer = load.open_dataset(dicom_copy)
    assert layer is not None and load.slide.backend == "dicom" and len(viewer.layers) == 1


def test_reader_takes_dicom_folders_and_files(dicom_pyramid, tmp_path):
    assert get_reader(str(dicom_pyramid)) is not None
    first = sorted(dicom_pyramid.iterdir())[0]
    (data, kwargs, kind), = get_reader(str(first))(str(first))
    assert kind == "image" and kwargs["multiscale"] and len(data) == 5 and kwargs["rgb"]
    assert get_reader(str(tmp_path / "slide.mrxs")) is not None  # handed to OpenSlide
    assert get_reader(str(tmp_path / "notes.txt")) is None
