"""Live scribble classification of the visible region: every stroke retrains in about a second.

Training on a whole image recomputes the filter bank everywhere (58 s for 2048² on this CPU).
Here the bank runs once per view, on the visible region read at a grid no finer than
``LIVE_SIDE`` pixels a side (a power-of-two step of full-resolution pixels, from the pyramid
level nearest below it), and the standardised stack is cached. A stroke then costs a lookup
of the painted pixels (at most ``MAX_PER_CLASS`` per class, plus ``UNLABELLED`` random
unpainted ones), a few Adam steps of the small head warm-started from the previous weights,
and a 1×1 convolution over the cached stack. The classifier this yields runs at
``um_per_px × step``, so *Apply to slide* and *Save classifier* use it like any other.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import numpy as np

from napari_ftu.annotate.pixels import (
    BACKGROUND,
    UNLABELLED,
    UNLABELLED_WEIGHT,
    UNLABELLED_WEIGHT_DEEP,
    PixelClassifier,
    fit_head,
    pick_pixels,
    training_set,
)
from napari_ftu.boxes import Box, corners, from_corners
from napari_ftu.errors import InputError
from napari_ftu.models.features import (
    SIGMAS,
    SMOOTH,
    deep_scale_for,
    feature_classifier,
    filter_bank_module,
    to_unit,
)
from napari_ftu.models.torch_import import import_torch
from napari_ftu.steps import Progress

LIVE_SIDE = 1024  # grid pixels a side the view is classified at, at most (about a screen)
MAX_PER_CLASS = 5000  # painted training pixels per class and retrain
COLD_STEPS = 300  # Adam steps of a head fitted from scratch
WARM_STEPS = 40  # from the previous weights, after a stroke
# Encoder stages in the live stack: none by default. On the 2048² skin view (bench/annotate_live.py)
# they made the stack 3-4x slower (34 s vs 9.5 s on the loaded 2-core machine) and fitted its
# stain-defined stand-in worse (Dice 0.49 vs 0.65).
LIVE_DEEP = 0


@dataclass(frozen=True)
class View:
    """The region ``box`` of the full-resolution image, classified every ``step`` px."""

    box: Box
    step: int

    @property
    def shape(self) -> tuple[int, int]:
        y0, x0, y1, x1 = corners(self.box)
        return -(-(y1 - y0) // self.step), -(-(x1 - x0) // self.step)


def view_of(box: Box, image_shape, side: int = LIVE_SIDE) -> View:
    """The :class:`View` of ``box`` (full-resolution px) clipped to the image: the smallest
    power-of-two step that keeps it within ``side`` pixels a side."""
    h, w = image_shape[:2]
    y0, x0, y1, x1 = corners(box)
    y0, x0 = max(0, min(y0, h - 1)), max(0, min(x0, w - 1))
    y1, x1 = max(y0 + 1, min(y1, h)), max(x0 + 1, min(x1, w))
    step = 1
    while max(y1 - y0, x1 - x0) > side * step:
        step *= 2
    y1, x1 = y0 + (y1 - y0) // step * step or y0 + step, x0 + (x1 - x0) // step * step or x0 + step
    return View(from_corners(y0, x0, min(y1, h), min(x1, w)), step)


def read_view(levels, view: View, margin: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The view plus ``margin`` grid px of context (clipped at the image border) as (H, W, C)
    float32 in [0, 1] on the view's grid, from the coarsest pyramid level at least as fine as
    it; returns it and where the view starts inside it (grid px)."""
    levels = list(levels) if isinstance(levels, (list, tuple)) else [levels]
    h0, w0 = levels[0].shape[:2]
    y0, x0, y1, x1 = corners(view.box)
    s = view.step
    ya, xa = max(0, y0 - margin * s), max(0, x0 - margin * s)
    yb, xb = min(h0, y1 + margin * s), min(w0, x1 + margin * s)
    ya, xa = y0 - (y0 - ya) // s * s, x0 - (x0 - xa) // s * s  # whole grid cells
    factor, level = 1, levels[0]
    for lvl in levels[1:]:
        f = int(round(h0 / lvl.shape[0]))
        if f <= s and s % f == 0 and f > factor:
            factor, level = f, lvl
    crop = np.asarray(level[ya // factor:-(-yb // factor), xa // factor:-(-xb // factor)])
    x = to_unit(crop)
    k = s // factor
    if k > 1:  # box-average the remaining factor (what a pyramid level is)
        hh, ww = x.shape[0] // k * k, x.shape[1] // k * k
        x = x[:hh, :ww].reshape(hh // k, k, ww // k, k, -1).mean((1, 3))
    return np.ascontiguousarray(x), ((y0 - ya) // s, (x0 - xa) // s)


def view_scribbles(scribbles: np.ndarray, view: View) -> np.ndarray:
    """The scribbles of the view on its grid: per grid cell the highest value painted in it
    (a thin stroke survives the downsampling)."""
    crop = np.asarray(scribbles[view.box])
    s = view.step
    if s == 1:
        return crop
    h, w = view.shape
    pad = np.zeros((h * s, w * s), crop.dtype)
    pad[:crop.shape[0], :crop.shape[1]] = crop
    return pad.reshape(h, s, w, s).max((1, 3))


class LiveClassifier:
    """The cached feature stack of one view and the head fitted on it, retrained per stroke.
    Thread-safe (a lock), so a superseded worker cannot interleave with the next one."""

    def __init__(self, sigmas=SIGMAS, seed: int = 0, deep: int = LIVE_DEEP):
        self.sigmas = tuple(sigmas)
        self.deep = deep  # pretrained encoder stages among an RGB view's features
        self.seed = seed
        self.stack = None  # (F, h, w) standardised features of the view
        self.mean = self.std = None  # the view's feature statistics (the stack is standardised by them)
        self._bank = None
        self._scale = self._net_scale = None  # the deep features' input scale of the bank, of the network
        self.key = None  # (image id, View) the stack belongs to
        self.network = None
        self.ftu: list = []
        self.stacks_computed = 0  # how often the bank ran (a stroke should not make it run)
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)

    def set_view(self, levels, view: View, image_id=None, um_per_px: float = 1.0) -> bool:
        """Compute and cache the standardised feature stack of ``view``; False when cached.
        ``um_per_px`` (full resolution) sets the deep features' input scale."""
        torch = import_torch()

        levels = list(levels) if isinstance(levels, (list, tuple)) else [levels]
        key = (image_id if image_id is not None else id(levels[0]), view, float(um_per_px))
        with self._lock:
            if self.key == key and self.stack is not None:
                return False
            channels = levels[0].shape[-1] if np.ndim(levels[0]) == 3 else 1
            scale = deep_scale_for(um_per_px * view.step)
            if self._bank is None or self._bank.n_in != channels or self._scale != scale:
                self._bank, self._scale = filter_bank_module(channels, self.sigmas, deep=self.deep,
                                                             deep_scale=scale), scale
            self.stack = None  # free the old stack before making the new one
            x, (oy, ox) = read_view(levels, view, self._bank.margin + int(3 * SMOOTH) + 1)
            h, w = view.shape
            with torch.no_grad():
                f = self._bank(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])[0]
                f = f[:, oy:oy + h, ox:ox + w].contiguous()
                sample = f[:, ::4, ::4].reshape(f.shape[0], -1)
                self.mean, self.std = sample.mean(1), sample.std(1).clamp_min(1e-3)
                f.sub_(self.mean[:, None, None]).div_(self.std[:, None, None])
            self.stack, self.key, self.view = f, key, view
            self.stacks_computed += 1
            return True

    def retrain(self, scribbles: np.ndarray, um_per_px: float, classes: list | None = None) -> PixelClassifier:
        """Fit the head on the view's ``scribbles`` (its grid, from :func:`view_scribbles`):
        warm from the previous weights when the classes are the same, else from scratch."""
        torch = import_torch()

        values = np.unique(scribbles)
        ftu = [int(v) for v in values if v > BACKGROUND]
        if BACKGROUND not in values or not ftu:
            raise InputError("paint background (1) and FTU (2, 3, ...) strokes in the visible region")
        with self._lock:
            if self.stack is None or tuple(scribbles.shape) != tuple(self.stack.shape[1:]):
                raise InputError("the view changed: no feature stack for these scribbles")
            channels = self._bank.n_in
            warm = (self.network is not None and ftu == self.ftu and self.network.bank.n_in == channels
                    and self._net_scale == self._scale)
            if warm:
                net = copy.deepcopy(self.network)  # a new object: a classifier handed out stays as it was
            else:
                torch.manual_seed(self.seed)
                net = feature_classifier(channels, len(ftu), self.sigmas, deep=self._bank.n_deep,
                                         deep_scale=self._scale, pretrained=False)
                if self._bank.n_deep:  # the encoder the stack came from
                    net.bank.deep.load_state_dict(self._bank.deep.state_dict())
            net.feat_mean.copy_(self.mean)
            net.feat_std.copy_(self.std)
            picks = pick_pixels(np.asarray(scribbles).ravel(), ftu, self._rng, UNLABELLED, MAX_PER_CLASS)
            flat = self.stack.reshape(self.stack.shape[0], -1)
            parts = [[flat[:, torch.from_numpy(idx)].T.numpy()] if len(idx) else [] for idx in picks]
            X, y, w = training_set(parts, flat.shape[0],
                                   UNLABELLED_WEIGHT_DEEP if self._bank.n_deep else UNLABELLED_WEIGHT)
            fit_head(net.head, X, y, w / w.sum(), len(ftu), WARM_STEPS if warm else COLD_STEPS)
            self.network, self.ftu, self._net_scale = net.eval(), ftu, self._scale
            names = list(classes) if classes and len(classes) == len(ftu) else [f"class {v}" for v in ftu]
            return PixelClassifier(net, names, channels, float(um_per_px) * self.view.step, self.sigmas,
                                   net.bank.stains, deep=net.bank.n_deep, deep_scale=self._scale)

    def predict(self) -> np.ndarray:
        """(K, h, w) float32 FTU probabilities of the cached view, from the current head."""
        torch = import_torch()

        with self._lock, torch.no_grad():
            net = self.network
            logits = net.head(self.stack[None])
            if net.smooth > 0:
                logits = net.bank.blur(logits, net.g_out)
            k = len(self.ftu)
            prob = torch.sigmoid(logits[0]) if k == 1 else torch.softmax(logits[0], 0)[1:]
            return prob.numpy()


def live_steps(live: LiveClassifier, levels, scribbles: np.ndarray, view: View, um_per_px: float,
               classes: list | None = None, image_id=None):
    """One live update as a job: feature stack of the view (cached), retrain, predict. Yields
    :class:`~napari_ftu.steps.Progress`; returns ``(view, probability, classifier)``.
    ``scribbles`` are the view's, on its grid (copied by the caller, who keeps painting)."""
    yield Progress(0, 3)
    live.set_view(levels, view, image_id, um_per_px)
    yield Progress(1, 3)
    clf = live.retrain(scribbles, um_per_px, classes)
    yield Progress(2, 3)
    prob = live.predict()
    yield Progress(3, 3)
    return view, prob, clf
