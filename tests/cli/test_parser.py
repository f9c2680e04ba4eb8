"""The command line's shape: one module per command, the parser public, heavy libraries only
when a command runs."""

import subprocess
import sys

from napari_ftu import cli


def test_build_parser_holds_every_command_module():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.choices and "segment" in a.choices]
    assert set(sub.choices) == {c.__name__.rsplit(".", 1)[1].replace("_", "-") for c in cli.COMMANDS}
    for name, command in sub.choices.items():
        func = command.get_default("func")
        assert func.__module__ == f"napari_ftu.cli.{name.replace('-', '_')}", name


def test_help_and_a_refused_input_import_no_torch(tmp_path):
    (tmp_path / "a.tif").touch()
    (tmp_path / "out.csv").touch()
    code = ("import sys\nfrom napari_ftu.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "rc = main(['segment', 'a.tif', '--out', 'out.csv'])\n"
            "heavy = sorted(m for m in ('torch', 'segmentation_models_pytorch', 'napari') if m in sys.modules)\n"
            "print(rc, heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "2 []", out.stdout + out.stderr
    assert "napari-ftu: error: a.tif: cannot read image" in out.stderr  # the input is checked first


def test_module_entry_point_prints_help():
    out = subprocess.run([sys.executable, "-m", "napari_ftu.cli", "--help"], capture_output=True, text=True)
    commands = "{demo,segment,train,info,export,evaluate,measure,annotate,export-model}"
    assert out.returncode == 0 and commands in out.stdout
