"""Explicit registries of timestep samplers and loss weightings.

Names, once committed, never change meaning: MLflow runs refer to them (the improved-diffusion
rule for schedules). Hyperparameters are typed ``Params`` fields, never parts of names. Adding a
sampler or weighting is one file plus one line here; the conformance suite picks it up.

This module also types a config section's ``params`` by the plugin it names
(:func:`resolve_params`, the resolver ``tsearch.config`` takes at validation, since config
cannot import the plugins), and binds it to config's loaders for every layer above.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tsearch import config
from tsearch.config import Config, SamplerConfig, WeightingConfig, format_validation_error
from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.errors import ConfigError
from tsearch.timesteps.adaptive import AdaptiveSampler
from tsearch.timesteps.base import LossWeighting, Params, TimestepSampler
from tsearch.timesteps.curriculum import CurriculumSampler
from tsearch.timesteps.gradvar import GradVarSampler
from tsearch.timesteps.importance import LossSecondMomentSampler
from tsearch.timesteps.laplace import LaplaceSampler
from tsearch.timesteps.logit_normal import LogitNormalSampler
from tsearch.timesteps.lognormal import LogNormalSampler
from tsearch.timesteps.mode import ModeSampler
from tsearch.timesteps.speed import SpeedSampler
from tsearch.timesteps.uncertainty import UncertaintyWeighting
from tsearch.timesteps.uniform import UniformSampler
from tsearch.timesteps.weighting import (
    DebiasWeighting,
    MinSNRWeighting,
    NoWeighting,
    P2Weighting,
    SpeedWeighting,
    VLBWeighting,
)

SAMPLERS: dict[str, type[TimestepSampler]] = {
    "uniform": UniformSampler,
    "lsm": LossSecondMomentSampler,
    "gradvar": GradVarSampler,
    "lognormal": LogNormalSampler,
    "speed": SpeedSampler,
    "curriculum": CurriculumSampler,
    "adaptive": AdaptiveSampler,
    "logit_normal": LogitNormalSampler,
    "mode": ModeSampler,
    "laplace": LaplaceSampler,
}

WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "none": NoWeighting,
    "vlb": VLBWeighting,
    "p2": P2Weighting,
    "min_snr": MinSNRWeighting,
    "speed": SpeedWeighting,
    "debias": DebiasWeighting,
    "uncertainty": UncertaintyWeighting,
}


def _lookup(kind: str, registry: dict[str, Any], name: str) -> Any:
    if name not in registry:
        raise ConfigError(
            f"config error: timesteps.{kind}.name = {name!r}: unknown {kind}; "
            f"choose one of {', '.join(sorted(registry))}"
        )
    return registry[name]


_REGISTRIES: dict[str, dict[str, Any]] = {"sampler": SAMPLERS, "weighting": WEIGHTINGS}


def resolve_params(kind: str, name: str, raw: Any) -> Params:
    """``raw`` (a mapping, or the plugin's own Params) as the ``kind`` plugin ``name``'s Params.

    The resolver :func:`tsearch.config.validate_config` takes as ``params=``.
    """
    cls = _lookup(kind, _REGISTRIES[kind], name)
    if isinstance(raw, cls.Params):
        return raw
    if isinstance(raw, Params) or not isinstance(raw, Mapping):
        raise ConfigError(f"config error: timesteps.{kind}.params must be a mapping of "
                          f"{name}'s hyperparameters, got {type(raw).__name__}")
    try:
        return cls.Params.model_validate(dict(raw))
    except ValidationError as exc:
        msg = format_validation_error(exc, prefix=f"timesteps.{kind}.params.")
        if "unknown key" in msg:
            allowed = ", ".join(sorted(cls.Params.model_fields)) or "(none)"
            msg = msg.split(";")[0] + f"; {cls.name} accepts: {allowed}"
        raise ConfigError(msg) from None


def validate_config(raw: Mapping[str, Any]) -> Config:
    """:func:`tsearch.config.validate_config` with the registered plugins' params."""
    return config.validate_config(raw, params=resolve_params)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                overlays: Iterable[str | Path] = ()) -> Config:
    """:func:`tsearch.config.load_config` with the registered plugins' params."""
    return config.load_config(path, overrides, overlays, params=resolve_params)


def load_resolved(path: str | Path) -> Config:
    """:func:`tsearch.config.load_resolved` with the registered plugins' params."""
    return config.load_resolved(path, params=resolve_params)


def build_sampler(cfg: SamplerConfig, schedule: NoiseSchedule, seed: int) -> TimestepSampler:
    """The sampler a validated config section names, with its already typed params."""
    cls = _lookup("sampler", SAMPLERS, cfg.name)
    try:
        return cls(schedule, cfg.params, seed)
    except ValueError as exc:  # constraints that depend on the schedule (e.g. tau < T)
        raise ConfigError(f"config error: timesteps.sampler.params: {exc}") from None


def build_weighting(
    cfg: WeightingConfig, schedule: NoiseSchedule, prediction: str = "eps"
) -> LossWeighting:
    cls = _lookup("weighting", WEIGHTINGS, cfg.name)
    try:
        return cls(schedule, cfg.params, prediction)
    except ValueError as exc:
        raise ConfigError(f"config error: timesteps.weighting.params: {exc}") from None
