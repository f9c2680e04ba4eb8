"""Annotating without a model: a scribble pixel classifier, one-click objects and fluorescence
cells (Qt-free; the Annotate dock and ``napari-ftu annotate`` are views on it)."""
