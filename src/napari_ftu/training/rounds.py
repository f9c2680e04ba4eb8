"""Learning while reviewing: one round of fine-tuning from the reviews made so far.

A round starts from the model in use (the built-in one, or the previous round's), trains on
the sparse labels of every review (:mod:`~napari_ftu.training.sparse`) and writes a model folder
whose card names the slides and the reviewed objects it learned from. It is a generator like
every long job: closing it cancels the round, and a cancelled round writes nothing, so the
previous model stays in use.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from napari_ftu.training.data import FINE_TUNE_LR, start_from
from napari_ftu.training.sparse import learned_from, pooled_crops

ROUND_SECONDS = 45.0  # a round's default length on a CPU: long enough to move, short enough to show soon
MIN_REVIEWED = 3  # reviewed objects (or done regions) before a round is worth running


def round_name(base_card, round_no: int) -> str:
    """``"<base> — learned from reviews, round N"`` (the base's own name, not a chain of them)."""
    root = (base_card.notes.get("learned_from") or {}).get("base") or base_card.name
    return f"{root} — learned from reviews, round {round_no}"


def round_lr(round_no: int, lr: float = FINE_TUNE_LR) -> float:
    """The peak learning rate of round ``round_no``: the fine-tuning rate, falling as 1/√round.
    Rounds continue from each other, so together they make one long schedule whose later steps
    refine rather than jolt (a model that got worse after more reviews would cost trust)."""
    return lr / max(1, round_no) ** 0.5


def trained_round(reviews: list, base, out: str | Path, seconds: float | None = ROUND_SECONDS, steps: int = 200,
                  round_no: int = 1, seed: int = 0, lr: float | None = None, batch_size: int = 4, crop: int = 256,
                  val_every: int = 0, threads: int | None = None, device: str = "auto", trust_code: bool = False,
                  release: bool = False):
    """Fine-tune ``base`` (a model folder; ``None``: the built-in model) on ``reviews``
    (:class:`~napari_ftu.training.sparse.ReviewData`) for ``seconds`` (or ``steps``) and write the
    result to ``out``. Yields the training events; returns ``(out, history, model)``: the model as
    saved, still in memory (the re-prediction needs no second load).

    Without validation (``val_every`` 0, the default while few objects are reviewed) the last
    weights are kept with the base's threshold. ``out`` appears only when the round finishes.
    ``lr`` (default :func:`round_lr`) is the round's peak learning rate; ``release`` drops the
    reviews' label arrays once their crops are cut (see :func:`~napari_ftu.training.sparse.pooled_crops`).
    """
    from napari_ftu.errors import InputError
    from napari_ftu.models.loading import default_model_path, load_model
    from napari_ftu.training.train import train_steps, trained_on

    n = sum(r.n_reviewed for r in reviews)
    if n < 1:
        raise InputError("nothing reviewed yet: accept, reject or draw objects, or mark a view done")
    base_path = Path(base) if base else default_model_path()
    base_card = load_model(base_path, device="cpu", trust_code=trust_code).card
    card, state = start_from(base_path, round_name(base_card, round_no), trust_code)
    train, val = pooled_crops(reviews, card.um_per_px, val_every=val_every, seed=seed, release=release)
    if not train:
        raise InputError("the reviews hold no pixels to learn from")
    note = {**learned_from(reviews), "round": round_no,
            "base": (base_card.notes.get("learned_from") or {}).get("base") or base_card.name}
    card.notes = {**card.notes, "learned_from": note}
    card.trained_on = trained_on(note["slides"], reviews[0].um_per_px, fine_tuned_from=note["base"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        minutes = seconds / 60 if seconds else None
        model, history = yield from train_steps(train, val, card, steps=steps, minutes=minutes,
                                                lr=lr or round_lr(round_no), batch_size=batch_size, crop=crop,
                                                seed=seed + round_no, init_state=state, out=tmp, workers=1,
                                                threads=threads, device=device)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, history, model


def round_steps(reviews: list, base, out: str | Path, **kw):
    """:func:`trained_round` without the trained model in memory; returns ``(out, history)``."""
    out, history, _ = yield from trained_round(reviews, base, out, **kw)
    return out, history


def learn_and_predict_steps(reviews: list, base, out: str | Path, image, um_per_px: float | None, **kw):
    """A round (:func:`trained_round`), then the new model run over ``image`` (the reviewed window,
    at its full resolution) so that the unreviewed objects can be replaced. Yields the training
    and tile events; returns ``(out, history, segmentation)``. Cancelling during the prediction
    keeps the new model folder (it is finished) but changes no object."""
    from napari_ftu.engine.inference import segment_steps

    out, history, model = yield from trained_round(reviews, base, out, **kw)  # the saved weights, still in memory
    seg = yield from segment_steps(image, model, um_per_px=um_per_px, full_resolution=True)
    return out, history, seg
