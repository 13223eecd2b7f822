"""The console: every module logs to its own logger; one handler prints the lines on stderr.

tsearch's lines are progress and notes for a person, so they print by default, as bare
messages, on whatever ``sys.stderr`` is at the time (pytest's capture and Ray's log forwarding
of a trial's process both swap it). The ``tsearch`` logger does not propagate, so a program that
configures the root logger does not print each line twice; to route the lines elsewhere, add a
handler to ``logging.getLogger("tsearch")`` or raise its level.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

ROOT = "tsearch"


class _Stderr(logging.StreamHandler):
    """Writes to the current ``sys.stderr``, not the one there was when the handler was made."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def _console() -> _Stderr:
    """The one console handler on the ``tsearch`` logger, added the first time it is asked for."""
    root = logging.getLogger(ROOT)
    for handler in root.handlers:
        if isinstance(handler, _Stderr):
            return handler
    handler = _Stderr()
    root.addHandler(handler)
    if root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    root.propagate = False
    return handler


def get_logger(name: str) -> logging.Logger:
    """A module's logger (``get_logger(__name__)``), with the console handler set up once."""
    _console()
    return logging.getLogger(name)


@contextlib.contextmanager
def quiet(level: int = logging.WARNING) -> Iterator[None]:
    """Only warnings and errors from tsearch while inside (benchmarks time the work, not prints)."""
    root = get_logger(ROOT)
    before = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)


@contextlib.contextmanager
def prefixed(prefix: str) -> Iterator[None]:
    """Start each line with ``prefix`` while inside: on the driver, a trial's lines name it."""
    handler = _console()
    before = handler.formatter
    handler.setFormatter(logging.Formatter(prefix.replace("%", "%%") + "%(message)s"))
    try:
        yield
    finally:
        handler.setFormatter(before)
