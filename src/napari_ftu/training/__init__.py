"""Training models and exporting training tiles."""
