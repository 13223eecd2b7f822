"""Each sampler at its registry defaults, as a point of a search space.

``search.seed_with_defaults`` tries these points first, and the confirmation's baseline is one
(``confirm.baseline_point``): a tuned method is measured against the method as published.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from tsearch.config import get_dotted
from tsearch.errors import ConfigError
from tsearch.labels import SAMPLER_KEY, WEIGHTING_KEY
from tsearch.search.space import SearchSpace
from tsearch.timesteps import SAMPLERS, WEIGHTINGS

_SAMPLER_PARAM = "timesteps.sampler.params."
_WEIGHTING_PARAM = "timesteps.weighting.params."


def default_point(space: SearchSpace, base: Mapping[str, Any], sampler: str) -> dict[str, Any]:
    """``sampler`` at its registry defaults with its paper's weighting, as a point of ``space``.

    Every searched key that applies to this sampler gets a value: its hyperparameters their
    ``Params`` defaults, the weighting its ``paper_weighting`` (when the space searches the
    weighting), every other key the base config's value. A default that a ``choice`` does not
    list is left to the search (Optuna cannot fix a categorical outside its choices); one
    outside a range is kept: it is the default the search must match.
    """
    cls = SAMPLERS[sampler]
    params = cls.Params().model_dump(mode="json")
    point: dict[str, Any] = {}
    for key, spec in space.specs.items():
        if spec.bundle is not None or not spec.active(point):
            continue
        if key == SAMPLER_KEY:
            value = sampler
        elif key == WEIGHTING_KEY:
            value = cls.paper_weighting
        elif key.startswith(_SAMPLER_PARAM):
            name = key[len(_SAMPLER_PARAM):]
            if name not in params:
                continue
            value = params[name]
        elif key.startswith(_WEIGHTING_PARAM):
            weighting = point.get(WEIGHTING_KEY, get_dotted(base, WEIGHTING_KEY))
            defaults = WEIGHTINGS[weighting].Params().model_dump(mode="json")
            name = key[len(_WEIGHTING_PARAM):]
            if name not in defaults:
                continue
            value = defaults[name]
        else:
            value = get_dotted(base, key)
        if spec.choice is not None and value not in spec.choice:
            continue
        point[key] = value
    return point


def default_points(space: SearchSpace, base: Mapping[str, Any],
                   given: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """One :func:`default_point` per sampler the space chooses from, skipping ``given`` ones."""
    spec = space.specs.get(SAMPLER_KEY)
    if spec is None or spec.choice is None:
        raise ConfigError("config error: search.seed_with_defaults needs "
                          f"search.space.{SAMPLER_KEY} as a choice of samplers")
    seen = [json.dumps(dict(p), sort_keys=True, default=str) for p in given]
    points = []
    for sampler in spec.choice:
        point = default_point(space, base, sampler)
        key = json.dumps(point, sort_keys=True, default=str)
        if key not in seen:
            seen.append(key)
            points.append(point)
    return points

