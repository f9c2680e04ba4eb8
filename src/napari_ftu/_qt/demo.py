"""``napari-ftu demo``: the sample slide in napari with the docks, segmented by the default model."""

from __future__ import annotations


def run_gui(size: int | None = None, seed: int | None = None, device: str = "auto") -> int:
    import napari

    from ..demo import DEMO_SEED
    from ..sample import SAMPLE_SIZE, synthetic_layers

    viewer = napari.Viewer(title="napari-ftu demo")
    for data, kwargs, kind in synthetic_layers(size or SAMPLE_SIZE, DEMO_SEED if seed is None else seed):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    viewer.window.add_plugin_dock_widget("napari-ftu", "Load")
    viewer.window.add_plugin_dock_widget("napari-ftu", "Export")
    _, seg = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    seg.device.value = device
    seg.image.value = viewer.layers["synthetic kidney"]
    seg.run()
    napari.run()
    return 0
