"""Optimizer construction and the per-step learning-rate / momentum schedule.

Momentum decay (CLTS paper, arXiv 2404.07946; ALGORITHMS.md 3.3) lowers Adam's beta1 from its
start value to ``end`` over ``kimg``. The paper's exact schedule is not public, so its shape and
the optional learning-rate compensation are parameters. ``heavy_ball`` compensation keeps the
heavy-ball steady-state step lr/(1-beta) constant: lr_t = lr (1-beta1_t)/(1-beta1_0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tsearch.config import OptimConfig


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
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


def beta1_at(cfg: OptimConfig, kimg: float) -> float:
    """beta1 after ``kimg`` of training under the momentum-decay schedule."""
    md = cfg.momentum_decay
    if not md.enabled:
        return cfg.beta1
    frac = min(max(kimg / md.kimg, 0.0), 1.0)
    start, end = cfg.beta1, md.end
    if md.shape == "linear":
        return start + (end - start) * frac
    # Geometric interpolation of (1 - beta1): the momentum's time constant shrinks smoothly.
    return 1.0 - (1.0 - start) * math.exp(frac * math.log((1.0 - end) / (1.0 - start)))


def schedule_at(cfg: OptimConfig, kimg: float) -> OptimState:
    """Learning rate (warm-up, optional compensation) and beta1 for the step at ``kimg``."""
    lr = cfg.lr
    if cfg.warmup_kimg > 0:
        lr *= min(1.0, (kimg + 1e-12) / cfg.warmup_kimg)
    beta1 = beta1_at(cfg, kimg)
    if cfg.momentum_decay.enabled and cfg.momentum_decay.lr_compensation == "heavy_ball":
        lr *= (1.0 - beta1) / (1.0 - cfg.beta1)
    return OptimState(lr=lr, beta1=beta1)


def apply_schedule(optimizer: torch.optim.Optimizer, state: OptimState) -> None:
    for group in optimizer.param_groups:
        group["lr"] = state.lr
        group["betas"] = (state.beta1, group["betas"][1])
