"""bioimage.io model packages, out and in.

Out (:func:`export_package`, ``napari-ftu export-model --format bioimageio``): ``rdf.yaml`` with
ONNX and TorchScript weights, a test input (a tile of a real image when one is given) with the
model's output on it, a cover image and our model card's facts (pixel size, classes, thresholds,
training domain) as metadata; validated with ``bioimageio.spec`` (the optional ``bioimageio``
extra). In (:func:`load_package`, ``--model PACKAGE``): a zip or folder whose weights are ONNX,
or TorchScript with the user's consent, with its input axes and pre/post-processing read from
``rdf.yaml`` (format 0.5 and 0.4) by a safe YAML load, so running one needs neither torch nor
``bioimageio.core``. A package that needs what we cannot run gets one line saying what.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ftu.errors import ModelError

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
PACKAGE_KEY = "napari_ftu"  # config key holding our card in packages we write
MAX_RDF_BYTES = 256 * 1024  # as a model card


def is_package(path: str | Path) -> bool:
    """A bioimage.io package: a zip, a folder holding ``rdf.yaml``, or that file itself.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    bool
    """
    path = Path(path)
    if path.is_dir():
        return any((path / n).is_file() for n in RDF_NAMES)
    return path.is_file() and (path.suffix.lower() == ".zip" or path.name in RDF_NAMES
                               or path.name.endswith(".bioimageio.yaml"))


# --- export --------------------------------------------------------------------------------------


def export_package(model_path, out: str | Path, test_image: np.ndarray | None = None, name: str | None = None,
                   license: str = "CC-BY-4.0", authors: tuple = ("napari-ftu user",)) -> Path:
    """Write a bioimage.io model package (a ``.zip``, or a folder for any other ``out``).

    Parameters
    ----------
    model_path : str or Path, optional
        Our model (folder or weights file; ``None``: the built-in one); TorchScript is refused.
    out : str or Path
        The package: ``something.zip``, or a folder.
    test_image : ndarray, optional
        ``(H, W, 3)`` uint8 at the model's µm/px: its top-left tile is the test input (a
        synthetic kidney tile when not given).
    name : str, optional
        The package's name (default: the card's).
    license : str
        SPDX identifier of the weights' licence.
    authors : tuple of str

    Returns
    -------
    Path
        ``out``, validated by ``bioimageio.spec``.
    """
    import tempfile

    import torch
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    from napari_ftu.atomic import atomic_path
    from napari_ftu.models.loading import load_model
    from napari_ftu.models.onnx import OPSET, OnnxModel, _Probability, export_onnx

    model = load_model(model_path, device="cpu")
    card = model.card
    tile = _test_tile(test_image, card.tile_size)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="napari-ftu-bioimageio-") as tmp:
        tmp = Path(tmp)
        onnx_path = export_onnx(model.network, card, tmp / "model.onnx")
        x = ((tile.transpose(2, 0, 1)[None].astype(np.float32) - np.reshape(card.mean, (1, -1, 1, 1)) * 255)
             / (np.reshape(card.std, (1, -1, 1, 1)) * 255)).astype(np.float32)
        wrapped = _Probability.wrap(model.network, len(card.classes))
        with torch.no_grad():
            scripted = torch.jit.trace(wrapped, torch.from_numpy(x), check_trace=False)
        scripted.save(str(tmp / "weights_torchscript.pt"))
        raw = tile.transpose(2, 0, 1)[None].astype(np.float32)
        prob = OnnxModel(onnx_path, card).run(x)
        np.save(tmp / "test_input.npy", raw)
        np.save(tmp / "test_output.npy", prob.astype(np.float32))
        _cover(tile, prob[0, 0], tmp / "cover.png")
        (tmp / "README.md").write_text(_readme(card), encoding="utf-8")
        descr = _describe(card, tmp, name, license, authors, OPSET, torch.__version__)
        if out.suffix.lower() == ".zip":
            with atomic_path(out) as part:
                save_bioimageio_package(descr, output_path=part)
        else:  # a folder: written beside, then put in place
            part = out.with_name(f".{out.name}.part")
            shutil.rmtree(part, ignore_errors=True)
            save_bioimageio_package_as_folder(descr, output_path=part)
            if out.exists():
                shutil.rmtree(out)
            part.rename(out)
    return out


def _test_tile(image, side: int) -> np.ndarray:
    if image is None:
        from napari_ftu.io.synthetic import make_slide

        image = make_slide(side, side, seed=7, um_per_px=2.0)[0]
    image = np.asarray(image)[..., :3]
    pad = [(0, max(0, side - image.shape[0])), (0, max(0, side - image.shape[1])), (0, 0)]
    return np.pad(image, pad, mode="reflect")[:side, :side].astype(np.uint8)


def _cover(tile: np.ndarray, prob: np.ndarray, path: Path) -> None:
    """The tile beside its probability (2:1, as bioimage.io asks)."""
    import imageio.v3 as iio

    gray = np.repeat((np.clip(prob, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    iio.imwrite(path, np.concatenate([tile, gray], axis=1))


def _ident(text: str) -> str:
    ident = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "class"
    return ident if ident[0].isalpha() else f"c_{ident}"


def _readme(card) -> str:
    from napari_ftu.models.card import describe_domain

    classes = ", ".join(card.classes)
    return (f"# {card.name}\n\nSemantic segmentation of {classes} in RGB histology at {card.um_per_px:g} µm/px, "
            f"exported by napari-ftu. Threshold {card.threshold:g}; objects smaller than {card.min_object_um2:g} µm² "
            f"are dropped; tiles of {card.tile_size} px overlapping by {card.overlap} px.\n\n"
            f"{describe_domain(card)}\n\nThe full model card is in `config.napari_ftu.model_card`.\n")


def _describe(card, folder: Path, name, license, authors, opset: int, torch_version: str):
    from bioimageio.spec.model import v0_5 as bio

    channels = [bio.Identifier(c) for c in ("r", "g", "b")[: card.in_channels]] if card.in_channels <= 3 else \
        [bio.Identifier(f"c{i}") for i in range(card.in_channels)]
    space = {"unit": "micrometer", "scale": float(card.um_per_px)}
    inputs = bio.InputTensorDescr(
        id=bio.TensorId("input"), description="RGB image, 0-255",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=channels),
              bio.SpaceInputAxis(id=bio.AxisId("y"), size=bio.ParameterizedSize(min=32, step=32), **space),
              bio.SpaceInputAxis(id=bio.AxisId("x"), size=bio.ParameterizedSize(min=32, step=32), **space)],
        test_tensor=bio.FileDescr(source=folder / "test_input.npy"),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[bio.FixedZeroMeanUnitVarianceDescr(kwargs=bio.FixedZeroMeanUnitVarianceAlongAxisKwargs(
            axis=bio.AxisId("channel"), mean=[m * 255 for m in card.mean], std=[s * 255 for s in card.std]))])
    outputs = bio.OutputTensorDescr(
        id=bio.TensorId("probability"), description="class probability",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(_ident(c)) for c in card.classes]),
              bio.SpaceOutputAxis(id=bio.AxisId("y"), size=bio.SizeReference(tensor_id=bio.TensorId("input"),
                                                                            axis_id=bio.AxisId("y")), **space),
              bio.SpaceOutputAxis(id=bio.AxisId("x"), size=bio.SizeReference(tensor_id=bio.TensorId("input"),
                                                                            axis_id=bio.AxisId("x")), **space)],
        test_tensor=bio.FileDescr(source=folder / "test_output.npy"),
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))
    weights = bio.WeightsDescr(
        onnx=bio.OnnxWeightsDescr(source=folder / "model.onnx", opset_version=opset),
        torchscript=bio.TorchscriptWeightsDescr(source=folder / "weights_torchscript.pt", parent="onnx",
                                                pytorch_version=bio.Version(torch_version.split("+")[0])))
    organs = card.trained_on.get("organs", [])
    tags = ["napari-ftu", "semantic-segmentation", "histology", "2d", *(_ident(c) for c in card.classes),
            *(_ident(o) for o in organs)]
    return bio.ModelDescr(
        name=name or card.name, description=f"{', '.join(card.classes)} segmentation at {card.um_per_px:g} µm/px "
                                            f"(napari-ftu)",
        authors=[bio.Author(name=a) for a in authors], license=license,
        cite=[bio.CiteEntry(text="napari-ftu: functional tissue units in napari", url="https://napari-hub.org")],
        documentation=bio.FileDescr(source=folder / "README.md"), covers=[bio.FileDescr(source=folder / "cover.png")],
        tags=list(dict.fromkeys(tags)),
        inputs=[inputs], outputs=[outputs], weights=weights,
        config={PACKAGE_KEY: {"model_card": json.loads(card.to_json())}})


# --- import --------------------------------------------------------------------------------------


@dataclass
class PackagePlan:
    """What we read from a package's ``rdf.yaml`` to run it.

    Parameters
    ----------
    folder : Path
        The unpacked package.
    name : str
    axes, out_axes : list of str
        The input's and output's axes as letters (b, c, y, x).
    preprocessing, postprocessing : list of tuple
        ``(step name, kwargs)`` in order.
    weights : dict
        Weights format -> file.
    card : ModelCard
        Ours (stored in packages we wrote) or one made from the axes.
    """

    folder: Path
    name: str
    axes: list  # input axes as letters: b, c, y, x
    out_axes: list
    preprocessing: list = field(default_factory=list)  # (name, kwargs)
    postprocessing: list = field(default_factory=list)
    weights: dict = field(default_factory=dict)  # format -> file
    card: object = None


def load_package(path, backend: str = "onnxruntime", device: str = "cpu", trust_code: bool = False,
                 threads: int | None = None):
    """A runnable model from a bioimage.io package (zip, folder or its ``rdf.yaml``).

    Parameters
    ----------
    path : str or Path
    backend : str
        ``"onnxruntime"`` (ONNX weights) or ``"torch"`` (TorchScript, only with ``trust_code``).
    device : str
        For TorchScript.
    trust_code : bool
        The user consents to running the package's TorchScript code.
    threads : int, optional
        ONNX Runtime threads.

    Returns
    -------
    PackageModel
    """
    plan = read_package(path)
    if backend == "onnxruntime" and "onnx" in plan.weights:
        return PackageModel(plan, "onnx", threads=threads)
    if "torchscript" in plan.weights:
        if not trust_code:
            from napari_ftu.models.loading import TRUST_HINT

            what = "has no ONNX weights, only TorchScript" if "onnx" not in plan.weights else "asks for TorchScript"
            raise ModelError(f"{path}: the package {what}, which carries its own code that runs with your "
                             f"permissions; refused. {TRUST_HINT}")
        return PackageModel(plan, "torchscript", device=device)
    if "onnx" in plan.weights:  # torch was asked for, but there is only a graph
        return PackageModel(plan, "onnx", threads=threads)
    raise ModelError(f"{path}: the package's weights are {', '.join(plan.weights) or 'missing'}; napari-ftu runs "
                     f"onnx, or torchscript with --trust-model")


def read_package(path) -> PackagePlan:
    """Unpack (zips into the user cache, safely) and read ``rdf.yaml`` into a :class:`PackagePlan`.

    Parameters
    ----------
    path : str or Path
        A zip, a folder or its ``rdf.yaml``.

    Returns
    -------
    PackagePlan

    Raises
    ------
    ModelError
        One line naming what the package needs that napari-ftu cannot run, or what is unsafe.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        folder = _unzip(path)
        rdf = next((folder / n for n in RDF_NAMES if (folder / n).is_file()), None)
    elif path.is_dir():
        folder, rdf = path, next((path / n for n in RDF_NAMES if (path / n).is_file()), None)
    else:
        folder, rdf = path.parent, path
    if rdf is None:
        raise ModelError(f"{path}: no rdf.yaml in the package")
    data = _read_yaml(rdf)
    if data.get("type") != "model":
        raise ModelError(f"{rdf}: a bioimage.io {data.get('type', 'resource')!r}, not a model")
    inputs, outputs = data.get("inputs") or [], data.get("outputs") or []
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelError(f"{rdf}: napari-ftu runs models with one image input; this one has {len(inputs)} inputs")
    v4 = str(data.get("format_version", "0.5")).startswith("0.4")
    axes, in_scale, sizes = _axes(inputs[0], v4, rdf)
    out_axes = _axes(outputs[0], v4, rdf)[0]
    if "c" not in axes or "y" not in axes or "x" not in axes or set(axes) - {"b", "c", "y", "x"}:
        raise ModelError(f"{rdf}: input axes {''.join(axes)}; napari-ftu runs 2-D models with channel, y and x axes "
                         f"(no z, time or index axes)")
    weights = {}
    for fmt, entry in (data.get("weights") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("source"), str):
            weights[fmt] = _inside(folder, entry["source"], rdf)
    plan = PackagePlan(folder, str(data.get("name", folder.name)), axes, out_axes,
                       _steps(inputs[0].get("preprocessing"), v4, rdf),
                       _steps(outputs[0].get("postprocessing"), v4, rdf), weights)
    plan.card = _card(data, plan, in_scale, sizes, outputs[0], v4, rdf)
    return plan


def _read_yaml(rdf: Path) -> dict:
    import yaml

    from napari_ftu.models.card import check_card_size, check_card_text

    try:
        text = rdf.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{rdf}: cannot read ({exc})") from None
    if len(text) > MAX_RDF_BYTES:
        raise ModelError(f"{rdf}: {len(text)} characters is too large for a model description")
    check_card_text(text, str(rdf))  # nesting bombs
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception as exc:
        raise ModelError(f"{rdf}: not readable YAML ({type(exc).__name__}: {str(exc)[:160]})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{rdf}: not a bioimage.io description (expected a mapping)")
    check_card_size(data, str(rdf))
    return data


def _unzip(path: Path) -> Path:
    """Extract a package zip once into the user cache (keyed by its sha256), refusing members
    that leave the folder and totals beyond the memory budget."""
    from napari_ftu.io.budget import check_memory
    from napari_ftu.models.onnx import cache_dir

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    target = cache_dir() / "bioimageio" / digest.hexdigest()
    if (target / ".complete").is_file():
        return target
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{path}: not a readable zip ({exc})") from None
    with archive:
        members = archive.infolist()
        check_memory(sum(m.file_size for m in members), path, "unpacking the package", ModelError)
        for m in members:
            name = Path(m.filename)
            if name.is_absolute() or ".." in name.parts:
                raise ModelError(f"{path}: member {m.filename!r} would be written outside the package folder; refused")
        tmp = target.with_name(target.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive.extractall(tmp)
    (tmp / ".complete").write_text("")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _inside(folder: Path, source: str, rdf: Path) -> Path:
    if "://" in source:
        raise ModelError(f"{rdf}: weights at {source!r} are remote; napari-ftu reads packages with their files "
                         f"(download the zip)")
    file = (folder / source).resolve()
    if not file.is_relative_to(folder.resolve()) or not file.is_file():
        raise ModelError(f"{rdf}: weights file {source!r} is missing or outside the package")
    return file


def _axes(tensor: dict, v4: bool, rdf: Path):
    """Axis letters, the space scale (µm/px when stated) and the y/x size rule (min, step)."""
    if v4:
        letters = list(str(tensor.get("axes", "")))
        shape = tensor.get("shape")
        sizes = (None, None)
        if isinstance(shape, dict) and "min" in shape and "step" in shape:
            i = letters.index("y") if "y" in letters else 0
            sizes = (int(shape["min"][i]), int(shape["step"][i]) or 1)
        elif isinstance(shape, list) and "y" in letters:
            sizes = (int(shape[letters.index("y")]), 0)
        return letters, None, sizes
    letters, scale, sizes = [], None, (None, None)
    for axis in tensor.get("axes") or []:
        kind = axis.get("type") if isinstance(axis, dict) else None
        if kind == "batch":
            letters.append("b")
        elif kind == "channel":
            letters.append("c")
        elif kind == "space" and str(axis.get("id", "")) in ("x", "y"):
            letters.append(str(axis["id"]))
            if axis.get("unit") in ("micrometer", "µm") and isinstance(axis.get("scale"), (int, float)):
                scale = float(axis["scale"])
            size = axis.get("size")
            if isinstance(size, dict) and "min" in size and "step" in size:
                sizes = (int(size["min"]), int(size["step"]))
            elif isinstance(size, int):
                sizes = (size, 0)
        else:
            letters.append(str(kind or "?")[0] if kind != "space" else "z")
    return letters, scale, sizes


SUPPORTED = {"ensure_dtype", "scale_linear", "fixed_zero_mean_unit_variance", "zero_mean_unit_variance",
             "scale_range", "clip", "sigmoid", "softmax", "binarize"}


def _steps(steps, v4: bool, rdf: Path) -> list:
    out = []
    for step in steps or []:
        name = step.get("name" if v4 else "id") if isinstance(step, dict) else None
        kwargs = dict(step.get("kwargs") or {}) if isinstance(step, dict) else {}
        if v4 and name == "zero_mean_unit_variance" and kwargs.get("mode") == "fixed":
            name = "fixed_zero_mean_unit_variance"
        if name not in SUPPORTED:
            raise ModelError(f"{rdf}: the processing step {name!r} is not supported by napari-ftu "
                             f"(supported: {', '.join(sorted(SUPPORTED))})")
        out.append((name, kwargs))
    return out


def _card(data: dict, plan: PackagePlan, scale, sizes, output: dict, v4: bool, rdf: Path):
    """Our model card for the package: the one we stored when we wrote it, else one from its
    axes (channel names, µm/px when stated, the tile size rule)."""
    from napari_ftu.models.loading import ModelCard

    ours = (data.get("config") or {}).get(PACKAGE_KEY, {})
    if isinstance(ours, dict) and isinstance(ours.get("model_card"), dict):
        return ModelCard.from_dict(ours["model_card"], f"{rdf} (config.{PACKAGE_KEY}.model_card)")
    names = []
    for axis in output.get("axes") or []:
        if isinstance(axis, dict) and axis.get("type") == "channel":
            names = [str(n) for n in axis.get("channel_names") or []]
    n_in = 3
    for axis in (data["inputs"][0].get("axes") or []) if not v4 else []:
        if isinstance(axis, dict) and axis.get("type") == "channel":
            n_in = len(axis.get("channel_names") or []) or 3
    if n_in != 3:
        raise ModelError(f"{rdf}: the model takes {n_in} channels; napari-ftu feeds RGB images (3 channels)")
    smallest, step = sizes
    tile = 256
    if smallest:
        tile = smallest if not step else smallest + step * max(0, -(-(256 - smallest) // step))
    overlap = min(max(0, tile // 8), tile - 1)
    if step:
        overlap = (overlap // step) * step
    return ModelCard(architecture="bioimageio", encoder=_ident(plan.name)[:60], arch_kwargs={},
                     classes=names or ["object"], um_per_px=scale or 1.0, tile_size=max(32, int(tile)),
                     overlap=overlap, name=plan.name[:120], min_object_um2=0.0,
                     notes={"bioimageio": str(rdf), "um_per_px": "stated" if scale else "not stated; assumed 1"})


class PackageModel:
    """A bioimage.io model run with its own pre- and post-processing; the engine's ``predict``.

    Parameters
    ----------
    plan : PackagePlan
    fmt : str
        ``"onnx"`` or ``"torchscript"`` (the caller has the user's consent for the latter).
    threads : int, optional
        ONNX Runtime threads.
    device : str
        For TorchScript.
    """

    def __init__(self, plan: PackagePlan, fmt: str, threads: int | None = None, device: str = "cpu"):
        from napari_ftu.models.onnx import OnnxModel

        self.plan, self.card, self.format = plan, plan.card, fmt
        if fmt == "onnx":
            self._onnx = OnnxModel(plan.weights["onnx"], plan.card, threads)
            self.device, self.backend = self._onnx.device, "onnxruntime"
            self._run = self._onnx.run
        else:
            from napari_ftu.models.loading import _load_torchscript, resolve_device

            self.device, self.backend = resolve_device(device), "torch"
            self._net = _load_torchscript(plan.weights["torchscript"]).to(self.device).eval()
            self._run = self._torch_run

    def _torch_run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._net(torch.from_numpy(np.ascontiguousarray(x)).to(self.device)).float().cpu().numpy()

    def predict(self, tiles: np.ndarray, tta: bool = False, with_std: bool = False):
        """``tiles`` (N, H, W, C) uint8 -> (N, classes, H, W) float32, through the package's processing.

        Parameters
        ----------
        tiles : ndarray
            ``(N, H, W, C)`` uint8.
        tta : bool
            Average the flipped and rotated views.
        with_std : bool
            Also return the views' standard deviation.

        Returns
        -------
        ndarray or tuple of ndarray
        """
        from napari_ftu.models.onnx import NUMPY_VIEWS

        x = np.asarray(tiles).transpose(0, 3, 1, 2).astype(np.float32)  # b c y x
        x = _apply(self.plan.preprocessing, x)
        views = NUMPY_VIEWS if tta else NUMPY_VIEWS[:1]
        probs = np.stack([inverse(self._forward(np.ascontiguousarray(forward(x)))) for forward, inverse in views])
        mean = probs.mean(0)
        return (mean, probs.std(0)) if with_std else mean

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """Run on ``(N, C, H, W)``, in the package's own axis order (one call per tile when it
        has no batch axis), and back to ``(N, classes, H, W)`` after its post-processing."""
        axes = self.plan.axes
        if "b" in axes:
            y = self._run(np.ascontiguousarray(x.transpose(["bcyx".index(a) for a in axes])))
        else:
            y = np.stack([self._run(np.ascontiguousarray(t.transpose(["cyx".index(a) for a in axes]))) for t in x])
        return _apply(self.plan.postprocessing, _to_bcyx(y, self.plan.out_axes, "b" in axes)).astype(np.float32)


def _to_bcyx(y: np.ndarray, axes: list, batched: bool) -> np.ndarray:
    letters = list(axes) if batched else ["b"] + [a for a in axes if a != "b"]
    if "c" not in letters:
        y, letters = y[:, None], ["b", "c"] + letters[1:]
    return y.transpose([letters.index(a) for a in ("b", "c", "y", "x")])


def _along(values, x: np.ndarray, axis) -> np.ndarray:
    """A per-channel (or scalar) value shaped to broadcast over ``(N, C, H, W)``."""
    v = np.asarray(values, np.float32)
    return v.reshape(1, -1, 1, 1) if v.ndim and axis in ("channel", "c") else v


def _apply(steps: list, x: np.ndarray) -> np.ndarray:
    for name, kw in steps:
        axis = kw.get("axis")
        if name == "ensure_dtype":
            x = x.astype(np.dtype(str(kw.get("dtype", "float32"))), copy=False)
        elif name == "scale_linear":
            x = x * _along(kw.get("gain", 1.0), x, axis) + _along(kw.get("offset", 0.0), x, axis)
        elif name == "fixed_zero_mean_unit_variance":
            x = (x - _along(kw["mean"], x, axis)) / _along(kw["std"], x, axis)
        elif name == "zero_mean_unit_variance":  # per tile: what such a model expects of any input
            dims = _reduce_axes(kw.get("axes"))
            x = (x - x.mean(dims, keepdims=True)) / (x.std(dims, keepdims=True) + float(kw.get("eps", 1e-6)))
        elif name == "scale_range":
            dims = _reduce_axes(kw.get("axes"))
            lo = np.percentile(x, float(kw.get("min_percentile", 0)), axis=dims, keepdims=True)
            hi = np.percentile(x, float(kw.get("max_percentile", 100)), axis=dims, keepdims=True)
            x = (x - lo) / (hi - lo + float(kw.get("eps", 1e-6)))
        elif name == "clip":
            x = np.clip(x, kw.get("min"), kw.get("max"))
        elif name == "sigmoid":
            x = 1 / (1 + np.exp(-x))
        elif name == "softmax":
            e = np.exp(x - x.max(1, keepdims=True))
            x = e / e.sum(1, keepdims=True)
        elif name == "binarize":
            x = (x > float(np.max(kw.get("threshold", 0.5)))).astype(np.float32)
    return x.astype(np.float32, copy=False)


def _reduce_axes(axes) -> tuple:
    """bioimage.io reduction axes (ids or letters) as numpy axes of ``(N, C, H, W)``."""
    if not axes:
        return (1, 2, 3)
    index = {"b": 0, "batch": 0, "c": 1, "channel": 1, "y": 2, "x": 3}
    return tuple(sorted({index[a] for a in axes if a in index})) or (1, 2, 3)
