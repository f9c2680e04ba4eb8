"""napari contributions: reader, writers, sample data."""
