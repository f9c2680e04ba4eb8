"""Model cards and safe model loading.

A model is only usable with the facts that travel with its weights: architecture, the µm/px it
was trained at, how its input was normalised and where to threshold. Those live in a JSON model
card beside the weights. Weights are untrusted data: we read safetensors, or a state dict with
``torch.load(weights_only=True)``, and never unpickle arbitrary objects. A TorchScript archive
carries code that runs when it is loaded and when it is called, so it is refused unless the
caller says the user trusts it (``trust_code=True``: ``--trust-model``, the Segment dock's box).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_ftu.errors import ModelError

CARD_NAME = "model_card.json"
WEIGHTS_NAME = "model.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        _check_card_size(data, source)
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
        _check_card_text(text, str(path))
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


def _check_card_text(text: str, source: str) -> None:
    """Refuse a card file that is huge or nested deeper than any card needs before parsing it:
    PyYAML takes minutes on 10 000 nested brackets (116 s measured)."""
    if len(text) > MAX_CARD_BYTES:
        raise ModelError(f"{source}: a model card of {len(text)} characters is too large (at most {MAX_CARD_BYTES})")
    codes = np.frombuffer(text.encode("utf-8", errors="replace"), np.uint8)
    step = np.isin(codes, (ord("["), ord("{"))).astype(np.int32) - np.isin(codes, (ord("]"), ord("}")))
    if codes.size and int(np.cumsum(step).max()) > MAX_CARD_DEPTH:
        raise ModelError(f"{source}: the card is nested deeper than {MAX_CARD_DEPTH} levels")


def _check_card_size(data, source: str) -> None:
    """Refuse cards with more than MAX_CARD_NODES values, counting shared (aliased) ones each
    time they appear, before anything walks or serialises them."""
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


def import_torch():
    """``import torch`` with triton kept out of CPU-only processes (see :func:`import_smp`)."""
    import torch

    if not torch.cuda.is_available() and "triton" not in sys.modules:
        sys.modules["triton"] = None
    return torch


def import_smp():
    """Import segmentation-models-pytorch, keeping triton out of CPU-only processes.

    torchvision imports ``torch._dynamo``, which imports triton. Triton's bundled LLVM crashes
    the process (segfault) when Mesa's llvmpipe OpenGL driver, napari's canvas on machines
    without a GPU, has loaded its own LLVM first: exactly what happens when a user opens the
    viewer and then the Segment dock. Triton only compiles GPU kernels, so without CUDA we
    mark it unavailable (``import triton`` then raises ImportError, which torch handles).
    """
    import_torch()
    import segmentation_models_pytorch as smp

    return smp


def build_network(card: ModelCard):
    """An untrained network of the card's architecture (no weight download): an smp model, or
    the scribble classifier of :mod:`napari_ftu.engine.features`.

    Parameters
    ----------
    card : ModelCard

    Returns
    -------
    torch.nn.Module
    """
    if card.architecture == "FeatureClassifier":
        from napari_ftu.engine.features import build_from_card

        try:
            return build_from_card(card)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"cannot build a FeatureClassifier from the card: {exc}") from None
    smp = import_smp()
    try:
        return smp.create_model(
            card.architecture,
            encoder_name=card.encoder,
            encoder_weights=None,
            in_channels=card.in_channels,
            classes=len(card.classes),
            **card.arch_kwargs,
        )
    except Exception as exc:
        raise ModelError(f"cannot build {card.architecture} with encoder {card.encoder}: {exc}") from None


def resolve_device(device: str = "auto"):
    """``auto`` picks CUDA when available, else MPS, else CPU.

    Parameters
    ----------
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ModelError
        A device that is asked for but not available.
    """
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("CUDA was asked for but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None


# Test-time augmentation: (forward, inverse) on (N, C, H, W) tensors of square tiles.
TTA_VIEWS = (
    (lambda t: t, lambda t: t),
    (lambda t: t.flip(-1), lambda t: t.flip(-1)),
    (lambda t: t.flip(-2), lambda t: t.flip(-2)),
    (lambda t: t.rot90(1, (-2, -1)), lambda t: t.rot90(-1, (-2, -1))),
)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class FTUModel:
    """A network plus its card, on a device; maps uint8 RGB tiles to class probabilities.

    On CUDA the network runs channels-last under autocast (bf16 where supported, else fp16) with
    cuDNN autotuning, and tiles are copied from pinned memory without blocking. The first one
    made in a process keeps freed memory for reuse (:mod:`.allocator`).

    Parameters
    ----------
    network : torch.nn.Module
        With its weights loaded.
    card : ModelCard
        How to feed it (pixel size, normalisation, classes).
    device : str or torch.device
        As for :func:`resolve_device`.
    precision : str
        ``"auto"``, ``"fp32"`` or ``"fp16"`` (GPU only).
    """

    backend = "torch"

    def __init__(self, network, card: ModelCard, device="auto", precision: str = "auto"):
        import torch

        from napari_ftu.engine.allocator import keep_freed_memory

        keep_freed_memory()  # its calls free and re-allocate the same large blocks
        if precision not in PRECISIONS:
            raise ModelError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
        self.card = card
        self.device = resolve_device(device) if not hasattr(device, "type") else device
        self.network = network.to(self.device).eval()
        self.autocast = None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.network = self.network.to(memory_format=torch.channels_last)
            if precision in ("auto", "bf16"):
                self.autocast = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            elif precision == "fp16":
                self.autocast = torch.float16
        self._mean = torch.tensor(card.mean, device=self.device).view(1, -1, 1, 1) * 255
        self._std = torch.tensor(card.std, device=self.device).view(1, -1, 1, 1) * 255

    def predict(self, tiles: np.ndarray, tta: bool = False, with_std: bool = False):
        """``tiles`` (N, H, W, 3) uint8 -> probabilities (N, C, H, W) float32.

        With ``tta`` the mean over flips and a 90° rotation; ``with_std`` also returns the
        standard deviation over those views (model uncertainty), ``(N, C, H, W)``.

        Parameters
        ----------
        tiles : ndarray
            ``(N, H, W, 3)`` uint8.
        tta : bool
            Average the flipped and rotated views.
        with_std : bool
            Also return the views' standard deviation.

        Returns
        -------
        ndarray or tuple of ndarray
            Probabilities, and with ``with_std`` their spread.
        """
        import torch

        x = torch.from_numpy(np.ascontiguousarray(tiles))
        cuda = self.device.type == "cuda"
        x = x.pin_memory().to(self.device, non_blocking=True) if cuda else x.to(self.device)
        x = (x.permute(0, 3, 1, 2).float() - self._mean) / self._std
        views = TTA_VIEWS if tta else TTA_VIEWS[:1]
        batch = torch.cat([forward(x) for forward, _ in views])
        if cuda:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast,
                                                    enabled=self.autocast is not None):
            logits = self.network(batch).float()
        prob = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)
        n = x.shape[0]
        stack = torch.stack([inverse(prob[i * n : (i + 1) * n]) for i, (_, inverse) in enumerate(views)])
        mean = stack.mean(0).cpu().numpy()
        if with_std:
            return mean, stack.std(0, unbiased=False).cpu().numpy()
        return mean


def is_out_of_memory(exc: BaseException) -> bool:
    """A device out-of-memory error (CUDA raises ``torch.OutOfMemoryError``, others a RuntimeError).

    Parameters
    ----------
    exc : BaseException
        What the model call raised.

    Returns
    -------
    bool
        True when halving the batch may help.
    """
    torch = sys.modules.get("torch")  # a model run without torch (ONNX Runtime) has no device memory to free
    if torch is None:
        return False
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def default_model_path() -> Path:
    """The model trained by this project on synthetic slides, shipped in ``sample_data``."""
    return Path(__file__).resolve().parents[1] / "sample_data" / "default_model"


CARD_NAMES = (CARD_NAME, "model_card.yaml", "model_card.yml")
SMP_CONFIG = "config.json"  # written by smp's ``save_pretrained``


TRUST_HINT = ("If you trust whoever made it, pass --trust-model (command line) or tick "
              "'Trust model code' (Segment dock)")


def load_model(path: str | Path | None = None, device="auto", card: ModelCard | None = None,
               precision: str = "auto", trust_code: bool = False) -> FTUModel:
    """Load a model: a folder (card + safetensors or state dict), an smp ``save_pretrained``
    folder (``config.json`` + safetensors, with or without a card), a state-dict checkpoint or,
    only with ``trust_code``, a TorchScript file with a card beside it (its code runs).

    Parameters
    ----------
    path : str or Path, optional
        Model folder or checkpoint; ``None`` is the built-in default model.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    card : ModelCard, optional
        Use this card instead of the one beside the weights.
    precision : str
        ``"auto"``, ``"fp32"`` or ``"fp16"`` (GPU only).
    trust_code : bool
        Allow a TorchScript model (it carries code that runs when loaded).

    Returns
    -------
    FTUModel
        The network on its device with its card.

    Raises
    ------
    ModelError
        A missing, unreadable, unsafe or mismatching model, naming the file.
    """
    path = default_model_path() if path is None else Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model folder or checkpoint")
    folder = path if path.is_dir() else path.parent
    config = _smp_config(folder / SMP_CONFIG) if (folder / SMP_CONFIG).is_file() else None
    if card is None:
        card = _read_card(folder, path, config)
    weights = model_files(path)[1]
    if _is_torchscript(weights):
        check_trust(weights, trust_code)
        network = _load_torchscript(weights)
    else:
        state = read_state_dict(weights)
        network = build_network(card)
        load_state(network, state, str(weights))
    return FTUModel(network, card, device, precision)


def model_files(path: str | Path) -> tuple[Path, Path]:
    """``(folder, weights file)`` that :func:`load_model` reads for ``path``.

    Parameters
    ----------
    path : str or Path
        A model folder or a weights file.

    Returns
    -------
    tuple of Path
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model folder or checkpoint")
    if not path.is_dir():
        return path.parent, path
    candidates = ([path / WEIGHTS_NAME] + sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pt"))
                  + sorted(path.glob("*.pth")) + sorted(path.glob("*.ts")) + sorted(path.glob("*.onnx")))
    weights = next((p for p in candidates if p.is_file()), None)
    if weights is None:
        raise ModelError(f"{path}: no weights file (model.safetensors, *.pt, *.pth, *.ts or *.onnx) in the folder")
    return path, weights


def check_trust(path: str | Path | None, trust_code: bool) -> None:
    """A :class:`ModelError` for a TorchScript model the user has not said they trust.

    Parameters
    ----------
    path : str or Path, optional
        The model about to be loaded (``None``: the built-in one).
    trust_code : bool
        The user's consent to run a TorchScript model's code.

    Raises
    ------
    ModelError
        ``path`` is TorchScript and ``trust_code`` is False.
    """
    weights = model_files(default_model_path() if path is None else path)[1]
    if not trust_code and _is_torchscript(weights):
        raise ModelError(f"{weights}: a TorchScript model carries its own code, which runs with your "
                         f"permissions when it is loaded; refused. {TRUST_HINT}")


def model_fingerprint(path: str | Path | None = None) -> str:
    """sha256 over the files that decide a model's results (weights, card, smp config), so a
    model retrained into the same folder is told apart from the old one.

    Parameters
    ----------
    path : str or Path, optional
        Model folder or file (``None``: the built-in model).

    Returns
    -------
    str
        Hex digest; cached results keyed on it go stale when the model changes.
    """
    import hashlib

    path = default_model_path() if path is None else Path(path)
    folder, weights = model_files(path)
    digest = hashlib.sha256()
    for file in [weights] + [folder / n for n in CARD_NAMES + (SMP_CONFIG,)]:
        if not file.is_file():
            continue
        digest.update(file.name.encode() + b"\0")
        try:
            with open(file, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except OSError as exc:
            raise ModelError(f"{file}: cannot read ({exc.strerror or exc})") from None
        digest.update(b"\0")
    return digest.hexdigest()


_LOADED: dict = {}  # (path, modified, device, precision, trusted) -> FTUModel: untrusting never reuses one


def cached_model(path: str | Path | None = None, device="auto", precision: str = "auto",
                 trust_code: bool = False) -> FTUModel:
    """:func:`load_model`, once per process for a given file, device and precision: docks re-run
    and batch workers take slide after slide without reloading. A model folder written again
    (retrained in place) is loaded anew.

    Parameters
    ----------
    path, device, precision, trust_code
        As for :func:`load_model`.

    Returns
    -------
    FTUModel
        Shared between callers: do not change it.
    """
    path = default_model_path() if path is None else Path(path)
    try:
        modified = max((p.stat().st_mtime_ns for p in ([path, *path.iterdir()] if path.is_dir() else [path])))
    except OSError:
        modified = None  # load_model says what is wrong
    key = (str(path.resolve()), modified, str(device), precision, trust_code)
    if key not in _LOADED:
        _LOADED[key] = load_model(path, device=device, precision=precision, trust_code=trust_code)
    return _LOADED[key]


def _read_card(folder: Path, path: Path, config: dict | None) -> ModelCard:
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


def _smp_config(path: Path) -> dict:
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


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding compiled ``code/``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_torchscript(path: Path):
    """Only with the user's consent: a scripted module's ``__setstate__`` runs at load and its
    ``forward`` at every call, and TorchScript can read and write files (``torch.from_file``)."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch marks TorchScript as deprecated
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelError(f"{path}: not a loadable TorchScript model ({type(exc).__name__}: {exc})") from None


def read_state_dict(path: Path) -> dict:
    """Tensors from safetensors or a weights-only torch checkpoint; nothing is unpickled.

    Parameters
    ----------
    path : Path
        A ``.safetensors`` or torch checkpoint file.

    Returns
    -------
    dict
        Name -> tensor.

    Raises
    ------
    ModelError
        An unreadable file, or one that needs unpickling.
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        import pickle

        if isinstance(exc, pickle.UnpicklingError) or "weights only load failed" in str(exc).lower():
            # torch's own text advises weights_only=False, i.e. running the file's code: never say that
            raise ModelError(f"{path}: holds Python objects, not only tensors; refused, as loading them "
                             "could run code (save a state dict or safetensors instead)") from None
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ModelError(f"{path}: not a readable weights file ({type(exc).__name__}: {reason})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: expected a state dict of tensors")
    return obj


def load_state(network, state: dict, source: str) -> None:
    """Load tensors into the network, tolerating ``module.``/``model.`` prefixes, naming mismatches.

    Parameters
    ----------
    network : torch.nn.Module
    state : dict
        Name -> tensor (:func:`read_state_dict`).
    source : str
        The file, for the error message.

    Raises
    ------
    ModelError
        Missing, unexpected or mis-shaped tensors.
    """
    expected = set(network.state_dict())
    for prefix in ("module.", "model."):
        if state and not (set(state) & expected) and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelError(
            f"{source}: weights do not fit the card's network; "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{source}: weights do not fit the card's network ({exc})") from None


def save_model(network, card: ModelCard, folder: str | Path) -> Path:
    """Write a model folder (card + safetensors + its ONNX graph, for running without torch),
    each file atomically.

    Parameters
    ----------
    network : torch.nn.Module
    card : ModelCard
    folder : str or Path
        Created if needed; files already there are replaced atomically.

    Returns
    -------
    Path
        ``folder``.
    """
    from safetensors.torch import save_file

    from napari_ftu.atomic import atomic_path, write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    write_text(folder / CARD_NAME, card.to_json())
    if card.architecture != "FeatureClassifier":  # the scribble classifier runs on torch
        from napari_ftu.engine.onnx_model import ONNX_NAME, export_onnx

        export_onnx(network, card, folder / ONNX_NAME, model_fingerprint(folder))
    return folder
