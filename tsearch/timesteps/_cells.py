"""Timestep cells in log sigma: how a continuous noise-level law becomes an exact p(t).

A private helper of the plugins (any of them may import it; no plugin imports another). Under the
VP process a continuous noise level goes to the timestep nearest in log sigma (equivalently in
log SNR = -2 ln sigma). Under flow matching, index i is the cell [i/T, (i+1)/T) of rectified-flow
time that training draws t from (docs/algorithms.md 6.6), and ln sigma = logit(t). Either way a
law over noise levels gives each index the mass of its cell.
"""

from __future__ import annotations

import numpy as np
import torch


def cell_bounds(log_sigma: np.ndarray, *, flow: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper ln sigma of each timestep's cell, the end cells open.

    VP: midpoints between neighbouring ln sigma_t, so sigma outside [sigma_0, sigma_{T-1}] clips
    to the ends. ``flow``: logit(i/T) and logit((i+1)/T), the cell training draws t from (its
    ends logit(0) = -inf and logit(1) = inf). Either way p(t) is exact and sums to 1.
    """
    ls = torch.as_tensor(np.asarray(log_sigma), dtype=torch.float64)
    if not bool(torch.all(ls[1:] > ls[:-1])):
        raise ValueError("sigma_t of this schedule is not strictly increasing in t")
    if flow:
        i = torch.arange(1, ls.numel(), dtype=torch.float64)
        inner = torch.log(i) - torch.log(ls.numel() - i)  # logit(i / T), exact at every i
    else:
        inner = 0.5 * (ls[1:] + ls[:-1])
    inf = torch.tensor([float("inf")], dtype=torch.float64)
    return torch.cat([-inf, inner]), torch.cat([inner, inf])


def _phi(z: torch.Tensor) -> torch.Tensor:
    """The standard normal CDF, relatively exact in the lower tail."""
    return torch.special.log_ndtr(z).exp()


def lognormal_timestep_probs(log_sigma: np.ndarray, p_mean: float, p_std: float, *,
                             flow: bool = False) -> torch.Tensor:
    """P(t) = Phi(z_upper(t)) - Phi(z_lower(t)) for ln sigma ~ N(p_mean, p_std^2).

    Cells right of the mean use the upper tail, Phi(-z_lower) - Phi(-z_upper), so far-tail
    probabilities keep their relative precision instead of cancelling to 0. Phi is
    exp(log_ndtr): torch's float64 ``ndtr`` loses relative precision in the lower tail (1e-7
    at z = -6, 3e-4 at -7.5, 2% at -8, 0 from -9), log_ndtr holds about 1e-13.
    """
    lower, upper = cell_bounds(log_sigma, flow=flow)
    zl, zu = (lower - p_mean) / p_std, (upper - p_mean) / p_std
    right = zl > 0
    p = torch.where(right, _phi(-zl) - _phi(-zu), _phi(zu) - _phi(zl))
    p = p.clamp_min(0.0)
    return p / p.sum()
