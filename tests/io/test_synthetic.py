import numpy as np
import pytest
import tifffile

from napari_ftu.io.images import read_image
from napari_ftu.io.synthetic import SlideSpec, glomeruli, make_slide, render, write_slide


def test_seeded_and_deterministic():
    a = make_slide(300, 400, seed=5)
    b = make_slide(300, 400, seed=5)
    c = make_slide(300, 400, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_windows_agree_with_the_whole():
    spec = SlideSpec(900, 900, seed=11)
    whole_rgb, whole_lab = render(spec, 0, 0, 900, 900)
    part_rgb, part_lab = render(spec, 300, 450, 200, 300)
    np.testing.assert_array_equal(part_rgb, whole_rgb[300:500, 450:750])
    np.testing.assert_array_equal(part_lab, whole_lab[300:500, 450:750])


def test_looks_like_tissue_with_glomeruli_and_background():
    rgb, labels, spec = make_slide(2048, 2048, seed=3)
    n = labels.max()
    assert 3 <= n <= 40
    sizes = np.bincount(labels.ravel())[1:]
    diam_um = 2 * np.sqrt(sizes / np.pi) * spec.um_per_px
    assert 50 < np.median(diam_um) < 200  # kidney glomeruli are about 80-200 µm across
    glass = rgb.min(axis=-1) > 215
    assert 0.05 < glass.mean() < 0.8  # empty glass as well as tissue
    inside = rgb[labels > 0].astype(float)
    tissue = rgb[(labels == 0) & ~glass].astype(float)
    assert inside[:, 1].mean() < 200 and tissue[:, 1].mean() < 200  # eosin/haematoxylin absorb green


def test_stain_and_scale_vary_with_seed():
    styles = [SlideSpec(10, 10, seed=s).style for s in range(6)]
    assert len({round(s["glom_radius_um"], 3) for s in styles}) == 6
    assert len({tuple(np.round(s["e_vec"], 4)) for s in styles}) == 6


def test_pixel_size_scales_the_objects():
    spec_fine = SlideSpec(4000, 4000, seed=2, um_per_px=0.5)
    spec_coarse = SlideSpec(2000, 2000, seed=2, um_per_px=1.0)
    # Same physical slide: same objects, in micrometres.
    assert [g["id"] for g in glomeruli(spec_fine)] == [g["id"] for g in glomeruli(spec_coarse)]


def test_pyramidal_ome_tiff_written_tile_by_tile(tmp_path):
    paths = write_slide(tmp_path / "slide", 1500, 1300, seed=9, um_per_px=0.5, pyramid=True)
    with tifffile.TiffFile(paths["image"]) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.shape == (1500, 1300, 3)
        assert [lvl.shape[:2] for lvl in series.levels] == [(1500, 1300), (750, 650)]
        assert series.pages[0].is_tiled
        level1 = series.levels[1].asarray()
    loaded = read_image(paths["image"])
    assert loaded.um_per_px == pytest.approx(0.5)
    rgb, labels, _ = make_slide(1500, 1300, seed=9, um_per_px=0.5)
    assert np.abs(loaded.data.astype(int) - rgb).mean() < 4  # JPEG at quality 90
    lab = read_image(paths["labels"]).data
    np.testing.assert_array_equal(lab > 0, labels > 0)
    assert level1.shape == (750, 650, 3)


def test_large_sizes_default_to_pyramid(tmp_path, monkeypatch):
    import napari_ftu.io.synthetic as syn

    monkeypatch.setattr(syn, "PYRAMID_MIN_SIZE", 1024)
    paths = write_slide(tmp_path / "big", 1024, 600, seed=1)
    assert paths["image"].name.endswith(".ome.tif")


def test_labels_only_rendering_matches():
    from napari_ftu.io.synthetic import render_labels

    spec = SlideSpec(1200, 1200, seed=8)
    for d in (1, 4):
        np.testing.assert_array_equal(render_labels(spec, 10, 20, 300, 280, d), render(spec, 10, 20, 300, 280, d)[1])
