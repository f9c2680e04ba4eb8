"""The package's exceptions, named for what failed.

Every one is a ``ValueError`` carrying a message that names the file (or option) and the problem,
so the CLI prints it as one ``napari-ftu: error: ...`` line and the docks show it as one notice.
"""

from __future__ import annotations


class FTUError(ValueError):
    """A problem the user can fix; the message says which file or option and what is wrong."""


class InputError(FTUError):
    """An input file or folder that is missing or cannot be read (slides, images, label stores, lists)."""


class FormatError(FTUError):
    """Annotation or mask data that does not follow its format, or cannot be written in the chosen one."""


class ModelError(FTUError):
    """A model file that cannot be loaded or trusted, or a model that cannot run."""


class EditError(FTUError):
    """A review edit that cannot be applied (unknown object, empty brush, window outside the image)."""


class SessionError(FTUError):
    """A saved review session that cannot be restored (damaged, or of another shape or offset).

    ``aside`` is where the file was kept (renamed), or None when it was left in place."""

    def __init__(self, message: str, aside=None):
        super().__init__(message)
        self.aside = aside


class OptionError(FTUError):
    """A run option that is unknown or does not fit the others."""


class OutputOntoInputError(OptionError):
    """An output path that is (or resolves to) one of the inputs: writing it would lose the input."""


__all__ = ["FTUError", "InputError", "FormatError", "ModelError", "EditError", "SessionError", "OptionError",
           "OutputOntoInputError"]
