"""Use an exported tsearch configuration in your own PyTorch training loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tsearch.config import Config, apply_overlays
from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.seeding import derive_seed
from tsearch.timesteps.base import Draw, LossWeighting, StepContext, TimestepSampler
from tsearch.timesteps.registry import (
    build_sampler,
    build_weighting,
    load_config,
    validate_config,
)


@dataclass
class TimestepPlan:
    """A timestep sampler and loss weighting built from one config.

    In a plain loop: ``draw = plan.sample(x0, step, progress)``; train on ``draw.t``; compute the
    per-sample loss ``[n]``; ``loss = plan.loss(draw, per_sample)``; then
    ``plan.observe(draw, per_sample)``. Samplers that need probes (``adaptive``, ``gradvar``)
    need the tsearch trainer, which measures losses around the optimizer step for them.
    """

    sampler: TimestepSampler
    weighting: LossWeighting
    schedule: NoiseSchedule
    config: Config
    _ctx: StepContext | None = None

    def sample(self, x0: torch.Tensor, step: int = 0, progress: float = 0.0,
               lr: float = 0.0) -> Draw:
        """Timesteps for the batch ``x0`` at training ``progress`` in [0, 1] (on x0's device)."""
        n = x0.shape[0]
        self._ctx = StepContext(step=step, kimg=step * n / 1000, progress=progress, lr=lr,
                                x0=x0.detach(), weighting=self.weighting)
        draw = self.sampler.sample(n, self._ctx)
        return Draw(t=draw.t.to(x0.device),
                    importance_weight=draw.importance_weight.to(x0.device))

    def loss_factor(self, draw: Draw) -> torch.Tensor:
        """w[t] * importance weight: multiply the per-sample loss by this before the mean."""
        if self.weighting.learned:
            raise TypeError(f"weighting {self.weighting.name!r} is learned: its objective is not "
                            "a factor. Use plan.loss(draw, per_sample) and add "
                            "plan.weighting.parameters() to your optimizer")
        return self.weighting.weights(draw.t) * draw.importance_weight.to(draw.t.device)

    def loss(self, draw: Draw, per_sample_loss: torch.Tensor) -> torch.Tensor:
        """The batch objective the tsearch trainer optimises, from unweighted per-sample losses.

        For a learned weighting (``uncertainty``) this includes its own term; its parameters
        (``plan.weighting.parameters()``, no weight decay) must be in your optimizer, and its
        ``state_dict()`` in your checkpoints.
        """
        t = draw.t.to(per_sample_loss.device)
        per_sample = self.weighting.objective(per_sample_loss, t)
        return (per_sample * draw.importance_weight.to(per_sample_loss.device)).mean()

    def observe(self, draw: Draw, per_sample_loss: torch.Tensor) -> None:
        """Feed the unweighted per-sample losses back; a loss-aware sampler applies the
        weighting itself (it learns from the loss being optimised, unless told otherwise)."""
        if self._ctx is not None:
            self.sampler.observe(draw, per_sample_loss.detach(), self._ctx)

    @property
    def needs_probes(self) -> bool:
        return type(self.sampler).probe_request is not TimestepSampler.probe_request


def from_config(path: str | Path | Config, schedule: NoiseSchedule | None = None,
                seed: int | None = None, *, overlay: str | Path | None = None) -> TimestepPlan:
    """Build the sampler and weighting of an exported config (``tsearch export best -o FILE``).

    Args:
        path: the YAML file (or an already loaded Config). An overlay file alone works too:
            the sections it does not hold take their defaults.
        schedule: your noise schedule; by default the one the config's ``diffusion`` section
            describes. Its length must match the T your model is trained with.
        seed: the sampler's seed (default: derived from ``train.seed`` as the trainer does).
        overlay: an overlay (``tsearch export best --only timesteps,optim -o FILE``) applied
            onto ``path``, so a recipe found on one config runs on yours.
    """
    overlays = () if overlay is None else (overlay,)
    if isinstance(path, Config):
        cfg = validate_config(apply_overlays(path.to_dict(), overlays)) if overlays else path
    else:
        cfg = load_config(path, overlays=overlays)
    if schedule is None:
        d = cfg.diffusion
        schedule = NoiseSchedule.create(d.schedule, d.num_timesteps, d.variance)
    if seed is None:
        seed = derive_seed(cfg.train.seed, "timesteps")
    sampler = build_sampler(cfg.timesteps.sampler, schedule, seed)
    weighting = build_weighting(cfg.timesteps.weighting, schedule, cfg.diffusion.prediction)
    return TimestepPlan(sampler=sampler, weighting=weighting, schedule=schedule, config=cfg)
