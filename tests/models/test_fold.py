"""Batch norm folded into convolutions for torch inference: same outputs, fewer layers."""

import numpy as np
import torch

from napari_ftu.engine.inference import segment
from napari_ftu.models.backends import load
from napari_ftu.models.fold import fold_batch_norm
from napari_ftu.models.loading import build_network


def _bn_count(network):
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())


def _randomise_bn(network, seed=0):
    """Trained-looking statistics, so that folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    for m in network.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return network.eval()


def test_the_built_in_model_folds_to_the_same_segmentation(default_model, small_slide):
    rgb = small_slide[0]
    folded = load(None, device="cpu", backend="torch")
    assert folded.folded > 0 and _bn_count(folded.network) == 0 and _bn_count(default_model.network) > 0
    ref = segment(rgb, default_model, um_per_px=1.0)
    got = segment(rgb, folded, um_per_px=1.0)
    assert np.abs(ref.probability - got.probability).max() <= 1e-4
    np.testing.assert_array_equal(ref.labels, got.labels)


def test_the_training_default_architecture_folds(tmp_path):
    """EfficientNet-Lite0 U-Net (timm-style blocks with batch norm + activation in one module)."""
    from napari_ftu.training.train import new_model

    card, _ = new_model(encoder="efficientnet-lite0", pretrained=False)
    net = _randomise_bn(build_network(card))
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
    before = _bn_count(net)
    folded, n = fold_batch_norm(net)
    assert n == before and _bn_count(folded) == 0
    with torch.no_grad():  # probabilities; random statistics make float32 rounding differ up to ~1.3e-4
        assert (torch.sigmoid(folded(x)) - torch.sigmoid(ref)).abs().max().item() <= 1e-3


class _SkipAroundBN(torch.nn.Module):
    """A convolution whose output feeds a batch norm and also a skip connection: folding the
    norm into it would change the skip, so it must be refused."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_fold_that_would_change_the_output_is_not_made():
    net = _randomise_bn(_SkipAroundBN())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
    folded, n = fold_batch_norm(net)
    assert n == 0 and isinstance(folded.bn, torch.nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), ref)


def test_a_network_in_training_mode_is_left_alone():
    net = _randomise_bn(_SkipAroundBN()).train()
    assert fold_batch_norm(net) == (net, 0)
