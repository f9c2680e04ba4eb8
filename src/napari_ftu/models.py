"""Model cards and safe model loading.

A model is only usable with the facts that travel with its weights: architecture, the µm/px it
was trained at, how its input was normalised and where to threshold. Those live in a JSON model
card beside the weights. Weights are untrusted data: we read safetensors, or a state dict with
``torch.load(weights_only=True)``, and never unpickle arbitrary objects.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CARD_NAME = "model_card.json"
WEIGHTS_NAME = "model.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """A model folder, card or checkpoint that cannot be used, with the reason."""


@dataclass
class ModelCard:
    """What a model needs to be run correctly (serialised as ``model_card.json``)."""

    architecture: str = "Unet"
    encoder: str = "tu-mobilenetv3_small_100"
    arch_kwargs: dict = field(default_factory=lambda: {"decoder_channels": [64, 32, 24, 16, 8]})
    in_channels: int = 3
    classes: list = field(default_factory=lambda: ["glomerulus"])
    um_per_px: float = 2.0
    mean: list = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list = field(default_factory=lambda: list(IMAGENET_STD))
    threshold: float = 0.5
    min_object_um2: float = 1000.0
    tile_size: int = 256
    overlap: int = 32
    name: str = "unnamed"
    notes: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, source: str = "model card") -> ModelCard:
        if not isinstance(data, dict):
            raise ModelError(f"{source}: expected a JSON object")
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
        if not 0 < card.threshold < 1:
            raise ModelError(f"{source}: 'threshold' must lie between 0 and 1")
        if card.tile_size < 32 or card.overlap < 0 or card.overlap >= card.tile_size:
            raise ModelError(f"{source}: need tile_size >= 32 and 0 <= overlap < tile_size")
        return card

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: cannot read model card ({exc})") from None
        return cls.from_dict(data, str(path))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def import_smp():
    """Import segmentation-models-pytorch, keeping triton out of CPU-only processes.

    torchvision imports ``torch._dynamo``, which imports triton. Triton's bundled LLVM crashes
    the process (segfault) when Mesa's llvmpipe OpenGL driver, napari's canvas on machines
    without a GPU, has loaded its own LLVM first: exactly what happens when a user opens the
    viewer and then the Segment dock. Triton only compiles GPU kernels, so without CUDA we
    mark it unavailable (``import triton`` then raises ImportError, which torch handles).
    """
    import torch

    if not torch.cuda.is_available() and "triton" not in sys.modules:
        sys.modules["triton"] = None
    import segmentation_models_pytorch as smp

    return smp


def build_network(card: ModelCard):
    """An untrained smp network of the card's architecture (no weight download)."""
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
    """``auto`` picks CUDA when available, else MPS, else CPU."""
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


class FTUModel:
    """A network plus its card, on a device; maps uint8 RGB tiles to class probabilities."""

    def __init__(self, network, card: ModelCard, device="auto"):
        self.card = card
        self.device = resolve_device(device) if not hasattr(device, "type") else device
        self.network = network.to(self.device).eval()

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """``tiles`` (N, H, W, 3) uint8 -> probabilities (N, C, H, W) float32."""
        import torch

        mean = torch.tensor(self.card.mean, device=self.device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.card.std, device=self.device).view(1, -1, 1, 1) * 255
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device).permute(0, 3, 1, 2).float()
        x = (x - mean) / std
        with torch.inference_mode():
            logits = self.network(x)
            prob = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)
        return prob.float().cpu().numpy()


def default_model_path() -> Path:
    """The model trained by this project on synthetic slides, shipped in ``sample_data``."""
    return Path(__file__).resolve().parent / "sample_data" / "default_model"


def load_model(path: str | Path | None = None, device="auto", card: ModelCard | None = None) -> FTUModel:
    """Load a model folder (card + safetensors) or a state-dict checkpoint with a card beside it."""
    path = default_model_path() if path is None else Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model folder or checkpoint")
    folder = path if path.is_dir() else path.parent
    if card is None:
        card_path = folder / CARD_NAME
        if not card_path.is_file():
            raise ModelError(f"{path}: no {CARD_NAME} beside the weights; a model needs its card")
        card = ModelCard.read(card_path)
    if path.is_dir():
        candidates = [folder / WEIGHTS_NAME] + sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.pt*"))
        weights = next((p for p in candidates if p.is_file()), None)
        if weights is None:
            raise ModelError(f"{path}: no weights file (model.safetensors or *.pt) in the folder")
    else:
        weights = path
    state = read_state_dict(weights)
    network = build_network(card)
    load_state(network, state, str(weights))
    return FTUModel(network, card, device)


def read_state_dict(path: Path) -> dict:
    """Tensors from safetensors or a weights-only torch checkpoint; nothing is unpickled."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: expected a state dict of tensors")
    return obj


def load_state(network, state: dict, source: str) -> None:
    """Load tensors into the network, tolerating ``module.``/``model.`` prefixes, naming mismatches."""
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
    """Write a model folder (card + safetensors), each file atomically."""
    from safetensors.torch import save_file

    from .atomic import atomic_path, write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    write_text(folder / CARD_NAME, card.to_json())
    return folder
