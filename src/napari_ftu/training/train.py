"""Train an smp segmentation model from image/mask pairs; the result is a loadable model folder.

Like inference, training is a generator (``train_steps``) yielding :class:`~napari_ftu.steps.TrainStep`
and :class:`~napari_ftu.steps.Validation` events so that a dock can plot and cancel it;
:func:`train` drains it.
"""

from __future__ import annotations

import contextlib
import csv
import math
import time
from pathlib import Path

import numpy as np

from napari_ftu.errors import ModelError, OptionError
from napari_ftu.evaluation.metrics import dice_curve
from napari_ftu.io.resample import resample_pair
from napari_ftu.models.card import ModelCard
from napari_ftu.models.loading import FTUModel, build_network, is_out_of_memory, resolve_device, save_model
from napari_ftu.steps import TrainStep, Validation, drain
from napari_ftu.training.augment import augment, balanced_crop
from napari_ftu.training.data import ARCHITECTURES
from napari_ftu.training.sparse import UNKNOWN

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))


class Schedule:
    """When to stop and how large a step to take, by step count or by a wall-clock budget.

    With ``seconds`` the progress is the share of the budget used, read from ``clock``: the
    one-cycle learning rate (linear warm-up, then cosine to zero) stretches over however many
    steps this machine manages, measured as training goes, and the last step leaves ``reserve``
    seconds for the final validation. ``elapsed`` resumes an interrupted run's clock.
    """

    def __init__(self, steps: int = 500, seconds: float | None = None, warmup: float = 0.05, clock=time.monotonic,
                 elapsed: float = 0.0):
        if seconds is not None and seconds <= 0:
            raise ValueError(f"the time budget must be positive, got {seconds} s")
        if seconds is None and steps < 1:
            raise ValueError(f"need at least one step, got {steps}")
        self.steps, self.seconds, self.warmup, self.clock = steps, seconds, warmup, clock
        self._t0 = clock() - elapsed

    def elapsed(self) -> float:
        return self.clock() - self._t0

    def progress(self, step: int) -> float:
        if self.seconds:
            return min(1.0, self.elapsed() / self.seconds)
        return min(1.0, step / self.steps)

    def lr_factor(self, progress: float) -> float:
        if progress < self.warmup:
            return 0.05 + 0.95 * progress / self.warmup
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - self.warmup) / (1 - self.warmup))))

    def done(self, step: int, reserve: float = 0.0) -> bool:
        if self.seconds:
            return self.elapsed() + reserve >= self.seconds
        return step >= self.steps

    def total(self, step: int) -> int:
        """The expected number of steps (a forecast from the step rate under a budget)."""
        if not self.seconds:
            return self.steps
        p = self.progress(step)
        return max(step, round(step / p)) if p > 0 and step else step + 1

    def eta(self, step: int) -> float:
        if self.seconds:
            return max(0.0, self.seconds - self.elapsed())
        return self.elapsed() / step * (self.steps - step) if step else float("nan")


def threshold_sweep(model: FTUModel, samples: list) -> np.ndarray:
    """Mean per-image Dice at each of :data:`THRESHOLDS` (of ``prob >= t``), from one pass of the Segment
    engine per image."""
    from skimage.transform import resize

    from napari_ftu.engine.inference import segment

    scores = np.zeros(len(THRESHOLDS))
    for rgb, mask in samples:
        seg = segment(rgb, model)
        prob = np.asarray(seg.class_probability(), np.float32) / seg.prob_scale
        if prob.shape != mask.shape:
            mask = resize(mask, prob.shape, order=0, anti_aliasing=False, preserve_range=True).astype(mask.dtype)
        known = mask != UNKNOWN  # a sample from a review knows only some pixels
        scores += dice_curve(prob[known], mask[known] > 0, THRESHOLDS)[1]
    return scores / max(len(samples), 1)


def plateau_threshold(scores, tolerance: float = 0.01) -> tuple[float, float]:
    """``(threshold, best Dice)``: the middle of the thresholds scoring within ``tolerance`` of the
    best. A few validation images give flat curves whose maximum sits anywhere on the plateau; its
    middle holds up better on unseen images than its edge."""
    scores = np.asarray(scores)
    near = np.flatnonzero(scores >= scores.max() - tolerance)
    return float(THRESHOLDS[int(near[len(near) // 2])]), float(scores.max())


DECODER_CHANNELS = (128, 64, 32, 16, 16)  # a U-Net's decoder: half smp's widths, 1.5x the CPU steps per minute
DECODER_ARCHITECTURES = ("Unet", "UnetPlusPlus")  # those that take decoder_channels as one width per stage


def new_model(architecture: str = "Unet", encoder: str | None = None, classes=("FTU",), um_per_px: float = 2.0,
              pretrained: bool | None = None, name: str = "napari-ftu model", seed: int = 0,
              arch_kwargs: dict | None = None):
    """``(card, initial state or None)`` for a new model. ``pretrained=None`` means: ImageNet
    weights when the encoder has offline ones (EfficientNet-Lite0/1/2), else random ones. A U-Net
    (or U-Net++) gets :data:`DECODER_CHANNELS` unless ``arch_kwargs`` says otherwise: on a CPU's
    time budget it makes 1.5x the steps of smp's and learned few labels as well (docs/models-and-training.md)."""
    from napari_ftu.models import pretrained as pre

    if architecture not in ARCHITECTURES:
        raise OptionError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    encoder = encoder or pre.DEFAULT_ENCODER
    arch_kwargs = dict(arch_kwargs or {})
    if architecture in DECODER_ARCHITECTURES:
        arch_kwargs.setdefault("decoder_channels", list(DECODER_CHANNELS))
    if pretrained is None:
        pretrained = pre.pretrained_name(encoder) is not None
    card = ModelCard(architecture=architecture, encoder=pre.smp_encoder(encoder), arch_kwargs=arch_kwargs,
                     classes=list(classes), um_per_px=um_per_px, name=name)
    if not pretrained:
        return card, None
    import torch

    card = pre.pretrained_card(card)
    torch.manual_seed(seed)  # the decoder's initial weights
    return card, pre.build_pretrained(card).state_dict()


CHECKPOINT_NAME = "checkpoint.pt"


def trained_on(sources: list, um_per_px: float | None = None, organs: list | None = None, stain: str | None = None,
               fine_tuned_from: str | None = None) -> dict:
    """The card's ``trained_on`` for a run on this data, so that a fine-tuned model no longer
    claims its starting model's domain (the Segment dock shows it beside the model choice).

    Parameters
    ----------
    sources : list of str
        Names of the training data (folders, images, "N synthetic slides").
    um_per_px : float, optional
        Pixel size of the training data, when known.
    organs : list of str, optional
    stain : str, optional
    fine_tuned_from : str, optional
        The starting model's name.

    Returns
    -------
    dict
    """
    out = {"source": ", ".join(sources)}
    if organs:
        out["organs"] = list(organs)
    if stain:
        out["stain"] = stain
    if um_per_px:
        out["um_per_px"] = [float(um_per_px), float(um_per_px)]
    if fine_tuned_from:
        out["note"] = f"fine-tuned from {fine_tuned_from}"
    return out


def read_checkpoint(folder: str | Path) -> dict:
    """The resumable state in a model folder (weights-only: nothing is unpickled)."""
    import torch

    path = Path(folder) / CHECKPOINT_NAME
    if not path.is_file():
        raise ModelError(f"{path}: no checkpoint to resume from (one is written at each validation)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not {"network", "optimizer", "step", "card"} <= set(state):
        raise ModelError(f"{path}: not a napari-ftu training checkpoint")
    return state


def cpu_threads() -> int:
    """Torch threads for CPU training: the cores not already busy (load average), at least one.

    torch's OpenMP threads spin while they wait for each other; on a machine whose cores are
    taken they wait for the scheduler instead. Measured on 2 cores under a load of 17: one
    thread 5.5 s per step, two threads 57 s."""
    import os

    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (OSError, AttributeError):
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


class _Batches:
    """Training batches built by background threads, ``depth`` steps ahead; ``wait`` is the time
    the model spent waiting for data. Each step's batch comes from its own seeded generator, so
    a run is reproducible whatever the threads' timing."""

    def __init__(self, make, first_step: int, workers: int, depth: int):
        from concurrent.futures import ThreadPoolExecutor

        self._make, self._next, self._depth = make, first_step, max(1, depth)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="napari-ftu-data") if workers > 0 else None
        self._queue = []
        self.wait = 0.0

    def get(self):
        if self._pool is None:
            t = time.perf_counter()
            batch = self._make(self._next)
            self._next += 1
            self.wait += time.perf_counter() - t
            return batch
        while len(self._queue) < self._depth:
            self._queue.append(self._pool.submit(self._make, self._next))
            self._next += 1
        t = time.perf_counter()
        batch = self._queue.pop(0).result()
        self.wait += time.perf_counter() - t
        return batch

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def train_steps(
    train: list,
    val: list,
    card: ModelCard,
    steps: int = 500,
    batch_size: int = 8,
    crop: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "auto",
    val_every: int | None = None,
    init_state: dict | None = None,
    patience: int = 0,
    out: str | Path | None = None,
    scale_jitter: float = 0.2,
    minutes: float | None = None,
    workers: int = 2,
    checkpoint: bool = False,
    resume: dict | None = None,
    clock=time.monotonic,
    threads: int | None = None,
    ema: float = 0.0,
    colour: dict | None = None,
):
    """Train with BCE + soft Dice loss, AdamW and a one-cycle schedule; return ``(model, history)``.

    Runs ``steps`` steps, or for ``minutes`` of wall-clock time (the schedule fits the budget,
    see :class:`Schedule`). Crops are balanced between FTUs and background and augmented (see
    :mod:`~napari_ftu.training.augment`) by ``workers`` background threads. Validation runs ten
    times (or every ``val_every`` steps); the weights with the best validation Dice are kept and
    the threshold that maximised it goes into the card. With ``ema`` (a decay such as 0.99),
    validation and the saved model use an exponential moving average of the weights instead of
    the raw ones (measured on the Sarder glomeruli it smoothed validation but did not lift
    held-out Dice, so it is off by default). ``colour`` passes the stain jitter and grey share
    to :func:`~napari_ftu.training.augment.augment` (stronger for models meant for other labs'
    stains). With ``patience``, training stops after that many validations without gain. With
    ``out``, the best model is saved there as a model folder (card + safetensors + history.csv);
    with ``checkpoint`` also ``checkpoint.pt`` (weights, optimiser, step, clock) at each
    validation, which ``resume`` continues from.
    Yields :class:`~napari_ftu.steps.TrainStep` (with ``stats``) and :class:`~napari_ftu.steps.Validation`.
    On CUDA: bf16 autocast, channels_last, pinned host memory. On CPU, torch uses ``threads``
    threads (default: the cores the load average leaves idle, see :func:`cpu_threads`).
    """
    if not train:
        raise ValueError("no training images")
    import torch

    torch.manual_seed(seed)
    dev = resolve_device(device)
    threads_before = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(threads or cpu_threads())
    net = build_network(card).to(dev)
    if init_state is not None:
        net.load_state_dict(init_state)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    # Crops no larger than the images (multiples of 32): reflect padding wastes compute.
    smallest = min(min(m.shape[:2]) for _, m in train)
    crop = max(32, min(crop, smallest // 32 * 32)) if smallest >= 32 else crop
    history = {"loss": [], "val_dice": [], "best_dice": -1.0, "best_step": 0, "best_threshold": card.threshold,
               "crop": crop}
    best_state, first = None, 1
    if resume is not None:
        net.load_state_dict(resume["network"])
        opt.load_state_dict(resume["optimizer"])
        first = int(resume["step"]) + 1
        history.update(loss=list(resume.get("loss", [])), val_dice=[tuple(v) for v in resume.get("val_dice", [])],
                       best_dice=float(resume.get("best_dice", -1.0)), best_step=int(resume.get("best_step", 0)),
                       best_threshold=float(resume.get("best_threshold", card.threshold)))
        best_state = resume.get("best_state") or None
    schedule = Schedule(steps, minutes * 60 if minutes else None, clock=clock,
                        elapsed=float(resume.get("elapsed", 0.0)) if resume else 0.0)
    mean = torch.tensor(card.mean, device=dev).view(1, -1, 1, 1) * 255
    std = torch.tensor(card.std, device=dev).view(1, -1, 1, 1) * 255
    model = FTUModel(net, card, dev)
    sizes = {"batch": batch_size}
    averaged = _Average(net, ema, resume.get("ema") if resume else None) if ema else None

    def make(step):
        return _batch(np.random.default_rng([seed, step]), train, sizes["batch"], crop, scale_jitter, colour or {})

    batches = _Batches(make, first, workers, depth=2 * max(workers, 1))
    val_rounds, next_val, val_seconds = 10, 1, 0.0
    loop_start, step = time.perf_counter(), first - 1
    loss_avg = None
    try:
        while not schedule.done(step, reserve=val_seconds):
            step += 1
            net.train()
            progress = schedule.progress(step - 1)
            for group in opt.param_groups:
                group["lr"] = lr * schedule.lr_factor(progress)
            xb, yb = batches.get()
            while True:
                x, y = _to_device(xb[: sizes["batch"]], yb[: sizes["batch"]], mean, std, dev)
                try:
                    loss = _step(net, opt, x, y, dev)
                    break
                except Exception as exc:  # a GPU out of memory: halve the batch and redo the step
                    if not is_out_of_memory(exc) or sizes["batch"] == 1:
                        raise
                    opt.zero_grad(set_to_none=True)
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    sizes["batch"] //= 2
                    history["batch_size"] = sizes["batch"]
            if averaged is not None:
                averaged.update(net, step)
            history["loss"].append(loss.item())
            loss_avg = history["loss"][-1] if loss_avg is None else 0.9 * loss_avg + 0.1 * history["loss"][-1]
            busy = time.perf_counter() - loop_start
            history["data_wait"] = batches.wait / busy if busy > 0 else 0.0
            last = history["val_dice"][-1][1] if history["val_dice"] else None
            stats = {"elapsed": schedule.elapsed(), "eta": schedule.eta(step), "loss_avg": loss_avg,
                     "val_dice": last, "data_wait": history["data_wait"], "lr": opt.param_groups[0]["lr"],
                     "steps_per_s": (step - first + 1) / busy if busy > 0 else 0.0}
            yield TrainStep(step, schedule.total(step), history["loss"][-1], stats)
            finishing = schedule.done(step, reserve=val_seconds)
            due = step % val_every == 0 if val_every else schedule.progress(step) >= next_val / val_rounds
            if val and (due or finishing):
                next_val = int(schedule.progress(step) * val_rounds) + 1
                t = time.perf_counter()
                net.eval()
                with _swapped(net, averaged):
                    scores = threshold_sweep(model, val)
                    threshold, score = plateau_threshold(scores)
                    history["val_dice"].append((step, score))
                    if score > history["best_dice"]:
                        history.update(best_dice=score, best_step=step, best_threshold=threshold)
                        best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                val_seconds = time.perf_counter() - t
                yield Validation(step, score)
                if checkpoint and out is not None:
                    _write_checkpoint(out, net, opt, step, schedule.elapsed(), best_state, history, card, averaged)
                if patience and len(history["val_dice"]) - 1 - _index_of_best(history) >= patience:
                    history["stopped_early"] = step
                    break
    finally:
        batches.close()
        torch.set_num_threads(threads_before)
    if best_state is not None:
        net.load_state_dict(best_state)
        card.threshold = history["best_threshold"]
    elif averaged is not None:
        net.load_state_dict(averaged.state(net))
    net.eval()
    history["seconds"] = schedule.elapsed()
    history["steps"] = step
    if out is not None:
        card.notes = {**card.notes, "best_val_dice": history["best_dice"], "best_step": history["best_step"],
                      "threshold_from_validation": best_state is not None, "weights_ema_decay": ema}
        save_model(net, card, out)
        _write_history(Path(out) / "history.csv", history)
    return model, history


def _index_of_best(history) -> int:
    return [s for s, _ in history["val_dice"]].index(history["best_step"]) if history["best_step"] else 0


class _Average:
    """Exponential moving average of a network's floating-point weights (integer buffers, such as
    batch-norm counters, are copied). The decay ramps up over the first steps, so early averages
    are not dominated by the initial weights."""

    def __init__(self, net, decay: float, state: dict | None = None):
        if not 0 <= decay < 1:
            raise ValueError(f"the EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in (state or net.state_dict()).items()}

    def update(self, net, step: int) -> None:
        import torch

        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in net.state_dict().items():
                s = self.shadow[k]
                if s.dtype.is_floating_point:
                    s.mul_(d).add_(v.detach().to(s.device), alpha=1 - d)
                else:
                    s.copy_(v)

    def state(self, net) -> dict:
        return {k: v.to(net.state_dict()[k].device) for k, v in self.shadow.items()}


@contextlib.contextmanager
def _swapped(net, averaged):
    """Within the block the network holds the averaged weights; its own come back after."""
    if averaged is None:
        yield
        return
    saved = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(averaged.state(net))
    try:
        yield
    finally:
        net.load_state_dict(saved)


def _write_checkpoint(out, net, opt, step, elapsed, best_state, history, card, averaged=None) -> None:
    import torch

    from napari_ftu.atomic import atomic_path

    Path(out).mkdir(parents=True, exist_ok=True)
    state = {"network": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "optimizer": opt.state_dict(),
             "step": step, "elapsed": float(elapsed), "best_state": best_state or {},
             "best_dice": float(history["best_dice"]), "best_step": int(history["best_step"]),
             "best_threshold": float(history["best_threshold"]), "loss": list(history["loss"]),
             "val_dice": [[int(s), float(d)] for s, d in history["val_dice"]], "card": card.to_json(),
             "ema": {k: v.detach().cpu() for k, v in averaged.shadow.items()} if averaged is not None else {}}
    with atomic_path(Path(out) / CHECKPOINT_NAME) as tmp:
        torch.save(state, tmp)


def _batch(rng, train, batch_size, crop, scale_jitter, colour):
    """A batch of augmented crops, ``(uint8 (N, H, W, 3), uint8 (N, H, W))``; half centred on FTUs."""
    xs, ys = [], []
    for i in range(batch_size):
        rgb, mask = train[int(rng.integers(len(train)))]
        zoom = float(np.exp(rng.uniform(-scale_jitter, scale_jitter)))  # scale jitter
        rgb, mask = balanced_crop(rng, rgb, mask, max(8, round(crop * zoom)), positive=i % 2 == 0)
        if rgb.shape[0] != crop:
            rgb, mask = resample_pair(rgb, mask, crop / rgb.shape[0])
        rgb, mask = augment(rng, rgb, mask, **colour)
        xs.append(rgb)
        ys.append(mask)
    return np.stack(xs), np.stack(ys)


def _to_device(xb, yb, mean, std, dev):
    """Normalised float tensors on the device (pinned and non-blocking on CUDA)."""
    import torch

    x, y = torch.from_numpy(xb), torch.from_numpy(np.ascontiguousarray(yb, np.uint8))
    if dev.type == "cuda":
        x, y = x.pin_memory().to(dev, non_blocking=True), y.pin_memory().to(dev, non_blocking=True)
    else:
        x, y = x.to(dev), y.to(dev)
    x = (x.permute(0, 3, 1, 2).float() - mean) / std
    y = y.unsqueeze(1)  # 0 background, 1 FTU, UNKNOWN: not learned (see sparse_loss)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def sparse_loss(logits, y):
    """BCE + soft Dice over the known pixels only: ``y`` holds 0 (background), 1 (FTU) or
    :data:`~napari_ftu.training.sparse.UNKNOWN`, whose pixels add nothing to the loss or its
    gradient. A review knows only what the reviewer looked at; the rest is not background."""
    import torch

    known = (y != UNKNOWN).float()
    target = ((y > 0) & (y != UNKNOWN)).float()
    n_known = known.sum()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=known, reduction="sum")
    bce = bce / n_known.clamp(min=1)
    prob = torch.sigmoid(logits) * known
    inter = (prob * target).sum((2, 3))
    soft_dice = (2 * inter + 1) / (prob.sum((2, 3)) + target.sum((2, 3)) + 1)
    return bce + (1 - soft_dice).mean()


def _step(net, opt, x, y, dev):
    """One optimiser step on BCE + soft Dice; returns the loss."""
    import torch

    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        logits = net(x).float()
    loss = sparse_loss(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def train(train_samples: list, val_samples: list, card: ModelCard, log=None, **kw):
    """Drain :func:`train_steps`, passing each event to ``log``; return ``(model, history)``."""
    return drain(train_steps(train_samples, val_samples, card, **kw), log)


def _write_history(path: Path, history: dict) -> None:
    from napari_ftu.atomic import atomic_path

    val = dict(history["val_dice"])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "loss", "val_dice"])
        for i, loss in enumerate(history["loss"], start=1):
            w.writerow([i, f"{loss:.5f}", f"{val[i]:.4f}" if i in val else ""])
