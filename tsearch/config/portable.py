"""Portable export: a config (or some of its sections) without the machine it ran on.

An exported config should train the same way anywhere, so fields that describe the machine
(paths, device, threads, the tracking store) go back to their defaults or are left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from tsearch.config.schema import Config

# Fields that describe the machine a run happened on, not the recipe: an exported config gets
# their defaults back, so it trains the same way anywhere (tracking goes to the reader's store).
MACHINE_FIELDS = (("tracking", "uri"), ("tracking", "artifact_root"), ("eval", "cache_dir"),
                  ("train", "out_dir"), ("train", "device"), ("train", "threads"),
                  ("train", "progress"), ("tracking", "run_name"), ("eval", "inception_weights"),
                  ("eval", "inception_download"))


def portable_dict(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict to share: machine fields reset to their defaults, no ``search`` section.

    What a search resolved for its trials (absolute cache and store paths, one thread per trial,
    the trial device) would otherwise travel into ``tsearch export`` files and from there onto
    another machine. ``data.root`` stays: it names the data the recipe was found on (the
    Inception weights file does not: the reader gives their own, or TSEARCH_INCEPTION_WEIGHTS).
    """
    out = json.loads(json.dumps(dict(raw)))  # a deep copy of JSON-safe values
    out.pop("search", None)
    for section, key in MACHINE_FIELDS:
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section][key] = _default(section, key)
    return out


def _default(section: str, key: str) -> Any:
    """A machine field's default, JSON-safe (its section needs no plugin resolver)."""
    return Config.model_fields[section].annotation().model_dump(mode="json")[key]


def portable_overlay(raw: Mapping[str, Any], sections: Iterable[str]) -> dict[str, Any]:
    """Only ``sections`` of a config dict, portable, to apply onto another base config.

    Machine fields are left out rather than reset to defaults: applied with
    :func:`merge_overlay`, the base then keeps its own device, threads and paths.
    """
    full = portable_dict(raw)
    out = {section: full[section] for section in sections if section in full}
    for section, key in MACHINE_FIELDS:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out

