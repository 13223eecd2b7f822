"""What several command groups share: option types, config loading and output-path checks.

Outputs are checked before any work, and read-only commands never create an MLflow store.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tsearch.errors import ConfigError

if TYPE_CHECKING:
    from tsearch.config import Config

Overrides = Annotated[
    Optional[list[str]],  # noqa: UP045 (typer needs Optional on Python 3.10)
    typer.Option("--set", "-s", help="Override a config value: --set train.total_kimg=5 "
                 "(repeatable)."),
]
ConfigArg = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Argument(help="Experiment YAML (e.g. experiments/smoke.yaml)."),
]
TrackingUri = Annotated[
    str, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow store.")
]
DEFAULT_URI = "sqlite:///tsearch-runs/mlflow.db"


def load(config: Path | None, overrides: list[str] | None) -> Config:
    """The validated config with the registered plugins' params (imported on first use)."""
    from tsearch.timesteps import load_config

    return load_config(config, overrides or [])


def _creatable(directory: Path) -> str | None:
    """Why files cannot be made in ``directory`` (which may not exist yet); None if they can.

    Asks the first existing ancestor, by making and removing a file there: permission bits do
    not tell for root or for read-only and virtual file systems.
    """
    ancestor = directory
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a directory"
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".tsearch-write-test-")
    except OSError as err:
        return f"{ancestor} is not writable ({err.strerror})"
    os.close(fd)
    os.unlink(probe)
    return None


def check_output_file(path: Path, suffixes: tuple[str, ...], what: str,
                      force: bool | None = None) -> None:
    """Refuse an output file before any work: wrong suffix, a directory, an existing file
    (unless ``force``; None: overwriting is fine), or a place where nothing can be written."""
    if path.is_dir():
        raise ConfigError(f"-o {path} is a directory; give a file name, e.g. "
                          f"{path / ('out' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"-o {path}: {what}; give a file name ending in "
                          + " or ".join(suffixes))
    if force is False and (path.exists() or path.is_symlink()):
        raise ConfigError(f"{path} exists; pass --force to overwrite it, or choose another -o")
    problem = _creatable(path.parent)
    if problem:
        raise ConfigError(f"cannot write -o {path}: {problem}")


def check_output_dir(path: Path) -> None:
    """Refuse an output directory that is a file or cannot be made, before any work."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"-o {path} is a file; the report is a directory: give a new or "
                          "existing directory")
    problem = _creatable(path)
    if problem:
        raise ConfigError(f"cannot write the report to -o {path}: {problem}")


def check_store(cfg: Config) -> None:
    """A SQLite store URI that is a directory or another file fails now, in one line, not
    after minutes of MLflow retries (a missing file is fine: the run creates it)."""
    if cfg.tracking.backend == "mlflow":
        from tsearch.tracking.store import check_sqlite_store

        check_sqlite_store(cfg.tracking.uri, option="--set tracking.uri=")
