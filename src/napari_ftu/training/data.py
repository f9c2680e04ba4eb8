"""What to train and on what: the architectures offered, the card and weights to start from,
and how a dataset or one image is split into training and validation samples.
Shared by the Train dock and ``napari-ftu train``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from napari_ftu.errors import InputError, OptionError
from napari_ftu.io.images import to_rgb
from napari_ftu.io.resample import resample_pair
from napari_ftu.models.card import ModelCard
from napari_ftu.models.loading import default_model_path, load_model

ARCHITECTURES = ("Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "DeepLabV3", "Linknet", "MAnet", "PAN", "PSPNet",
                 "UPerNet", "Segformer")
ENCODERS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "tu-mobilenetv3_small_100", "resnet18",
            "resnet34")  # the EfficientNet-Lite ones have ImageNet weights offline
VAL_EVERY = 5  # without a validation pattern, every fifth image of a dataset is held out
HOLD_OUT = 0.2  # of one image pair, the right fifth is held out
LR = 2e-3  # peak learning rate of a new model
FINE_TUNE_LR = 5e-4  # from trained weights: a quarter, so that a few images adapt the model without wiping it
KEPT_NOTES = ("data", "encoder_weights")  # where the weights come from travels with every fine-tuned copy


def start_from(path: str | Path | None, name: str | None = None, trust_code: bool = False) -> tuple[ModelCard, dict]:
    """Card and weights to fine-tune a model folder (``None``: the built-in model); the copy
    gets its own name (default: the original's, fine-tuned), keeps the original's data sources and
    encoder weights (their licences and attribution) and drops its training notes."""
    base = load_model(path or default_model_path(), device="cpu", trust_code=trust_code)
    notes = {k: v for k, v in base.card.notes.items() if k in KEPT_NOTES}
    card = ModelCard.from_dict({**base.card.__dict__, "notes": notes}, str(path))
    card.name = name or f"{base.card.name} (fine-tuned)"
    return card, base.network.state_dict()


def split_ids(ids: list[str], pattern: str | None = None, every: int = VAL_EVERY) -> tuple[list, list]:
    """``(training ids, validation ids)``: those matching ``pattern`` (a regular expression)
    validate; with no pattern or no match, every ``every``-th image does (0: none)."""
    val = []
    if pattern:
        try:
            val = [i for i in ids if re.search(pattern, i)]
        except re.error as exc:
            raise OptionError(f"validation pattern {pattern!r} is not a regular expression ({exc})") from None
    if not val and every:
        val = ids[::every]
    chosen = set(val)
    return [i for i in ids if i not in chosen], val


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


def dataset_samples(path: str | Path, card: ModelCard | None = None, ids=None, um_per_px: float | None = None,
                    unknown: list | None = None) -> list:
    """``[(rgb, mask), ...]`` from any dataset layout :func:`~napari_ftu.formats.datasets.open_dataset`
    knows (our exported tiles, image/mask folders, competition layouts), optionally only the
    images whose id is in ``ids``. Images with a known pixel size (from the file, else
    ``um_per_px``) are resampled to the card's; the others are taken as they are (at the card's
    pixel size), and their ids go into ``unknown`` when given, for the caller to say so."""
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
        um = item.slide.um_per_px or um_per_px
        if not um and unknown is not None:
            unknown.append(image_id)
        if card is not None and um and abs(um / card.um_per_px - 1) > 0.01:
            rgb, mask = resample_pair(rgb, mask, um / card.um_per_px)
        pairs.append((rgb, mask))
    if not pairs:
        raise FileNotFoundError(f"{path}: no images with masks found")
    return pairs


def folder_split(folder, card: ModelCard | None, pattern: str | None = None, every: int = VAL_EVERY,
                 um_per_px: float | None = None, unknown: list | None = None) -> tuple[list, list]:
    """Training and validation samples of a dataset folder (see :func:`split_ids`); ``um_per_px``
    is the pixel size of images whose files do not say."""
    from napari_ftu.formats.datasets import open_dataset

    train_ids, val_ids = split_ids(open_dataset(folder).ids, pattern, every)
    train = dataset_samples(folder, card, set(train_ids), um_per_px=um_per_px, unknown=unknown) if train_ids else []
    val = dataset_samples(folder, card, set(val_ids), um_per_px=um_per_px, unknown=unknown) if val_ids else []
    return train, val


def pair_split(image: np.ndarray, labels: np.ndarray, um_per_px: float | None, card: ModelCard,
               hold_out: float = HOLD_OUT, name: str = "labels") -> tuple[list, list]:
    """One image and its (corrected) labels as training samples, resampled to the card's
    µm/px, with the right ``hold_out`` fraction of columns kept for validation."""
    rgb = to_rgb(np.asarray(image))
    mask = (np.asarray(labels) > 0).astype(np.uint8)
    if rgb.shape[:2] != mask.shape:
        raise InputError(f"{name} {mask.shape} and its image {rgb.shape[:2]} differ in size")
    if um_per_px and abs(um_per_px / card.um_per_px - 1) > 0.01:
        rgb, mask = resample_pair(rgb, mask, um_per_px / card.um_per_px)
    cut = max(1, round(mask.shape[1] * (1 - hold_out)))
    return [(rgb[:, :cut], mask[:, :cut])], [(rgb[:, cut:], mask[:, cut:])]
