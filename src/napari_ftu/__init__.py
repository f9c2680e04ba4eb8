"""napari-ftu: segment, correct and export functional tissue units in histology slides."""

__version__ = "0.1.0"
