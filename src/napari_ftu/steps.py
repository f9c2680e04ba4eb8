"""Running the project's progress generators (``segment_steps``, ``train_steps``, ...) to the end,
and the typed events they yield.

Every long job is a generator yielding small frozen events and returning its result. Events that
report progress derive from :class:`Progress` (``done`` of ``total``, in ``unit``), so one job
runner can move any progress bar without knowing which job it drives; the others carry data a
consumer shows (a finished band of rows, a validation score).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of work."""

    done: int
    total: int
    unit: ClassVar[str] = "steps"


@dataclass(frozen=True)
class TileProgress(Progress):
    """Tiles run through the model (or written, for a pyramid)."""

    unit: ClassVar[str] = "tiles"


@dataclass(frozen=True)
class LabelProgress(Progress):
    """Strips of the instance labelling passes."""

    unit: ClassVar[str] = "objects"


@dataclass(frozen=True)
class TrainStep(Progress):
    """One optimiser step of ``total`` (an estimate under a time budget), its loss and running
    statistics (``elapsed``, ``eta``, ``loss_avg``, ``val_dice``, ``steps_per_s``, ...)."""

    loss: float = float("nan")
    stats: dict = field(default_factory=dict, compare=False)
    unit: ClassVar[str] = "steps"

    @property
    def step(self) -> int:
        return self.done


@dataclass(frozen=True)
class BatchProgress(Progress):
    """Slides finished of ``total``; ``row`` is the summary row of the slide just finished
    (``None`` for the first event, which counts slides done by an earlier run)."""

    row: dict | None = None
    unit: ClassVar[str] = "slides"


@dataclass(frozen=True)
class Validation:
    """A validation round during training: mean Dice at ``step``."""

    step: int
    dice: float


@dataclass(frozen=True)
class Outputs:
    """The array a segmentation writes its rows into (for progressive display), ``downsample``
    slide pixels per output pixel. Yielded once, before the first band."""

    probability: object
    downsample: float


@dataclass(frozen=True)
class Band:
    """Output rows ``y0:y1`` of the probability are final."""

    y0: int
    y1: int


def drain(steps, on_event=None):
    """Iterate ``steps`` to the end, passing each yielded event to ``on_event``; return its value."""
    while True:
        try:
            event = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)
