"""DICOM WSI (wsidicom) and OpenSlide behind open_slide, checked against the real CMU SVS read by
tifffile: the DICOM slides are made from it with wsidicomizer in the tests."""

import os
import shutil

import numpy as np
import pydicom
import pytest

from napari_ftu.errors import InputError
from napari_ftu.io.slides import _block_mean, open_slide
from napari_ftu.io.tiled import TiledLevel


def test_svs_opens_with_tifffile_first(svs):
    slide = open_slide(svs)
    assert slide.backend == "tifffile"
    slide.close()


def test_dicom_folder_equals_the_svs_exactly_where_tiles_are_copied(dicom_copy, svs_pixels):
    slide = open_slide(dicom_copy)
    assert slide.backend == "dicom" and slide.kind == "rgb" and slide.name == "cmu"
    assert len(slide.levels) == 1 and isinstance(slide.levels[0], TiledLevel)
    assert slide.um_per_px == pytest.approx(0.499)  # the SVS's MPP, through the DICOM pixel spacing
    np.testing.assert_array_equal(np.asarray(slide.levels[0][...]), svs_pixels)
    window = slide.levels[0][1000:1256, 800:1057]
    np.testing.assert_array_equal(window, svs_pixels[1000:1256, 800:1057])
    slide.close()


def test_dicom_pyramid_levels_match_the_svs_within_jpeg_tolerance(dicom_pyramid, svs_pixels):
    """Level 0 is the SVS's JPEG tiles copied (exact); the added levels are block means
    re-encoded as JPEG by wsidicomizer: mean error under 6 grey levels, 99 % of pixels within
    40 (measured 3.7-4.2 and 24-25)."""
    slide = open_slide(dicom_pyramid)
    assert [lvl.shape for lvl in slide.levels] == [(2967, 2220, 3), (1484, 1110, 3), (742, 555, 3),
                                                    (371, 278, 3), (186, 139, 3)]
    assert slide.um_per_px == pytest.approx(0.499)
    np.testing.assert_array_equal(np.asarray(slide.levels[0][...]), svs_pixels)
    for k, level in enumerate(slide.levels[1:], start=1):
        ref = _block_mean(svs_pixels, 2**k)
        diff = np.abs(np.asarray(level[...]).astype(int) - ref)
        assert diff.mean() < 6 and np.percentile(diff, 99) < 40, (k, diff.mean())
    slide.close()


def test_one_file_of_a_dicom_series_opens_the_whole_series(dicom_pyramid):
    first = sorted(dicom_pyramid.iterdir())[0]
    slide = open_slide(first)
    assert slide.backend == "dicom" and len(slide.levels) == 5 and slide.size == (2967, 2220)
    slide.close()


def test_dicom_level_reads_only_the_tiles_it_needs(dicom_pyramid):
    slide = open_slide(dicom_pyramid)
    level = slide.levels[0]
    before = level.reads
    level[300:500, 250:470]  # tiles are 240 px: rows 1-2, columns 1-1
    assert level.reads - before == 2
    level[300:500, 250:470]  # cached
    assert level.reads - before == 2
    assert level[::500, ::700].shape == (6, 4, 3)
    slide.close()


def test_openslide_backend_equals_tifffile(svs, svs_pixels):
    tiff = open_slide(svs)
    slide = open_slide(svs, backend="openslide")
    assert slide.backend == "openslide" and slide.um_per_px == pytest.approx(tiff.um_per_px)
    assert len(slide.levels) == len(tiff.levels)
    for ours, theirs in zip(slide.levels, tiff.levels):
        assert ours.shape == theirs.shape  # RGB: OpenSlide's RGBA composited
        np.testing.assert_array_equal(np.asarray(ours[...]), np.asarray(theirs[...]))
    slide.close()
    tiff.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _listing(folder):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


def test_dicom_folder_with_a_missing_instance_is_refused(dicom_pyramid, tmp_path):
    folder = tmp_path / "missing"
    shutil.copytree(dicom_pyramid, folder)
    for file in folder.iterdir():
        if pydicom.dcmread(file, stop_before_pixels=True).InstanceNumber == 2:
            file.unlink()
    listing, fds = _listing(folder), _fds()
    with pytest.raises(InputError) as err:
        open_slide(folder)
    message = str(err.value)
    assert message.startswith(f"{folder}: ") and "instances missing" in message and "\n" not in message
    assert _listing(folder) == listing and _fds() == fds


def test_truncated_dicom_instance_is_refused(dicom_pyramid, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(dicom_pyramid, folder)
    base = next(f for f in folder.iterdir() if pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber == 0)
    base.write_bytes(base.read_bytes()[: base.stat().st_size // 2])
    fds = _fds()
    with pytest.raises(InputError, match="^" + str(folder) + ": cannot read image") as err:
        open_slide(folder)
    assert "\n" not in str(err.value) and _fds() == fds


def test_non_slide_dicom_is_refused(tmp_path):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ct = FileDataset(str(tmp_path / "ct.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ct.SOPClassUID, ct.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ct.Modality, ct.SeriesInstanceUID, ct.StudyInstanceUID = "CT", generate_uid(), generate_uid()
    ct.Rows = ct.Columns = 64
    ct.BitsAllocated, ct.BitsStored, ct.HighBit, ct.PixelRepresentation = 16, 16, 15, 0
    ct.SamplesPerPixel, ct.PhotometricInterpretation = 1, "MONOCHROME2"
    ct.PixelData = np.arange(64 * 64, dtype=np.uint16).tobytes()
    folder = tmp_path / "ct"
    folder.mkdir()
    ct.save_as(folder / "ct.dcm", enforce_file_format=True)
    for path in (folder, folder / "ct.dcm"):
        with pytest.raises(InputError) as err:
            open_slide(path)
        assert str(err.value).startswith(f"{path}: a DICOM CT image (CT Image Storage), not a whole-slide image")


def test_truncated_files_for_openslide_are_refused(svs, tmp_path):
    data = svs.read_bytes()
    truncated = tmp_path / "cut.svs"
    truncated.write_bytes(data[: len(data) * 9 // 10])
    mrxs = tmp_path / "cut.mrxs"
    mrxs.write_bytes(data[:4096])
    for path, backend in ((truncated, "openslide"), (mrxs, None)):
        with pytest.raises(InputError) as err:
            open_slide(path, backend=backend)
        assert str(err.value) == f"{path}: not a slide format OpenSlide recognises (damaged, or not the type its " \
                                  "name says)"


def test_a_folder_without_dicom_files_is_not_a_slide(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="a folder without DICOM files is not a slide"):
        open_slide(tmp_path)


def test_dicom_with_two_optical_paths_shows_the_first_and_says_so(dicom_pyramid, tmp_path):
    from pydicom.uid import generate_uid

    folder = tmp_path / "paths"
    shutil.copytree(dicom_pyramid, folder)
    headers = {f: pydicom.dcmread(f) for f in folder.iterdir()}
    base = next(h for h in headers.values() if h.InstanceNumber == 0)
    base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    base.OpticalPathSequence[0].OpticalPathIdentifier = "1"  # the base level again, as a second path
    base.InstanceNumber = max(int(h.InstanceNumber) for h in headers.values()) + 1
    base.save_as(folder / "second_path.dcm")
    slide = open_slide(folder)
    assert slide.note == "2 optical paths: showing the first (0)"
    assert len(slide.levels) == 5 and slide.size == (2967, 2220)
    slide.close()
