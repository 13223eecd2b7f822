"""CLTS curriculum timestep schedule as a parameterised mixture (docs/algorithms.md 3, Decisions).

CLTS (Xu et al., arXiv 2404.07946) "gradually reduces the training frequency of easier
timesteps" (those near pure noise, t -> T). No official code exists and the paper's schedule is
not available (ALGORITHMS 3.0-3.2), so we use the form SpeeD's reimplementation intended, without
its bugs (2.5), with every unknown as a search dimension:

    pi(t) = (1 - lam) / T + lam N_disc(t),  N_disc(t) ∝ exp(-((t + 0.5)/T - mu)^2 / (2 sigma^2)),

N_disc normalised over the T timesteps, and lam rising linearly with training progress from 0 at
``ramp_start`` to ``final_weight`` at ``ramp_end``, constant afterwards. mu = 0.3 follows a
reviewer's paraphrase of the paper's best location. Not unbiased (weights are ones).
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps.base import FixedDistributionSampler, Params


class CurriculumParams(Params):
    mu: float = Field(0.3, ge=0.0, le=1.0)  # Gaussian location on normalised time t/T
    sigma: float = Field(0.2, gt=0.0, le=10.0)  # Gaussian width on normalised time
    final_weight: float = Field(0.8, ge=0.0, le=1.0)  # lam reached at ramp_end
    ramp_start: float = Field(0.0, ge=0.0, le=1.0)  # progress where lam starts rising from 0
    ramp_end: float = Field(1.0, ge=0.0, le=1.0)  # progress where lam reaches final_weight

    @model_validator(mode="after")
    def _ramp_order(self) -> CurriculumParams:
        if not self.ramp_start < self.ramp_end:
            raise ValueError(f"curriculum: ramp_start ({self.ramp_start}) must be less than "
                             f"ramp_end ({self.ramp_end})")
        return self


class CurriculumSampler(FixedDistributionSampler):
    """pi(t) = (1 - lam(progress)) U(t) + lam(progress) N_disc(t; mu, sigma)."""

    name = "curriculum"
    Params = CurriculumParams
    unbiased = False
    depends_on_progress = True

    def __init__(self, schedule: NoiseSchedule, params: Params | None = None, seed: int = 0):
        super().__init__(schedule, params, seed)
        T, pr = self.num_timesteps, self.params
        u = (torch.arange(T, dtype=torch.float64) + 0.5) / T
        self._gauss = torch.softmax(-0.5 * ((u - pr.mu) / pr.sigma) ** 2, dim=0)

    def weight_at(self, progress: float) -> float:
        """lam: 0 until ramp_start, linear to final_weight at ramp_end, then constant."""
        pr = self.params
        frac = (progress - pr.ramp_start) / (pr.ramp_end - pr.ramp_start)
        return pr.final_weight * min(max(frac, 0.0), 1.0)

    def probs_at(self, progress: float) -> torch.Tensor:
        lam = self.weight_at(progress)
        return (1.0 - lam) / self.num_timesteps + lam * self._gauss

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "sampler/curriculum_weight": self.weight_at(self.progress)}
