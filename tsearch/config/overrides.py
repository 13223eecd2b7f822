"""Changing a config dict before validation: dotted keys, ``--set`` overrides and overlays.

A dotted key (``optim.lr``) names one value in the nested sections; overrides set them from
the command line, a search sets them per trial, and an overlay file deep-merges whole sections
(``tsearch export best --only timesteps,optim``) onto another base config.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tsearch.config.reader import YamlProblem, load_yaml, read_yaml
from tsearch.config.schema import Config
from tsearch.errors import ConfigError


def get_dotted(raw: Mapping[str, Any], key: str) -> Any:
    """The value a dotted key names in a nested config dict (KeyError if a level is missing)."""
    value: Any = raw
    for part in key.split("."):
        value = value[part]
    return value


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in place; missing levels, and values in the way, become sections."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def merge_flat(base: Mapping[str, Any], flat: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the base config dict with each dotted key of ``flat`` set."""
    raw = copy.deepcopy(dict(base))
    for key, value in flat.items():
        set_dotted(raw, key, value)
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value``; the value is parsed as YAML so ``5``, ``true``, ``[1,2]`` work."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. train.total_kimg=5)")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part (e.g. train.total_kimg=5)")
    try:
        value = load_yaml(text) if text.strip() else ""
    except YamlProblem as exc:
        shown = item if len(item) <= 80 else item[:60] + "..."
        raise ConfigError(f"config error: override {shown!r} {exc}") from None
    return key.split("."), value


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each dotted override set (missing levels are created)."""
    out = json.loads(json.dumps(raw, default=str))
    for item in overrides:
        parts, value = parse_override(item)
        if parts[:2] == ["search", "space"] and len(parts) > 3:
            # Space keys are dotted config paths themselves: search.space.optim.lr={...}
            parts = ["search", "space", ".".join(parts[2:])]
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"override {item!r}: {where} is a value ({child!r}), not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


# Top-level sections of a config file. An overlay may hold every one but ``search``: it changes
# what a run trains, not how a search explores.
SECTIONS: tuple[str, ...] = tuple(Config.model_fields)
OVERLAY_SECTIONS: tuple[str, ...] = tuple(s for s in SECTIONS if s != "search")
# Mappings an overlay replaces whole: the base's params belong to the base's sampler (or
# weighting) and would be invalid, or silently kept, under another one.
_REPLACED_WHOLE = (("timesteps", "sampler"), ("timesteps", "weighting"))


def merge_overlay(raw: Mapping[str, Any], overlay: Mapping[str, Any],
                  source: str = "overlay") -> dict[str, Any]:
    """``raw`` with ``overlay`` deep-merged onto it: nested mappings merge, other values replace.

    An overlay (``tsearch export best --only timesteps,optim``) carries a recipe found on one
    base config onto another, so it may only hold config sections, never ``search``.
    ``timesteps.sampler`` and ``timesteps.weighting`` replace the base's whole mapping.
    ``source`` names the overlay in errors (one-line :class:`ConfigError`).
    """
    if "search" in overlay:
        raise ConfigError(f"overlay {source!r} has a search section: an overlay changes what a "
                          "run trains, not how a search explores; put search settings in the "
                          "base config")
    bad = [k for k in overlay if k not in OVERLAY_SECTIONS]
    if bad:
        raise ConfigError(f"overlay {source!r}: top-level key {bad[0]!r} is not a config section; "
                          f"overlay sections: {', '.join(OVERLAY_SECTIONS)}")
    out = json.loads(json.dumps(dict(raw), default=str))
    stack: list[tuple[dict[str, Any], Mapping[str, Any], tuple[str, ...]]] = [(out, overlay, ())]
    while stack:
        node, top, path = stack.pop()
        for key, value in top.items():
            where = (*path, key)
            if (isinstance(value, Mapping) and isinstance(node.get(key), dict)
                    and where not in _REPLACED_WHOLE):
                stack.append((node[key], value, where))
            else:
                node[key] = json.loads(json.dumps(value, default=str))
    return out


def apply_overlays(raw: Mapping[str, Any], overlays: Iterable[str | Path]) -> dict[str, Any]:
    """``raw`` with each overlay file (read with :func:`read_yaml`) merged on, later files last."""
    out = dict(raw)
    for path in overlays:
        out = merge_overlay(out, read_yaml(path), str(path))
    return out


def parse_sections(text: str, option: str = "--only") -> tuple[str, ...]:
    """Comma-separated config section names (``timesteps,optim``), checked, in given order.

    ``option`` names the setting in the one-line :class:`ConfigError`.
    """
    chosen: list[str] = []
    for part in text.split(","):
        name = part.strip()
        if name and name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ConfigError(f"{option} {text!r} names no section; give one or more of "
                          f"{', '.join(OVERLAY_SECTIONS)} (e.g. {option} timesteps,optim)")
    for name in chosen:
        if name not in OVERLAY_SECTIONS:
            raise ConfigError(f"{option} {text!r}: {name!r} is not a config section an overlay "
                              f"can hold; sections: {', '.join(OVERLAY_SECTIONS)}")
    return tuple(chosen)

