"""Entry points that fall back to an assumed pixel size say so in one line: the value and the
flag that sets it (a real Sarder patch: a PNG without a pixel size)."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_ftu.cli import main
from napari_ftu.io.images import assumed_pixel_size

PATCH = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sarder_frozen_kidney_glomeruli" / "images"
         / "slide_O27_10_180_992.png")
needs_patch = pytest.mark.skipif(not PATCH.is_file(), reason="../shared/data/sarder_frozen_kidney_glomeruli absent")


def test_the_line_names_the_value_and_the_setting():
    assert assumed_pixel_size("a.png", None, 2.0, "the model's", "--um-per-px") == (
        2.0, "a.png has no pixel size; assumed 2 µm/px (the model's); set --um-per-px")
    assert assumed_pixel_size("a.png", 0.5, 2.0, "the model's", "--um-per-px") == (0.5, None)


@needs_patch
def test_segment_and_annotate_say_what_they_assume(tmp_path, capsys):
    assert main(["segment", str(PATCH), "--out", str(tmp_path / "s.csv"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"{PATCH.name} has no pixel size; assumed 2 µm/px (the model's); set --um-per-px" in err.splitlines()
    (tmp_path / "c.csv").write_text("x,y\n100,100\n")
    assert main(["annotate", str(PATCH), "--clicks", str(tmp_path / "c.csv"), "--out", str(tmp_path / "a.csv")]) == 0
    out = capsys.readouterr()
    assert out.err.splitlines() == [f"{PATCH.name} has no pixel size; assumed 1 µm/px (the default); set --um-per-px"]
    assert main(["segment", str(PATCH), "--out", str(tmp_path / "s2.csv"), "--device", "cpu",
                 "--um-per-px", "0.5"]) == 0
    assert "no pixel size" not in capsys.readouterr().err
