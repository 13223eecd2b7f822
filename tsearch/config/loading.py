"""Where a Config comes from: defaults, environment, file, overlays and overrides; a run's JSON.

Every entry point takes the plugin resolver (``params=``) that types the sampler's and
weighting's hyperparameters; ``tsearch.timesteps`` binds the registered one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tsearch.config.components import ParamsResolver
from tsearch.config.overrides import apply_overlays, apply_overrides
from tsearch.config.reader import read_yaml
from tsearch.config.schema import Config
from tsearch.config.validation import validate_config
from tsearch.errors import ConfigError

# Environment variable -> the (section, key) it fills when no file or override sets it.
ENVIRONMENT = {"MLFLOW_TRACKING_URI": ("tracking", "uri"),
               "TSEARCH_STORAGE_PATH": ("search", "storage_path")}


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                overlays: Iterable[str | Path] = (), *, params: ParamsResolver) -> Config:
    """Defaults <- environment <- YAML file (if any) <- overlay files <- dotted overrides.

    Overlays (e.g. ``tsearch export best --only timesteps,optim``) are merged onto the file's
    raw dict as :func:`merge_overlay` describes. ``MLFLOW_TRACKING_URI`` (MLflow's own
    convention) and ``TSEARCH_STORAGE_PATH`` fill ``tracking.uri`` and ``search.storage_path``
    when neither the files nor an override sets them, so one environment (e.g. a cluster's)
    points every command at the same server and storage. ``params`` types the plugins' params
    (see :func:`validate_config`).
    """
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overlays(raw, overlays)
    raw = apply_overrides(raw, overrides)
    _environment_defaults(raw)
    return validate_config(raw, params=params)


def _environment_defaults(raw: dict[str, Any]) -> None:
    for env, (section, key) in ENVIRONMENT.items():
        value = os.environ.get(env, "").strip()
        if value and isinstance(raw.get(section, {}), dict) and key not in raw.get(section, {}):
            raw.setdefault(section, {})[key] = value


def save_resolved(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config (every default spelled out) next to a run's results."""
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def load_resolved(path: str | Path, *, params: ParamsResolver) -> Config:
    """Read a ``config.json`` written by :func:`save_resolved`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{str(p)!r} not found: expected a run directory's config.json")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{str(p)!r} is not valid JSON (corrupt run directory?)") from None
    return validate_config(raw, params=params)
