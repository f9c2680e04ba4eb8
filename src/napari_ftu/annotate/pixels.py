"""The scribble pixel classifier: fixed filter bank + a small per-pixel MLP head, trained on the
pixels a user painted (1 = background, 2, 3, ... = FTU classes).

The trained classifier is an ``nn.Module`` (:func:`feature_classifier`) that maps a normalised
RGB or multichannel tile to logits like any segmentation network, so it saves as an ordinary
model folder (card with ``architecture: "FeatureClassifier"`` + safetensors weights) and
``load_model``, ``segment``, batch and the docks run it through the tile engine unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_ftu.errors import InputError
from napari_ftu.models.features import (
    ARCHITECTURE,
    DEEP_ENCODER,
    DEEP_SCALE,
    SIGMAS,
    SMOOTH,
    deep_scale_for,
    feature_classifier,
    to_unit,
)
from napari_ftu.models.torch_import import import_torch

BACKGROUND = 1  # scribble value of the background; 2, 3, ... are FTU classes
MAX_TRAIN_PIXELS = 20_000  # per class; strokes are short, this only bounds huge fills
TILE = 1024  # prediction tile of the in-memory path
UNLABELLED = 1000  # random unpainted pixels added to the background (FTUs are a minority of tissue)
UNLABELLED_WEIGHT = 0.9  # their share of the background's weight in the loss
UNLABELLED_WEIGHT_DEEP = 0.5  # with the encoder stages, which tell tubules from glomeruli themselves


@dataclass
class PixelClassifier:
    """A trained classifier with what it needs to be saved and run."""

    network: object
    classes: list  # FTU class names (scribble values 2, 3, ...)
    in_channels: int
    um_per_px: float
    sigmas: tuple = SIGMAS
    stains: str = "hed"
    hidden: int = 0
    smooth: float = SMOOTH
    deep: int = 0  # pretrained encoder stages among the features (RGB only)
    deep_scale: float = DEEP_SCALE

    def probability(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) image -> (K, H, W) float32: per FTU class its probability, tile by tile."""
        torch = import_torch()

        x = to_unit(image)
        h, w = x.shape[:2]
        k = len(self.classes)
        out = np.zeros((k, h, w), np.float32)
        m = self.network.bank.margin
        with torch.inference_mode():
            for y0 in range(0, h, TILE):
                for x0 in range(0, w, TILE):
                    ya, xa = max(0, y0 - m), max(0, x0 - m)
                    yb, xb = min(h, y0 + TILE + m), min(w, x0 + TILE + m)
                    t = torch.from_numpy(np.ascontiguousarray(x[ya:yb, xa:xb].transpose(2, 0, 1)))[None]
                    logits = self.network(t)[0]
                    prob = torch.sigmoid(logits) if k == 1 else torch.softmax(logits, 0)[1:]
                    out[:, y0:y0 + TILE, x0:x0 + TILE] = prob[:, y0 - ya:y0 - ya + TILE, x0 - xa:x0 - xa + TILE].numpy()
        return out

    @classmethod
    def from_model(cls, model) -> PixelClassifier:
        """The classifier of a loaded model folder (``load_model``) that :meth:`save` wrote, to
        run it outside the tile engine (cells of other fields)."""
        from napari_ftu.errors import ModelError

        card = model.card
        if card.architecture != ARCHITECTURE:
            raise ModelError(f"{card.name}: not a scribble classifier (architecture {card.architecture})")
        kw = {k: card.arch_kwargs[k] for k in ("stains", "hidden", "smooth", "deep", "deep_scale")
              if k in card.arch_kwargs}
        classes = list(card.classes) if len(card.classes) == 1 else list(card.classes[1:])
        return cls(model.network, classes, card.in_channels, card.um_per_px,
                   sigmas=tuple(card.arch_kwargs.get("sigmas", SIGMAS)), **kw)

    def card(self, name: str | None = None, threshold: float = 0.5, min_object_um2: float = 0.0,
             cells: bool = False):
        """The model card that makes this a model folder ``load_model`` can read; ``cells`` marks
        a cells classifier (:attr:`~napari_ftu.models.card.ModelCard.makes_cells`)."""
        from napari_ftu.models.card import ModelCard

        name = name or ("scribble classifier (cells)" if cells else "scribble classifier")

        classes = list(self.classes) if len(self.classes) == 1 else ["background", *self.classes]
        deep = self.deep if self.in_channels == 3 else 0
        # the engine blends tiles over the overlap: it must cover the context each tile edge lacks
        overlap = min(512, max(64, -(-2 * self.network.bank.margin // 32) * 32)) if deep else 64
        tile = 512 if overlap <= 128 else 1024
        notes = {"trained on": "scribbles (napari-ftu annotate)"}
        if cells:
            notes["objects"] = "cells"
        if deep:
            from napari_ftu.models.pretrained import weights_record

            notes["encoder_weights"] = weights_record(DEEP_ENCODER)
        return ModelCard(architecture=ARCHITECTURE, encoder=f"filter-bank+{DEEP_ENCODER}" if deep else "filter-bank",
                         arch_kwargs={"sigmas": list(self.sigmas), "stains": self.stains, "hidden": self.hidden,
                                      "smooth": self.smooth, "deep": deep, "deep_scale": self.deep_scale},
                         in_channels=self.in_channels, classes=classes, um_per_px=float(self.um_per_px),
                         mean=[0.0] * self.in_channels, std=[1.0] * self.in_channels, threshold=threshold,
                         min_object_um2=float(min_object_um2), tile_size=tile, overlap=overlap, name=name,
                         notes=notes, trained_on={"source": "scribbles (napari-ftu annotate)",
                                                  "um_per_px": [float(self.um_per_px)] * 2})

    def model(self, device="cpu", **card_kwargs):
        """This classifier as an engine model (``FTUModel``), so *Apply to slide* runs it through
        the tile engine like any model folder. The network is a copy: a retrain meanwhile does
        not change a running job."""
        import copy

        from napari_ftu.models.loading import FTUModel

        return FTUModel(copy.deepcopy(self.network), self.card(**card_kwargs), device)

    def save(self, folder, **card_kwargs):
        from napari_ftu.models.loading import save_model

        return save_model(self.network, self.card(**card_kwargs), folder)


def check_scribbles(image_shape, scribbles: np.ndarray, source: str = "scribbles") -> list[int]:
    """The FTU class values painted; raises :class:`InputError` on unusable scribbles."""
    s = np.asarray(scribbles)
    if s.ndim != 2 or s.shape != tuple(image_shape[:2]):
        raise InputError(f"{source}: shape {s.shape} does not match the image ({tuple(image_shape[:2])})")
    if s.dtype.kind not in "iu":
        raise InputError(f"{source}: scribbles must be integer labels, got {s.dtype}")
    values = np.unique(s)
    if BACKGROUND not in values:
        raise InputError(f"{source}: no background strokes (label {BACKGROUND}); paint some background")
    ftu = [int(v) for v in values if v > BACKGROUND]
    if not ftu:
        raise InputError(f"{source}: no FTU strokes (label 2 or more); paint some FTUs")
    return ftu


def train(image, scribbles, um_per_px: float = 1.0, classes: list | None = None,
          sigmas=SIGMAS, hidden: int = 0, steps: int = 300, seed: int = 0, unlabelled: int = UNLABELLED,
          features: np.ndarray | None = None, source: str = "scribbles", deep: int = 0) -> PixelClassifier:
    """Fit the head on the painted pixels of one image, or of several (lists of images and
    scribbles, painted with the same class values).

    A few strokes cannot show every kind of background, so ``unlabelled`` random unpainted pixels
    per image join the background at a lower weight: FTUs are a minority of the tissue, and this
    prior lifts the mean Dice on the Sarder patches from about 0.3 to 0.6 (bench/annotate.py; with
    the deep features, which separate tubules from glomeruli, a lower weight keeps more of each FTU).
    ``features`` (F, H, W) of a single image may be passed to reuse them between retrains.
    ``deep`` pretrained encoder stages (DEEP_STAGES: all) join the filters of RGB images, seeing
    the image resized to about DEEP_UM µm/px (from ``um_per_px``). Off by default: they lift the
    Sarder Dice but make *Apply to slide* several times slower on the tile engine."""
    torch = import_torch()

    images = list(image) if isinstance(image, (list, tuple)) else [image]
    scribbles = list(scribbles) if isinstance(scribbles, (list, tuple)) else [scribbles]
    ftu = sorted({v for im, sc in zip(images, scribbles) for v in check_scribbles(np.shape(im), sc, source)})
    channels = {np.shape(im)[-1] if np.ndim(im) == 3 else 1 for im in images}
    if len(channels) != 1:
        raise InputError(f"{source}: images with different channel counts {sorted(channels)}")
    torch.manual_seed(seed)
    scale = deep_scale_for(um_per_px)
    net = feature_classifier(channels.pop(), len(ftu), sigmas, hidden=hidden, deep=deep, deep_scale=scale)
    rng = np.random.default_rng(seed)
    parts = [[] for _ in range(len(ftu) + 2)]  # background, FTU classes, unlabelled
    for im, sc in zip(images, scribbles):
        picks = pick_pixels(np.asarray(sc).ravel(), ftu, rng, unlabelled)
        if features is not None and len(images) == 1:
            flat = features.reshape(features.shape[0], -1)
            rows = [flat[:, idx].T for idx in picks]
        else:
            rows = sample_features(net, to_unit(im), picks)
        for target, r in enumerate(rows):
            if len(r):
                parts[target].append(r)
    X, y, w = training_set(parts, net.bank.n_out, UNLABELLED_WEIGHT_DEEP if net.bank.n_deep else UNLABELLED_WEIGHT)
    mean, std = X.mean(0), X.std(0).clamp_min(1e-3)
    net.feat_mean.copy_(mean)
    net.feat_std.copy_(std)
    fit_head(net.head, (X - mean) / std, y, w / w.sum(), len(ftu), steps)
    names = list(classes) if classes and len(classes) == len(ftu) else [f"class {v}" for v in ftu]
    return PixelClassifier(net.eval(), names, net.bank.n_in, float(um_per_px), tuple(sigmas), net.bank.stains,
                           hidden=hidden, deep=net.bank.n_deep, deep_scale=scale)


def pick_pixels(s: np.ndarray, ftu: list, rng, unlabelled: int = UNLABELLED, cap: int = MAX_TRAIN_PIXELS) -> list:
    """Flat indices of the training pixels of flat scribbles ``s``: per value (background, then
    ``ftu``) its painted pixels, at most ``cap`` drawn at random, then ``unlabelled`` random
    unpainted pixels."""
    picks = []
    for value in [BACKGROUND, *ftu]:
        idx = np.flatnonzero(s == value)
        picks.append(rng.choice(idx, cap, replace=False) if idx.size > cap else idx)
    free = np.flatnonzero(s == 0)
    picks.append(rng.choice(free, min(unlabelled, free.size), replace=False) if unlabelled and free.size
                 else np.zeros(0, np.int64))
    return picks


def training_set(parts: list, n_feat: int, unlabelled_weight: float = UNLABELLED_WEIGHT):
    """(X, y, w) tensors from feature rows per target (background, FTU classes, unlabelled):
    each class weighs the same whatever its pixel count, the unlabelled pixels are background
    with ``unlabelled_weight`` of its weight."""
    torch = import_torch()

    xs, ys, ws = [], [], []
    for target, chunks in enumerate(parts):
        a = np.concatenate(chunks) if chunks else np.zeros((0, n_feat), np.float32)
        if not len(a):
            continue
        share = 1.0
        if target == 0 and parts[-1]:
            share = 1 - unlabelled_weight
        elif target == len(parts) - 1:
            share = unlabelled_weight
        xs.append(a)
        ys.append(np.full(len(a), 0 if target == len(parts) - 1 else target))
        ws.append(np.full(len(a), share / len(a)))
    return (torch.from_numpy(np.concatenate(xs).astype(np.float32)),
            torch.from_numpy(np.concatenate(ys).astype(np.int64)),
            torch.from_numpy(np.concatenate(ws).astype(np.float32)))


def sample_features(net, x: np.ndarray, picks: list) -> list:
    """Features (n, F) at the flat pixel indices of each array in ``picks``, computed tile by tile
    (with the bank's margin) so memory stays bounded by a tile whatever the image size."""
    torch = import_torch()

    h, w = x.shape[:2]
    m = net.bank.margin
    out = [np.zeros((len(idx), net.bank.n_out), np.float32) for idx in picks]
    coords = [np.unravel_index(idx, (h, w)) for idx in picks]
    for y0 in range(0, h, TILE):
        for x0 in range(0, w, TILE):
            inside = [(yy >= y0) & (yy < y0 + TILE) & (xx >= x0) & (xx < x0 + TILE) for yy, xx in coords]
            if not any(i.any() for i in inside):
                continue
            ya, xa = max(0, y0 - m), max(0, x0 - m)
            tile = x[ya:min(h, y0 + TILE + m), xa:min(w, x0 + TILE + m)]
            with torch.inference_mode():
                f = net.bank(torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1)))[None])[0].numpy()
            for k, ((yy, xx), sel) in enumerate(zip(coords, inside)):
                out[k][sel] = f[:, yy[sel] - ya, xx[sel] - xa].T
    return out


def compute_features(net, x: np.ndarray) -> np.ndarray:
    """The filter bank of an (H, W, C) [0, 1] image, (F, H, W) float32 (for training)."""
    torch = import_torch()

    with torch.inference_mode():
        return net.bank(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None])[0].numpy()


def fit_head(head, X, y, w, n_ftu: int, steps: int) -> None:
    """Full-batch Adam on a weighted loss (each class weighs the same whatever its pixel count);
    the head is tiny, so a few hundred steps take well under a second (as matrix products: torch
    runs a 1×1 convolution over N 1×1 images a hundred times slower)."""
    torch = import_torch()
    import torch.nn.functional as F

    opt = torch.optim.Adam(head.parameters(), lr=0.01, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        out = _as_linear(head, X)
        if n_ftu == 1:
            loss = (F.binary_cross_entropy_with_logits(out[:, 0], y.float(), reduction="none") * w).sum()
        else:
            loss = (F.cross_entropy(out, y, reduction="none") * w).sum()
        loss.backward()
        opt.step()


def _as_linear(head, X):
    """The 1×1-convolution head (or MLP of them) applied to rows ``X`` (N, F) as linear layers."""
    import torch.nn.functional as F

    layers = list(head) if hasattr(head, "__iter__") else [head]
    for layer in layers:
        if hasattr(layer, "weight"):
            X = F.linear(X, layer.weight[:, :, 0, 0], layer.bias)
        else:
            X = layer(X)
    return X
