"""User-facing errors: each carries one line that says what is wrong and how to fix it.

The CLI prints ``str(err)`` and exits with ``err.exit_code``; library callers can catch the
class. Anything else escaping to the CLI is a bug and keeps its traceback.
"""

from __future__ import annotations


class TsearchError(Exception):
    """An error caused by the user's input or environment, not by a bug."""

    exit_code = 1


class ConfigError(TsearchError):
    """A bad configuration value, key, override or file (exit code 2, like argparse)."""

    exit_code = 2


class DataError(TsearchError):
    """A dataset or weights file is missing or unreadable."""

    exit_code = 2


class CheckpointError(TsearchError):
    """A checkpoint is missing, corrupt or does not match the config."""

    exit_code = 2


class DivergenceError(TsearchError):
    """The training loss became NaN or infinite."""

    exit_code = 3
