"""The adaptive sampler's parts that hold no training state: the F-test that chooses S, the
policy networks pi_phi(t | x0), and the p(t) their Beta (mixed with uniform) gives.

Kept apart from ``adaptive.py`` (the sampler's probe, update and checkpoint cycle) so that the
policy can be driven alone: ``benchmarks/adaptive_stability.py`` updates it on synthetic rewards.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import betainc
from torch import nn
from torch.distributions import Beta

REFERENCE_FLOOR = 1e-5  # alpha, beta = softplus(.) + 1e-5, as ATS's ActorNetwork


def f_regression_scores(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Univariate linear-regression F statistic of each column of x against y.

    F_j = r_j^2 / (1 - r_j^2) * (n - 2), r_j = corr(x[:, j], y): sklearn's ``f_regression``
    (docs/algorithms.md 1.3). Constant columns (and n <= 2) score 0 instead of NaN.
    """
    # Not sklearn's: it is 2.8-5.3x slower per call, +0.5-2.7 s import (f_regression_cost.py)
    x = x.double()
    y = y.double()
    n = x.shape[0]
    xc = x - x.mean(0, keepdim=True)
    yc = y - y.mean()
    denom = xc.norm(dim=0) * yc.norm()
    r = torch.where(denom > 0, (xc * yc[:, None]).sum(0) / denom.clamp_min(1e-300),
                    torch.zeros_like(denom))
    r2 = r.pow(2).clamp(max=1.0 - 1e-12)
    f = r2 / (1.0 - r2) * max(n - 2, 0)
    return torch.nan_to_num(f, nan=0.0, posinf=0.0)


def select_features(queue: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of the k best F scores of the queue rows against their sums.

    All-zero rows (e.g. never filled) are dropped first, as the reference code does. Ties go
    to the later columns, as sklearn's ``SelectKBest`` breaks them (a stable ascending sort,
    the last k): with two rows every F is 0 and S becomes the last k timesteps, {997, 998, 999}.
    """
    rows = queue[(queue != 0).any(dim=1)]
    scores = f_regression_scores(rows, rows.sum(dim=1))
    k = min(k, scores.numel())
    return torch.argsort(scores, stable=True)[scores.numel() - k:].sort().values


class _BetaHead(nn.Module):
    """Linear(hidden -> 2) with zero weights and a constant bias: the same Beta for every x0 at
    init. ``floor`` is the least concentration: 1e-5 as the reference; 1 forbids the endpoint
    spikes (a density that is infinite at t = 0 or T) that a concentration below 1 makes."""

    def __init__(self, hidden: int, init_bias: float, floor: float):
        super().__init__()
        self.floor = floor
        self.linear = nn.Linear(hidden, 2)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, init_bias)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = nn.functional.softplus(self.linear(h)) + self.floor
        return ab[:, 0], ab[:, 1]


class CnnPolicy(nn.Module):
    """ATS ActorNetwork: 3 conv blocks, MLP, Beta head; adaptive pooling for any resolution."""

    def __init__(self, in_channels: int, hidden: int, depth: int, init_bias: float,
                 floor: float = REFERENCE_FLOOR):
        super().__init__()
        blocks: list[nn.Module] = []
        for c_in, c_out in ((in_channels, 32), (32, 64), (64, 128)):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        layers: list[nn.Module] = [nn.Linear(128 * 4 * 4, hidden), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.head = _BetaHead(hidden, init_bias, floor)

    def forward(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.mlp(self.features(x0)))


class UnconditionalPolicy(nn.Module):
    """Two learned numbers: the same Beta(alpha, beta) for every image."""

    def __init__(self, init_bias: float, floor: float = REFERENCE_FLOOR):
        super().__init__()
        self.floor = floor
        self.logits = nn.Parameter(torch.full((2,), float(init_bias)))

    def forward(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = nn.functional.softplus(self.logits) + self.floor
        n = x0.shape[0]
        return ab[0].expand(n), ab[1].expand(n)


def draw_u(alpha: torch.Tensor, beta: torch.Tensor, uniform_mix: float) -> torch.Tensor:
    """u from (1 - m) Beta(alpha, beta) + m U(0, 1), one per row; the caller seeds the RNG."""
    u = Beta(alpha, beta).sample()
    if uniform_mix > 0:
        flat = torch.rand(u.shape)
        u = torch.where(torch.rand(u.shape) < uniform_mix, flat, u)
    return u


def log_prob(alpha: torch.Tensor, beta: torch.Tensor, u: torch.Tensor,
             uniform_mix: float) -> torch.Tensor:
    """log density of u under the mixture t was drawn from (the REINFORCE score's log pi)."""
    logp = Beta(alpha, beta).log_prob(u)
    if uniform_mix <= 0:
        return logp
    return torch.logaddexp(logp + math.log1p(-uniform_mix),
                           torch.full_like(logp, math.log(uniform_mix)))


def discretised_beta(alpha: np.ndarray, beta: np.ndarray, num_timesteps: int,
                     uniform_mix: float = 0.0) -> np.ndarray:
    """Marginal p(t) of t = round(u (T-1)), u ~ (1 - m) mixture of Beta(alpha_i, beta_i) + m U
    (float64 [T]). Exact through the regularised incomplete beta function; endpoints get
    half-width bins (the uniform part too: U is Beta(1, 1))."""
    edges = np.clip((np.arange(num_timesteps + 1) - 0.5) / (num_timesteps - 1), 0.0, 1.0)
    cdf = betainc(np.asarray(alpha)[:, None], np.asarray(beta)[:, None], edges[None, :])
    p = np.diff(cdf, axis=1).mean(axis=0)
    p = np.clip(np.nan_to_num(p, nan=0.0), 0.0, None)
    total = p.sum()
    p = p / total if total > 0 else np.full(num_timesteps, 1.0 / num_timesteps)
    if uniform_mix > 0:
        p = (1.0 - uniform_mix) * p + uniform_mix * np.diff(edges)
    return p
