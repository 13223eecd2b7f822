"""Timestep cells in log sigma: how a continuous noise-level law becomes an exact p(t).

A private helper of the plugins (any of them may import it; no plugin imports another). A
continuous noise level goes to the timestep nearest in log sigma (equivalently in log SNR =
-2 ln sigma), so a law over noise levels gives each index the mass of its cell.
"""

from __future__ import annotations

import numpy as np
import torch


def cell_bounds(log_sigma: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper ln sigma of each timestep's cell: midpoints, the end cells open.

    The end cells being open means that sigma outside [sigma_0, sigma_{T-1}] clips to the ends,
    so p(t) is exact and sums to 1.
    """
    ls = torch.as_tensor(np.asarray(log_sigma), dtype=torch.float64)
    if not bool(torch.all(ls[1:] > ls[:-1])):
        raise ValueError("sigma_t of this schedule is not strictly increasing in t")
    mid = 0.5 * (ls[1:] + ls[:-1])
    inf = torch.tensor([float("inf")], dtype=torch.float64)
    return torch.cat([-inf, mid]), torch.cat([mid, inf])


def lognormal_timestep_probs(log_sigma: np.ndarray, p_mean: float, p_std: float) -> torch.Tensor:
    """P(t) = Phi(z_upper(t)) - Phi(z_lower(t)) for ln sigma ~ N(p_mean, p_std^2).

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
