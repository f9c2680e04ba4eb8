"""A fixed multi-scale filter bank as torch convolutions, the input of the scribble classifier.

Per input channel and scale: the Gaussian-smoothed value, its Laplacian, gradient magnitude and
the two Hessian eigenvalues (blob, edge and ridge detectors at that scale), as ilastik and QuPath
use. RGB histology goes through colour deconvolution first (haematoxylin, eosin, DAB optical
densities, the same matrix as ``skimage.color.rgb2hed``) so the features follow stains, not the
scanner's colour; fluorescence channels are used as they are. Scales are in pixels of the grid the
classifier runs at; the model card's µm/px fixes that grid, so they are scales in µm.

The bank is an ``nn.Module`` with no trainable parameters, so the saved classifier needs no code
beyond this file and its weights hold only the head.
"""

from __future__ import annotations

import math

import numpy as np

from napari_ftu.engine.models import import_torch

# skimage.color.hed_from_rgb (Ruifrok & Johnston), rows = R, G, B optical density -> H, E, D
HED_FROM_RGB = np.array([[1.87798274, -1.00767869, -0.55611582],
                         [-0.06590806, 1.13473037, -0.1355218],
                         [-0.60190736, -0.48041419, 1.57358807]], np.float32)
DEFAULT_SIGMAS = (1.0, 2.0, 4.0, 8.0)
PER_SCALE = 5  # smoothed, LoG, gradient magnitude, Hessian eigenvalues (2)


def n_features(in_channels: int, sigmas=DEFAULT_SIGMAS) -> int:
    """Feature count: the raw channels plus PER_SCALE per channel and scale.

    Parameters
    ----------
    in_channels : int
    sigmas : sequence of float
        The scales of :func:`filter_bank_module`.

    Returns
    -------
    int
    """
    return in_channels * (1 + PER_SCALE * len(sigmas))


def _gauss_kernel(sigma: float):
    torch = import_torch()

    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def filter_bank_module(in_channels: int = 3, sigmas=DEFAULT_SIGMAS, stains: str = "hed"):
    """The filter bank: (N, C, H, W) in [0, 1] -> (N, F, H, W) float32 features.

    Parameters
    ----------
    in_channels : int
        Image channels.
    sigmas : sequence of float
        Gaussian scales in pixels.
    stains : str
        Colour deconvolution (``"hed"``) or none, so stain amounts rather than RGB feed the filters.

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
                       hidden: int = 0, smooth: float = SMOOTH):
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

    Returns
    -------
    torch.nn.Module
    """
    torch = import_torch()
    from torch import nn

    n_feat = n_features(in_channels, sigmas)
    n_out = 1 if n_classes == 1 else n_classes + 1

    class FeatureClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.bank = filter_bank_module(in_channels, sigmas, stains)
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
                              kw.get("stains", "hed"), int(kw.get("hidden", 0)), float(kw.get("smooth", SMOOTH)))
