"""Optimizer construction and the per-step learning-rate / momentum schedule.

Momentum decay (CLTS paper, arXiv 2404.07946; docs/algorithms.md 3.3 and "Decisions for tsearch")
lowers Adam's beta1 from ``optim.beta1`` (beta_0) over the first ``momentum_decay.kimg`` of
training. The paper's exact schedule and its learning-rate compensation (MDLRC) are not public,
so both are parameters: the beta1 ``shape`` (:func:`decayed_beta1`) and the ``lr_compensation``
rule (:func:`lr_compensation_factor`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from tsearch.config import OptimConfig


def build_optimizer(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam or AdamW at the initial lr and betas; :func:`apply_schedule` moves them per step."""
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(
        params,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        foreach=True,
    )


@dataclass(frozen=True)
class OptimState:
    lr: float
    beta1: float


def decayed_beta1(shape: str, beta0: float, end: float, tau: float) -> float:
    """beta1 at progress ``tau`` in [0, 1] through the decay window.

    Args:
        shape: ``linear`` (beta_0 -> end in a straight line), ``exponential`` (1 - beta1 moves
            geometrically from 1 - beta_0 to 1 - end: the momentum's time constant shrinks
            smoothly) or ``demon``.
        beta0: beta1 at tau = 0 (``optim.beta1``).
        end: beta1 at tau = 1 for ``linear`` and ``exponential``; ``demon`` ignores it.
        tau: fraction of the decay window elapsed, already clamped to [0, 1].

    ``demon`` is Demon's decay (Chen et al., arXiv 1910.04952, the form a public MDLRC
    implementation uses): beta_t = beta_0 (1 - tau) / ((1 - beta_0) + beta_0 (1 - tau)). It
    keeps the total momentum contribution beta/(1 - beta) decaying linearly to 0, so beta1 goes
    from beta_0 to exactly 0 at the end of the window. ``end`` has no place in that formula and
    is ignored (rescaling it toward ``end`` would no longer be Demon).
    """
    if shape == "linear":
        return beta0 + (end - beta0) * tau
    if shape == "exponential":
        return 1.0 - (1.0 - beta0) * math.exp(tau * math.log((1.0 - end) / (1.0 - beta0)))
    if shape == "demon":
        rest = beta0 * (1.0 - tau)
        return rest / ((1.0 - beta0) + rest)
    raise ValueError(f"unknown momentum-decay shape {shape!r}")


def lr_compensation_factor(rule: str, beta0: float, beta1: float) -> float:
    """Multiplier of the learning rate when beta1 has decayed from ``beta0`` to ``beta1``.

    - ``none``: 1.
    - ``adam``: (1 - beta_0) / (1 - beta_t), at most 1. Adam's momentum m = beta m + (1 - beta) g
      is normalised, so a smaller beta1 gives the newest (noisy) gradient more weight; keeping
      lr (1 - beta1) constant counters that over-amplification.
    - ``heavy_ball``: (1 - beta_t) / (1 - beta_0), at least 1. Keeps the heavy-ball steady-state
      step lr / (1 - beta) constant; meaningful only for un-normalised SGD-style momentum, so the
      config refuses it for Adam/AdamW (every optimizer tsearch has today).
    """
    if rule == "none":
        return 1.0
    if rule == "adam":
        return (1.0 - beta0) / (1.0 - beta1)
    if rule == "heavy_ball":
        return (1.0 - beta1) / (1.0 - beta0)
    raise ValueError(f"unknown learning-rate compensation {rule!r}")


def beta1_at(cfg: OptimConfig, kimg: float) -> float:
    """beta1 after ``kimg`` of training; it stays at the window's final value afterwards."""
    md = cfg.momentum_decay
    if not md.enabled:
        return cfg.beta1
    tau = min(max(kimg / md.kimg, 0.0), 1.0)
    return decayed_beta1(md.shape, cfg.beta1, md.end, tau)


def schedule_at(cfg: OptimConfig, kimg: float) -> OptimState:
    """Learning rate and beta1 for the step that starts at ``kimg`` (a pure function).

    lr = optim.lr x linear warm-up factor x compensation factor: warm-up and compensation
    multiply, so compensation also scales the warm-up ramp.
    """
    lr = cfg.lr
    if cfg.warmup_kimg > 0:
        lr *= min(1.0, (kimg + 1e-12) / cfg.warmup_kimg)
    beta1 = beta1_at(cfg, kimg)
    if cfg.momentum_decay.enabled:
        lr *= lr_compensation_factor(cfg.momentum_decay.lr_compensation, cfg.beta1, beta1)
    return OptimState(lr=lr, beta1=beta1)


def apply_schedule(optimizer: torch.optim.Optimizer, state: OptimState) -> None:
    """Write the step's lr and beta1 into every param group (beta2 is never scheduled)."""
    for group in optimizer.param_groups:
        group["lr"] = state.lr
        group["betas"] = (state.beta1, group["betas"][1])
