"""User-facing errors: each message says what was expected, so the command line prints it as one line.

``vitlab <command>`` turns these (and ``ValueError`` / ``FileNotFoundError`` / ``OSError`` raised for
bad input) into ``vitlab <command>: error: <message>`` on stderr with exit code 2; ``--debug``
shows the traceback instead.
"""
from __future__ import annotations


class VitlabError(Exception):
    """Base class of the errors vitlab raises for bad input or a state it refuses to touch."""

    exit_code = 2


class ConfigError(VitlabError, ValueError):
    """A configuration key is unknown, has the wrong type, or contradicts another setting."""


class RunFolderError(VitlabError):
    """A run folder is in use, holds another run, or cannot be written."""


class DataError(VitlabError, ValueError):
    """A dataset is missing, empty or malformed; the message names the file or folder."""


class WriteError(VitlabError, OSError):
    """A file could not be written (full disk, read-only folder, no permission); the previous file is kept."""


class TrainingDiverged(VitlabError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3
