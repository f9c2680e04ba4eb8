"""``napari-ftu``: demo, segment, train and export from the command line (the same core as the docks).

Errors the user can fix (bad files, bad models, bad ids) print one ``napari-ftu: error: ...``
line and exit with status 2. Library warnings and log lines are hidden unless ``--verbose``.
Each command lives in its own module with ``add_parser(sub, common)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from napari_ftu.cli import annotate, demo, evaluate, export, export_model, info, measure, segment, train
from napari_ftu.cli.common import USER_ERRORS, one_line, quiet_logs

COMMANDS = (demo, segment, train, info, export, evaluate, measure, annotate, export_model)


def main(argv=None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with contextlib.ExitStack() as stack:
        if not getattr(args, "verbose", False):
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            stack.enter_context(quiet_logs())
        try:
            return args.func(args) or 0
        except USER_ERRORS as exc:
            print(f"napari-ftu: error: {one_line(exc)}", file=sys.stderr)
            return 2


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the top-level parser with every command's subparser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show library warnings and log lines (hidden by default)")
    p = argparse.ArgumentParser(prog="napari-ftu", description=__doc__.splitlines()[0], parents=[common])
    sub = p.add_subparsers(title="commands")
    for command in COMMANDS:
        command.add_parser(sub, common)
    return p
