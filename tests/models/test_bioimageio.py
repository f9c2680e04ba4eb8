"""Models out and in: export-model (ONNX with our card, bioimage.io packages validated by
bioimageio.spec and tested by bioimageio.core) and --model accepting ONNX files and packages."""

import json
import shutil
import zipfile

import imageio.v3 as iio
import numpy as np
import pytest
import yaml

from napari_ftu.cli import main
from napari_ftu.engine.inference import segment
from napari_ftu.errors import ModelError
from napari_ftu.models.backends import load
from napari_ftu.models.loading import FTUModel, ModelCard, save_model
from napari_ftu.models.onnx import OnnxModel, export_onnx

bio_spec = pytest.importorskip("bioimageio.spec")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FTU_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def real_tile_png(shared_data, tmp_path_factory):
    images = sorted((shared_data / "sarder_frozen_kidney_glomeruli" / "images").glob("*.png"))
    return images[0]


@pytest.fixture(scope="module")
def package(real_tile_png, tmp_path_factory):
    """The built-in model as a bioimage.io zip, its test input a real kidney tile."""
    out = tmp_path_factory.mktemp("pkg") / "glomeruli.zip"
    assert main(["export-model", "--format", "bioimageio", str(out), "--test-image", str(real_tile_png)]) == 0
    return out


def test_export_onnx_carries_the_card_and_equals_torch(tmp_path, default_model, capsys):
    out = tmp_path / "glomeruli.onnx"
    assert main(["export-model", "--format", "onnx", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    model = load(out, device="cpu")
    assert isinstance(model, OnnxModel) and model.card == default_model.card
    from napari_ftu.io.synthetic import make_slide

    rgb = make_slide(512, 512, seed=11, um_per_px=2.0)[0]
    ref, got = segment(rgb, default_model), segment(rgb, model)
    assert np.abs(ref.probability - got.probability).max() <= 1e-4
    np.testing.assert_array_equal(ref.labels, got.labels)
    assert main(["export-model", "--format", "onnx", str(out)]) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err


def test_the_package_validates_and_passes_bioimageio_core(package, real_tile_png):
    from bioimageio.core import test_model
    from bioimageio.spec import load_model_description

    descr = load_model_description(package)
    assert descr.validation_summary.status == "valid-format"
    assert {"onnx", "torchscript"} <= set(descr.weights.available_formats)
    assert descr.config.model_extra["napari_ftu"]["model_card"]["um_per_px"] == 2.0
    assert [a.scale for a in descr.inputs[0].axes if a.type == "space"] == [2.0, 2.0]
    summary = test_model(package)
    assert summary.status == "passed", summary.format()
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        assert {"rdf.yaml", "model.onnx", "weights_torchscript.pt", "test_input.npy", "test_output.npy",
                "cover.png", "README.md"} <= names
        z.extract("test_input.npy", package.parent)
    tile = np.asarray(iio.imread(real_tile_png))[..., :3]
    test_input = np.load(package.parent / "test_input.npy")
    np.testing.assert_array_equal(test_input[0].transpose(1, 2, 0), tile[:256, :256])  # a real tile


def test_the_package_round_trips(package, default_model, shared_data, real_tile_png):
    model = load(package, device="cpu")
    assert model.backend == "onnxruntime" and model.card == default_model.card
    rgb = np.asarray(iio.imread(real_tile_png))[..., :3]
    ref, got = segment(rgb, default_model, um_per_px=2.0), segment(rgb, model, um_per_px=2.0)
    assert np.abs(ref.probability - got.probability).max() <= 1e-4
    np.testing.assert_array_equal(ref.labels, got.labels)
    with pytest.raises(ModelError, match="--trust-model"):
        load(package, device="cpu", backend="torch")
    scripted = load(package, device="cpu", backend="torch", trust_code=True)
    assert scripted.backend == "torch"
    one_tile = segment(rgb, default_model, um_per_px=2.0, edge_margin=0)  # the tile itself, no mirrored margins
    assert np.abs(scripted.predict(rgb[None, :256, :256]) - one_tile.probability[None, None, :256, :256]).max() <= 1e-4


def test_an_smp_model_of_another_architecture(tmp_path):
    """FPN with a ResNet-18 encoder and random weights, exported to ONNX here: the graph equals
    torch, as a single file and as a saved folder."""
    import torch

    from napari_ftu.models.loading import build_network

    card = ModelCard(architecture="FPN", encoder="resnet18", arch_kwargs={}, classes=["glomerulus", "tubule"],
                     um_per_px=1.0, tile_size=128, overlap=16)
    torch.manual_seed(0)
    net = build_network(card).eval()
    ref_model = FTUModel(net, card, "cpu")
    tiles = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3)).astype(np.uint8)
    ref = ref_model.predict(tiles)
    onnx_file = export_onnx(net, card, tmp_path / "fpn.onnx")
    by_file = load(onnx_file, device="cpu")
    assert by_file.card.architecture == "FPN"
    np.testing.assert_allclose(by_file.predict(tiles), ref, atol=1e-4)
    np.testing.assert_allclose(by_file.predict(tiles).sum(1), 1, atol=1e-5)  # softmax over 2 classes
    folder = save_model(net, card, tmp_path / "fpn")
    np.testing.assert_allclose(load(folder, device="cpu").predict(tiles), ref, atol=1e-4)


def _foreign_package(tmp_path, weights="onnx", post="sigmoid"):
    """A bioimage.io package not made by us, built with bioimageio.spec's classes: a 1x1
    convolution giving logits, 0.5 µm/px, input scaled to 0..1 then normalised per tile."""
    import onnx
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio
    from onnx import TensorProto, helper

    w = np.array([0.02, -0.01, 0.03], np.float32).reshape(1, 3, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["raw", "w"], ["logit"])], "foreign",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(model, str(src / "foreign.onnx"))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 3, 64, 64)).astype(np.float32)
    pre = reference_preprocess(x)
    logits = np.einsum("nchw,c->nhw", pre, w.ravel())[:, None]
    np.save(src / "in.npy", x)
    np.save(src / "out.npy", (1 / (1 + np.exp(-logits))).astype(np.float32))
    iio.imwrite(src / "cover.png", np.zeros((64, 128, 3), np.uint8))
    space = {"unit": "micrometer", "scale": 0.5}
    descr = bio.ModelDescr(
        name="foreign nuclei", description="a test model", authors=[bio.Author(name="test")], license="MIT",
        cite=[bio.CiteEntry(text="test", url="https://example.org")], covers=[bio.FileDescr(source=src / "cover.png")],
        inputs=[bio.InputTensorDescr(
            id=bio.TensorId("raw"), test_tensor=bio.FileDescr(source=src / "in.npy"),
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(c) for c in "rgb"]),
                  bio.SpaceInputAxis(id=bio.AxisId("y"), size=bio.ParameterizedSize(min=64, step=16), **space),
                  bio.SpaceInputAxis(id=bio.AxisId("x"), size=bio.ParameterizedSize(min=64, step=16), **space)],
            preprocessing=[bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=1 / 255)),
                           bio.ZeroMeanUnitVarianceDescr()])],
        outputs=[bio.OutputTensorDescr(
            id=bio.TensorId("prob"), test_tensor=bio.FileDescr(source=src / "out.npy"),
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("nucleus")]),
                  bio.SpaceOutputAxis(id=bio.AxisId("y"), size=bio.SizeReference(
                      tensor_id=bio.TensorId("raw"), axis_id=bio.AxisId("y")), **space),
                  bio.SpaceOutputAxis(id=bio.AxisId("x"), size=bio.SizeReference(
                      tensor_id=bio.TensorId("raw"), axis_id=bio.AxisId("x")), **space)],
            postprocessing=[bio.SigmoidDescr()] if post == "sigmoid" else [])],
        weights=bio.WeightsDescr(onnx=bio.OnnxWeightsDescr(source=src / "foreign.onnx", opset_version=17)))
    out = tmp_path / "foreign.zip"
    save_bioimageio_package(descr, output_path=out)
    return out, w.ravel()


def reference_preprocess(x):
    """scale_linear(1/255) then zero_mean_unit_variance over each sample, as bioimage.io defines them."""
    x = x / 255
    return (x - x.mean((1, 2, 3), keepdims=True)) / (x.std((1, 2, 3), keepdims=True) + 1e-6)


def test_a_foreign_package_runs_with_its_own_processing(tmp_path):
    out, w = _foreign_package(tmp_path)
    model = load(out, device="cpu")
    assert model.card.um_per_px == 0.5 and model.card.classes == ["nucleus"]
    assert model.card.tile_size % 16 == 0 and model.card.tile_size >= 64
    tiles = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    pre = reference_preprocess(tiles.transpose(0, 3, 1, 2).astype(np.float32))
    expected = 1 / (1 + np.exp(-np.einsum("nchw,c->nhw", pre, w)[:, None]))
    np.testing.assert_allclose(model.predict(tiles), expected, atol=1e-5)
    # and through the CLI in a fresh process, which never imports torch for it
    import os
    import subprocess
    import sys
    from pathlib import Path

    rgb = np.random.default_rng(4).integers(0, 256, (200, 300, 3)).astype(np.uint8)
    iio.imwrite(tmp_path / "img.png", rgb)
    code = ("import sys; from napari_ftu.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, 'torch' in sys.modules)")
    src = Path(__file__).resolve().parents[2] / "src"
    done = subprocess.run([sys.executable, "-c", code, "segment", str(tmp_path / "img.png"), "--model", str(out),
                           "--out", str(tmp_path / "o.csv"), "--um-per-px", "0.5", "--json"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(src)}, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "0 False", done.stderr
    assert json.loads(done.stdout.strip().splitlines()[0])["backend"] == "onnxruntime"


def _edited(package, tmp_path, edit):
    folder = tmp_path / "edited"
    with zipfile.ZipFile(package) as z:
        z.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    edit(rdf, folder)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    return folder


def _state_dict_only(rdf, folder):
    rdf["weights"] = {"pytorch_state_dict": {"source": "w.pt"}}
    (folder / "w.pt").write_bytes(b"x")


@pytest.mark.parametrize("edit, match", [
    (_state_dict_only, "weights are pytorch_state_dict"),
    (lambda r, f: r["outputs"][0].update(postprocessing=[{"id": "stardist_postprocessing", "kwargs": {}}]),
     "'stardist_postprocessing' is not supported"),
    (lambda r, f: r["inputs"][0]["axes"].insert(2, {"type": "space", "id": "z", "size": 8}),
     "2-D models"),
    (lambda r, f: r["weights"]["onnx"].update(source="../../outside.onnx"), "missing or outside the package"),
    (lambda r, f: r["weights"]["onnx"].update(source="https://example.org/model.onnx"), "remote"),
    (lambda r, f: r.update(type="dataset"), "not a model"),
])
def test_packages_we_cannot_run_get_one_line(tmp_path, edit, match):
    out, _ = _foreign_package(tmp_path)
    folder = _edited(out, tmp_path, edit)
    with pytest.raises(ModelError, match=match) as info:
        load(folder, device="cpu")
    assert "\n" not in str(info.value)


def test_torchscript_only_needs_consent(package, tmp_path):
    folder = _edited(package, tmp_path, lambda r, f: r["weights"].pop("onnx"))
    with pytest.raises(ModelError, match="only TorchScript.*--trust-model") as info:
        load(folder, device="cpu")
    assert "\n" not in str(info.value)
    assert load(folder, device="cpu", trust_code=True).backend == "torch"


def test_a_zip_whose_members_leave_the_folder_is_refused(tmp_path):
    out, _ = _foreign_package(tmp_path)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        dst.writestr("../escaped.txt", "x")
    with pytest.raises(ModelError, match="outside the package folder"):
        load(evil, device="cpu")
    assert not (tmp_path / "cache" / "escaped.txt").exists()


def test_the_dock_accepts_a_package_file(make_napari_viewer, tmp_path):
    out, _ = _foreign_package(tmp_path)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    widget.device.value = "cpu"
    widget.add_model(out)
    assert widget._load().card.classes == ["nucleus"] and "(model not loaded)" not in widget.domain.value
    shutil.rmtree(tmp_path / "cache")
