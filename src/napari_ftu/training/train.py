"""Train an smp segmentation model from image/mask pairs; the result is a loadable model folder.

Like inference, training is a generator (``train_steps``) yielding ``("step", i, n, loss)`` and
``("val", i, dice)`` so that a dock can plot and cancel it; :func:`train` drains it.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from napari_ftu.engine.models import FTUModel, ModelCard, build_network, is_out_of_memory, resolve_device, save_model
from napari_ftu.evaluation.metrics import dice
from napari_ftu.io.images import to_rgb
from napari_ftu.io.resample import resample_pair
from napari_ftu.steps import drain


def synthetic_samples(n: int, size: int, seed: int, card: ModelCard, scale_jitter: float = 0.2) -> list:
    """``n`` synthetic slides rendered near the card's µm/px: ``[(rgb, mask), ...]``."""
    from napari_ftu.io.synthetic import make_slide

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        um = card.um_per_px * float(rng.uniform(1 - scale_jitter, 1 + scale_jitter))
        rgb, labels, _ = make_slide(size, size, seed=seed * 1000 + k, um_per_px=um)
        out.append((rgb, (labels > 0).astype(np.uint8)))
    return out


def dataset_samples(path: str | Path, card: ModelCard | None = None, ids=None) -> list:
    """``[(rgb, mask), ...]`` from any dataset layout :func:`~napari_ftu.formats.datasets.open_dataset`
    knows (our exported tiles, image/mask folders, competition layouts), optionally only the
    images whose id is in ``ids``. Images with a known pixel size are resampled to the card's."""
    from napari_ftu.formats.datasets import open_dataset

    ds = open_dataset(path)
    pairs = []
    for k, image_id in enumerate(ds.ids):
        if ids is not None and image_id not in ids:
            continue
        item = ds.load(k)
        if item.annotations is None:
            continue
        rgb = to_rgb(item.slide.read())
        mask = (item.annotations.labels > 0).astype(np.uint8)
        um = item.slide.um_per_px
        if card is not None and um and abs(um / card.um_per_px - 1) > 0.01:
            rgb, mask = resample_pair(rgb, mask, um / card.um_per_px)
        pairs.append((rgb, mask))
    if not pairs:
        raise FileNotFoundError(f"{path}: no images with masks found")
    return pairs


def _augment(rng, rgb: np.ndarray, mask: np.ndarray):
    k = int(rng.integers(4))
    rgb, mask = np.rot90(rgb, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    # Stain jitter: a gain and shift per channel in optical density-like space.
    gain = rng.uniform(0.85, 1.15, 3)
    shift = rng.uniform(-12, 12, 3)
    rgb = np.clip(rgb.astype(np.float32) * gain + shift, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(mask)


def _crop(rng, rgb, mask, size: int, positive: bool):
    h, w = mask.shape
    if h < size or w < size:
        pad = ((0, max(0, size - h)), (0, max(0, size - w)))
        rgb = np.pad(rgb, pad + ((0, 0),), mode="reflect")
        mask = np.pad(mask, pad, mode="reflect")
        h, w = mask.shape
    if positive and mask.any():
        ys, xs = np.nonzero(mask)
        j = int(rng.integers(ys.size))
        y0 = int(np.clip(ys[j] - rng.integers(size), 0, h - size))
        x0 = int(np.clip(xs[j] - rng.integers(size), 0, w - size))
    else:
        y0, x0 = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return rgb[y0 : y0 + size, x0 : x0 + size], mask[y0 : y0 + size, x0 : x0 + size]


def validation_dice(model: FTUModel, samples: list) -> float:
    """Mean per-image Dice of the thresholded whole-image prediction (competition definition)."""
    from napari_ftu.engine.inference import segment

    scores = [dice(segment(rgb, model).labels > 0, mask) for rgb, mask in samples]
    return float(np.mean(scores)) if scores else float("nan")


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
    val_every: int = 100,
    init_state: dict | None = None,
    patience: int = 0,
    out: str | Path | None = None,
    scale_jitter: float = 0.15,
):
    """Train with BCE + Dice loss, AdamW and a cosine schedule; return ``(model, history)``.

    Crops are augmented with flips, rot90, a random zoom of up to ``exp(±scale_jitter)`` and
    stain jitter. The model returned holds the weights with the best validation Dice seen. With
    ``patience``, training stops after that many validations without a better Dice.
    On CUDA the forward pass runs under autocast (bf16) with channels_last. With ``out``, the
    best model is saved there as a model folder (card + safetensors + history.csv).
    """
    start = time.perf_counter()
    if not train:
        raise ValueError("no training images")
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = resolve_device(device)
    net = build_network(card).to(dev)
    if init_state is not None:
        net.load_state_dict(init_state)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    mean = torch.tensor(card.mean, device=dev).view(1, -1, 1, 1) * 255
    std = torch.tensor(card.std, device=dev).view(1, -1, 1, 1) * 255
    model = FTUModel(net, card, dev)
    history = {"loss": [], "val_dice": [], "best_dice": -1.0, "best_step": 0}
    best_state = None
    for step in range(1, steps + 1):
        net.train()
        while True:
            x, y = _batch(rng, train, batch_size, crop, scale_jitter, mean, std, dev)
            try:
                loss = _step(net, opt, x, y, dev)
                break
            except Exception as exc:  # a GPU out of memory: halve the batch and redo the step
                if not is_out_of_memory(exc) or batch_size == 1:
                    raise
                opt.zero_grad(set_to_none=True)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                batch_size //= 2
                history["batch_size"] = batch_size
        sched.step()
        history["loss"].append(loss.item())
        yield ("step", step, steps, history["loss"][-1])
        if val and (step % val_every == 0 or step == steps):
            net.eval()
            score = validation_dice(model, val)
            history["val_dice"].append((step, score))
            if score > history["best_dice"]:
                history["best_dice"], history["best_step"] = score, step
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            yield ("val", step, score)
            rounds_since_best = (step - history["best_step"]) // val_every
            if patience and rounds_since_best >= patience:
                history["stopped_early"] = step
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    history["seconds"] = time.perf_counter() - start
    if out is not None:
        card.notes = {**card.notes, "best_val_dice": history["best_dice"], "best_step": history["best_step"]}
        save_model(net, card, out)
        _write_history(Path(out) / "history.csv", history)
    return model, history


def _batch(rng, train, batch_size, crop, scale_jitter, mean, std, dev):
    """A batch of augmented crops as normalised tensors on the device."""
    import torch

    xs, ys = [], []
    for _ in range(batch_size):
        rgb, mask = train[int(rng.integers(len(train)))]
        zoom = float(np.exp(rng.uniform(-scale_jitter, scale_jitter)))  # scale jitter
        rgb, mask = _crop(rng, rgb, mask, max(8, round(crop * zoom)), positive=rng.random() < 0.6)
        if rgb.shape[0] != crop:
            rgb, mask = resample_pair(rgb, mask, crop / rgb.shape[0])
        rgb, mask = _augment(rng, rgb, mask)
        xs.append(rgb)
        ys.append(mask)
    x = (torch.from_numpy(np.stack(xs)).to(dev).permute(0, 3, 1, 2).float() - mean) / std
    y = torch.from_numpy(np.stack(ys)).to(dev).float().unsqueeze(1)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _step(net, opt, x, y, dev):
    """One optimiser step on BCE + soft Dice; returns the loss."""
    import torch

    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        logits = net(x).float()
    prob = torch.sigmoid(logits)
    inter = (prob * y).sum((2, 3))
    soft_dice = (2 * inter + 1) / (prob.sum((2, 3)) + y.sum((2, 3)) + 1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + (1 - soft_dice).mean()
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
