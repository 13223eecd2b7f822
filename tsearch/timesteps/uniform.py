"""Uniform timestep sampling: the DDPM default and every comparison's baseline."""

from __future__ import annotations

import torch

from tsearch.timesteps.base import Draw, StepContext, TimestepSampler


class UniformSampler(TimestepSampler):
    """t ~ U{0, ..., T-1} (Ho et al. 2020); importance weights are all 1.

    Not a ``FixedDistributionSampler``: its ``randint`` draws (those of every run so far) are
    not the multinomial draws of the same p, and a name never changes meaning.
    """

    name = "uniform"
    unbiased = True

    def sample(self, n: int, ctx: StepContext) -> Draw:
        t = torch.randint(0, self.num_timesteps, (n,), generator=self.generator)
        return Draw(t=t, importance_weight=torch.ones(n))

    def probs(self) -> torch.Tensor:
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)
