import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ftu.errors import ModelError
from napari_ftu.models.card import ModelCard
from napari_ftu.models.loading import FTUModel, build_network, load_model, save_model


@pytest.fixture(scope="module")
def tiny_card():
    return ModelCard(encoder="resnet18", arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 4]},
                     tile_size=64, overlap=16, name="tiny")


def test_built_in_models_cards_and_sizes(default_model):
    from napari_ftu.models.loading import BUILTIN_MODELS, builtin_model_path, default_model_path, model_path

    assert default_model_path() == builtin_model_path("builtin") == model_path("builtin")
    for name in BUILTIN_MODELS:
        folder = builtin_model_path(name)
        assert (folder / "model.safetensors").stat().st_size <= 25 * 2**20
        card = json.loads((folder / "model_card.json").read_text())
        for key in ("architecture", "encoder", "classes", "um_per_px", "mean", "std", "threshold"):
            assert key in card
        assert card["classes"] == ["glomerulus"]
    assert default_model.card.classes == ["glomerulus"]
    # the default says what it was trained on: real PAS kidney, the data's licence and attribution
    domain = default_model.card.trained_on
    assert domain["organs"] == ["kidney"] and "PAS" in domain["stain"] and "ccf" in domain["source"]
    assert any(d["licence"] == "MIT" and "cns-iu/ccf-research-ftu" in d["attribution"]
               for d in default_model.card.notes["data"])
    # the demo's model says plainly that it knows synthetic slides only
    demo = load_model(builtin_model_path("synthetic-demo"), device="cpu").card.trained_on
    assert "synthetic" in demo["source"] and "demo" in demo["note"] and demo["um_per_px"] == [1.6, 2.4]
    with pytest.raises(ModelError, match="no built-in model"):
        builtin_model_path("nope")
    assert model_path("some/folder") == Path("some/folder")


def test_cards_without_trained_on_still_load(tmp_path):
    from napari_ftu.models.card import describe_domain

    data = json.loads(ModelCard().to_json())
    del data["trained_on"]
    (tmp_path / "model_card.json").write_text(json.dumps(data))
    card = ModelCard.read(tmp_path / "model_card.json")
    assert card.trained_on == {} and describe_domain(card) == "trained on: not stated in the model card"
    card.trained_on = {"organs": ["kidney", "lung"], "stain": "H&E", "um_per_px": [0.25, 0.5], "note": "HuBMAP."}
    assert describe_domain(ModelCard.from_dict(json.loads(card.to_json()))) == \
        "trained on: kidney, lung; H&E; 0.25–0.5 µm/px. HuBMAP."


def test_save_and_load_round_trip(tmp_path, tiny_card):
    net = build_network(tiny_card).eval()
    save_model(net, tiny_card, tmp_path / "m")
    model = load_model(tmp_path / "m", device="cpu")
    x = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3)).astype(np.uint8)
    x_t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    ref = torch.sigmoid(net((x_t - model_mean(tiny_card)) / model_std(tiny_card)))
    np.testing.assert_allclose(model.predict(x), ref.detach().numpy(), atol=1e-6)


def model_mean(card):
    return torch.tensor(card.mean).view(1, -1, 1, 1) * 255


def model_std(card):
    return torch.tensor(card.std).view(1, -1, 1, 1) * 255


@pytest.mark.parametrize("prefix", ["", "module.", "model."])
def test_state_dict_checkpoint_with_prefixes(tmp_path, tiny_card, prefix):
    net = build_network(tiny_card)
    torch.save({"state_dict": {prefix + k: v for k, v in net.state_dict().items()}}, tmp_path / "ckpt.pt")
    (tmp_path / "model_card.json").write_text(tiny_card.to_json())
    model = load_model(tmp_path / "ckpt.pt", device="cpu")
    for k, v in net.state_dict().items():
        assert torch.equal(model.network.state_dict()[k], v)


def test_wrong_checkpoint_names_the_keys(tmp_path, tiny_card):
    other = ModelCard(encoder="resnet18", arch_kwargs={"encoder_depth": 4, "decoder_channels": [16, 8, 4, 4]})
    save_model(build_network(other), tiny_card, tmp_path)  # weights of another network, card of tiny
    with pytest.raises(ModelError, match="unexpected keys"):
        load_model(tmp_path, device="cpu")


def test_pickled_code_is_refused_and_not_run(tmp_path, tiny_card):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pt")
    (tmp_path / "model_card.json").write_text(tiny_card.to_json())
    with pytest.raises(ModelError, match="evil.pt"):
        load_model(tmp_path / "evil.pt", device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("patch, problem", [({"threshold": 2}, "threshold"), ({"um_per_px": -1}, "um_per_px"),
                                            ({"bogus": 1}, "unknown fields"), ({"classes": []}, "classes"),
                                            ({"trained_on": "kidney"}, "trained_on"),
                                            ({"trained_on": {"organ": ["kidney"]}}, "unknown 'trained_on' fields"),
                                            ({"trained_on": {"organs": "kidney"}}, "trained_on.organs"),
                                            ({"trained_on": {"stain": 3}}, "trained_on.stain"),
                                            ({"trained_on": {"um_per_px": [2, 0.5]}}, r"trained_on.um_per_px"),
                                            ({"trained_on": {"um_per_px": [0, 1]}}, r"trained_on.um_per_px")])
def test_bad_cards_are_refused(tmp_path, patch, problem):
    data = json.loads(ModelCard().to_json()) | patch
    (tmp_path / "model_card.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=problem):
        ModelCard.read(tmp_path / "model_card.json")


def test_missing_card_or_weights(tmp_path):
    with pytest.raises(ModelError, match="no such"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelError, match="model_card.json"):
        load_model(tmp_path)
    (tmp_path / "model_card.json").write_text(ModelCard().to_json())
    with pytest.raises(ModelError, match="no weights"):
        load_model(tmp_path)


def _tiles(n=2, size=64):
    return np.random.default_rng(1).integers(0, 255, (n, size, size, 3)).astype(np.uint8)


def test_smp_save_pretrained_folder_with_and_without_card(tmp_path, tiny_card):
    from napari_ftu.models.torch_import import import_smp

    smp = import_smp()
    net = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=[16, 8, 4], classes=2).eval()
    net.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no model card"):
        model = load_model(tmp_path, device="cpu")
    assert model.card.architecture == "Unet" and len(model.card.classes) == 2
    card = ModelCard(classes=["glomerulus", "vessel"], um_per_px=0.5, tile_size=64, overlap=8)
    (tmp_path / "model_card.yaml").write_text(
        "\n".join(f"{k}: {json.dumps(v)}" for k, v in json.loads(card.to_json()).items()))
    model = load_model(tmp_path, device="cpu")
    assert model.card.classes == ["glomerulus", "vessel"] and model.card.um_per_px == 0.5
    prob = model.predict(_tiles())
    assert prob.shape == (2, 2, 64, 64)
    np.testing.assert_allclose(prob.sum(1), 1, atol=1e-5)  # softmax: one probability per class
    x = torch.from_numpy(_tiles()).permute(0, 3, 1, 2).float()
    ref = torch.softmax(net((x - model_mean(card)) / model_std(card)), 1).detach().numpy()
    np.testing.assert_allclose(prob, ref, atol=1e-5)
    card.classes = ["only one"]
    (tmp_path / "model_card.yaml").write_text(card.to_json())  # JSON is valid YAML
    with pytest.raises(ModelError, match="1 classes but config.json has 2"):
        load_model(tmp_path, device="cpu")


def test_torchscript_model_with_card(tmp_path, tiny_card):
    net = build_network(tiny_card).eval()
    scripted = torch.jit.trace(net, torch.zeros(1, 3, 64, 64))
    scripted.save(str(tmp_path / "model.pt"))
    (tmp_path / "model_card.json").write_text(tiny_card.to_json())
    with pytest.raises(ModelError, match=r"model.pt: a TorchScript model carries its own code.*--trust-model"):
        load_model(tmp_path / "model.pt", device="cpu")  # code runs only with the user's consent
    model = load_model(tmp_path / "model.pt", device="cpu", trust_code=True)
    plain = load_model(save_model(net, tiny_card, tmp_path / "plain"), device="cpu")
    np.testing.assert_allclose(model.predict(_tiles()), plain.predict(_tiles()), atol=1e-5)
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match="broken.pt"):
        load_model(tmp_path / "broken.pt", device="cpu", trust_code=True)


def test_per_class_thresholds(tmp_path):
    card = ModelCard(classes=["glomerulus", "vessel"], threshold=0.5, thresholds={"vessel": 0.3})
    assert card.threshold_for("vessel") == 0.3 and card.threshold_for("glomerulus") == 0.5
    data = json.loads(card.to_json()) | {"thresholds": {"vessel": 1.5}}
    with pytest.raises(ModelError, match="vessel"):
        ModelCard.from_dict(data)


def test_tta_averages_views_and_reports_disagreement(tiny_card):
    net = build_network(tiny_card).eval()
    model = FTUModel(net, tiny_card, "cpu")
    tiles = _tiles()
    mean, std = model.predict(tiles, tta=True, with_std=True)
    views = [model.predict(tiles),
             model.predict(tiles[:, :, ::-1])[..., ::-1],
             model.predict(tiles[:, ::-1])[..., ::-1, :],
             np.rot90(model.predict(np.rot90(tiles, 1, (1, 2)).copy()), -1, (2, 3))]
    np.testing.assert_allclose(mean, np.mean(views, 0), atol=1e-5)
    np.testing.assert_allclose(std, np.std(views, 0), atol=1e-5)
    assert std.max() > 0  # a random U-Net is not flip-invariant
