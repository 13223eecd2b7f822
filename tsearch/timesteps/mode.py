"""SD3's mode sampling, on the process's discrete timesteps.

docs/algorithms.md 6.2 (Esser et al. 2024): u ~ U(0, 1), t = f(u; s) = 1 - u - s (cos^2(pi u / 2)
- 1 + u) in rectified-flow time (t = 1 is noise), default s = 1.29. f is strictly decreasing
on [0, 1] for -1 <= s <= 2 / (pi - 2), the range SD3 gives, so P(t <= tau) = 1 - f^-1(tau).
The noise level of rectified-flow time t is ln sigma = logit(t); each timestep gets the mass of
its cell in log sigma (the one ``lognormal`` uses; under flow matching the cell [i/T, (i+1)/T)
of t that training draws from), so p(t) is exact. s = 0 is uniform in t;
s > 0 puts more mass in the middle of t, s < 0 at its ends.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field

from tsearch.timesteps._cells import cell_bounds
from tsearch.timesteps.base import FixedDistributionSampler, Params

S_MAX = 2.0 / (math.pi - 2.0)  # f stays monotone up to here (f'(u) < 0 on (0, 1))


class ModeParams(Params):
    s: float = Field(1.29, ge=-1.0, le=S_MAX)  # SD3's scale; 0 = uniform in t


def mode_time(u: torch.Tensor, s: float) -> torch.Tensor:
    """f(u; s): the rectified-flow time that mode sampling gives a uniform u."""
    return 1.0 - u - s * (torch.cos(math.pi * u / 2.0) ** 2 - 1.0 + u)


def mode_inverse(t: torch.Tensor, s: float, iterations: int = 60) -> torch.Tensor:
    """u with f(u; s) = t, by bisection (f decreases from 1 at u = 0 to 0 at u = 1)."""
    t = t.to(torch.float64)
    lo, hi = torch.zeros_like(t), torch.ones_like(t)
    for _ in range(iterations):  # 2^-60: below float64's resolution of [0, 1]
        mid = 0.5 * (lo + hi)
        above = mode_time(mid, s) > t  # f(mid) > t: the solution lies right of mid
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def mode_timestep_probs(log_sigma: np.ndarray, s: float, *, flow: bool = False) -> torch.Tensor:
    """P(index) = P(logit(t) in its log-sigma cell): f^-1(sigmoid(lower)) - f^-1(sigmoid(upper)).

    ``flow``: the cell is [i/T, (i+1)/T) of t itself, f^-1(i/T) - f^-1((i+1)/T).
    """
    lower, upper = cell_bounds(log_sigma, flow=flow)
    p = mode_inverse(torch.sigmoid(lower), s) - mode_inverse(torch.sigmoid(upper), s)
    p = p.clamp_min(0.0)
    return p / p.sum()


class ModeSampler(FixedDistributionSampler):
    """SD3's mode sampling in rectified-flow time, nearest timestep in log sigma; p(t) exact."""

    name = "mode"
    Params = ModeParams
    unbiased = False

    def probs_at(self, progress: float) -> torch.Tensor:
        return mode_timestep_probs(np.log(self.schedule.sigma), self.params.s,
                                   flow=self.schedule.process == "flow")
