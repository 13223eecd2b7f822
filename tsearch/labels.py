"""How a configuration reads: MLflow run names, a search's summary tables, `tsearch runs show`.

One home, so that a trial's run name in the MLflow UI, the tables at the end of a search and
`tsearch runs show` spell a configuration the same way: the method first (a bundle label, else
the sampler's name), then each other value as ``key=value``, the key shortened to its last path
component (``timesteps.sampler.params.k`` -> ``k``, ``optim.lr`` -> ``lr``) and the number to
three significant digits (``1.5e-3``). `tsearch report` labels its rows with it too.

A leaf: imports nothing of tsearch, not even :mod:`tsearch.names` (``tests/test_boundaries.py``
keeps every leaf independent), so the three config keys a label is built around (the sampler's,
the weighting's and the seed's) live here and every other module imports them from here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SAMPLER_KEY = "timesteps.sampler.name"
WEIGHTING_KEY = "timesteps.weighting.name"
SEED_KEY = "train.seed"
DEFAULT_SAMPLER = "uniform"
MAX_RUN_NAME = 250  # characters: MLflow's runs.name column
_DROPPED_PARTS = ("timesteps", "params")  # say nothing once the sampler or weighting is named


def compact(value: Any) -> str:
    """``value`` as a name shows it: a float to 3 significant digits (``0.0015`` -> ``1.5e-3``,
    ``550.0`` -> ``550``), anything else as ``str``."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    text = f"{value:.2e}" if abs(value) < 1e-2 else f"{value:.3g}"
    if "e" not in text:
        return text
    mantissa, _, exponent = text.partition("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _path(key: str) -> list[str]:
    """The parts of a dotted key that can name it: ``timesteps.weighting.name`` -> weighting."""
    parts = [p for p in key.split(".") if p not in _DROPPED_PARTS] or [key]
    if len(parts) > 1 and parts[-1] == "name":
        parts.pop()
    return parts


def short_keys(keys: Iterable[str], reserved: Iterable[str] = ()) -> dict[str, str]:
    """Each dotted key's short name: its last path component, or as many more as it takes to
    differ from the other ``keys`` and from the ``reserved`` names (``optim.lr`` and the
    adaptive sampler's ``lr`` become ``optim.lr`` and ``sampler.lr``)."""
    taken = set(reserved)
    paths = {key: _path(key) for key in dict.fromkeys(keys)}
    depth = dict.fromkeys(paths, 1)
    while True:
        short = {k: ".".join(p[-depth[k]:]) for k, p in paths.items()}
        counts = Counter(short.values())
        clash = [k for k, s in short.items() if counts[s] > 1 or s in taken]
        longer = [k for k in clash if depth[k] < len(paths[k])]
        if not longer:
            return {k: (k if k in clash else s) for k, s in short.items()}
        for k in longer:
            depth[k] += 1


def _order(key: str) -> tuple[int, str]:
    """Where a value goes in a name: the sampler's, the weighting's, the rest, then the seed."""
    for rank, named in enumerate((SAMPLER_KEY, WEIGHTING_KEY)):
        if key.startswith(named.rpartition(".")[0] + "."):
            return rank, key
    return (3 if key == SEED_KEY else 2), key


def describe(values: Mapping[str, Any], head: str | None = None,
             sampler: str = DEFAULT_SAMPLER, keys: Iterable[str] = ()) -> str:
    """A configuration in one line: ``head`` (a bundle label; default the sampler's name), then
    every other value as ``key=value``: the sampler's, the weighting's, the rest, the seed.

    Keys are shortened among ``values`` and ``keys`` (a search's keys, so that a key reads the
    same in all its trials). A ``key=value`` that ``head`` already spells, as a confirmation
    candidate's label does, is not repeated.
    """
    head = head or str(values.get(SAMPLER_KEY, sampler))
    words = [head]
    for key, word in pairs(values, keys).items():
        if key != SAMPLER_KEY and word not in words and word not in head.split():
            words.append(word)
    return " ".join(words)


def pairs(values: Mapping[str, Any], keys: Iterable[str] = ()) -> dict[str, str]:
    """Each value's ``key=value`` word, by full key, in the order :func:`describe` writes them;
    keys shortened among ``values`` and ``keys`` (e.g. the values that tell two rows apart)."""
    short = short_keys([*values, *keys])
    return {key: f"{short[key]}={compact(values[key])}" for key in sorted(values, key=_order)}


def trial_name(config: Mapping[str, Any], labels: Sequence[str] = (),
               sampler: str = DEFAULT_SAMPLER, keys: Iterable[str] = ()) -> str:
    """A trial's run name, e.g. ``speed k=4.4 tau=550 lr=1.5e-3``: its bundle ``labels``'
    values (else its sampler) and its other values, as :func:`describe` writes them."""
    bundle = " ".join(str(config[k]) for k in labels if k in config) or None
    values = {k: v for k, v in config.items() if k not in labels}
    return describe(values, bundle, sampler, keys)[:MAX_RUN_NAME]


def plain_params(config: Mapping[str, Any], keys: Iterable[str] = (),
                 reserved: Iterable[str] = ()) -> dict[str, Any]:
    """A trial's values under their short names (``{"lr": 0.0015}``), the run table's columns;
    ``keys`` as for :func:`describe`, ``reserved`` the run's other top-level param names."""
    reserved = set(reserved)
    short = short_keys([*config, *keys], reserved)
    return {short[k]: v for k, v in config.items() if short[k] not in reserved}
