import json

import numpy as np
import pytest
import torch

from napari_ftu.models import ModelCard, ModelError, build_network, load_model, save_model


@pytest.fixture(scope="module")
def tiny_card():
    return ModelCard(encoder="resnet18", arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 4]},
                     tile_size=64, overlap=16, name="tiny")


def test_default_model_card_and_size(default_model):
    from napari_ftu.models import default_model_path

    folder = default_model_path()
    assert (folder / "model.safetensors").stat().st_size <= 10 * 2**20
    card = json.loads((folder / "model_card.json").read_text())
    for key in ("architecture", "encoder", "classes", "um_per_px", "mean", "std", "threshold"):
        assert key in card
    assert default_model.card.classes == ["glomerulus"]


def test_save_and_load_round_trip(tmp_path, tiny_card):
    net = build_network(tiny_card).eval()
    save_model(net, tiny_card, tmp_path / "m")
    model = load_model(tmp_path / "m", device="cpu")
    x = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3)).astype(np.uint8)
    ref = torch.sigmoid(net((torch.from_numpy(x).permute(0, 3, 1, 2).float() - model_mean(tiny_card)) / model_std(tiny_card)))
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
                                            ({"bogus": 1}, "unknown fields"), ({"classes": []}, "classes")])
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
