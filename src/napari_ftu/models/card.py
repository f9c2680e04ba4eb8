"""The model card: the facts a model needs to be run correctly, and the checks that keep an
untrusted card from asking for downloads, huge networks or huge allocations."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_ftu.errors import ModelError

CARD_NAME = "model_card.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CARD_NAMES = (CARD_NAME, "model_card.yaml", "model_card.yml")
SMP_CONFIG = "config.json"  # written by smp's ``save_pretrained``


@dataclass
class ModelCard:
    """What a model needs to be run correctly (serialised as ``model_card.json``).

    Parameters
    ----------
    architecture, encoder : str
        The smp architecture and encoder (or ``FeatureClassifier``), so the network can be rebuilt
        without pickled code.
    arch_kwargs : dict
        Extra arguments of the architecture (decoder channels, classifier settings).
    in_channels : int
        Image channels the network takes.
    classes : list of str
        FTU classes, one output channel each (after background where there are several).
    um_per_px : float
        Pixel size the model was trained at; slides are resampled to it.
    mean, std : list of float
        Input normalisation per channel.
    threshold : float
        Default probability threshold.
    thresholds : dict
        Class or organ name -> threshold, where one differs from ``threshold``.
    min_object_um2 : float
        Smaller objects are dropped.
    tile_size, overlap : int
        Default tiling, in model pixels.
    name : str
    notes : dict
        Free-form provenance (training data, scores); ``"objects": "cells"`` marks a fluorescence
        cells classifier, whose objects come from nuclei, not from thresholding (:attr:`makes_cells`).
    trained_on : dict
        The model's domain, shown beside the model choice: ``organs`` (list), ``stain``, ``source``,
        ``note`` (text), ``um_per_px`` ([min, max]); ``{}`` = not stated.
    """

    architecture: str = "Unet"
    encoder: str = "tu-mobilenetv3_small_100"
    arch_kwargs: dict = field(default_factory=lambda: {"decoder_channels": [64, 32, 24, 16, 8]})
    in_channels: int = 3
    classes: list = field(default_factory=lambda: ["glomerulus"])
    um_per_px: float = 2.0
    mean: list = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list = field(default_factory=lambda: list(IMAGENET_STD))
    threshold: float = 0.5
    thresholds: dict = field(default_factory=dict)  # class or organ name -> threshold
    min_object_um2: float = 1000.0
    tile_size: int = 256
    overlap: int = 32
    name: str = "unnamed"
    notes: dict = field(default_factory=dict)
    # What the model was trained on (its domain), shown beside the model choice; {} = not stated.
    # Keys: organs (list of text), stain, source, note (text), um_per_px ([min, max] µm/px).
    trained_on: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, source: str = "model card") -> ModelCard:
        """A validated card; anything else (wrong types, impossible values, a YAML alias bomb)
        is a :class:`ModelError` naming ``source`` and the field.

        Parameters
        ----------
        data : dict
            A parsed card (JSON or YAML), untrusted.
        source : str
            The file, for error messages.

        Returns
        -------
        ModelCard

        Raises
        ------
        ModelError
            Unknown or mistyped fields, impossible values, or a card too large to be one.
        """
        if not isinstance(data, dict):
            raise ModelError(f"{source}: expected a JSON object")
        check_card_size(data, source)
        if not all(isinstance(k, str) for k in data):
            odd = [k for k in data if not isinstance(k, str)][:5]
            raise ModelError(f"{source}: field names must be text, got {odd}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{source}: unknown fields {unknown}")
        try:
            card = cls(**data)
        except TypeError as exc:
            raise ModelError(f"{source}: {exc}") from None
        numbers = {"um_per_px": (int, float), "threshold": (int, float), "min_object_um2": (int, float),
                   "tile_size": (int,), "overlap": (int,), "in_channels": (int,)}
        for name, types in numbers.items():
            value = getattr(card, name)
            if isinstance(value, bool) or not isinstance(value, types):
                raise ModelError(f"{source}: {name!r} must be a number, got {value!r}")
        if not isinstance(card.classes, list) or not card.classes:
            raise ModelError(f"{source}: 'classes' must name at least one class")
        if not (isinstance(card.um_per_px, (int, float)) and card.um_per_px > 0):
            raise ModelError(f"{source}: 'um_per_px' must be a positive number")
        if not isinstance(card.thresholds, dict):
            raise ModelError(f"{source}: 'thresholds' must map class or organ names to numbers")
        for name, value in [("threshold", card.threshold)] + list(card.thresholds.items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ModelError(f"{source}: threshold {name!r} must lie between 0 and 1, got {value!r}")
        if card.tile_size < 32 or card.overlap < 0 or card.overlap >= card.tile_size:
            raise ModelError(f"{source}: need tile_size >= 32 and 0 <= overlap < tile_size")
        _check_card_values(card, source)
        return card

    @classmethod
    def read(cls, path: str | Path, **overrides) -> ModelCard:
        """Read a JSON or YAML card; ``overrides`` (e.g. from an smp ``config.json``) win.

        Parameters
        ----------
        path : str or Path
            ``model_card.json`` or ``.yaml``.
        **overrides
            Fields that replace the file's.

        Returns
        -------
        ModelCard
            Validated by :meth:`from_dict`.

        Raises
        ------
        ModelError
            An unreadable or invalid card, naming the file.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: cannot read model card ({type(exc).__name__}: {exc})") from None
        check_card_text(text, str(path))
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                # safe loading: no Python tags, so a card cannot construct objects or run code
                data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            else:
                data = json.loads(text)
        except Exception as exc:  # JSON or YAML syntax, nesting past the recursion limit
            raise ModelError(f"{path}: cannot read model card ({type(exc).__name__}: {str(exc)[:200]})") from None
        if isinstance(data, dict):
            data = {**data, **overrides}
        return cls.from_dict(data, str(path))

    def threshold_for(self, name: str | None = None) -> float:
        """The threshold for a class or organ, falling back to the card's default.

        Parameters
        ----------
        name : str, optional
            A class or organ name of :attr:`thresholds`.

        Returns
        -------
        float
        """
        return float(self.thresholds.get(name, self.threshold)) if name else float(self.threshold)

    @property
    def makes_cells(self) -> bool:
        """A cells classifier (``napari-ftu annotate --cells``): the tile engine's thresholded
        objects would be patches of cell-covered area, not cells."""
        return self.notes.get("objects") == "cells"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


MAX_CARD_NODES = 10_000  # a card is a few dozen values; YAML aliases can make a tiny file a huge tree
MAX_CARD_BYTES = 256 * 1024
MAX_CARD_DEPTH = 64
MAX_TILE_SIZE = 4096  # the engine holds (batch, classes, tile, tile) float32 per model call
MAX_CLASSES = 256
MAX_ARCH_INT = 4096  # channel counts, depths, ... in arch_kwargs
MAX_DECODER_STAGES = 16


def check_card_text(text: str, source: str) -> None:
    """Refuse a card file that is huge or nested deeper than any card needs before parsing it:
    PyYAML takes minutes on 10 000 nested brackets (116 s measured).

    Parameters
    ----------
    text : str
        The card file's text, untrusted.
    source : str
        The file, for error messages.

    Raises
    ------
    ModelError
        Text longer than ``MAX_CARD_BYTES`` or nested deeper than ``MAX_CARD_DEPTH``.
    """
    if len(text) > MAX_CARD_BYTES:
        raise ModelError(f"{source}: a model card of {len(text)} characters is too large (at most {MAX_CARD_BYTES})")
    codes = np.frombuffer(text.encode("utf-8", errors="replace"), np.uint8)
    step = np.isin(codes, (ord("["), ord("{"))).astype(np.int32) - np.isin(codes, (ord("]"), ord("}")))
    if codes.size and int(np.cumsum(step).max()) > MAX_CARD_DEPTH:
        raise ModelError(f"{source}: the card is nested deeper than {MAX_CARD_DEPTH} levels")


def check_card_size(data, source: str) -> None:
    """Refuse cards with more than MAX_CARD_NODES values, counting shared (aliased) ones each
    time they appear, before anything walks or serialises them.

    Parameters
    ----------
    data : object
        A parsed card (JSON or YAML), untrusted.
    source : str
        The file, for error messages.

    Raises
    ------
    ModelError
        More than ``MAX_CARD_NODES`` values.
    """
    seen, stack = 0, [data]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_CARD_NODES:
            raise ModelError(f"{source}: the card holds more than {MAX_CARD_NODES} values")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _check_card_values(card: ModelCard, source: str) -> None:
    """Types and ranges beyond the basic checks in :meth:`ModelCard.from_dict`."""
    for name in ("architecture", "encoder", "name"):
        if not isinstance(getattr(card, name), str) or not getattr(card, name):
            raise ModelError(f"{source}: {name!r} must be non-empty text, got {getattr(card, name)!r}")
    for name in ("arch_kwargs", "notes", "thresholds"):
        value = getattr(card, name)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ModelError(f"{source}: {name!r} must be a JSON object with text keys")
    if not all(isinstance(c, str) and c for c in card.classes):
        raise ModelError(f"{source}: 'classes' must be a list of names (text)")
    if not 1 <= card.in_channels <= 64:
        raise ModelError(f"{source}: 'in_channels' must be 1 to 64, got {card.in_channels}")
    if not 1e-3 <= card.um_per_px <= 1e4:
        raise ModelError(f"{source}: 'um_per_px' must be a finite number from 0.001 to 10000, got {card.um_per_px!r}")
    if not (_finite(card.min_object_um2) and card.min_object_um2 >= 0):
        raise ModelError(f"{source}: 'min_object_um2' must be a finite number >= 0, got {card.min_object_um2!r}")
    if card.tile_size > MAX_TILE_SIZE:
        raise ModelError(f"{source}: 'tile_size' must be at most {MAX_TILE_SIZE}, got {card.tile_size}")
    if len(card.classes) > MAX_CLASSES:
        raise ModelError(f"{source}: 'classes' names {len(card.classes)} classes; at most {MAX_CLASSES}")
    _check_network_fields(card, source)
    for name in ("mean", "std"):
        value = getattr(card, name)
        if not isinstance(value, list) or not value or not all(_finite(v) for v in value):
            raise ModelError(f"{source}: {name!r} must be a list of finite numbers, got {str(value)[:60]}")
    if len(card.mean) != len(card.std) or not all(v > 0 for v in card.std):
        raise ModelError(f"{source}: 'mean' and 'std' need one value per channel, and std > 0")
    _check_trained_on(card.trained_on, source)


TRAINED_ON_TEXT = ("stain", "source", "note")


def _check_trained_on(value, source: str) -> None:
    if not isinstance(value, dict):
        raise ModelError(f"{source}: 'trained_on' must be a JSON object (organs, stain, source, um_per_px, note)")
    unknown = sorted(set(value) - {"organs", "um_per_px", *TRAINED_ON_TEXT})
    if unknown:
        raise ModelError(f"{source}: unknown 'trained_on' fields {unknown}; use organs, stain, source, um_per_px, note")
    organs = value.get("organs", [])
    if not isinstance(organs, list) or not all(isinstance(o, str) and o for o in organs):
        raise ModelError(f"{source}: 'trained_on.organs' must be a list of organ names, got {str(organs)[:60]}")
    for name in TRAINED_ON_TEXT:
        if not isinstance(value.get(name, ""), str):
            raise ModelError(f"{source}: 'trained_on.{name}' must be text, got {str(value[name])[:60]}")
    if "um_per_px" in value:
        span = value["um_per_px"]
        if not (isinstance(span, list) and len(span) == 2 and all(_finite(v) and v > 0 for v in span)
                and span[0] <= span[1]):
            raise ModelError(f"{source}: 'trained_on.um_per_px' must be [min, max] positive µm/px, "
                             f"got {str(span)[:60]}")


SCALE_MARGIN = 2.0  # a pixel size more than this factor outside the trained range is "far outside"


def scale_note(name: str, um_per_px: float | None, card: ModelCard, setting: str) -> str | None:
    """One line when an image's pixel size lies far outside the range the model was trained on
    (its card's ``trained_on.um_per_px``): the engine still resamples it to the model's scale, but
    a wrong pixel size in the file is the usual cause, and the user should know. Nothing is refused.

    Parameters
    ----------
    name : str
        The image, as the user knows it.
    um_per_px : float or None
        The pixel size the run uses.
    card : ModelCard
        The model's card.
    setting : str
        The flag or field that sets the pixel size.

    Returns
    -------
    str or None
        The line, or None when the pixel size is within :data:`SCALE_MARGIN` of the range.
    """
    span = (card.trained_on or {}).get("um_per_px")
    if not um_per_px or not span or span[0] / SCALE_MARGIN <= um_per_px <= span[1] * SCALE_MARGIN:
        return None
    return (f"{name} is at {um_per_px:g} µm/px, far outside the {span[0]:g}–{span[1]:g} µm/px the model was "
            f"trained on; if the file's pixel size is wrong, set {setting}")


def describe_domain(card: ModelCard) -> str:
    """One line on what the model was trained on, for the model choice in the Segment dock.

    Parameters
    ----------
    card : ModelCard
        Its ``trained_on`` entry.

    Returns
    -------
    str
        Empty when the card does not say.
    """
    t = card.trained_on
    if not t:
        return "trained on: not stated in the model card"
    parts = [", ".join(t.get("organs", [])), t.get("stain", "")]
    if "um_per_px" in t:
        lo, hi = t["um_per_px"]
        parts.append(f"{lo:g} µm/px" if lo == hi else f"{lo:g}–{hi:g} µm/px")
    parts.append(t.get("source", ""))
    line = "trained on: " + "; ".join(p for p in parts if p)
    return f"{line}. {t['note']}" if t.get("note") else line


def _check_network_fields(card: ModelCard, source: str) -> None:
    """Nothing in a card may make smp download (hub encoders, pretrained encoder weights) or
    build a network far larger than any segmentation model (a decoder of 100 000 channels)."""
    encoder = card.encoder
    if any(c in encoder for c in ":/\\") or "hf-hub" in encoder.lower() or "hf_hub" in encoder.lower():
        raise ModelError(f"{source}: 'encoder' {encoder[:80]!r} names a hub or a location to download from; "
                         f"a card names a local encoder (e.g. resnet34, tu-mobilenetv3_small_100)")
    if "encoder_weights" in card.arch_kwargs:
        raise ModelError(f"{source}: 'arch_kwargs' may not set 'encoder_weights' (the weights come with the model; "
                         f"nothing is downloaded)")
    channels = card.arch_kwargs.get("decoder_channels")
    if channels is not None and (not isinstance(channels, list) or not 0 < len(channels) <= MAX_DECODER_STAGES):
        raise ModelError(f"{source}: 'decoder_channels' must be a list of 1 to {MAX_DECODER_STAGES} numbers")
    stack = [(f"arch_kwargs.{k}", v) for k, v in card.arch_kwargs.items()]
    while stack:
        name, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{name}.{k}", v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(name, v) for v in value]
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, (int, float)):
            if not (_finite(value) and abs(value) <= MAX_ARCH_INT):
                raise ModelError(f"{source}: {name.split('.', 1)[1]!r} holds {value!r}; numbers in arch_kwargs "
                                 f"must be finite and at most {MAX_ARCH_INT}")
        elif isinstance(value, str):
            if "://" in value or "hf-hub" in value.lower() or "hf_hub" in value.lower():
                raise ModelError(f"{source}: {name.split('.', 1)[1]!r} names a location to download from")


def read_card(folder: Path, path: Path, config: dict | None) -> ModelCard:
    """The card beside the weights (JSON or YAML), with what an smp ``config.json`` implies;
    without a card, defaults from the config alone (with a warning).

    Parameters
    ----------
    folder : Path
        The model folder.
    path : Path
        The weights file, named in errors.
    config : dict or None
        The folder's smp config (:func:`smp_config`), if any.

    Returns
    -------
    ModelCard
    """
    card_path = next((folder / n for n in CARD_NAMES if (folder / n).is_file()), None)
    overrides = _card_from_config(config) if config else {}
    if card_path is not None:
        n_classes = len(overrides.pop("classes", []))
        card = ModelCard.read(card_path, **overrides)
        if n_classes and n_classes != len(card.classes):
            raise ModelError(f"{card_path}: names {len(card.classes)} classes but {SMP_CONFIG} has {n_classes}")
        return card
    if config is None:
        raise ModelError(f"{path}: no {CARD_NAME} (or .yaml) beside the weights; a model needs its card")
    import warnings

    card = ModelCard.from_dict({**overrides, "notes": {"card": "defaults: no model card beside config.json"}},
                               str(folder / SMP_CONFIG))
    warnings.warn(f"{folder}: no model card; assuming {card.um_per_px} µm/px and threshold {card.threshold}",
                  stacklevel=3)
    return card


def smp_config(path: Path) -> dict:
    """An smp ``save_pretrained`` config, checked to be one.

    Parameters
    ----------
    path : Path
        The ``config.json``.

    Returns
    -------
    dict
    """
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read smp config ({exc})") from None
    if not isinstance(config, dict) or "_model_class" not in config:
        raise ModelError(f"{path}: not an smp save_pretrained config (no '_model_class')")
    return config


def _card_from_config(config: dict) -> dict:
    """Card fields implied by an smp config: architecture, encoder, channels, class count."""
    skip = {"_model_class", "encoder_name", "encoder_weights", "in_channels", "classes"}
    n = int(config.get("classes", 1))
    return {
        "architecture": config["_model_class"],
        "encoder": config.get("encoder_name", "resnet34"),
        "in_channels": int(config.get("in_channels", 3)),
        "arch_kwargs": {k: v for k, v in config.items() if k not in skip and not k.startswith("_")},
        "classes": [f"class {i}" for i in range(n)] if n > 1 else ["object"],
    }

