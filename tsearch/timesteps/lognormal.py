"""EDM's log-normal noise-level distribution mapped onto discrete DDPM timesteps.

docs/algorithms.md 4.3 (``NVlabs/edm`` ``training/loss.py:EDMLoss``): ln sigma ~ N(P_mean, P_std^2)
with P_mean = -1.2, P_std = 1.2, and sigma_t = sqrt((1 - abar_t) / abar_t). A continuous sigma
goes to the timestep nearest in log sigma, so p(t) is exact: the Gaussian mass of t's cell,
whose boundaries are the midpoints between consecutive log sigma_t (the end cells are open, i.e.
sigma outside [sigma_0, sigma_{T-1}] clips to the ends); under flow matching the cells are those
training draws t from, [i/T, (i+1)/T) (``_cells.cell_bounds``). Not unbiased: the point is to change
the objective (weights are ones; EDM's lambda(sigma) belongs to the x0-preconditioned loss).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from tsearch.timesteps._cells import lognormal_timestep_probs
from tsearch.timesteps.base import FixedDistributionSampler, Params


class LogNormalParams(Params):
    p_mean: float = Field(-1.2, ge=-20.0, le=20.0)  # mean of ln sigma (EDM P_mean)
    p_std: float = Field(1.2, gt=0.0, le=20.0)  # std of ln sigma (EDM P_std)


class LogNormalSampler(FixedDistributionSampler):
    """t = argmin_t |ln sigma_t - ln sigma| with ln sigma ~ N(p_mean, p_std^2); p(t) exact."""

    name = "lognormal"
    Params = LogNormalParams
    unbiased = False

    def probs_at(self, progress: float) -> torch.Tensor:
        log_sigma = np.log(self.schedule.sigma)
        if not np.all(np.diff(log_sigma) > 0):
            raise ValueError(f"lognormal: sigma_t of schedule {self.schedule.name!r} is not "
                             "strictly increasing in t")
        return lognormal_timestep_probs(log_sigma, self.params.p_mean, self.params.p_std,
                                        flow=self.schedule.process == "flow")
