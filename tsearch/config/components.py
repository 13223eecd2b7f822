"""The plugin sections (sampler, weighting): a registered name plus typed hyperparameters.

Each plugin types its own ``params`` with a pydantic ``Params`` model, and config must not
import the plugins (imports flow downward). So whoever validates a config hands in a resolver
(``tsearch.timesteps.resolve_params`` for the registered ones) through pydantic's validation
context: nothing is registered at import time, and a config validated without one is refused
at once instead of carrying untyped params. Nothing downstream re-validates a dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationInfo, field_serializer, model_validator

from tsearch.config.fields import Section

# (kind "sampler" or "weighting", plugin name, raw params) -> that plugin's typed Params model;
# raises ConfigError naming the field, e.g. "config error: timesteps.sampler.params.k = ...".
ParamsResolver = Callable[[str, str, Any], BaseModel]

_RESOLVER = "params"  # the resolver's key in pydantic's validation context


def validation_context(params: ParamsResolver) -> dict[str, Any]:
    """Pydantic's ``context=`` for validating anything that holds a plugin section."""
    return {_RESOLVER: params}


class ComponentConfig(Section):
    """A registered plugin by name plus its hyperparameters, typed by the plugin's ``Params``.

    YAML and JSON give ``params`` as a mapping; after validation it is the plugin's ``Params``
    instance. It is written back out with only the values that were given, so that a config
    whose sampler is changed by an override (or a search) carries no other sampler's fields.
    """

    kind: ClassVar[str]
    name: str
    params: Any = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, data: Any, info: ValidationInfo) -> Any:
        resolve = (info.context or {}).get(_RESOLVER)
        if resolve is None:  # a bug, not a user error: the caller gave no resolver
            raise RuntimeError(
                f"no resolver for the {cls.kind}'s params: validate with tsearch.config."
                "validate_config(raw, params=...), e.g. params=tsearch.timesteps.resolve_params")
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        name = data.get("name", cls.model_fields["name"].default)
        if isinstance(name, str):
            data["params"] = resolve(cls.kind, name, data.get("params") or {})
        return data

    @field_serializer("params")
    def _given_params(self, params: Any) -> Any:
        if isinstance(params, BaseModel):
            return params.model_dump(mode="json", exclude_unset=True)
        return params


class SamplerConfig(ComponentConfig):
    kind: ClassVar[str] = "sampler"
    name: str = "uniform"  # a key of tsearch.timesteps.SAMPLERS


class WeightingConfig(ComponentConfig):
    kind: ClassVar[str] = "weighting"
    name: str = "none"  # a key of tsearch.timesteps.WEIGHTINGS


class TimestepsConfig(Section):
    # Defaults are validated like given values, so that the resolver types their params too.
    sampler: SamplerConfig = Field(default={}, validate_default=True)
    weighting: WeightingConfig = Field(default={}, validate_default=True)
