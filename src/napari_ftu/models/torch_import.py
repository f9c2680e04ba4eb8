"""torch and segmentation-models-pytorch, imported safely, and smp networks built without downloads."""

from __future__ import annotations

import sys

from napari_ftu.errors import ModelError


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


def build_smp(card):
    """An untrained smp network of the card's architecture and encoder (``encoder_weights=None``:
    nothing is downloaded).

    Parameters
    ----------
    card : ModelCard
        Names an smp architecture and encoder.

    Returns
    -------
    torch.nn.Module
    """
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
