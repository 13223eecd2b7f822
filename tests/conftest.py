"""What many test files share: the repository's paths and a capture of tsearch's log lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def tsearch_lines() -> Iterator[list[str]]:
    """The messages tsearch logs during the test, in order (its console handler prints them too)."""
    from tsearch.log import ROOT as LOGGER
    from tsearch.log import get_logger

    handler = _Lines()
    logger = get_logger(LOGGER)
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
