"""Models as ONNX graphs: export from torch, check an untrusted file, run it with ONNX Runtime.

Running a model needs neither torch nor segmentation-models-pytorch: importing those costs about
6 s and 1 GB before the first tile, ONNX Runtime 0.2 s and 58 MB, and its CPU kernels run our
U-Nets faster. The graph takes the normalised image ``(N, C, H, W)`` float32 (any batch and size)
and returns class probabilities (the sigmoid or softmax is inside), so a run is: normalise, run,
average the test-time views. Our exports carry the model card in the graph's metadata, so one
``.onnx`` file is a complete model.

An ONNX file is data, yet it can point at files (external tensor data), name operators from
custom libraries, or declare tensors larger than memory; :func:`check_onnx` refuses those with
one line each before ONNX Runtime sees the file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from napari_ftu.errors import ModelError

ONNX_NAME = "model.onnx"
OPSET = 17
CARD_KEY = "napari_ftu.model_card"  # metadata: the model card, JSON
WEIGHTS_KEY = "napari_ftu.weights_sha256"  # metadata: fingerprint of the weights it was exported from
PRECISION_KEY = "napari_ftu.precision"  # metadata: "int8" for quantised graphs
CACHE_ENV = "NAPARI_FTU_CACHE"
# ONNX's own operator sets and ONNX Runtime's built-in ones (its optimiser and quantiser use them): no library
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview", "ai.onnx.preview.training",
                    "com.microsoft", "com.microsoft.experimental", "com.microsoft.nchwc", "com.ms.internal.nhwc")
EXTERNAL = 1  # TensorProto.DataLocation
MAX_DIM = 1 << 31  # a declared dimension beyond this is no image model's
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}  # TensorProto types


class _Probability:
    """``network`` followed by its activation, so the exported graph yields probabilities."""

    @staticmethod
    def wrap(network, n_classes: int):
        import torch

        class Probability(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.network = network

            def forward(self, x):
                logits = self.network(x)
                return torch.sigmoid(logits) if n_classes == 1 else torch.softmax(logits, 1)

        return Probability().eval()


def cache_dir() -> Path:
    """Where exported graphs of older model folders are kept (``$NAPARI_FTU_CACHE`` or the
    user's cache folder)."""
    if os.environ.get(CACHE_ENV, "").strip():
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-ftu"))


def export_onnx(network, card, path: str | Path, weights_sha256: str | None = None) -> Path:
    """Write ``network`` (with its card) as an ONNX graph with dynamic batch, height and width.

    Parameters
    ----------
    network : torch.nn.Module
        The model's network, weights loaded.
    card : ModelCard
        Stored in the graph's metadata.
    path : str or Path
        The ``.onnx`` file, written atomically.
    weights_sha256 : str, optional
        The fingerprint of the weights it comes from, so a stale graph beside new weights is seen.

    Returns
    -------
    Path
    """
    import copy
    import io
    import warnings

    import onnx
    import torch

    from napari_ftu.atomic import atomic_path

    path = Path(path)
    wrapped = _Probability.wrap(copy.deepcopy(network).cpu().eval(), len(card.classes))  # the caller's stays put
    side = 64 if card.architecture == "FeatureClassifier" else 256
    example = torch.zeros(1, card.in_channels, side, side)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on shape checks that are constant for a given input
        torch.onnx.export(wrapped, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=["probability"],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "probability": {0: "batch", 2: "height", 3: "width"}})
    graph = onnx.load_from_string(buffer.getvalue())
    meta = {CARD_KEY: card.to_json()}
    if weights_sha256:
        meta[WEIGHTS_KEY] = weights_sha256
    onnx.helper.set_model_props(graph, meta)
    graph.producer_name = "napari-ftu"
    with atomic_path(path) as tmp:
        onnx.save(graph, str(tmp))
    return path


def quantize_int8(graph: str | Path, out: str | Path, tiles: np.ndarray, card) -> Path:
    """A static int8 copy of ``graph`` (QDQ, weights per channel), calibrated on ``tiles``.

    Faster on CPUs with int8 instructions, but its probabilities move (0.15 at most for the
    built-in model): check its Dice on held-out images before using it (bench/inference.py does).

    Parameters
    ----------
    graph : str or Path
        An fp32 graph of ours (its card is kept).
    out : str or Path
        The int8 ``.onnx`` file, written atomically.
    tiles : ndarray
        ``(N, H, W, 3)`` uint8 calibration tiles at the model's µm/px, typical of its input.
    card : ModelCard

    Returns
    -------
    Path
    """
    import tempfile

    import onnx
    from onnxruntime import quantization as q

    from napari_ftu.atomic import atomic_path

    mean = np.reshape(card.mean, (1, -1, 1, 1)) * 255
    std = np.reshape(card.std, (1, -1, 1, 1)) * 255
    batches = [((t.transpose(2, 0, 1)[None].astype(np.float32) - mean) / std).astype(np.float32) for t in tiles]

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": b} for b in batches])

        def get_next(self):
            return next(self.items, None)

    meta = {p.key: p.value for p in check_onnx(graph).metadata_props}
    with tempfile.TemporaryDirectory(prefix="napari-ftu-int8-") as tmp:
        pre, quantised = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        q.quant_pre_process(str(graph), str(pre), skip_symbolic_shape=True)
        q.quantize_static(str(pre), str(quantised), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
        model = onnx.load(str(quantised))
    onnx.helper.set_model_props(model, {**meta, PRECISION_KEY: "int8"})
    with atomic_path(out) as tmp_out:
        onnx.save(model, str(tmp_out))
    return Path(out)


def graph_metadata(path: str | Path) -> dict:
    """The metadata of a checked graph (cheap: no tensors are decoded into arrays).

    Parameters
    ----------
    path : str or Path
        An ``.onnx`` file.

    Returns
    -------
    dict
        Key -> text.
    """
    graph = check_onnx(path)
    return {p.key: p.value for p in graph.metadata_props}


def card_of(path: str | Path, folder_card=None):
    """The model card of an ONNX file: ``folder_card`` (one beside it) wins, else the one in its
    metadata; a graph with neither is refused.

    Parameters
    ----------
    path : str or Path
        An ``.onnx`` file.
    folder_card : ModelCard, optional
        The card beside it.

    Returns
    -------
    ModelCard
    """
    from napari_ftu.models.card import ModelCard

    if folder_card is not None:
        return folder_card
    meta = graph_metadata(path)
    if CARD_KEY not in meta:
        raise ModelError(f"{path}: an ONNX graph without a model card (none in its metadata, no model_card.json "
                         f"beside it); export it with napari-ftu export-model or put a card beside it")
    try:
        data = json.loads(meta[CARD_KEY])
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: the model card in its metadata is not JSON ({exc})") from None
    return ModelCard.from_dict(data, f"{path} (model card in its metadata)")


def check_onnx(path: str | Path, folder: str | Path | None = None):
    """Load an untrusted ONNX file's structure, refusing what would make it more than data.

    Refused: a file or declared tensors larger than the memory budget, external tensor data
    outside ``folder`` (default: the file's folder), operators of custom domains (they need a
    native library), and anything protobuf cannot parse.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file.
    folder : str or Path, optional
        Where external data may live.

    Returns
    -------
    onnx.ModelProto
        Without external tensors loaded.

    Raises
    ------
    ModelError
        One line naming the file and the problem.
    """
    from napari_ftu.io.budget import check_memory

    path = Path(path)
    folder = Path(folder if folder is not None else path.parent).resolve()
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    check_memory(size, path, "the ONNX file", ModelError)
    try:
        graph = _model_proto()()
        graph.ParseFromString(path.read_bytes())
    except Exception as exc:
        raise ModelError(f"{path}: not an ONNX model ({type(exc).__name__}: {str(exc)[:160]})") from None
    if not graph.HasField("graph"):
        raise ModelError(f"{path}: not an ONNX model (no graph)")
    # Operator sets a graph merely declares are harmless (ONNX Runtime's tools declare many); a node
    # of a domain that is neither standard nor a function defined in the file needs a native library.
    local = {(f.domain, f.name) for f in graph.functions}
    nodes = [n for g in _graphs(graph.graph) for n in g.node] + [n for f in graph.functions for n in f.node]
    for node in nodes:
        if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in local:
            raise ModelError(f"{path}: node {node.name or node.op_type!r} uses the custom operator domain "
                             f"{node.domain!r}, which needs a native library; refused (only standard ONNX "
                             f"operators run)")
    total = 0
    for g in _graphs(graph.graph):
        for tensor in list(g.initializer) + [s.values for s in g.sparse_initializer]:
            total += _tensor_bytes(tensor, path)
            if tensor.data_location == EXTERNAL:
                _check_external(tensor, path, folder)
        for value in list(g.input) + list(g.output):
            dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
            for d in dims:
                if d.HasField("dim_value") and not 0 <= d.dim_value < MAX_DIM:
                    raise ModelError(f"{path}: input or output {value.name!r} declares a dimension of "
                                     f"{d.dim_value}; refused")
    check_memory(total, path, "the graph's tensors", ModelError)
    return graph


def _model_proto():
    """onnx's ``ModelProto`` message class. Without ``import onnx`` when it is not imported yet:
    the package imports ml_dtypes and its helpers (about 2 s here), the message class alone is
    instant. Registered under its own name, so a later ``import onnx`` reuses it."""
    if "onnx" in sys.modules:
        return sys.modules["onnx"].ModelProto
    name = "onnx.onnx_ml_pb2"
    if name not in sys.modules:
        import importlib.util

        spec = importlib.util.find_spec("onnx")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError("the onnx package is not installed (pip install onnx)")
        file = Path(list(spec.submodule_search_locations)[0]) / "onnx_ml_pb2.py"
        module_spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name].ModelProto


def _graphs(graph):
    """The graph and every subgraph (If/Loop/Scan bodies)."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def _tensor_bytes(tensor, path) -> int:
    n = 1
    for d in tensor.dims:
        if d < 0 or d >= MAX_DIM:
            raise ModelError(f"{path}: tensor {tensor.name!r} declares a dimension of {d}; refused")
        n *= d
    return n * _ITEMSIZE.get(tensor.data_type, 8)


def _check_external(tensor, path: Path, folder: Path) -> None:
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    target = (path.parent / location).resolve()
    if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
        raise ModelError(f"{path}: tensor {tensor.name!r} reads its data from {location!r}, outside the model "
                         f"folder {folder}; refused")


class _Device:
    """What the engine reads of a torch device: its type, and its name in messages."""

    type = "cpu"

    def __str__(self) -> str:
        return "cpu"


class OnnxModel:
    """An ONNX graph plus its card, run by ONNX Runtime on the CPU; the same ``predict`` as
    :class:`~napari_ftu.models.loading.FTUModel` (uint8 RGB tiles in, class probabilities out).

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file (checked by :func:`check_onnx`).
    card : ModelCard
        How to feed it.
    threads : int, optional
        Intra-op threads (default: ONNX Runtime's, one per core).
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, card, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.card = card
        self.device = _Device()
        graph = check_onnx(self.path)
        inputs = graph.graph.input
        names = {i.name for i in graph.graph.initializer}
        real = [i for i in inputs if i.name not in names]
        if len(real) != 1:
            raise ModelError(f"{path}: expected one image input, the graph has {len(real)}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"{path}: ONNX Runtime cannot run it ({type(exc).__name__}: {str(exc)[:200]})") from None
        self._input = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != card.in_channels):
            raise ModelError(f"{path}: the graph takes {shape}, not (batch, {card.in_channels}, height, width) "
                             f"as its card says")
        self._mean = np.asarray(card.mean, np.float32).reshape(1, -1, 1, 1) * 255
        self._std = np.asarray(card.std, np.float32).reshape(1, -1, 1, 1) * 255

    def run(self, x: np.ndarray) -> np.ndarray:
        """The graph on a normalised batch.

        Parameters
        ----------
        x : ndarray
            ``(N, C, H, W)`` float32, normalised as the card says.

        Returns
        -------
        ndarray
            ``(N, classes, H, W)`` probabilities.
        """
        try:
            return self.session.run(None, {self._input: np.ascontiguousarray(x, np.float32)})[0]
        except Exception as exc:  # a graph that does not fit its card, or one damaged past loading
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise ModelError(f"{self.path}: ONNX Runtime failed on a {tuple(x.shape)} input "
                             f"({type(exc).__name__}: {' '.join(lines)[:200]})") from None

    def predict(self, tiles: np.ndarray, tta: bool = False, with_std: bool = False):
        """``tiles`` (N, H, W, C) uint8 -> probabilities (N, classes, H, W) float32.

        Parameters
        ----------
        tiles : ndarray
            ``(N, H, W, C)`` uint8.
        tta : bool
            The mean over the flips and the 90° rotation of :data:`~napari_ftu.models.loading.TTA_VIEWS`.
        with_std : bool
            Also return the views' standard deviation.

        Returns
        -------
        ndarray or tuple of ndarray
        """
        x = (np.asarray(tiles).transpose(0, 3, 1, 2).astype(np.float32) - self._mean) / self._std
        views = NUMPY_VIEWS if tta else NUMPY_VIEWS[:1]
        probs = np.stack([inverse(self.run(np.ascontiguousarray(forward(x)))) for forward, inverse in views])
        mean = probs.mean(0)
        return (mean, probs.std(0)) if with_std else mean


NUMPY_VIEWS = (  # the views of TTA_VIEWS, on numpy arrays
    (lambda t: t, lambda t: t),
    (lambda t: t[..., ::-1], lambda t: t[..., ::-1]),
    (lambda t: t[..., ::-1, :], lambda t: t[..., ::-1, :]),
    (lambda t: np.rot90(t, 1, (-2, -1)), lambda t: np.rot90(t, -1, (-2, -1))),
)
