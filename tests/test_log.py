"""tsearch's console: module loggers print bare lines on stderr, once, and can be quietened."""

from __future__ import annotations

import logging

from tsearch.log import ROOT, get_logger, prefixed, quiet


def test_a_line_prints_bare_on_the_current_stderr(capsys):
    get_logger("tsearch.some.module").info("resumed from %s", "ckpt-1.pt")
    captured = capsys.readouterr()
    assert captured.err == "resumed from ckpt-1.pt\n" and captured.out == ""


def test_prefixed_names_the_lines_inside_and_only_there(capsys):
    log = get_logger("tsearch.search.trainable")
    with prefixed("[trial_0 100%] "):
        log.info("done: 3 steps")
    log.info("after")
    assert capsys.readouterr().err.splitlines() == ["[trial_0 100%] done: 3 steps", "after"]


def test_quiet_keeps_warnings_and_restores_the_level(capsys):
    log = get_logger("tsearch.train.loop")
    before = logging.getLogger(ROOT).level
    with quiet():
        log.info("progress")
        log.warning("warning: tracking stopped")
    assert capsys.readouterr().err.splitlines() == ["warning: tracking stopped"]
    assert logging.getLogger(ROOT).level == before


def test_a_configured_root_logger_does_not_print_each_line_twice(capsys):
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    root = logging.getLogger()
    handler = Keep()
    root.addHandler(handler)
    try:
        get_logger("tsearch.x").info("once")
    finally:
        root.removeHandler(handler)
    assert seen == [] and capsys.readouterr().err == "once\n"
