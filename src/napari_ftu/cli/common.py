"""What every command shares: the one-line error, quiet library logs, number checks."""

from __future__ import annotations

import contextlib

from napari_ftu.errors import FTUError

USER_ERRORS = (FTUError, OSError)
QUIET_LOGGERS = ("tifffile", "imageio", "distributed", "PIL")
TRUST_HELP = ("run a TorchScript model (it carries its own code, which can read and write your files); "
              "only for models from a source you trust")


BUILTIN_HELP = "or a built-in model's name: builtin (real PAS kidney glomeruli, the default), synthetic-demo"


def model_arg(value: str):
    """``--model``/``--init``: a path, or a built-in model's name where no such path exists."""
    from napari_ftu.models.loading import model_path

    return model_path(value)


def few(names: list, most: int = 3) -> str:
    """Names for a one-line message: the first ``most`` and how many more."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def one_line(exc: BaseException) -> str:
    """An error as one line: the first line of its text (libraries append install hints and
    advice on further lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def quiet_logs():
    """Silence the log lines libraries print while reading files (tifffile's "corrupted" notes)."""
    import logging

    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    before = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for log, level in zip(loggers, before):
            log.setLevel(level)


def check_numbers(args, ints: dict, positive=()) -> None:
    """Whole-number flags at least their minimum, and positive finite numbers, as one error line."""
    from napari_ftu.engine.options import check_int, check_positive

    for name, low in ints.items():
        if getattr(args, name) is not None:
            check_int(getattr(args, name), f"--{name.replace('_', '-')}", low)
    for name in positive:
        flag = f"--{name.replace('_', '-')}"
        check_positive(getattr(args, name), flag)
