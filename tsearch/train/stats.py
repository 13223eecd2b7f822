"""Training-loss statistics between log points, accumulated on the device (no per-step sync)."""

from __future__ import annotations

import math
import time

import torch

from tsearch import names
from tsearch.errors import DivergenceError


class WallClock:
    """Where a run's wall time goes: training, evaluation, and everything else.

    A trial exists to train; the shares say how much of it did. Time is charged in
    laps, not per step: on a GPU the step only queues kernels, so the clock synchronises at a
    lap's end (a few times per run, at evaluations) and queued training work is charged to
    training, not to the evaluation that would wait for it.
    """

    def __init__(self, device: torch.device, started: float | None = None):
        self.device = device
        self.started = time.perf_counter() if started is None else started
        self._mark = self.started
        self.spent = {"train": 0.0, "eval": 0.0, "other": 0.0}

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap to ``phase`` (train, eval or other)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.spent[phase] += now - self._mark
        self._mark = now

    def metrics(self) -> dict[str, float]:
        """Cumulative seconds and shares of the wall time so far."""
        wall = max(time.perf_counter() - self.started, 1e-9)
        train, ev = self.spent["train"], self.spent["eval"]
        return {
            names.PERF_WALL_SECONDS: wall, names.PERF_TRAIN_SECONDS: train,
            names.PERF_EVAL_SECONDS: ev, names.PERF_EVAL_SHARE: ev / wall,
            names.PERF_OVERHEAD_SHARE: max(0.0, 1.0 - (train + ev) / wall),
        }


class LossStats:
    """Objective, unweighted loss per timestep quartile and grad norm since the last log point."""

    def __init__(self, num_timesteps: int, device: torch.device):
        self.T = num_timesteps
        self.device = device
        self.reset()

    def reset(self) -> None:
        z = torch.zeros((), device=self.device, dtype=torch.float64)
        self.objective, self.raw, self.grad_norm = z.clone(), z.clone(), z.clone()
        self.q_sum = torch.zeros(4, device=self.device, dtype=torch.float64)
        self.q_count = torch.zeros(4, device=self.device, dtype=torch.float64)
        self.steps = 0
        self.samples = 0
        self.started = time.perf_counter()

    def add(self, losses: torch.Tensor, objective: torch.Tensor, t: torch.Tensor,
            grad_norm: torch.Tensor | None) -> None:
        losses = losses.detach().double()
        self.objective += objective.detach().double()
        self.raw += losses.sum()
        q = torch.div(t * 4, self.T, rounding_mode="floor")
        self.q_sum += torch.bincount(q, weights=losses, minlength=4)
        self.q_count += torch.bincount(q, minlength=4).double()
        if grad_norm is not None:
            self.grad_norm += grad_norm.detach().double()
        self.steps += 1
        self.samples += losses.numel()

    def images_per_s(self) -> float:
        return self.samples / max(time.perf_counter() - self.started, 1e-9)

    def summary(self) -> dict[str, float]:
        if self.steps == 0:
            return {}
        q = (self.q_sum / self.q_count.clamp_min(1)).tolist()
        out = {
            names.TRAIN_LOSS: float(self.objective) / self.steps,
            names.TRAIN_LOSS_UNWEIGHTED: float(self.raw) / self.samples,
            names.TRAIN_GRAD_NORM: float(self.grad_norm) / self.steps,
        }
        counts = self.q_count.tolist()
        for i in range(4):
            if counts[i] > 0:
                out[names.loss_quartile(i + 1)] = q[i]
        return out


def divergence(metrics: dict[str, float], images_seen: int, step: int) -> DivergenceError | None:
    """The error that ends a run whose loss is NaN or infinite, with a reason to act on."""
    if metrics and not all(math.isfinite(metrics[k])
                           for k in (names.TRAIN_LOSS, names.TRAIN_LOSS_UNWEIGHTED)):
        return DivergenceError(
            f"training diverged at {images_seen / 1000:.2f} kimg (step {step}): loss is "
            f"{metrics[names.TRAIN_LOSS]}; lower optim.lr or optim.weight_decay, or enable "
            "optim.grad_clip"
        )
    return None
