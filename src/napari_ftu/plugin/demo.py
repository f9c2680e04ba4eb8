"""The main job on the embedded default: synthetic slide + default model -> FTUs, Dice, exports."""

from __future__ import annotations

import time
from pathlib import Path

from napari_ftu.plugin.sample import SAMPLE_SIZE, SAMPLE_UM_PER_PX

# Training used seeds 1000.. and 2000.. (see the model card): this one was never seen.
DEMO_SEED = 777


def run_headless(out: str | Path = "napari-ftu-demo", size: int | None = None, seed: int | None = None,
                 device: str = "auto") -> dict:
    """Segment a synthetic slide with the synthetic demo model, score it and write the outputs."""
    from napari_ftu.engine.inference import segment
    from napari_ftu.evaluation.metrics import dice
    from napari_ftu.formats.annotations import Annotations
    from napari_ftu.formats.csv_formats import write_hubmap
    from napari_ftu.io.images import write_tiff
    from napari_ftu.io.synthetic import make_slide
    from napari_ftu.models.loading import builtin_model_path, load_model

    size = size or SAMPLE_SIZE
    seed = DEMO_SEED if seed is None else seed
    start = time.perf_counter()
    rgb, truth, _ = make_slide(size, size, seed=seed, um_per_px=SAMPLE_UM_PER_PX)
    model = load_model(builtin_model_path("synthetic-demo"), device=device)
    seg = segment(rgb, model, um_per_px=SAMPLE_UM_PER_PX)
    out = Path(out)
    image_id = f"synthetic_{seed}"
    outputs = [
        write_hubmap(out / "prediction_rle.csv", [Annotations(image_id, seg.labels)]),
        write_tiff(out / "prediction_labels.tif", seg.labels, SAMPLE_UM_PER_PX),
        write_tiff(out / f"{image_id}.tif", rgb, SAMPLE_UM_PER_PX),
    ]
    return {
        "dice": round(dice(seg.labels, truth), 4),
        "n_objects": len(seg.objects),
        "n_true_objects": int(truth.max()),
        "seconds": round(time.perf_counter() - start, 2),
        "inference_seconds": round(seg.seconds, 2),
        "device": seg.device,
        "image_size": [size, size],
        "seed": seed,
        "model": str(builtin_model_path("synthetic-demo")),
        "outputs": [str(p) for p in outputs],
    }
