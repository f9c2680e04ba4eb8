"""Training progress for a terminal: one redrawn bar on a TTY, plain lines (every ``every``
seconds and at each validation) in logs and pipes."""

from __future__ import annotations

import time

from napari_ftu.steps import TrainStep, Validation


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: not known yet
        return "--:--"
    seconds = int(round(seconds))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


def progress_line(step: int, total: int, loss: float, stats: dict) -> str:
    """``step 120/400 [#####.....] loss 0.41 | val Dice 0.83 | 1.9 steps/s | data wait 3 % | ETA 2:27``."""
    width = 20
    fill = int(width * min(step, total) / max(total, 1))
    val = stats.get("val_dice")
    return (f"step {step}/~{total} [{'#' * fill}{'.' * (width - fill)}] loss {stats.get('loss_avg', loss):.3f}"
            f" | val Dice {'-' if val is None else f'{val:.3f}'} | {stats.get('steps_per_s', 0):.2f} steps/s"
            f" | data wait {100 * stats.get('data_wait', 0):.0f} % | ETA {_clock(stats.get('eta', float('nan')))}")


class ProgressPrinter:
    """Callable for :func:`~napari_ftu.training.train.train`'s events."""

    def __init__(self, stream, every: float = 10.0, clock=time.monotonic):
        self.stream, self.every, self.clock = stream, every, clock
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last, self._line = None, ""

    def __call__(self, event) -> None:
        if isinstance(event, TrainStep):
            self._line = progress_line(event.step, event.total, event.loss, event.stats)
            now = self.clock()
            if self.tty:
                self.stream.write("\r" + self._line.ljust(110))
                self.stream.flush()
            elif self._last is None or now - self._last >= self.every:
                self._last = now
                print(self._line, file=self.stream, flush=True)
        elif isinstance(event, Validation):
            if self.tty:
                self.stream.write("\n")
            print(f"step {event.step}: validation Dice {event.dice:.4f}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()
