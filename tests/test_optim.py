"""Learning-rate warm-up and momentum decay (CLTS) with learning-rate compensation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tsearch.config import OptimConfig, load_config
from tsearch.tracker import NullTracker
from tsearch.train import train
from tsearch.train.optim import apply_schedule, beta1_at, build_optimizer, schedule_at

ROOT = Path(__file__).resolve().parents[1]


def md(**kw) -> OptimConfig:
    return OptimConfig(beta1=0.9, lr=1e-3, momentum_decay={"enabled": True, "end": 0.5,
                                                           "kimg": 10.0, **kw})


@pytest.mark.parametrize("shape", ["linear", "exponential"])
def test_beta1_decays_from_start_to_end_then_stays(shape):
    cfg = md(shape=shape)
    values = [beta1_at(cfg, k) for k in (0, 2.5, 5, 7.5, 10, 20)]
    assert values[0] == pytest.approx(0.9) and values[4] == pytest.approx(0.5)
    assert values[5] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(values[:4], values[1:5], strict=True))
    if shape == "linear":
        assert values[2] == pytest.approx(0.7)
    else:  # geometric in (1 - beta1): 0.1 -> 0.5, halfway sqrt(0.05)
        assert 1 - values[2] == pytest.approx((0.1 * 0.5) ** 0.5)


def test_disabled_and_warmup():
    cfg = OptimConfig(lr=1e-3, warmup_kimg=2.0)
    assert beta1_at(cfg, 5.0) == 0.9
    assert schedule_at(cfg, 1.0).lr == pytest.approx(5e-4)
    assert schedule_at(cfg, 3.0).lr == pytest.approx(1e-3)


def test_heavy_ball_compensation():
    cfg = md(lr_compensation="heavy_ball")
    s = schedule_at(cfg, 10.0)
    assert s.beta1 == pytest.approx(0.5)
    assert s.lr == pytest.approx(1e-3 * (1 - 0.5) / (1 - 0.9))  # lr / (1 - beta) kept constant
    assert schedule_at(md(), 10.0).lr == pytest.approx(1e-3)


def test_apply_schedule_sets_the_optimizer():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer([p], md())
    apply_schedule(opt, schedule_at(md(), 5.0))
    assert opt.param_groups[0]["betas"] == (pytest.approx(0.7), 0.999)


def test_trainer_logs_decaying_beta1(tmp_path):
    cfg = load_config(ROOT / "experiments" / "smoke.yaml", [
        f"train.out_dir={tmp_path}", "train.total_kimg=0.32", "train.log_every_kimg=0.064",
        "optim.momentum_decay.enabled=true", "optim.momentum_decay.kimg=0.256",
        "optim.momentum_decay.end=0.3"])
    tracker = NullTracker()
    train(cfg, tracker=tracker, evaluate=False)
    betas = [v for _, v in tracker.history["train/beta1"]]
    assert betas[0] < 0.9 and betas[-1] == pytest.approx(0.3)
    assert all(a >= b for a, b in zip(betas, betas[1:], strict=False))
