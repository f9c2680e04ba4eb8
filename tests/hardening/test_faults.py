"""Security and faults: crafted checkpoints, ids that try to leave the output folder, a full disk
or a forbidden folder during export, cancel and errors inside the docks' workers, GPU out of
memory in the Segment dock."""

import errno
import json
import pickle
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_ftu.errors import FormatError, InputError, ModelError
from napari_ftu.formats import csv_formats
from napari_ftu.formats.annotations import Annotations
from napari_ftu.formats.export import export_annotations, import_annotations
from napari_ftu.io.images import write_tiff
from napari_ftu.models.card import ModelCard
from napari_ftu.models.loading import load_model
from napari_ftu.steps import TileProgress, TrainStep
from napari_ftu.training.tiles import export_tiles

TINY = ModelCard(encoder="resnet18", arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 4]},
                 tile_size=64, overlap=16, name="tiny")

# --- crafted checkpoints ------------------------------------------------------------------------


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: the file appearing means code ran."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _zip_with_code(path, payload):
    """Looks like TorchScript (``archive/code/``) but carries a pickle that would run code."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/code/__torch__.py", "def forward(self, x):\n    return x\n")
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/constants.pkl", payload)
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize("variant", ["nested", "legacy-format", "plain-pickle", "fake-safetensors",
                                     "torchscript-lookalike", "folder-weights"])
def test_crafted_checkpoints_are_refused_and_do_not_run(tmp_path, variant):
    import torch

    marker = tmp_path / "pwned"
    _Evil.marker = marker
    (tmp_path / "model_card.json").write_text(TINY.to_json())
    evil = _Evil()
    target = tmp_path / {"plain-pickle": "w.pth", "fake-safetensors": "w.safetensors",
                         "folder-weights": "model.safetensors"}.get(variant, "w.pt")
    if variant == "nested":  # code deep inside an otherwise plausible state dict
        torch.save({"model": {"encoder.conv1.weight": torch.zeros(1), "hooks": [{"x": evil}]}}, target)
    elif variant == "legacy-format":  # torch's pre-1.6 non-zip format
        torch.save({"state_dict": evil}, target, _use_new_zipfile_serialization=False)
    elif variant == "torchscript-lookalike":
        _zip_with_code(target, pickle.dumps(evil, protocol=2))
    else:  # a bare pickle, named like a checkpoint or like safetensors
        target.write_bytes(pickle.dumps({"weight": evil}))
    with pytest.raises(ModelError, match=target.name):
        load_model(tmp_path if variant == "folder-weights" else target, device="cpu")
    assert not marker.exists()


def test_a_card_cannot_run_code_through_yaml(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "model_card.yaml").write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="model_card.yaml"):
        load_model(tmp_path, device="cpu")
    assert not marker.exists()


# --- ids and file names from files can never leave the chosen folder ------------------------------

HOSTILE_IDS = ["../x", "../../etc/cron.d/x", "/tmp/abs", "a/b", "a\\b", "a\x00b", "x" * 300, ".hidden", "a\n", ".."]


def _tree(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("bad", HOSTILE_IDS)
def test_hostile_ids_in_csvs_are_refused_and_coco_keeps_only_a_plain_name(tmp_path, bad):
    from napari_ftu.formats.annotations import safe_id

    for fmt, text in {"hubmap": f'id,rle,img_height,img_width\n"{bad}",1 2,3,3\n',
                      "hpa": f'ImageID,ImageWidth,ImageHeight,PredictionString\n"{bad}",3,3,\n'}.items():
        path = tmp_path / f"{fmt}.csv"
        path.write_text(text)
        with pytest.raises(FormatError):
            import_annotations(path, fmt)
    path = tmp_path / "c.json"  # COCO file names may hold folders: the id is the bare name, or refused
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": bad, "height": 3, "width": 3}]}))
    try:
        (a,) = import_annotations(path, "coco")
    except FormatError:
        return
    assert safe_id(a.image_id) == Path(bad).stem and "/" not in a.image_id


@pytest.mark.parametrize("bad", HOSTILE_IDS)
def test_hostile_ids_never_write_outside_the_output_folder(tmp_path, bad):
    out = tmp_path / "out"
    out.mkdir()
    before = _tree(tmp_path)
    labels = np.zeros((64, 64), np.int32)
    labels[10:20, 10:20] = 1
    with pytest.raises(FormatError):
        export_tiles(np.zeros((64, 64, 3), np.uint8), labels, out, bad, tile=32)
    with pytest.raises(FormatError):
        export_annotations(Annotations(bad, labels), out / "sub.csv", "hubmap")
    assert _tree(tmp_path) == before


def test_dataset_files_cannot_point_outside_their_folder(tmp_path):
    """A train.csv, polygons.jsonl or COCO file naming ``../secret`` is refused, not followed."""
    from napari_ftu.formats.datasets import open_dataset

    secret = tmp_path / "secret.tiff"
    write_tiff(secret, np.zeros((3, 3, 3), np.uint8))
    root = tmp_path / "hubmap"
    (root / "train_images").mkdir(parents=True)
    (root / "train.csv").write_text("id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness,rle\n"
                                    "../../secret,kidney,HPA,3,3,0.4,4,1 2\n")
    with pytest.raises(FormatError, match="not a safe file name"):
        open_dataset(root).load(0)
    root = tmp_path / "vasc"
    (root / "train").mkdir(parents=True)
    (root / "polygons.jsonl").write_text(json.dumps({"id": "../../secret", "annotations": []}) + "\n")
    with pytest.raises(FormatError, match="not a safe file name"):
        open_dataset(root).load(0)
    root = tmp_path / "coco"
    root.mkdir()
    for name in ("../secret.tiff", str(secret), "a\x00.tif"):
        doc = {"images": [{"id": 1, "file_name": name, "height": 3, "width": 3}], "annotations": []}
        (root / "c.json").write_text(json.dumps(doc))
        with pytest.raises(FormatError):
            open_dataset(root).load(0)
    with pytest.raises(InputError, match="NUL"):
        open_dataset(str(tmp_path) + "\x00x")


# --- full disk and forbidden folders during export -------------------------------------------------


def _labels():
    labels = np.zeros((64, 64), np.int32)
    labels[5:30, 5:30] = 1
    return labels


def test_disk_full_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = export_annotations(Annotations("a", _labels()), tmp_path / "sub.csv", "hubmap")
    before = path.read_bytes()

    class HalfThenFull:  # the CSV writer appends rows to a file: half the bytes reach the disk, then ENOSPC
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, text):
            self.fh.write(text[: len(text) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device", self.fh.name)

    monkeypatch.setattr(csv_formats, "open", lambda *a, **k: HalfThenFull(open(*a, **k)), raising=False)
    with pytest.raises(OSError, match=r"cannot write sub.csv: No space left on device") as info:
        export_annotations(Annotations("b", np.ones((64, 64), np.int32)), path, "hubmap", overwrite=True)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]  # no temporary left behind


def test_file_size_limit_is_a_real_write_failure(tmp_path):
    """The kernel refuses the write (RLIMIT_FSIZE, EFBIG) in a child process, as a full disk
    would: the export fails with an OSError naming the file, the previous file is intact."""
    path = export_annotations(Annotations("a", _labels()), tmp_path / "big.geojson", "geojson")
    before = path.read_bytes()
    code = textwrap.dedent(f"""
        import resource, signal, numpy as np
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) + 100}, {len(before) + 100}))
        from napari_ftu.formats.annotations import Annotations
        from napari_ftu.formats.export import export_annotations
        labels = np.arange(64 * 64, dtype=np.int32).reshape(64, 64) % 50  # many objects: a big file
        try:
            export_annotations(Annotations("a", labels), {str(path)!r}, "geojson", overwrite=True)
        except OSError as exc:
            print(type(exc).__name__, exc.errno, exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"OSError {errno.EFBIG} " in result.stdout and "cannot write big.geojson" in result.stdout
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["big.geojson"]


def test_read_only_folder_gives_a_clear_error_even_for_root():
    """Root ignores permissions, so the export runs in a child process that gives up root
    (setuid to ``nobody``) after its imports."""
    top = Path(tempfile.mkdtemp(prefix="napari-ftu-ro-"))  # pytest's tmp_path is closed to other users
    try:
        top.chmod(0o755)
        folder = top / "ro"
        folder.mkdir()
        path = export_annotations(Annotations("a", _labels()), folder / "sub.csv", "hubmap")
        before = path.read_bytes()
        folder.chmod(0o555)
        code = textwrap.dedent(f"""
            import os
            import numpy as np
            from napari_ftu.formats.annotations import Annotations
            from napari_ftu.formats.export import export_annotations
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            assert os.geteuid() != 0
            try:
                export_annotations(Annotations("b", np.ones((8, 8), np.int32)), {str(path)!r}, "hubmap",
                                   overwrite=True)
            except PermissionError as exc:
                print("PermissionError", exc)
        """)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("PermissionError") and "cannot write sub.csv" in result.stdout
        assert str(path) in result.stdout
        assert path.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["sub.csv"]
    finally:
        (top / "ro").chmod(0o755)
        import shutil

        shutil.rmtree(top)


def test_failing_writer_during_tile_export_keeps_the_previous_manifest(tmp_path, monkeypatch, small_slide):
    import napari_ftu.atomic as atomic

    rgb, labels, _ = small_slide
    rows = export_tiles(rgb, labels, tmp_path, "s", tile=256, negative_fraction=0.0)
    manifest = (tmp_path / "manifest.csv").read_bytes()
    calls = []
    real = atomic.os.replace

    def fail_on_third(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", fail_on_third)
    with pytest.raises(OSError, match="No space left") as info:
        export_tiles(rgb, labels, tmp_path, "s", tile=128, negative_fraction=0.0)
    assert Path(info.value.filename).name == Path(calls[2]).name  # names the file, not a temporary
    assert (tmp_path / "manifest.csv").read_bytes() == manifest  # still describes the first export
    leftovers = [p for p in tmp_path.rglob("*") if ".part" in p.name]
    assert not leftovers and len(rows) > 0


# --- docks: export, segment and train under faults ------------------------------------------------

napari = pytest.importorskip("napari")


def test_export_dock_reports_a_full_disk_and_keeps_the_file(export_dock, tmp_path, monkeypatch):
    import napari_ftu.atomic as atomic

    _, _, widget = export_dock
    assert widget.export() is not None
    before = (tmp_path / "sub.csv").read_bytes()
    monkeypatch.setattr(type(widget), "confirm_overwrite", lambda self, path: True)
    monkeypatch.setattr(atomic.os, "replace", lambda src, dst: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    assert widget.export() is None
    assert widget.status.value.startswith("Error:") and "No space left" in widget.status.value
    assert "sub.csv" in widget.status.value
    assert (tmp_path / "sub.csv").read_bytes() == before


def _pool_idle(qtbot):
    from qtpy.QtCore import QThreadPool

    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=30_000)
    return True


def _closed(pbar):
    from napari.utils import progress

    return pbar.disable and pbar not in progress._all_instances


def _train_dock(viewer, tmp_path, truth):
    viewer.add_labels(truth, name="kidney corrected")
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Train")
    widget.source.value = "layers in the viewer"
    widget.image.value = viewer.layers["kidney"]
    widget.labels_layer.value = viewer.layers["kidney corrected"]
    widget.batch.value, widget.crop.value = 2, 128
    widget.device.value = "cpu"
    return widget


def test_train_dock_cancel_leaves_no_thread_nor_folder_and_the_next_run_works(viewer_with_slide, qtbot, tmp_path):
    viewer, truth = viewer_with_slide
    widget = _train_dock(viewer, tmp_path, truth)
    widget.steps.value = 500
    widget.out.value = tmp_path / "cancelled"
    worker = widget.run()
    worker.yielded.connect(lambda ev: isinstance(ev, TrainStep) and ev.step >= 2 and widget.cancel())
    with qtbot.waitSignal(worker.finished, timeout=180_000):
        pass
    assert widget.status.value == "cancelled; nothing saved" and not (tmp_path / "cancelled").exists()
    assert _pool_idle(qtbot) and _closed(worker.pbar)
    assert widget.train_button.enabled and not widget.cancel_button.enabled
    assert len(widget.history["loss"]) < 500
    widget.steps.value = 2
    widget.out.value = tmp_path / "next"
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=180_000):
        pass
    assert (tmp_path / "next" / "model.safetensors").is_file() and "best validation Dice" in widget.status.value
    load_model(tmp_path / "next", device="cpu")  # a complete, loadable model folder


def test_train_dock_error_in_the_worker_is_shown_and_the_next_run_works(viewer_with_slide, qtbot, tmp_path,
                                                                        monkeypatch):
    import napari_ftu.training.train as training

    viewer, truth = viewer_with_slide
    widget = _train_dock(viewer, tmp_path, truth)
    widget.steps.value = 2
    widget.out.value = tmp_path / "broken"
    real = training.build_network

    def broken(card):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(training, "build_network", broken)
    with qtbot.capture_exceptions() as raised:  # napari re-raises worker errors in tests
        worker = widget.run()
        qtbot.waitUntil(lambda: widget.train_button.enabled, timeout=60_000)
    assert "illegal memory access" in widget.status.value and widget.status.value.startswith("Error:")
    assert all("illegal memory access" in str(exc[1]) for exc in raised)
    assert _closed(worker.pbar) and _pool_idle(qtbot) and not (tmp_path / "broken").exists()
    monkeypatch.setattr(training, "build_network", real)
    widget.out.value = tmp_path / "fixed"
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=180_000):
        pass
    assert (tmp_path / "fixed" / "model_card.json").is_file()


def _segment_dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    widget.device.value = "cpu"
    widget.image.value = viewer.layers["kidney"]
    return widget


def test_segment_dock_after_cancel_has_no_result_layers_and_the_next_run_works(make_napari_viewer, qtbot,
                                                                             small_slide):
    from napari_ftu.evaluation.metrics import dice
    from napari_ftu.io.synthetic import make_slide

    viewer = make_napari_viewer()
    big, _, _ = make_slide(2048, 2048, seed=1, um_per_px=2.0)  # 64 tiles: cancel lands mid-run
    viewer.add_image(big, name="kidney", metadata={"um_per_px": 2.0})
    widget = _segment_dock(viewer)
    widget.batch.value = 1
    worker = widget.run()
    worker.yielded.connect(lambda ev: isinstance(ev, TileProgress) and ev.done >= 3 and widget.cancel())
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert widget.status.value == "cancelled" and _pool_idle(qtbot) and _closed(worker.pbar)
    assert widget.last_result is None
    assert [layer.name for layer in viewer.layers] == ["kidney"]  # no objects, no half-filled probability
    assert not [t for t in __import__("threading").enumerate() if t.name == "napari-ftu tile reader"]
    # the next run, on another image, completes and replaces nothing it should not
    rgb, truth, spec = small_slide
    viewer.add_image(rgb, name="small", metadata={"um_per_px": spec.um_per_px})
    widget.image.value = viewer.layers["small"]
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.enabled and "small FTUs" in viewer.layers, timeout=120_000)
    assert dice(viewer.layers["small FTUs"].data, truth) >= 0.85
    assert "kidney" in viewer.layers  # the cancelled run's image is untouched


def test_segment_dock_out_of_memory_reduces_the_batch_and_completes(viewer_with_slide, qtbot, monkeypatch):
    import torch

    from napari_ftu.models.loading import FTUModel

    viewer, truth = viewer_with_slide
    widget = _segment_dock(viewer)
    widget.backend.value = "torch"  # device out-of-memory is torch's (ONNX Runtime here runs on the CPU)
    widget.batch.value = 8
    sizes = []
    real = FTUModel.predict

    def predict(self, tiles, *args, **kwargs):
        sizes.append(len(tiles))
        if len(tiles) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(self, tiles, *args, **kwargs)

    monkeypatch.setattr(FTUModel, "predict", predict)
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.enabled and "kidney FTUs" in viewer.layers, timeout=120_000)
    assert widget.last_result.batch_size <= 2 and max(sizes) > 2  # it was asked for more, then halved
    assert "FTUs in" in widget.status.value and not widget.status.value.startswith("Error")
    from napari_ftu.evaluation.metrics import dice

    assert dice(viewer.layers["kidney FTUs"].data, truth) >= 0.85



def test_segment_dock_rerun_cancel_restores_the_previous_result_and_edits_are_never_overwritten(
        make_napari_viewer, qtbot, monkeypatch):
    from napari_ftu.engine import options
    from napari_ftu.io.synthetic import make_slide

    monkeypatch.setattr(options, "STORE_ABOVE_PIXELS", 0)  # results in temporary zarr stores, as for slides
    viewer = make_napari_viewer()
    big, _, _ = make_slide(2048, 2048, seed=1, um_per_px=2.0)
    viewer.add_image(big, name="kidney", metadata={"um_per_px": 2.0})
    widget = _segment_dock(viewer)
    widget.batch.value = 1
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.enabled and "kidney FTUs" in viewer.layers, timeout=120_000)
    prob_layer, labels = viewer.layers["kidney probability"], viewer.layers["kidney FTUs"]
    prob_before = np.asarray(prob_layer.data).copy()
    first_store = widget.last_result.store
    labels.paint((5, 5), 99)  # the user corrects the objects
    edited = labels.data.copy()
    # a second run, cancelled: the previous probability layer comes back as it was
    worker = widget.run()
    worker.yielded.connect(lambda ev: isinstance(ev, TileProgress) and ev.done >= 3 and widget.cancel())
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert widget.status.value == "cancelled"
    assert [layer.name for layer in viewer.layers] == ["kidney", "kidney probability", "kidney FTUs"]
    assert widget._stores == [first_store] and first_store.is_dir()  # the cancelled run's store is gone
    assert viewer.layers["kidney probability"] is prob_layer and not prob_layer.visible
    np.testing.assert_array_equal(np.asarray(prob_layer.data), prob_before)
    np.testing.assert_array_equal(labels.data, edited)
    # a third run completes: the edited layer is kept as it is, the new objects go beside it
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    np.testing.assert_array_equal(labels.data, edited)
    new = viewer.layers[-1]
    assert isinstance(new, napari.layers.Labels) and new != labels and new.name.startswith("kidney FTUs")
    assert np.asarray(new.data).max() > 0 and 99 not in np.asarray(new.data)
    assert first_store.is_dir()  # still shown by the edited layer
    assert [layer.name for layer in viewer.layers].count("kidney probability") == 1
