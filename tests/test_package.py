import subprocess
import sys
from pathlib import Path

import napari_ftu



def _core_modules():
    """Every module of the package outside the Qt views, found on disk so new rooms are covered."""
    root = Path(napari_ftu.__file__).parent
    mods = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root).with_suffix("")
        if rel.parts[0] == "_qt" or rel.name == "__main__":
            continue
        parts = [p for p in rel.parts if p != "__init__"]
        mods.append(".".join(["napari_ftu", *parts]))
    return mods


CORE = _core_modules()


def test_npe2_validates_installed_manifest():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-ftu"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_manifest_is_found_through_the_entry_point():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-ftu")
    assert Path(manifest.package_metadata and napari_ftu.__file__).exists()
    names = {w.display_name for w in manifest.contributions.widgets}
    assert names == {"Load", "Segment", "Export", "Train", "Review", "Debug", "Annotate"}
    assert {s.key for s in manifest.contributions.sample_data} == {"synthetic_kidney", "ihc_colon"}


def test_core_imports_no_qt_or_napari():
    code = "import sys\n" + "".join(f"import {m}\n" for m in CORE) + (
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'qtpy', 'PyQt5', 'PyQt6', 'PySide2', "
        "'PySide6', 'napari', 'magicgui'})\nprint(bad)\nsys.exit(1 if bad else 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sample_data_layers():
    from napari_ftu.plugin.sample import skimage_ihc, synthetic_layers

    (img, img_kw, kind), (lab, lab_kw, lab_kind) = synthetic_layers(size=512, seed=3)
    assert kind == "image" and lab_kind == "labels"
    assert img.shape == (512, 512, 3) and lab.shape == (512, 512)
    assert img_kw["metadata"]["um_per_px"] == img_kw["scale"][0]
    (ihc, _, _), = skimage_ihc()
    assert ihc.shape == (512, 512, 3)
