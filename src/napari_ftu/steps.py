"""Running the project's progress generators (``segment_steps``, ``train_steps``, ...) to the end."""

from __future__ import annotations


def drain(steps, on_event=None):
    """Iterate ``steps`` to the end, passing each yielded event to ``on_event``; return its value."""
    while True:
        try:
            event = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)
