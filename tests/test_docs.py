"""The documentation: the README's links, the generated CLI reference and the mkdocs site build."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from napari_ftu.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
REGENERATE = "python docs/scripts/cli_reference.py"


def _cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference", REPO / "docs" / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _relative_targets(markdown: str) -> list[str]:
    """Link and image targets that point into the repository (no URLs, no in-page anchors)."""
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", markdown)
    targets += re.findall(r"<img[^>]*\bsrc=\"([^\"]+)\"", markdown)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_cli_reference_is_current():
    generated = _cli_reference().generate()
    page = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert page == generated, f"docs/cli.md is out of date with the CLI's parsers: run `{REGENERATE}`"


def test_cli_reference_lists_every_command_and_option():
    text = _cli_reference().generate()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) >= 7
    for name, command in sub.choices.items():
        section = text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert f"napari-ftu {name}" in section
        for action in command._actions:
            for option in action.option_strings:
                assert re.search(rf"`[^`]*{re.escape(option)}\b", section), f"{name}: {option} missing"
            if action.help and action.help != argparse.SUPPRESS:
                assert " ".join(action.help.split())[:40].replace("|", "\\|") in section, f"{name}: help of {action}"


def test_readme_is_a_short_front_door_whose_links_exist():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    targets = _relative_targets(readme)
    assert any(t.endswith(".png") for t in targets) and any(t.startswith("docs/") for t in targets)
    missing = [t for t in targets if not (REPO / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    unlisted = [name for name in sub.choices if f"| `napari-ftu {name}` |" not in readme]
    assert not unlisted, f"README.md's command table lacks {unlisted}"


def test_the_link_check_finds_a_missing_file():
    targets = _relative_targets('![a](docs/none.png) [b](https://x.org/a.md) [c](#x) <img src="y.png"> [d](a.md#s)')
    assert targets == ["docs/none.png", "a.md#s", "y.png"]


def test_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav's files or any
    warning fails."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                          "-d", str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARNING" not in out.stderr, out.stderr
    for page in ("index", "user-guide", "cli", "formats", "models-and-training", "engine", "reliability",
                 "annotation", "batch", "slide-formats", "onnx-and-bioimageio"):
        assert (tmp_path / "site" / ("" if page == "index" else page) / "index.html").is_file(), page
