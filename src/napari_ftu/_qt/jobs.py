"""Running a core progress generator in napari's worker thread, the same way in every dock.

The generator yields typed events (:mod:`napari_ftu.steps`); :class:`~napari_ftu.steps.Progress`
events move napari's progress bar (and the dock's own bar, if given, labelled with the unit).
Whatever happens, the generator is closed
(which stops any helper thread it started) and the progress bar closes.

superqt treats a ``RuntimeError`` escaping a generator worker as "the worker object was
deleted": it only warns, and emits neither ``errored`` nor ``finished``, so a dock would hang
with its buttons disabled. torch reports most failures as ``RuntimeError``, so they are
re-raised here as :class:`JobError`.
"""

from __future__ import annotations

from napari.qt.threading import create_worker
from napari.utils import progress

from napari_ftu.steps import Progress


class JobError(Exception):
    """A RuntimeError from the work, carried past superqt's special case."""


def call_steps(function, *args, **kwargs):
    """A plain call as a job without progress events, so that it runs through :func:`start_job`
    (its error handling and progress bar) like every other job."""
    return function(*args, **kwargs)
    yield  # unreachable: makes this function a generator


def start_job(steps, description: str, *, on_event=None, on_done=None, on_error=None, on_abort=None,
              on_finished=None, bar=None, total: int = 0):
    """Start ``steps`` in a worker thread and return the worker (``worker.quit()`` cancels)."""

    def drive():  # a generator function, so napari steps it and can stop between yields
        try:
            return (yield from steps)
        except RuntimeError as exc:
            raise JobError(str(exc)) from exc

    worker = create_worker(drive, _start_thread=False)
    pbar = progress(total=total, desc=description)

    def event(ev):
        if isinstance(ev, Progress):
            pbar.total, pbar.n = ev.total, ev.done
            pbar.refresh()
            if bar is not None:
                bar.max, bar.value = max(ev.total, 1), ev.done
        if on_event is not None:
            on_event(ev)

    def finished():
        steps.close()
        pbar.close()
        if on_finished is not None:
            on_finished()

    worker.yielded.connect(event)
    for signal, slot in ((worker.returned, on_done), (worker.errored, on_error), (worker.aborted, on_abort)):
        if slot is not None:
            signal.connect(slot)
    worker.finished.connect(finished)
    worker.pbar = pbar
    worker.start()
    return worker
