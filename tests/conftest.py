"""Shared fixtures: the real data in ../shared (skipped when absent) and a small synthetic slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
    from napari_ftu.engine.models import load_model

    return load_model(None, device="cpu")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def viewer_with_slide(make_napari_viewer, small_slide):
    """A viewer holding the small slide as "kidney" (1 µm/px), and its ground truth."""
    viewer = make_napari_viewer()
    rgb, truth, spec = small_slide
    viewer.add_image(rgb, name="kidney", scale=(1.0, 1.0), metadata={"um_per_px": spec.um_per_px})
    return viewer, truth
