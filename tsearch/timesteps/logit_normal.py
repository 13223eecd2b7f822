"""SD3's logit-normal timestep distribution, on the process's discrete timesteps.

docs/algorithms.md 6.1: rectified flow draws t = sigmoid(u), u ~ N(m, s^2) (SD3 default m = 0,
s = 1). Its noise level is sigma = t / (1 - t), so ln sigma = u: logit-normal(m, s) is EDM's
log-normal with P_mean = m, P_std = s, mapped to the timestep nearest in log sigma exactly as
``lognormal`` does (a test holds the two equal). Its own name and defaults, because users
compare against it by that name; SD3's (0, 1) centres on SNR = 1, EDM's (-1.2, 1.2) on e^2.4.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from tsearch.timesteps._cells import lognormal_timestep_probs
from tsearch.timesteps.base import FixedDistributionSampler, Params


class LogitNormalParams(Params):
    m: float = Field(0.0, ge=-20.0, le=20.0)  # mean of logit(t) = ln sigma (SD3: 0)
    s: float = Field(1.0, gt=0.0, le=20.0)  # std of logit(t) (SD3: 1)


class LogitNormalSampler(FixedDistributionSampler):
    """logit(t) ~ N(m, s^2) in rectified-flow time, i.e. ln sigma ~ N(m, s^2); p(t) exact."""

    name = "logit_normal"
    Params = LogitNormalParams
    unbiased = False

    def probs_at(self, progress: float) -> torch.Tensor:
        return lognormal_timestep_probs(np.log(self.schedule.sigma), self.params.m, self.params.s,
                                        flow=self.schedule.process == "flow")
