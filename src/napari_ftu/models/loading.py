"""Safe model loading, building and saving (the card itself: :mod:`napari_ftu.models.card`).

A model is only usable with the facts that travel with its weights: architecture, the µm/px it
was trained at, how its input was normalised and where to threshold. Those live in a JSON model
card beside the weights. Weights are untrusted data: we read safetensors, or a state dict with
``torch.load(weights_only=True)``, and never unpickle arbitrary objects. A TorchScript archive
carries code that runs when it is loaded and when it is called, so it is refused unless the
caller says the user trusts it (``trust_code=True``: ``--trust-model``, the Segment dock's box).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_ftu.errors import ModelError
from napari_ftu.models.card import CARD_NAME, CARD_NAMES, SMP_CONFIG, ModelCard, read_card, smp_config
from napari_ftu.models.torch_import import build_smp

WEIGHTS_NAME = "model.safetensors"


def build_network(card: ModelCard):
    """An untrained network of the card's architecture (no weight download): an smp model, or
    the scribble classifier of :mod:`napari_ftu.models.features`.

    Parameters
    ----------
    card : ModelCard

    Returns
    -------
    torch.nn.Module
    """
    if card.architecture == "FeatureClassifier":
        from napari_ftu.models.features import build_from_card

        try:
            return build_from_card(card)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"cannot build a FeatureClassifier from the card: {exc}") from None
    return build_smp(card)


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

        from napari_ftu.models.allocator import keep_freed_memory

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


BUILTIN_MODELS = {  # name (what --model and --init take) -> folder in sample_data
    "builtin": "kidney_glomerulus",  # real PAS kidney: the default everywhere
    "synthetic-demo": "synthetic_glomerulus",  # the project's synthetic slides: the demo and the synthetic sample
}


def builtin_model_path(name: str = "builtin") -> Path:
    """A model shipped in ``sample_data``, by its name in :data:`BUILTIN_MODELS`.

    Parameters
    ----------
    name : str
        ``"builtin"`` (the default model) or ``"synthetic-demo"``.

    Returns
    -------
    Path
        The model folder.
    """
    if name not in BUILTIN_MODELS:
        raise ModelError(f"{name}: no built-in model of that name (built-in: {', '.join(BUILTIN_MODELS)})")
    return Path(__file__).resolve().parents[1] / "sample_data" / BUILTIN_MODELS[name]


def default_model_path() -> Path:
    """The default model: glomeruli in real PAS kidney slides (see its ``README.md``)."""
    return builtin_model_path("builtin")


def model_path(value: str | Path) -> Path:
    """What a user wrote for a model: a path, or a built-in model's name where no such path exists.

    Parameters
    ----------
    value : str or Path
        ``--model``/``--init`` as given.

    Returns
    -------
    Path
        The model's path.
    """
    path = Path(value)
    return builtin_model_path(str(value)) if str(value) in BUILTIN_MODELS and not path.exists() else path




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
    config = smp_config(folder / SMP_CONFIG) if (folder / SMP_CONFIG).is_file() else None
    if card is None:
        card = read_card(folder, path, config)
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
        from napari_ftu.models.onnx import ONNX_NAME, export_onnx

        export_onnx(network, card, folder / ONNX_NAME, model_fingerprint(folder))
    return folder
