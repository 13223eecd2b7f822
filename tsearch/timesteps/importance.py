"""Loss-aware importance sampling: improved-diffusion's LossSecondMomentResampler.

docs/algorithms.md 4.4 (``openai/improved-diffusion`` ``improved_diffusion/resample.py``).
A FIFO of the last ``history`` losses per timestep; uniform until every t has a full history, then
p_t ∝ sqrt(E[L_t^2]) mixed with ``uniform_prob`` of uniform. Unbiased: weights 1/(T p_t).
L_t is the loss being optimised, w(t) times the eps-MSE (improved-diffusion feeds its resampler
``losses["loss"]``, the training loss before importance weights); ``observe: unweighted`` keeps
the plain eps-MSE instead.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps.base import Draw, Params, StepContext, TimestepSampler, entropy


class LossSecondMomentParams(Params):
    history: int = Field(10, ge=1, le=1000)  # losses kept per timestep (FIFO)
    uniform_prob: float = Field(0.001, gt=0.0, le=1.0)  # uniform mass mixed in; > 0 keeps p_t > 0
    # weighted: the optimised loss w(t) L_t (improved-diffusion); unweighted: the plain L_t
    observe: Literal["weighted", "unweighted"] = "weighted"


def occurrence_rank(t: torch.Tensor) -> torch.Tensor:
    """For each element, how many earlier elements of ``t`` hold the same value (0, 1, ...).

    Vectorised (stable sort + group offsets), so batches with repeated timesteps can be written
    into per-timestep ring buffers without a Python loop.
    """
    order = torch.sort(t, stable=True).indices
    _, counts = torch.unique_consecutive(t[order], return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.empty_like(t)
    rank[order] = torch.arange(len(t), dtype=t.dtype) - starts
    return rank


class LossSecondMomentSampler(TimestepSampler):
    """p_t ∝ sqrt(mean of the last ``history`` L_t^2), after a uniform warm-up (ALGORITHMS 4.4).

    :meth:`observe` stores the trainer's per-sample losses times ``ctx.loss_weight(t)`` (the
    loss being optimised, before importance weights), or as passed with ``observe: unweighted``;
    non-finite ones are dropped. ``writes[t]`` counts every loss ever stored for t, so the next
    ring-buffer slot is ``writes[t] % history`` and t's history is full once ``writes[t] >=
    history``.
    """

    name = "lsm"
    Params = LossSecondMomentParams
    unbiased = True
    paper_weighting = "vlb"  # improved-diffusion samples L_vlb by its loss second moment

    def __init__(self, schedule: NoiseSchedule, params: Params | None = None, seed: int = 0):
        super().__init__(schedule, params, seed)
        h = self.params.history
        self._history = torch.zeros(self.num_timesteps, h, dtype=torch.float64)
        self._writes = torch.zeros(self.num_timesteps, dtype=torch.int64)

    def warmed_up(self) -> bool:
        """True once every timestep has ``history`` losses (improved-diffusion's warm-up)."""
        return bool((self._writes >= self.params.history).all())

    def probs(self) -> torch.Tensor:
        T = self.num_timesteps
        uniform = torch.full((T,), 1.0 / T, dtype=torch.float64)
        if not self.warmed_up():
            return uniform
        # sqrt(mean L^2), scaled by max |L| first so huge finite losses cannot overflow.
        scale = self._history.abs().max()
        if not (scale > 0 and torch.isfinite(scale)):
            return uniform
        w = (self._history / scale).pow(2).mean(dim=1).sqrt()
        p = w / w.sum()
        u = self.params.uniform_prob
        return (1.0 - u) * p + u / T

    def sample(self, n: int, ctx: StepContext) -> Draw:
        return self.draw_from(self.probs(), n)

    def observe(self, draw: Draw, losses: torch.Tensor, ctx: StepContext) -> None:
        """Push each finite loss into its timestep's FIFO (the newest ``history`` survive)."""
        t = draw.t.detach().to("cpu", torch.int64).reshape(-1)
        loss = losses.detach().to("cpu", torch.float64).reshape(-1)
        if self.params.observe == "weighted":
            loss = loss * ctx.loss_weight(t).to(torch.float64)
        keep = torch.isfinite(loss)
        t, loss = t[keep], loss[keep]
        if t.numel() == 0:
            return
        h = self.params.history
        rank = occurrence_rank(t)
        per_t = torch.bincount(t, minlength=self.num_timesteps)
        # Of more than `history` repeats of one t in this batch only the last `history` survive;
        # dropping the others first also makes the scatter below free of duplicate slots.
        last = rank >= per_t[t] - h
        t, loss, rank = t[last], loss[last], rank[last]
        slot = (self._writes[t] + rank) % h
        self._history[t, slot] = loss
        self._writes += per_t

    def metrics(self) -> dict[str, float]:
        """Entropy, and the fraction of timesteps whose loss history is full (1 = warmed up)."""
        full = (self._writes >= self.params.history).double().mean()
        return {"sampler/entropy": entropy(self.probs()), "sampler/warmup_fraction": float(full)}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "history": self._history.clone(),
            "writes": self._writes.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        history = torch.as_tensor(state["history"], dtype=torch.float64)
        if history.shape != self._history.shape:
            raise ValueError(f"lsm state has history of shape {tuple(history.shape)}, expected "
                             f"{tuple(self._history.shape)} (T, history)")
        self._history = history.clone()
        self._writes = torch.as_tensor(state["writes"], dtype=torch.int64).clone()
