"""Learning-rate warm-up and momentum decay (CLTS) with learning-rate compensation.

Expected values are worked out by hand from docs/algorithms.md "Decisions for tsearch" for
beta_0 = 0.9, end = 0.5, lr_0 = 1e-3 and a 10 kimg decay window:

- linear: beta_t = 0.9 + (0.5 - 0.9) tau
- exponential: 1 - beta_t = 0.1 (0.5 / 0.1)^tau
- demon: beta_t = 0.9 (1 - tau) / (0.1 + 0.9 (1 - tau)), ending at 0 whatever ``end`` is
- adam: lr_t = lr_0 (1 - beta_0) / (1 - beta_t); heavy_ball: lr_t = lr_0 (1 - beta_t) / (1 - beta_0)
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from cli_harness import assert_one_line, run_cli
from conftest import SMOKE
from pydantic import ValidationError

from tsearch.config import MomentumDecayConfig, OptimConfig
from tsearch.timesteps import load_config
from tsearch.tracker import NullTracker
from tsearch.train import train
from tsearch.train.optim import apply_schedule, beta1_at, build_optimizer, schedule_at

LR0 = 1e-3

# beta1 at tau = 0, 0.5, 1 of the window, by hand.
BETA1 = {
    "linear": (0.9, 0.7, 0.5),
    "exponential": (0.9, 1 - math.sqrt(0.1 * 0.5), 0.5),  # 1 - beta: 0.1, sqrt(0.05), 0.5
    "demon": (0.9, 0.45 / (0.1 + 0.45), 0.0),  # 0.9 * 0.5 = 0.45 at tau = 0.5; 0 at tau = 1
}
# lr_t / lr_0 for those beta1, by hand: (1 - beta1_t) is 0.1 / 0.3 / 0.5 (linear),
# 0.1 / sqrt(0.05) / 0.5 (exponential), 0.1 / 0.1/0.55 / 1 (demon).
LR_FACTOR = {
    ("linear", "none"): (1, 1, 1),
    ("linear", "adam"): (1, 0.1 / 0.3, 0.1 / 0.5),
    ("linear", "heavy_ball"): (1, 3, 5),
    ("exponential", "none"): (1, 1, 1),
    ("exponential", "adam"): (1, 0.1 / math.sqrt(0.05), 0.2),
    ("exponential", "heavy_ball"): (1, math.sqrt(0.05) / 0.1, 5),
    ("demon", "none"): (1, 1, 1),
    ("demon", "adam"): (1, 0.55, 0.1),
    ("demon", "heavy_ball"): (1, 1 / 0.55, 10),
}


def md(shape: str = "linear", lr_compensation: str = "none", **kw) -> OptimConfig:
    decay = MomentumDecayConfig(enabled=True, end=0.5, kimg=10.0, shape=shape,
                                lr_compensation=lr_compensation)
    if lr_compensation == "heavy_ball":
        # Refused for Adam/AdamW (every optimizer tsearch has); the rule itself is still the
        # schedule's, for SGD-style momentum, so check its arithmetic without the validator.
        return OptimConfig.model_construct(lr=LR0, beta1=0.9, momentum_decay=decay, **kw)
    return OptimConfig(lr=LR0, beta1=0.9, momentum_decay=decay, **kw)


@pytest.mark.parametrize(("shape", "compensation"), sorted(LR_FACTOR))
def test_closed_form_at_start_middle_end_of_the_window(shape, compensation):
    cfg = md(shape, compensation)
    for kimg, beta1, factor in zip((0.0, 5.0, 10.0), BETA1[shape], LR_FACTOR[shape, compensation],
                                   strict=True):
        s = schedule_at(cfg, kimg)
        assert s.beta1 == pytest.approx(beta1, abs=1e-12), kimg
        assert s.lr == pytest.approx(LR0 * factor, rel=1e-12), kimg
    # After the window, both stay at their final values.
    assert schedule_at(cfg, 25.0) == schedule_at(cfg, 10.0)


@pytest.mark.parametrize("shape", ["linear", "exponential", "demon"])
def test_beta1_decreases_through_the_window(shape):
    cfg = md(shape)
    values = [beta1_at(cfg, k) for k in (0, 2.5, 5, 7.5, 10)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_demon_ignores_end():
    low = OptimConfig(momentum_decay={"enabled": True, "shape": "demon", "end": 0.1})
    high = OptimConfig(momentum_decay={"enabled": True, "shape": "demon", "end": 0.8})
    for kimg in (0.0, 3.0, 10.0):
        assert beta1_at(low, kimg) == beta1_at(high, kimg)


def test_disabled_and_warmup():
    cfg = OptimConfig(lr=1e-3, warmup_kimg=2.0)
    assert beta1_at(cfg, 5.0) == 0.9
    assert schedule_at(cfg, 1.0).lr == pytest.approx(5e-4)
    assert schedule_at(cfg, 3.0).lr == pytest.approx(1e-3)
    # Compensation is ignored while the decay is off.
    off = OptimConfig(momentum_decay={"enabled": False, "lr_compensation": "adam"})
    assert schedule_at(off, 5.0) == schedule_at(OptimConfig(), 5.0)


def test_warmup_and_compensation_multiply():
    cfg = md("demon", "adam", warmup_kimg=4.0)
    # kimg 2: warm-up 2/4; tau 0.2, beta1 = 0.72 / (0.1 + 0.72), 1 - beta1 = 0.1 / 0.82.
    s = schedule_at(cfg, 2.0)
    assert s.beta1 == pytest.approx(0.72 / 0.82)
    assert s.lr == pytest.approx(LR0 * 0.5 * 0.82)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_heavy_ball_is_refused_for_adam(name):
    with pytest.raises(ValidationError, match="optim.momentum_decay.lr_compensation"):
        OptimConfig(name=name, momentum_decay={"enabled": True, "lr_compensation": "heavy_ball"})


def test_heavy_ball_refusal_is_one_line(capfd):
    result = run_cli(capfd, "train", str(SMOKE), "--dry-run",
                     "--set", "optim.momentum_decay.enabled=true",
                     "--set", "optim.momentum_decay.lr_compensation=heavy_ball")
    assert_one_line(result, "config error", "optim.momentum_decay.lr_compensation", "'adam'")


def test_apply_schedule_sets_the_optimizer():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer([p], md())
    apply_schedule(opt, schedule_at(md("linear", "adam"), 5.0))
    assert opt.param_groups[0]["betas"] == (pytest.approx(0.7), 0.999)
    assert opt.param_groups[0]["lr"] == pytest.approx(LR0 * 0.1 / 0.3)


def test_training_run_logs_demon_adam_closed_form(tmp_path):
    window = 0.128  # kimg: 4 steps of 32 images, then 2 steps at beta1 = 0
    cfg = load_config(SMOKE, [
        f"train.out_dir={tmp_path}/runs", f"eval.cache_dir={tmp_path}/cache",
        "train.log_every_kimg=0.032", "eval.every_kimg=1", "optim.lr=1e-3", "optim.beta1=0.9",
        "optim.warmup_kimg=0", "optim.momentum_decay.enabled=true",
        f"optim.momentum_decay.kimg={window}", "optim.momentum_decay.shape=demon",
        "optim.momentum_decay.lr_compensation=adam"])
    result = train(cfg, tracker=NullTracker(), evaluate=False, max_steps=6)
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [r for r in map(json.loads, lines) if "train/beta1" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # a log point after every step
    for r in rows:
        # The logged values are those the interval's last step used; it started one batch
        # before the logged progress.
        kimg = (r["images_seen"] - cfg.train.batch_size) / 1000
        tau = min(kimg / window, 1.0)
        beta1 = 0.9 * (1 - tau) / (0.1 + 0.9 * (1 - tau))
        assert r["train/beta1"] == pytest.approx(beta1, abs=1e-12)
        assert r["train/lr"] == pytest.approx(1e-3 * 0.1 / (1 - beta1), rel=1e-12)
    assert rows[0]["train/beta1"] == pytest.approx(0.9) and rows[0]["train/lr"] == 1e-3
    assert rows[-1]["train/beta1"] == 0.0 and rows[-1]["train/lr"] == pytest.approx(1e-4)
