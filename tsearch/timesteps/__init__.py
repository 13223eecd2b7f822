"""Timestep samplers and loss weightings: the object of study (docs/design.md section 3)."""

from tsearch.timesteps.base import (
    Draw,
    LossWeighting,
    Params,
    ProbeResult,
    ProbeSpec,
    StepContext,
    TimestepSampler,
)
from tsearch.timesteps.plan import TimestepPlan, from_config
from tsearch.timesteps.registry import (
    SAMPLERS,
    WEIGHTINGS,
    build_sampler,
    build_weighting,
    load_config,
    load_resolved,
    resolve_params,
    validate_config,
)

__all__ = [
    "SAMPLERS",
    "WEIGHTINGS",
    "Draw",
    "LossWeighting",
    "Params",
    "ProbeResult",
    "ProbeSpec",
    "StepContext",
    "TimestepPlan",
    "TimestepSampler",
    "build_sampler",
    "build_weighting",
    "from_config",
    "load_config",
    "load_resolved",
    "resolve_params",
    "validate_config",
]
