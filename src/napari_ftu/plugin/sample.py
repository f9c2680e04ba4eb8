"""npe2 sample data: a synthetic kidney slide with ground truth, and a real IHC image."""

from __future__ import annotations

from napari_ftu.io.synthetic import make_slide

SAMPLE_SIZE = 2048
SAMPLE_SEED = 20231
SAMPLE_UM_PER_PX = 1.0


def synthetic_layers(size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED, um_per_px: float = SAMPLE_UM_PER_PX) -> list:
    """Layer data for a synthetic H&E kidney slide and its glomerulus ground-truth labels."""
    rgb, labels, _ = make_slide(size, size, seed=seed, um_per_px=um_per_px)
    scale = (um_per_px, um_per_px)
    meta = {"um_per_px": um_per_px, "synthetic_seed": seed, "model": "synthetic-demo"}  # the Segment dock's choice
    return [
        (rgb, {"name": "synthetic kidney", "scale": scale, "units": ("µm", "µm"), "metadata": meta, "rgb": True},
         "image"),
        (labels, {"name": "ground truth", "scale": scale, "units": ("µm", "µm"), "metadata": meta, "opacity": 0.4},
         "labels"),
    ]


def synthetic_kidney() -> list:
    return synthetic_layers()


def skimage_ihc() -> list:
    """scikit-image's immunohistochemistry image of colonic glands (real tissue, 512 x 512)."""
    from skimage import data

    return [(data.immunohistochemistry(), {"name": "IHC colon (scikit-image)", "rgb": True}, "image")]
