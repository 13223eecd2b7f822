"""Run the ``tsearch`` command and check that a mistake is reported as one line.

``run_cli`` calls the real entry point (``tsearch.cli.main.main``) in this process, which is
~2 s faster per case than a subprocess; an exception escaping ``main`` is what a user would see
as a traceback, so it is returned as such. ``run_cli_subprocess`` is for cases that start Ray or
depend on what another process prints (warnings, logging handlers). ``logged`` collects the
lines tsearch's own loggers print, without what other libraries write on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(capfd: pytest.CaptureFixture, *args: str) -> CliResult:
    """``tsearch ARGS`` in-process; cwd and environment are the caller's (use monkeypatch)."""
    from tsearch.cli.main import main

    capfd.readouterr()
    saved = sys.argv
    sys.argv = ["tsearch", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what the user would see as a traceback
        code = -1
        print(traceback.format_exc(), file=sys.stderr)
    finally:
        sys.argv = saved
    captured = capfd.readouterr()
    return CliResult(code, captured.out, captured.err)


def run_cli_subprocess(*args: str, cwd: Path, env: dict[str, str] | None = None,
                       timeout: float = 300) -> CliResult:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "tsearch.cli.main", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line(result: CliResult, *fragments: str, code: int = 2) -> None:
    """Exit ``code``, exactly one stderr line containing every fragment, no traceback."""
    assert "Traceback" not in result.err, result.err
    assert result.code == code, (result.code, result.err)
    assert len(result.err_lines) == 1, result.err
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)


class _Lines(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def logged() -> Iterator[list[str]]:
    """The messages tsearch's loggers print while inside (they still print, too)."""
    from tsearch.log import ROOT, get_logger

    lines: list[str] = []
    handler = _Lines(lines)
    root = get_logger(ROOT)
    root.addHandler(handler)
    try:
        yield lines
    finally:
        root.removeHandler(handler)


def run_search_in_store(work: Path, config: Path, *sets: str, timeout: float = 900,
                        extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``tsearch search CONFIG --set ...`` as a user runs it, with its Ray store, MLflow store
    and FID cache under ``work``; Ray's temporary files in a short /tmp directory (its socket
    paths have a length limit), killed and removed afterwards whatever happened."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="tss", dir="/tmp"))
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    args = [str(config), *(a for s in sets for a in ("--set", s)),
            "--set", f"search.storage_path={work}/ray",
            "--set", f"tracking.uri=sqlite:///{work}/mlflow.db",
            "--set", f"eval.cache_dir={work}/cache", *extra]
    try:
        return subprocess.run([sys.executable, "-m", "tsearch.cli.main", "search", *args],
                              cwd=work, env=env, text=True, capture_output=True,
                              timeout=timeout)
    finally:
        subprocess.run(["pkill", "-9", "-f", str(tmp)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
