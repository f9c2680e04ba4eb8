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
    edited: Any = None  # (labels layer, session generation): a dock changed objects through their session
    queue_ids: Any = None  # (labels layer, frozenset of ids): the Measure dock's selection; Review lists only these


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # labels layer -> its ReviewSession


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


def session_of(layer):
    """The review session (labels, table, the one undo history) of a labels layer, if a dock
    made one and the layer still shows its array; the Review and Annotate docks share it, so
    Ctrl+Z undoes a click like any review edit."""
    session = _SESSIONS.get(layer)
    return session if session is not None and session.labels is layer.data else None


def share_session(layer, session) -> None:
    _SESSIONS[layer] = session


def announce_edit(viewer, layer, session) -> None:
    """Tell the other docks that ``session`` (of ``layer``) changed, so they redraw it."""
    mark_edited(layer)
    state_of(viewer).edited = (layer, session.generation)
