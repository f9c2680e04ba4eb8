"""How a slide becomes objects: tile source, tiling, tissue, inference, components, postprocessing, the run."""
