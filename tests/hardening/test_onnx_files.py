"""Hostile ONNX files: each is refused with one line naming the file and the problem, before
ONNX Runtime reads it; random damage gives that line or a working model, nothing else."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from napari_ftu.errors import ModelError
from napari_ftu.models.backends import load
from napari_ftu.models.loading import ModelCard
from napari_ftu.models.onnx import CARD_KEY, OnnxModel, check_onnx

CARD = ModelCard(tile_size=64, overlap=0, um_per_px=1.0)


def tiny_graph(initializer=None, node_domain="", opsets=(("", 17),), input_dims=("n", 3, "h", "w")):
    """A 1x1 convolution to one sigmoid channel: the smallest model the engine can run."""
    weight = initializer or helper.make_tensor("w", TensorProto.FLOAT, [1, 3, 1, 1], [0.1, -0.2, 0.3])
    nodes = [helper.make_node("Conv", ["image", weight.name], ["logit"], domain=node_domain),
             helper.make_node("Sigmoid", ["logit"], ["probability"])]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(input_dims))],
                              [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["n", 1, "h", "w"])],
                              [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    helper.set_model_props(model, {CARD_KEY: CARD.to_json()})
    return model


def write(model, path):
    onnx.save(model, str(path))
    return path


def refused(path, match):
    with pytest.raises(ModelError, match=match) as info:
        load(path, device="cpu")
    message = str(info.value)
    assert "\n" not in message and str(path.name) in message
    return message


def test_a_tiny_graph_with_its_card_runs(tmp_path):
    model = load(write(tiny_graph(), tmp_path / "tiny.onnx"), device="cpu")
    assert model.backend == "onnxruntime" and model.card.tile_size == 64
    prob = model.predict(np.full((1, 8, 8, 3), 128, np.uint8))
    assert prob.shape == (1, 1, 8, 8) and 0 < prob.min() <= prob.max() < 1


def _external(tmp_path, location):
    weight = TensorProto()
    weight.name, weight.data_type = "w", TensorProto.FLOAT
    weight.dims.extend([1, 3, 1, 1])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "12")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    folder = tmp_path / "model"
    folder.mkdir()
    return write(tiny_graph(initializer=weight), folder / "model.onnx")


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 12)
    refused(_external(tmp_path, location), "outside the model folder")


def test_external_data_inside_the_folder_is_allowed(tmp_path):
    path = _external(tmp_path, "weights.bin")
    np.array([0.1, -0.2, 0.3], np.float32).tofile(path.parent / "weights.bin")
    assert load(path, device="cpu").predict(np.zeros((1, 4, 4, 3), np.uint8)).shape == (1, 1, 4, 4)


def test_custom_operator_domains_are_refused(tmp_path):
    refused(write(tiny_graph(node_domain="com.evil.ops", opsets=(("", 17), ("com.evil.ops", 1))), tmp_path / "b.onnx"),
            "custom operator domain 'com.evil.ops'")
    # declared but unused (ONNX Runtime's quantiser declares a dozen): harmless, runs
    assert load(write(tiny_graph(opsets=(("", 17), ("com.evil.ops", 1))), tmp_path / "a.onnx"), device="cpu")


def test_declared_sizes_beyond_the_memory_budget_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FTU_MEMORY_BUDGET", "100M")
    huge = TensorProto()  # declares 1 x 3 x 100000 x 100000 floats (120 GB) and holds none
    huge.name, huge.data_type = "w", TensorProto.FLOAT
    huge.dims.extend([1, 3, 100_000, 100_000])
    refused(write(tiny_graph(initializer=huge), tmp_path / "huge.onnx"), "memory budget")
    refused(write(tiny_graph(input_dims=(1, 3, 1 << 40, 8)), tmp_path / "wide.onnx"), "declares a dimension")


def test_not_onnx_at_all(tmp_path):
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    refused(tmp_path / "noise.onnx", "not an ONNX model")
    no_card = tiny_graph()
    del no_card.metadata_props[:]
    refused(write(no_card, tmp_path / "bare.onnx"), "without a model card")
    bad_card = tiny_graph()
    helper.set_model_props(bad_card, {CARD_KEY: json.dumps({"tile_size": -5})})
    refused(write(bad_card, tmp_path / "badcard.onnx"), "tile_size")


def test_damaged_graphs_fail_with_one_line_or_run(tmp_path):
    """Bytes of a valid graph changed at random: every outcome is a ModelError line or a model
    that runs; never another exception."""
    data = bytearray(tiny_graph().SerializeToString())
    rng = np.random.default_rng(1)
    outcomes = {"refused": 0, "ran": 0}
    for i in range(40):
        damaged = bytearray(data)
        for pos in rng.integers(0, len(data), 3):
            damaged[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"d{i}.onnx"
        path.write_bytes(bytes(damaged))
        try:
            model = OnnxModel(path, CARD)
            model.predict(np.zeros((1, 4, 4, 3), np.uint8))
            outcomes["ran"] += 1
        except ModelError as exc:
            assert "\n" not in str(exc) and path.name in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0


def test_check_onnx_accepts_our_own_export():
    from napari_ftu.models.loading import default_model_path

    graph = check_onnx(default_model_path() / "model.onnx")
    assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx"}
