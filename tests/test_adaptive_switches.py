"""The adaptive sampler's stabilisation switches and the official code's F-test tie-break.

Each switch is driven with rewards that make the paper's form do what the switch forbids (so
each test can fail): rewards that favour one end of t, which drive a Beta concentration below
1 (an endpoint spike) and move p(t) far in one update.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.feature_selection import SelectKBest, f_regression

from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps.adaptive import STABLE, AdaptiveParams, AdaptiveSampler
from tsearch.timesteps.adaptive_policy import discretised_beta, log_prob, select_features
from tsearch.timesteps.base import ProbeResult, StepContext

SCHED = NoiseSchedule.create("linear")
N = 32


def step_ctx(step: int, lr: float = 1e-3, seed: int = 0) -> StepContext:
    gen = torch.Generator().manual_seed(seed + step)
    x0 = torch.rand(N, 1, 8, 8, generator=gen) * 2 - 1
    return StepContext(step=step, kimg=step * N / 1000, progress=0.0, lr=lr, x0=x0)


def push_to_the_end(sampler: AdaptiveSampler, updates: int, lr: float = 1e-3) -> list[dict]:
    """Updates whose reward is large for t near T: the policy is pushed onto t = T - 1.
    Returns alpha, beta and the TV each update moved p(t), per update."""
    out = []
    for step in range(updates):
        c = step_ctx(step, lr)
        sampler.sample(N, c)
        u = sampler._pending["u"]
        sampler.update_policy(c.x0, u, 5.0 * u.pow(4))
        with torch.no_grad():
            alpha, beta = sampler.policy(c.x0)
        out.append({"alpha": alpha, "beta": beta, "tv": sampler.metrics().get("sampler/tv_step")})
    return out


@pytest.mark.parametrize("rows", [2, 3, 6, 20])
def test_selection_breaks_ties_as_sklearns_select_k_best(rows):
    rng = np.random.default_rng(rows)
    q = rng.normal(size=(rows, 100))
    q[:, 10] = 0.0  # a constant column (F = 0 in both)
    q[:, 20:30] = q[:, [20]]  # ten equal columns: equal scores, a tie to break
    y = q.sum(1)
    for k in (1, 3, 12):
        want = np.flatnonzero(SelectKBest(f_regression, k=k).fit(q, y).get_support())
        got = select_features(torch.tensor(q), k).numpy()
        assert got.tolist() == want.tolist()
    if rows == 2:  # every F is 0: the last k timesteps, as the official code's S
        assert select_features(torch.tensor(q), 3).tolist() == [97, 98, 99]


def test_the_concentration_floor_keeps_alpha_and_beta_at_least_one():
    reference = push_to_the_end(AdaptiveSampler(SCHED, AdaptiveParams(update_every=1), 0), 6)
    assert min(float(r["beta"].min()) for r in reference) < 1.0  # the spike the floor forbids
    floored = AdaptiveSampler(SCHED, AdaptiveParams(update_every=1, concentration_floor=1.0), 0)
    for r in push_to_the_end(floored, 6):
        assert float(r["alpha"].min()) >= 1.0 and float(r["beta"].min()) >= 1.0
    # and it starts near uniform, whatever the floor (the init bias follows it)
    tv = 0.5 * float(np.abs(floored.probs().numpy() - 1 / 1000).sum())
    start = AdaptiveSampler(SCHED, AdaptiveParams(concentration_floor=1.0), 0).probs().numpy()
    assert 0.5 * float(np.abs(start - 1 / 1000).sum()) < 0.02 and tv > 0.0


def test_the_mixtures_log_prob_and_p_t_match_a_direct_computation():
    m = 0.2
    alpha, beta = torch.tensor([0.7, 2.0, 5.0]), torch.tensor([1.5, 0.6, 5.0])
    u = torch.tensor([0.1, 0.5, 0.93])
    direct = np.log((1 - m) * stats.beta.pdf(u.numpy(), alpha.numpy(), beta.numpy()) + m)
    # float32 Beta.log_prob against float64 scipy: agreement to 1e-5 relative
    np.testing.assert_allclose(log_prob(alpha, beta, u, m).numpy(), direct, rtol=1e-5)
    p = discretised_beta(alpha.double().numpy(), beta.double().numpy(), 1000, m)
    plain = discretised_beta(alpha.double().numpy(), beta.double().numpy(), 1000)
    flat = discretised_beta(np.array([1.0]), np.array([1.0]), 1000)
    np.testing.assert_allclose(p, (1 - m) * plain + m * flat, atol=1e-15)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_mixed_draws_are_uniform_in_the_stated_share():
    sampler = AdaptiveSampler(SCHED, AdaptiveParams(uniform_mix=0.3, update_every=1), 0)
    push_to_the_end(sampler, 4)  # the Beta now sits near t = T - 1
    c = step_ctx(10)
    t = torch.cat([sampler.sample(N, c).t for _ in range(64)])
    # Beta mass below t = 500 is ~0 here; the uniform part puts half of its 0.3 there.
    share = float((t < 500).double().mean())
    assert 0.1 < share < 0.2  # 0.15 expected; 2048 draws: sd 0.008


def test_no_update_from_a_step_whose_model_lr_was_zero():
    params = AdaptiveParams(update_every=1, scan_stride=100, skip_frozen=True)
    sampler = AdaptiveSampler(SCHED, params, 0)

    def probe(step: int, lr: float) -> None:
        c = step_ctx(step, lr)
        sampler.sample(N, c)
        spec = sampler.probe_request(c)
        gen = torch.Generator().manual_seed(step)
        before = torch.ones(len(spec.t))
        after = before - 0.1 * torch.rand(len(spec.t), generator=gen)
        sampler.observe_probe(ProbeResult(spec=spec, before=before, after=after), c)

    probe(0, 0.0)  # warm-up's first step: lr 0
    assert sampler.updates == 0 and len(sampler.queue) == 0 and sampler.skipped == 1
    weights = [w.detach().clone() for w in sampler.policy.parameters()]
    probe(1, 1e-4)
    assert sampler.updates == 1 and len(sampler.queue) == 1
    assert any(not torch.equal(a, b) for a, b in zip(weights, sampler.policy.parameters(),
                                                      strict=True))
    assert sampler.metrics()["sampler/updates_skipped"] == 1.0
    again = AdaptiveSampler(SCHED, params, 0)
    again.load_state_dict(sampler.state_dict())
    assert again.skipped == 1


def test_the_trust_region_bounds_the_tv_an_update_moves():
    free = push_to_the_end(AdaptiveSampler(SCHED, AdaptiveParams(update_every=1), 0), 4)
    assert max(r["tv"] for r in free) > 0.2  # the paper's form jumps
    limit = 0.03
    bounded = AdaptiveSampler(SCHED, AdaptiveParams(update_every=1, max_tv_step=limit), 0)
    moved = [r["tv"] for r in push_to_the_end(bounded, 4)]
    assert max(moved) <= limit + 1e-12  # the line search stops at or under the limit
    assert min(moved) > 0.0 and bounded.metrics()["sampler/trust_scale"] <= 1.0


def test_the_policy_lr_warms_up_over_the_stated_updates():
    sampler = AdaptiveSampler(SCHED, AdaptiveParams(update_every=1, lr=1e-2, lr_warmup=4), 0)
    seen = []
    for step in range(6):
        c = step_ctx(step)
        sampler.sample(N, c)
        sampler.update_policy(c.x0, sampler._pending["u"], torch.randn(N))
        seen.append(sampler.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2], rel=1e-12)


def test_the_stable_preset_sets_its_switches_and_an_explicit_key_wins():
    stable = AdaptiveParams(preset="stable")
    for key, value in STABLE.items():
        assert getattr(stable, key) == value
    assert AdaptiveParams(preset="stable", max_tv_step=0.2).max_tv_step == 0.2
    ref = AdaptiveParams()
    assert (ref.concentration_floor, ref.uniform_mix, ref.lr_warmup, ref.max_tv_step,
            ref.skip_frozen) == (1e-5, 0.0, 0, None, False)
    assert math.isclose(ref.init_bias, 0.5)  # the paper's code


@pytest.mark.slow
def test_a_collapsed_p_t_is_warned_once_and_tagged_with_its_kimg(tmp_path, tsearch_lines):
    """By construction: Beta(1e-5, 1e-5) at init puts half of p(t) on t = 0 and half on
    t = T - 1 (entropy ln 2 < 1 nat) from the first log interval on, at every interval."""
    from conftest import SMOKE
    from mlflow.tracking import MlflowClient

    from tsearch import names
    from tsearch.timesteps import load_config
    from tsearch.tracking import build_tracker
    from tsearch.train import train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [f"train.out_dir={tmp_path}/runs", f"eval.cache_dir={tmp_path}/c",
                 f"tracking.uri={uri}", f"tracking.artifact_root={tmp_path}/artifacts",
                 "timesteps.sampler.name=adaptive", "timesteps.sampler.params.init_bias=-40",
                 "timesteps.sampler.params.update_every=5",
                 "timesteps.sampler.params.scan_stride=50", "eval.every_kimg=0.2"]
    cfg = load_config(SMOKE, [*overrides, "train.total_kimg=0.2"])
    result = train(cfg, tracker=build_tracker(cfg.tracking), evaluate=False)
    warned = [line for line in tsearch_lines if "p(t) collapsed" in line]
    # The first log interval: log_every_kimg 0.1 at batch 32 is 4 steps, 0.128 kimg.
    assert len(warned) == 1 and "0.13 kimg" in warned[0]
    run = MlflowClient(uri).get_run(result.run_id)
    assert run.data.tags[names.TAG_PT_COLLAPSED] == "0.13"
    # Resumed to a longer budget: the run already collapsed, so no second warning.
    longer = load_config(SMOKE, [*overrides, "train.total_kimg=0.4"])
    again = train(longer, tracker=build_tracker(longer.tracking, run_id=result.run_id),
                  run_dir=result.run_dir, resume=True, evaluate=False)
    assert again.steps > result.steps  # it trained on, still collapsed, at more intervals
    assert sum("p(t) collapsed" in line for line in tsearch_lines) == 1
    assert MlflowClient(uri).get_run(result.run_id).data.tags[names.TAG_PT_COLLAPSED] == "0.13"


def test_runs_show_and_the_report_mark_a_collapsed_trial():
    from tsearch import names
    from tsearch.cli.runs import _collapse_mark
    from tsearch.records import TrialRecord, trial_views

    tagged = TrialRecord(trial_id="a", tags={names.TAG_PT_COLLAPSED: "3.2"}, fid=[(4000, 90.0)])
    plain = TrialRecord(trial_id="b", fid=[(4000, 80.0)])
    views = {v.trial_id: v for v in trial_views([tagged, plain])}
    assert views["a"].pt_collapsed_kimg == 3.2 and views["b"].pt_collapsed_kimg is None
    assert _collapse_mark(views["a"]) == "  [p(t) collapsed at 3.2 kimg]"
    assert _collapse_mark(views["b"]) == ""
    assert names.collapse_problem({"sampler/entropy": 0.9}).startswith("entropy 0.90")
    assert names.collapse_problem({"sampler/entropy": 3.0, "sampler/tv_uniform": 0.95})
    assert names.collapse_problem({"sampler/entropy": 3.0, "sampler/tv_uniform": 0.5}) is None
