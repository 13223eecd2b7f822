"""Explicit registries of timestep samplers and loss weightings.

Names, once committed, never change meaning: MLflow runs refer to them (the improved-diffusion
rule for schedules). Hyperparameters are typed ``Params`` fields, never parts of names. Adding a
sampler or weighting is one file plus one line here; the conformance suite picks it up.

This module also hands ``tsearch.config`` the parser that types a section's ``params`` when a
config is validated (config cannot import the plugins).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tsearch.config import (
    SamplerConfig,
    WeightingConfig,
    format_validation_error,
    register_params_parser,
)
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


def _parser(kind: str, registry: dict[str, Any]):
    def parse(name: str, raw: Any) -> Params:
        """``raw`` (a mapping, or the plugin's own Params) as the plugin's Params."""
        cls = _lookup(kind, registry, name)
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

    return parse


register_params_parser("sampler", _parser("sampler", SAMPLERS))
register_params_parser("weighting", _parser("weighting", WEIGHTINGS))


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
