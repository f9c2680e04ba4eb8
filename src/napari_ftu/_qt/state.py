"""The one state the docks share, per viewer, so they follow each other without knowing each other.

A dock writes what it owns (the Load dock the open dataset and image index, the Train dock the
models it saved, the Review dock a retraining request) and subscribes to what it needs
(``state.events.index.connect(...)``). No dock imports another or looks for one by its methods.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from psygnal import evented

EDITED = "edited"  # layer metadata: the user painted or reviewed these objects, so no run overwrites them


@evented
@dataclass(eq=False)
class DockState:
    dataset: Any = None  # the dataset (formats.datasets) the Load dock opened
    index: int = 0  # which of its images is shown
    models: tuple = ()  # model folders saved in this session, offered by the Segment dock
    retrain: Any = None  # (image layer, labels layer) to retrain on, for the Train dock


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def state_of(viewer) -> DockState:
    """The docks' shared state of this viewer (made on first use, gone with the viewer)."""
    if viewer not in _STATES:
        _STATES[viewer] = DockState()
    return _STATES[viewer]


def mark_edited(layer) -> None:
    """Flag a labels layer as holding the user's work: the Segment dock then writes a new layer."""
    layer.metadata[EDITED] = True


def is_edited(layer) -> bool:
    return bool(layer.metadata.get(EDITED))
