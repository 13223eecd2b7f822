"""Laplace (or Cauchy) sampling in log SNR, on the process's discrete timesteps.

docs/algorithms.md 6.3 (Hang et al. 2024, "Improved noise schedule for diffusion training"): the
noise level's lambda = log SNR follows p(lambda) = exp(-|lambda - mu| / b) / (2b), defaults
mu = 0, b = 0.5 [UNVERIFIED: what public re-implementations use]; the Cauchy variant
p(lambda) = 1 / (pi gamma (1 + ((lambda - mu) / gamma)^2)) is ``shape: cauchy`` with gamma =
``scale``. Each timestep gets the mass of its cell (lambda = -2 ln sigma, the cells ``lognormal``
uses; under flow matching the cells [i/T, (i+1)/T) of t that training draws from), so p(t)
is exact and sums to 1; tails use the survival function, so far cells keep their
relative precision.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from tsearch.timesteps._cells import cell_bounds
from tsearch.timesteps.base import FixedDistributionSampler, Params


class LaplaceParams(Params):
    mu: float = Field(0.0, ge=-40.0, le=40.0)  # location in log SNR (0: SNR = 1)
    scale: float = Field(0.5, gt=0.0, le=40.0)  # Laplace b, or Cauchy gamma
    shape: Literal["laplace", "cauchy"] = "laplace"


def _cdf(z: torch.Tensor, shape: str) -> torch.Tensor:
    """P(Z <= z) of the standard Laplace or Cauchy, accurate in the lower tail."""
    if shape == "laplace":
        return torch.where(z < 0, 0.5 * torch.exp(torch.clamp(z, max=0.0)),
                           1.0 - 0.5 * torch.exp(-torch.clamp(z, min=0.0)))
    return torch.atan2(torch.ones_like(z), -z) / torch.pi  # 1/2 + atan(z)/pi, tail-exact


def log_snr_timestep_probs(log_sigma: np.ndarray, mu: float, scale: float, shape: str, *,
                           flow: bool = False) -> torch.Tensor:
    """P(index) = P(lambda in its cell), lambda = -2 ln sigma, for a symmetric law around mu."""
    lower, upper = cell_bounds(log_sigma, flow=flow)
    za, zb = (-2.0 * upper - mu) / scale, (-2.0 * lower - mu) / scale  # za < zb in lambda
    right = za > 0  # above mu: the mass from the upper tail, S(za) - S(zb), S(z) = F(-z)
    p = torch.where(right, _cdf(-za, shape) - _cdf(-zb, shape), _cdf(zb, shape) - _cdf(za, shape))
    p = p.clamp_min(0.0)
    return p / p.sum()


class LaplaceSampler(FixedDistributionSampler):
    """lambda = log SNR ~ Laplace(mu, b) (or Cauchy(mu, gamma)); nearest timestep; p(t) exact."""

    name = "laplace"
    Params = LaplaceParams
    unbiased = False

    def probs_at(self, progress: float) -> torch.Tensor:
        p = self.params
        return log_snr_timestep_probs(np.log(self.schedule.sigma), p.mu, p.scale, p.shape,
                                      flow=self.schedule.process == "flow")
