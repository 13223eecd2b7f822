"""EDM's log-normal noise-level distribution mapped onto discrete DDPM timesteps.

ALGORITHMS.md 4.3 (``NVlabs/edm`` ``training/loss.py:EDMLoss``): ln sigma ~ N(P_mean, P_std^2)
with P_mean = -1.2, P_std = 1.2, and sigma_t = sqrt((1 - abar_t) / abar_t). A continuous sigma
goes to the timestep nearest in log sigma, so p(t) is exact: the Gaussian mass of t's cell,
whose boundaries are the midpoints between consecutive log sigma_t (the end cells are open, i.e.
sigma outside [sigma_0, sigma_{T-1}] clips to the ends). Not unbiased: the point is to change
the objective (weights are ones; EDM's lambda(sigma) belongs to the x0-preconditioned loss).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps.base import Draw, Params, StepContext, TimestepSampler


class LogNormalParams(Params):
    p_mean: float = Field(-1.2, ge=-20.0, le=20.0)  # mean of ln sigma (EDM P_mean)
    p_std: float = Field(1.2, gt=0.0, le=20.0)  # std of ln sigma (EDM P_std)


def cell_bounds(log_sigma: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper ln sigma of each timestep's cell: midpoints, the end cells open.

    A continuous noise level goes to the timestep nearest in log sigma (equivalently in log
    SNR = -2 ln sigma), so a distribution over noise levels gives each index the mass of its
    cell, and p(t) is exact and sums to 1.
    """
    ls = torch.as_tensor(np.asarray(log_sigma), dtype=torch.float64)
    if not bool(torch.all(ls[1:] > ls[:-1])):
        raise ValueError("sigma_t of this schedule is not strictly increasing in t")
    mid = 0.5 * (ls[1:] + ls[:-1])
    inf = torch.tensor([float("inf")], dtype=torch.float64)
    return torch.cat([-inf, mid]), torch.cat([mid, inf])


def lognormal_timestep_probs(log_sigma: np.ndarray, p_mean: float, p_std: float) -> torch.Tensor:
    """P(t) = Phi(z_upper(t)) - Phi(z_lower(t)) over the cells of increasing ``log_sigma``.

    Cells right of the mean use the upper tail, Phi(-z_lower) - Phi(-z_upper), so far-tail
    probabilities keep their relative precision instead of cancelling to 0.
    """
    lower, upper = cell_bounds(log_sigma)
    zl, zu = (lower - p_mean) / p_std, (upper - p_mean) / p_std
    right = zl > 0
    p = torch.where(right, torch.special.ndtr(-zl) - torch.special.ndtr(-zu),
                    torch.special.ndtr(zu) - torch.special.ndtr(zl))
    p = p.clamp_min(0.0)
    return p / p.sum()


class LogNormalSampler(TimestepSampler):
    """t = argmin_t |ln sigma_t - ln sigma| with ln sigma ~ N(p_mean, p_std^2); p(t) exact."""

    name = "lognormal"
    Params = LogNormalParams
    unbiased = False

    def __init__(self, schedule: NoiseSchedule, params: Params | None = None, seed: int = 0):
        super().__init__(schedule, params, seed)
        log_sigma = np.log(schedule.sigma)
        if not np.all(np.diff(log_sigma) > 0):
            raise ValueError(f"lognormal: sigma_t of schedule {schedule.name!r} is not strictly "
                             "increasing in t")
        self._p = lognormal_timestep_probs(log_sigma, self.params.p_mean, self.params.p_std)

    def probs(self) -> torch.Tensor:
        return self._p.clone()

    def sample(self, n: int, ctx: StepContext) -> Draw:
        return self.draw_from(self._p, n)
