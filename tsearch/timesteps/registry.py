"""Explicit registries of timestep samplers and loss weightings.

Names, once committed, never change meaning: MLflow runs refer to them (the improved-diffusion
rule for schedules). Hyperparameters are typed ``Params`` fields, never parts of names.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tsearch.config import ComponentConfig, Config, format_validation_error
from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.errors import ConfigError
from tsearch.timesteps.adaptive import AdaptiveSampler
from tsearch.timesteps.base import LossWeighting, Params, TimestepSampler
from tsearch.timesteps.curriculum import CurriculumSampler
from tsearch.timesteps.gradvar import GradVarSampler
from tsearch.timesteps.importance import LossSecondMomentSampler
from tsearch.timesteps.lognormal import LogNormalSampler
from tsearch.timesteps.speed import SpeedSampler
from tsearch.timesteps.uniform import UniformSampler
from tsearch.timesteps.weighting import (
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
}

WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "none": NoWeighting,
    "vlb": VLBWeighting,
    "p2": P2Weighting,
    "min_snr": MinSNRWeighting,
    "speed": SpeedWeighting,
}


def _lookup(kind: str, registry: dict[str, Any], name: str) -> Any:
    if name not in registry:
        raise ConfigError(
            f"config error: timesteps.{kind}.name = {name!r}: unknown {kind}; "
            f"choose one of {', '.join(sorted(registry))}"
        )
    return registry[name]


def _params(kind: str, cls: Any, raw: dict[str, Any]) -> Params:
    try:
        return cls.Params.model_validate(raw)
    except ValidationError as exc:
        msg = format_validation_error(exc, prefix=f"timesteps.{kind}.params.")
        if "unknown key" in msg:
            allowed = ", ".join(sorted(cls.Params.model_fields)) or "(none)"
            msg = msg.split(";")[0] + f"; {cls.name} accepts: {allowed}"
        raise ConfigError(msg) from None


def sampler_params(cfg: ComponentConfig) -> Params:
    """The validated Params of a sampler config (ConfigError with the field path if bad)."""
    return _params("sampler", _lookup("sampler", SAMPLERS, cfg.name), cfg.params)


def weighting_params(cfg: ComponentConfig) -> Params:
    return _params("weighting", _lookup("weighting", WEIGHTINGS, cfg.name), cfg.params)


def check_config(cfg: Config) -> None:
    """Validate the plugin parts that ``tsearch.config`` cannot see."""
    sampler_params(cfg.timesteps.sampler)
    weighting_params(cfg.timesteps.weighting)


def build_sampler(cfg: ComponentConfig, schedule: NoiseSchedule, seed: int) -> TimestepSampler:
    cls = _lookup("sampler", SAMPLERS, cfg.name)
    params = sampler_params(cfg)
    try:
        return cls(schedule, params, seed)
    except ValueError as exc:  # constraints that depend on the schedule (e.g. tau < T)
        raise ConfigError(f"config error: timesteps.sampler.params: {exc}") from None


def build_weighting(
    cfg: ComponentConfig, schedule: NoiseSchedule, prediction: str = "eps"
) -> LossWeighting:
    cls = _lookup("weighting", WEIGHTINGS, cfg.name)
    params = weighting_params(cfg)
    try:
        return cls(schedule, params, prediction)
    except ValueError as exc:
        raise ConfigError(f"config error: timesteps.weighting.params: {exc}") from None
