"""SpeeD asymmetric timestep sampling with optional dual reflection (docs/algorithms.md 2.1).

Code: ``NUS-HPC-AI-Lab/SpeeD`` ``speed/diffusion/speed/__init__.py:Speed_IDDPM._sample_time``.
Base distribution p = [k]*tau + [1]*(T - tau), L1-normalised, i.e. P(t) = k / (T + tau(k-1))
below tau and 1 / (T + tau(k-1)) from tau on: the "convergence area" near pure noise is
suppressed k-fold. Dual sampling draws n//2 + 1 timesteps from p, reflects them about the
meaningful-steps pivot m (t' = m - t if t < m else t - m), concatenates and truncates to n.
Not unbiased: SpeeD changes the objective on purpose (weights are ones).

SpeeD's constants assume T = 1000 (tau = 700, threshold 1e-4 per step). Here tau is a fraction
of T (0.7; an index is still accepted) and the threshold is rescaled by 1000/T, so the defaults
give exactly SpeeD's p(t) at T = 1000 and the same shape at any other T. Both are resolved to
indices once, at construction.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps.base import (
    Draw,
    FractionOrIndex,
    Params,
    StepContext,
    TimestepSampler,
    timestep_index,
)

SPEED_REFERENCE_T = 1000  # the T SpeeD's constants (tau = 700, threshold 1e-4) were set for


class SpeedParams(Params):
    k: float = Field(5.0, ge=1.0, le=1000.0)  # probability ratio below/above tau (paper: 1-25)
    # First timestep of the suppressed area: a fraction of T (0.7 = SpeeD's 700 at T = 1000) or
    # an index > 1; must resolve below T.
    tau: FractionOrIndex = 0.7
    dual: bool = True  # SpeeD's dual reflection about m (ablation "no_dual" = False)
    # m = first t with d/dt sqrt(1-abar) < dual_threshold * 1000/T: SpeeD's 1e-4 per step at
    # T = 1000, rescaled so that m sits at the same fraction of T for any T (0.642 for linear).
    dual_threshold: float = Field(1e-4, gt=0.0, le=1.0)

    def timesteps_problem(self, num_timesteps: int) -> str | None:
        """tau must name an index below T."""
        index = timestep_index(self.tau, num_timesteps)
        if index < num_timesteps:
            return None
        return (f"tau = {self.tau}: timestep index {index} must be < diffusion.num_timesteps = "
                f"{num_timesteps}; give tau as a fraction of T below 1 (default 0.7) or an index "
                f"below {num_timesteps}")

    def tau_index(self, num_timesteps: int) -> int:
        """The first suppressed timestep at T = ``num_timesteps``."""
        return timestep_index(self.tau, num_timesteps)

    def threshold_per_step(self, num_timesteps: int) -> float:
        """``dual_threshold`` as a rate per timestep index at T = ``num_timesteps``."""
        return self.dual_threshold * (SPEED_REFERENCE_T / num_timesteps)


class SpeedSampler(TimestepSampler):
    """SpeeD's k:1 step at tau plus dual reflection; ``probs()`` is the effective marginal.

    With dual sampling a batch of n holds h = n//2 + 1 draws from p and n - h reflections, so
    the marginal of one batch position is (h/n) p + ((n-h)/n) q with q the law of the reflected
    draw. ``probs()`` uses the n of the last :meth:`sample` call (0.5/0.5, the large-n limit,
    before the first call); :meth:`base_probs` is the step distribution p alone.
    """

    name = "speed"
    Params = SpeedParams
    unbiased = False
    paper_weighting = "speed"  # change-aware weights (section 2.2)

    def __init__(self, schedule: NoiseSchedule, params: Params | None = None, seed: int = 0):
        super().__init__(schedule, params, seed)
        T, pr = self.num_timesteps, self.params
        self.tau = pr.tau_index(T)
        if self.tau >= T:
            raise ValueError(f"speed: tau = {pr.tau} must be < the number of timesteps ({T}) "
                             f"as index {self.tau}; give a fraction of T below 1 (default 0.7)")
        p = torch.ones(T, dtype=torch.float64)
        p[: self.tau] = pr.k
        self._p = p / p.sum()
        # meaningful_steps() returns 1 when no t is below the threshold, and may return T; the
        # pivot must stay in [1, T-1] so that reflections land in [0, T).
        self.pivot = min(max(schedule.meaningful_steps(pr.threshold_per_step(T)), 1), T - 1)
        self._q = torch.zeros(T, dtype=torch.float64).index_add_(0, self.reflect(torch.arange(T)),
                                                                 self._p)
        self._last_n: int | None = None

    def reflect(self, t: torch.Tensor) -> torch.Tensor:
        """SpeeD's dual timestep: m - t below the pivot m, t - m from m on (always <= m)."""
        m = self.pivot
        return torch.where(t < m, m - t, t - m)

    def base_probs(self) -> torch.Tensor:
        """The step distribution p: k / (T + tau(k-1)) below tau, 1 / (T + tau(k-1)) above."""
        return self._p.clone()

    def reflected_share(self, n: int | None) -> float:
        """Fraction of a batch of n that is reflected: (n - n//2 - 1)/n; 0.5 when n is None."""
        if not self.params.dual:
            return 0.0
        if n is None:
            return 0.5
        return max(n - (n // 2 + 1), 0) / n

    def probs(self) -> torch.Tensor:
        r = self.reflected_share(self._last_n)
        return (1.0 - r) * self._p + r * self._q

    def sample(self, n: int, ctx: StepContext) -> Draw:
        self._last_n = int(n)
        if not self.params.dual:
            return self.draw_from(self._p, n)
        t = torch.multinomial(self._p, n // 2 + 1, replacement=True, generator=self.generator)
        t = torch.cat([t, self.reflect(t)])[:n]
        return Draw(t=t, importance_weight=torch.ones(n))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_n": self._last_n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        last_n = state.get("last_n")
        self._last_n = None if last_n is None else int(last_n)
