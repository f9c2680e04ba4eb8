"""What every dock shares: its viewer, the viewer's dock state and one job at a time, a status
line for failures, level 0 of a layer, a plot canvas, and spin boxes whose "automatic" value
reads as words instead of a sentinel number."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import Container, PushButton
from napari.utils.notifications import show_error

from napari_ftu._qt.state import state_of


class Dock(Container):
    """A dock of one viewer: the docks' shared state (:func:`state_of`), at most one running job
    (``worker``), and a ``status`` Label where it reports failures."""

    def __init__(self, viewer):
        super().__init__()
        self._viewer = viewer
        self.state = state_of(viewer)
        self.worker = None

    def _fail(self, exc):
        """Show a failure in the status line and as a napari notice; handlers return its None."""
        self.status.value = f"Error: {exc}"
        show_error(str(exc))
        return None


def button(text: str, action, **kwargs) -> PushButton:
    """A push button that runs ``action`` when pressed: declared once, with what it does."""
    widget = PushButton(text=text, **kwargs)
    widget.changed.connect(action)
    return widget


def level0(layer):
    """The full-resolution data of a layer (the first level of a multiscale one), not loaded."""
    return layer.data[0] if layer.multiscale else layer.data


def level0_array(layer) -> np.ndarray:
    return np.asarray(level0(layer))


def plot_canvas(height: int = 190):
    """A matplotlib figure in a Qt canvas, sized for a dock."""
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.6, 2.4), tight_layout=True)
    canvas = FigureCanvasQTAgg(figure)
    canvas.setMinimumHeight(height)
    return figure, canvas


def special(spin, text: str):
    """Show ``text`` instead of the spin box's minimum, the value that means "automatic"."""
    box = spin.native
    box.setSpecialValueText(text)
    if hasattr(box, "_updateEdit"):  # superqt's large-int spin box ignores the special text: show it ourselves

        def update():
            shown = text if box.value() == box.minimum() else str(box.value())
            if box.lineEdit().text() != shown:
                box.lineEdit().setText(shown)

        def interpret(policy):
            typed = box.lineEdit().displayText()
            box._setValue(box.minimum() if typed == text or not typed else int(typed), policy)

        box._updateEdit, box._interpret = update, interpret
        update()
    return spin
