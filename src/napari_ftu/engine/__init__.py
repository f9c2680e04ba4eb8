"""The segmentation engine: models, tile source, tiling, tissue, inference, instances."""
