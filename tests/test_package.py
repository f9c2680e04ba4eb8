import re
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
    assert names == {"Load", "Segment", "Export", "Train", "Review", "Debug", "Annotate", "Measure"}
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


# The house: each room imports only from the rooms listed before it (and from itself). Shared
# helpers first; the CLI last, since it launches everything (the GUI demo included).
LAYERS = [{"__init__", "atomic", "steps", "errors", "boxes"}, {"io"}, {"models"}, {"engine"}, {"formats"},
          {"evaluation", "review"}, {"training", "annotate", "measure"}, {"batch"}, {"plugin"}, {"_qt"}, {"cli"}]
ROOT_MODULES = {"__init__", "atomic", "steps", "errors", "boxes"}  # everything else lives in a room


def _imports(path: Path):
    """Every ``napari_ftu.X`` a module imports, at the top or inside functions."""
    import ast

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            if name.startswith("napari_ftu."):
                yield node.lineno, name.split(".")[1]


def test_rooms_import_only_the_rooms_below_them():
    root = Path(napari_ftu.__file__).parent
    level = {room: k for k, rooms in enumerate(LAYERS) for room in rooms}
    bad = []
    for f in sorted(root.rglob("*.py")):
        room = f.relative_to(root).parts[0].removesuffix(".py")
        assert room in level, f"{f}: a room not in the layering ({room}); add it to LAYERS"
        for line, target in _imports(f):
            if target != room and level[target] >= level[room]:
                bad.append(f"{f.relative_to(root)}:{line} ({room}) imports {target}")
    assert not bad, "\n".join(bad)


def _module_name(root: Path, f: Path) -> str:
    parts = [p for p in f.relative_to(root).with_suffix("").parts if p != "__init__"]
    return ".".join(["napari_ftu", *parts])


def _module_graph(root: Path) -> dict:
    """Module -> the package modules it imports (at the top or inside functions). ``from pkg
    import name`` counts as an import of ``pkg.name`` where that is a module."""
    import ast

    files = {_module_name(root, f): f for f in sorted(root.rglob("*.py"))}
    graph = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "napari_ftu"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] != "napari_ftu":
                    continue
                for a in node.names:
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base)
        graph[name] = sorted(t for t in targets if t in files and t != name)
    return graph


def _find_cycle(graph: dict) -> list:
    """One import cycle as ``[a, b, ..., a]``, or ``[]``."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return []

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return []


def test_modules_import_no_circle():
    """A circle makes import order matter and hides in function-level imports; none is allowed."""
    cycle = _find_cycle(_module_graph(Path(napari_ftu.__file__).parent))
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_the_circle_check_finds_one():
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) == []


def test_package_root_holds_only_the_shared_helpers():
    root = Path(napari_ftu.__file__).parent
    modules = {f.stem for f in root.glob("*.py")}
    assert modules == ROOT_MODULES, modules ^ ROOT_MODULES


def test_ruff_is_clean():
    """Style and import order (pyproject's [tool.ruff]); part of the README's test command."""
    import shutil

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([ruff, "check", "src", "tests", "bench", "docs"], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# numpydoc: a "Parameters" heading underlined with dashes.
PARAMETERS_SECTION = re.compile(r"^\s*Parameters\s*\n\s*-{3,}\s*$", re.M)


def _public_api(rooms=("models", "engine", "formats", "review")):
    """``(qualified name, object)`` of every public function and class defined in the rooms'
    modules, and of the public methods of those classes."""
    import importlib
    import inspect
    import pkgutil

    for room in rooms:
        package = importlib.import_module(f"napari_ftu.{room}")
        names = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
        for module in map(importlib.import_module, names):
            for name, obj in vars(module).items():
                if (not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                        and obj.__module__ == module.__name__):
                    yield f"{module.__name__}.{name}", obj
                    for method in (m for m in vars(obj) if inspect.isclass(obj) and not m.startswith("_")):
                        if inspect.isroutine(attr := getattr(obj, method)):  # not properties or constants
                            yield f"{module.__name__}.{name}.{method}", attr


def _undocumented_parameters(obj) -> list[str]:
    """The parameters (besides self) of a function, or of a class's constructor, when its
    docstring has no numpydoc ``Parameters`` section; [] otherwise. A method that overrides a
    documented one inherits its docstring (``inspect.getdoc``)."""
    import inspect

    try:
        params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
    except (TypeError, ValueError):  # a class without an inspectable constructor takes nothing we wrote
        return []
    return params if params and not PARAMETERS_SECTION.search(inspect.getdoc(obj) or "") else []


def test_public_model_engine_format_and_review_api_documents_its_parameters():
    """numpydoc ``Parameters`` sections on every public function, class (its constructor) and
    method of models/, engine/, formats/ and review/, so a caller need not read the code to call it."""
    api = dict(_public_api())
    assert {"napari_ftu.engine.run.segment_slide_steps", "napari_ftu.review.label_store.LabelStore",
            "napari_ftu.review.label_store.LabelStore.write_window", "napari_ftu.formats.datasets.open_dataset",
            "napari_ftu.engine.options.SegmentOptions.resolve", "napari_ftu.models.loading.load_model"} <= set(api)
    missing = [f"{name}({', '.join(params)})" for name, obj in api.items() if (params := _undocumented_parameters(obj))]
    assert not missing, "no numpydoc Parameters section:\n" + "\n".join(missing)


def test_the_parameters_check_fails_without_the_section():
    """The check above is real: the same docstring minus its Parameters section is reported."""
    from napari_ftu.boxes import box_at

    def stripped(y, x, h, w):
        pass

    stripped.__doc__ = PARAMETERS_SECTION.sub("Params\n", box_at.__doc__)
    assert _undocumented_parameters(box_at) == []
    assert _undocumented_parameters(stripped) == ["y", "x", "h", "w"]
