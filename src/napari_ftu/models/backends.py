"""Which runtime runs a model: torch (CUDA, MPS, training, TorchScript) or ONNX Runtime (CPU).

Both give the engine the same object (``card``, ``device``, ``backend``, ``predict``). On the CPU
ONNX Runtime is the default whenever the model has an ONNX graph or can get one: a folder's own
``model.onnx`` (written by :func:`~napari_ftu.models.loading.save_model`), an ``.onnx`` file, a
bioimage.io package, or, for an older folder with weights only, a graph exported once and cached
under the user's cache folder, keyed by :func:`~napari_ftu.models.loading.model_fingerprint` (the
model folder is never written to). Running an ONNX graph imports neither torch nor
segmentation-models-pytorch.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from napari_ftu.errors import ModelError, OptionError
from napari_ftu.models.loading import (
    CARD_NAMES,
    ModelCard,
    check_trust,
    default_model_path,
    model_files,
    model_fingerprint,
)
from napari_ftu.models.onnx import (
    ONNX_NAME,
    WEIGHTS_KEY,
    OnnxModel,
    cache_dir,
    card_of,
    export_onnx,
    graph_metadata,
)

BACKENDS = ("auto", "torch", "onnxruntime")


def gpu_present() -> bool:
    """A CUDA device (or Apple's MPS) that torch would pick for ``device="auto"``, found without
    importing torch when it is not imported yet (the CUDA driver answers in milliseconds)."""
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        mps = getattr(torch.backends, "mps", None)
        return bool(torch.cuda.is_available() or (mps and mps.is_available()))
    if platform.system() == "Darwin":
        return platform.machine() == "arm64"
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except (OSError, AttributeError):
        return False


def _is_onnx_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".onnx"


def _folder_card(folder: Path) -> ModelCard | None:
    card = next((folder / n for n in CARD_NAMES if (folder / n).is_file()), None)
    return ModelCard.read(card) if card is not None else None


def onnx_graph(path: str | Path | None) -> Path | None:
    """An ONNX graph that is this model, without exporting: the file itself, the folder's
    ``model.onnx`` (when it was exported from the weights now beside it, or there are none) or a
    cached export.

    Parameters
    ----------
    path : str or Path, optional
        The model (``None``: the built-in one).

    Returns
    -------
    Path or None
        ``None`` when there is none yet.
    """
    path = default_model_path() if path is None else Path(path)
    if _is_onnx_file(path):
        return path
    folder = path if path.is_dir() else path.parent
    weights = _weights(path)
    if weights is not None and weights.suffix == ".onnx":
        return weights
    own = folder / ONNX_NAME
    fingerprint = model_fingerprint(path)
    if own.is_file() and graph_metadata(own).get(WEIGHTS_KEY) == fingerprint:
        return own
    cached = cache_dir() / fingerprint / ONNX_NAME
    return cached if cached.is_file() else None


def _weights(path: Path) -> Path | None:
    try:
        return model_files(path)[1]
    except ModelError:
        return None


def exportable(path: str | Path | None) -> bool:
    """Whether a graph can be exported from the model's weights (not TorchScript, whose code
    would run, nor the scribble classifier, which stays on torch).

    Parameters
    ----------
    path : str or Path, optional
        The model (``None``: the built-in one).

    Returns
    -------
    bool
    """
    from napari_ftu.models.loading import _is_torchscript

    path = default_model_path() if path is None else Path(path)
    weights = _weights(path)
    if weights is None or weights.suffix == ".onnx" or _is_torchscript(weights):
        return False
    card = _folder_card(path if path.is_dir() else path.parent)
    return card is None or card.architecture != "FeatureClassifier"


def ensure_onnx(path: str | Path | None) -> Path:
    """The model's ONNX graph, exported into the cache on first use (this imports torch once).

    Parameters
    ----------
    path : str or Path, optional
        The model (``None``: the built-in one).

    Returns
    -------
    Path
        The folder's own graph, or the cached export.

    Raises
    ------
    ModelError
        No graph and none can be made (TorchScript, a scribble classifier).
    """
    graph = onnx_graph(path)
    if graph is not None:
        return graph
    if not exportable(path):
        raise ModelError(f"{path or default_model_path()}: has no ONNX graph and none can be exported from it "
                         f"(TorchScript or a scribble classifier); use the torch backend")
    from napari_ftu.models.loading import load_model

    model = load_model(path, device="cpu")
    target = cache_dir() / model_fingerprint(path) / ONNX_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    return export_onnx(model.network, model.card, target, model_fingerprint(path))


def write_onnx(folder: str | Path | None = None) -> Path:
    """Export a model folder's graph into the folder itself (``model.onnx``): what
    :func:`~napari_ftu.models.loading.save_model` does, for a folder written before. With no
    argument, the built-in model's (run again whenever the built-in model changes).

    Parameters
    ----------
    folder : str or Path, optional
        A model folder (card + weights); ``None``: the built-in model.

    Returns
    -------
    Path
        The written ``model.onnx``.
    """
    from napari_ftu.models.loading import load_model

    folder = default_model_path() if folder is None else Path(folder)
    model = load_model(folder, device="cpu")
    return export_onnx(model.network, model.card, folder / ONNX_NAME, model_fingerprint(folder))


def choose_backend(path, device: str = "auto", backend: str = "auto") -> str:
    """``backend`` as asked, or for ``auto``: torch on a GPU, ONNX Runtime on the CPU when the
    model has or can get an ONNX graph.

    Parameters
    ----------
    path : str or Path, optional
        The model (``None``: the built-in one).
    device : str
        As for :func:`~napari_ftu.models.loading.resolve_device`.
    backend : str
        ``"auto"``, ``"torch"`` or ``"onnxruntime"``.

    Returns
    -------
    str
        ``"torch"`` or ``"onnxruntime"``.
    """
    if backend not in BACKENDS:
        raise OptionError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    cpu = device in (None, "", "cpu") or (device == "auto" and not gpu_present())
    if backend == "onnxruntime" and not cpu:
        raise OptionError(f"the onnxruntime backend runs on the CPU; for device {device!r} use --backend torch")
    if backend != "auto":
        return backend
    from napari_ftu.models.bioimageio import is_package

    p = default_model_path() if path is None else Path(path)
    if (_is_onnx_file(p) or is_package(p)) and device in (None, "", "auto", "cpu"):
        return "onnxruntime"  # a graph, not torch weights: ONNX Runtime even where a GPU is present
    if not cpu:
        return "torch"
    return "onnxruntime" if onnx_graph(p) is not None or exportable(p) else "torch"


def prepare(path: str | Path | None = None, device: str = "auto", backend: str = "auto") -> str:
    """Choose the backend and, for ONNX Runtime, export an older folder's graph now, so that a
    batch's workers on this machine share one cached export instead of each making it.

    Parameters
    ----------
    path : str or Path, optional
        The model (``None``: the built-in one).
    device, backend : str
        As for :func:`choose_backend`.

    Returns
    -------
    str
        The backend.
    """
    from napari_ftu.models.bioimageio import is_package

    which = choose_backend(path, device, backend)
    p = default_model_path() if path is None else Path(path)
    if which == "onnxruntime" and not is_package(p) and not _is_onnx_file(p):
        ensure_onnx(p)
    return which


def load(path: str | Path | None = None, device: str = "auto", backend: str = "auto", precision: str = "auto",
         trust_code: bool = False, threads: int | None = None):
    """The model at ``path`` (folder, weights file, ``.onnx`` file or bioimage.io package) on the
    chosen backend (:func:`choose_backend`).

    Parameters
    ----------
    path : str or Path, optional
        ``None``: the built-in model.
    device, precision, trust_code
        As for :func:`~napari_ftu.models.loading.load_model`.
    backend : str
        ``"auto"``, ``"torch"`` or ``"onnxruntime"``.
    threads : int, optional
        ONNX Runtime threads (torch's are set by the caller).

    Returns
    -------
    FTUModel or OnnxModel
        Both have ``card``, ``device``, ``backend`` and ``predict``.
    """
    from napari_ftu.models.bioimageio import is_package, load_package

    p = default_model_path() if path is None else Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such model folder or checkpoint")
    if p.is_dir() and not is_package(p) and _folder_card(p) is None and not (p / "config.json").is_file() \
            and not any(p.glob("*.onnx")):
        raise ModelError(f"{p}: no {CARD_NAMES[0]} (or .yaml) in the folder; a model needs its card")
    which = choose_backend(p, device, backend)
    if is_package(p):
        return load_package(p, backend=which, device=device, trust_code=trust_code, threads=threads)
    if _is_onnx_file(p) or _weights(p) is not None and _weights(p).suffix == ".onnx":
        graph = p if _is_onnx_file(p) else _weights(p)
        if which == "torch":
            raise ModelError(f"{graph}: an ONNX graph runs only on the onnxruntime backend (no torch weights)")
        folder = graph.parent
        return OnnxModel(graph, card_of(graph, _folder_card(folder)), threads)
    if which == "onnxruntime":
        check_trust(p, trust_code)
        graph = ensure_onnx(p)
        folder = p if p.is_dir() else p.parent
        card = _folder_card(folder)
        if card is None:  # an smp folder without a card: the torch loader derives one from config.json
            card = card_of(graph)
        return OnnxModel(graph, card, threads)
    from napari_ftu.models.fold import fold_batch_norm
    from napari_ftu.models.loading import load_model

    model = load_model(p, device=device, precision=precision, trust_code=trust_code)
    model.network, model.folded = fold_batch_norm(model.network, model.card.in_channels)  # inference only
    return model


_LOADED: dict = {}


def cached(path: str | Path | None = None, device: str = "auto", backend: str = "auto", precision: str = "auto",
           trust_code: bool = False, threads: int | None = None):
    """:func:`load`, once per process for given files and settings: docks re-run and batch
    workers take slide after slide without reloading; a model folder written again is loaded anew.

    Parameters
    ----------
    path, device, backend, precision, trust_code, threads
        As for :func:`load`.

    Returns
    -------
    FTUModel or OnnxModel
        Shared between callers: do not change it.
    """
    p = default_model_path() if path is None else Path(path)
    try:
        modified = max(q.stat().st_mtime_ns for q in ([p, *p.iterdir()] if p.is_dir() else [p]))
    except OSError:
        modified = None  # load says what is wrong
    key = (str(p.resolve()), modified, str(device), backend, precision, trust_code, threads)
    if key not in _LOADED:
        _LOADED[key] = load(p, device=device, backend=backend, precision=precision, trust_code=trust_code,
                            threads=threads)
    return _LOADED[key]
