"""Sampling proportional to the RMS per-timestep gradient norm (docs/algorithms.md 4.5).

For the estimator g = (1/(T p_t)) grad l_t with t ~ p, the trace of the covariance is minimised
by p*(t) ∝ sqrt(E ||grad l_t||^2) (the textbook importance-sampling result; no public reference
implementation was found). l_t is the loss being optimised, w(t) times the eps-MSE (before
importance weights; ``observe: unweighted`` drops w). We estimate E ||grad l_t||^2 per timestep
bin with an EMA of probed per-sample squared gradient norms, and mix with uniform:
p = (1 - eps) p* + eps / T. Unbiased: weights 1/(T p_t).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps.base import (
    Draw,
    Params,
    ProbeResult,
    ProbeSpec,
    StepContext,
    TimestepSampler,
    entropy,
)


class GradVarParams(Params):
    bins: int = Field(20, ge=1, le=100_000)  # equal-width timestep bins, one EMA each (<= T)
    probe_every: int = Field(25, ge=1, le=1_000_000)  # optimizer steps between probes
    rows_per_probe: int = Field(8, ge=1, le=65536)  # per-sample gradients per probe (4 fwd each)
    ema: float = Field(0.9, ge=0.0, lt=1.0)  # EMA decay of each bin's mean squared grad norm
    uniform_mix: float = Field(0.1, gt=0.0, le=1.0)  # eps in p = (1-eps) p* + eps/T
    # weighted: gradients of the optimised loss w(t) L_t; unweighted: of the plain eps-MSE L_t
    observe: Literal["weighted", "unweighted"] = "weighted"

    def timesteps_problem(self, num_timesteps: int) -> str | None:
        """Every bin needs at least one timestep."""
        if self.bins <= num_timesteps:
            return None
        return (f"bins = {self.bins}: must be <= diffusion.num_timesteps = {num_timesteps} "
                "(each bin holds at least one timestep); lower bins")


class GradVarSampler(TimestepSampler):
    """p_bin ∝ sqrt(EMA of ||grad l_t||^2 over the bin), spread uniformly within the bin.

    Every ``probe_every`` steps (``ctx.step % probe_every == 0``) it asks the trainer for
    ``rows_per_probe`` per-sample squared gradient norms (``ProbeSpec(kind="grad_norm",
    loss="mse")``) at bins taken round-robin, t uniform within the bin and random images of the
    batch, and scales them by w(t)^2 (``observe: weighted``). p* stays uniform until every bin
    has a measurement.
    """

    name = "gradvar"
    Params = GradVarParams
    unbiased = True

    def __init__(self, schedule: NoiseSchedule, params: Params | None = None, seed: int = 0):
        super().__init__(schedule, params, seed)
        T, bins = self.num_timesteps, self.params.bins
        if bins > T:
            raise ValueError(f"gradvar: bins = {bins} must be <= the number of timesteps ({T})")
        t = torch.arange(T)
        self._bin_of_t = torch.div(t * bins, T, rounding_mode="floor")
        self._bin_size = torch.bincount(self._bin_of_t, minlength=bins)
        self._bin_start = torch.cumsum(self._bin_size, 0) - self._bin_size
        self._ema = torch.zeros(bins, dtype=torch.float64)
        self._measured = torch.zeros(bins, dtype=torch.bool)
        self._next_bin = 0
        self._probes = 0

    def probs(self) -> torch.Tensor:
        T = self.num_timesteps
        uniform = torch.full((T,), 1.0 / T, dtype=torch.float64)
        if not bool(self._measured.all()):
            return uniform
        rms = self._ema.clamp_min(0.0).sqrt()
        total = rms.sum()
        if not (total > 0 and torch.isfinite(total)):
            return uniform
        p_bin = rms / total
        p_star = (p_bin / self._bin_size)[self._bin_of_t]
        eps = self.params.uniform_mix
        return (1.0 - eps) * p_star + eps / T

    def sample(self, n: int, ctx: StepContext) -> Draw:
        return self.draw_from(self.probs(), n)

    def probe_request(self, ctx: StepContext) -> ProbeSpec | None:
        if ctx.step % self.params.probe_every:
            return None
        if ctx.x0 is None:
            raise ValueError("gradvar needs ctx.x0 (the batch) to choose probe images")
        rows, bins = self.params.rows_per_probe, self.params.bins
        b = (self._next_bin + torch.arange(rows)) % bins
        self._next_bin = (self._next_bin + rows) % bins
        offset = torch.rand(rows, generator=self.generator, dtype=torch.float64)
        within = (offset * self._bin_size[b]).long().clamp_max(self._bin_size[b] - 1)
        t = self._bin_start[b] + within
        image_index = torch.randint(0, int(ctx.x0.shape[0]), (rows,), generator=self.generator)
        return ProbeSpec(t=t, image_index=image_index, kind="grad_norm", loss="mse")

    def observe_probe(self, result: ProbeResult, ctx: StepContext) -> None:
        """EMA update of each probed bin with the mean of its finite squared gradient norms."""
        if result.grad_sq_norm is None:
            return
        t = result.spec.t.detach().to("cpu", torch.int64).reshape(-1)
        g = result.grad_sq_norm.detach().to("cpu", torch.float64).reshape(-1)
        if self.params.observe == "weighted":
            # The probe measures ||grad L_t||^2 of the plain eps-MSE; the trainer optimises
            # w(t) L_t, whose gradient is w(t) grad L_t, so ||grad (w(t) L_t)||^2 is exactly
            # w(t)^2 ||grad L_t||^2: p* for the optimised loss at no extra probe cost.
            g = g * ctx.loss_weight(t).to(torch.float64) ** 2
        keep = torch.isfinite(g) & (g >= 0)
        if not bool(keep.any()):
            return
        b = self._bin_of_t[t[keep]]
        bins = self.params.bins
        count = torch.bincount(b, minlength=bins)
        mean = torch.bincount(b, weights=g[keep], minlength=bins) / count.clamp_min(1)
        if not bool(torch.isfinite(mean).all()):  # finite values whose sum overflowed
            return
        hit = count > 0
        first = hit & ~self._measured
        again = hit & self._measured
        d = self.params.ema
        self._ema = torch.where(first, mean, self._ema)
        self._ema = torch.where(again, d * self._ema + (1.0 - d) * mean, self._ema)
        self._measured |= hit
        self._probes += 1

    def metrics(self) -> dict[str, float]:
        """Entropy, and the fraction of bins measured at least once (p* is uniform below 1)."""
        return {"sampler/entropy": entropy(self.probs()),
                "sampler/bins_measured": float(self._measured.double().mean())}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "ema": self._ema.clone(),
            "measured": self._measured.clone(),
            "next_bin": int(self._next_bin),
            "probes": int(self._probes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        ema = torch.as_tensor(state["ema"], dtype=torch.float64)
        if ema.shape != self._ema.shape:
            raise ValueError(f"gradvar state has {ema.numel()} bins, expected {self.params.bins}")
        self._ema = ema.clone()
        self._measured = torch.as_tensor(state["measured"], dtype=torch.bool).clone()
        self._next_bin = int(state["next_bin"])
        self._probes = int(state["probes"])
