"""The adaptive learned sampler with synthetic probes (no UNet), and through the real trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import ROOT
from sklearn.feature_selection import f_regression

from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps.adaptive import AdaptiveParams, AdaptiveSampler
from tsearch.timesteps.adaptive_policy import (
    discretised_beta,
    f_regression_scores,
    select_features,
)
from tsearch.timesteps.base import ProbeResult, StepContext

SCHED = NoiseSchedule.create("linear")


def ctx(step: int, n: int = 32, res: int = 8, gen=None) -> StepContext:
    x0 = torch.rand(n, 1, res, res, generator=gen) * 2 - 1
    return StepContext(step=step, kimg=step * n / 1000, progress=0.0, lr=1e-3, x0=x0)


def bump(t: torch.Tensor, center: float = 700.0, width: float = 80.0) -> torch.Tensor:
    return torch.exp(-((t.double() - center) ** 2) / (2 * width**2))


def drive(sampler: AdaptiveSampler, steps: int, n: int = 32, scan_peak=(200, 600)):
    """Synthetic trainer: an image's improvement at every tau is large when its sampled t was
    near 700; the scan's improvements depend on a few timesteps (scan_peak)."""
    gen = torch.Generator().manual_seed(123)
    requested = []
    for step in range(steps):
        c = ctx(step, n, gen=gen)
        draw = sampler.sample(n, c)
        spec = sampler.probe_request(c)
        if spec is None:
            continue
        requested.append(step)
        rows = len(spec.t)
        before = torch.ones(rows)
        n_scan = sampler.params.scan_images * len(sampler.tau_grid)
        improve = torch.zeros(rows, dtype=torch.float64)
        # Scan rows: a random total improvement carried by the scan_peak timesteps.
        amp = torch.rand(1, generator=gen).double() * 1e-3
        scan_t = spec.t[:n_scan]
        for peak in scan_peak:
            improve[:n_scan] += amp * (scan_t == peak).double()
        improve[:n_scan] += 1e-6 * torch.rand(n_scan, generator=gen).double()
        # Reward rows: credit by the image's own sampled timestep.
        img = spec.image_index[n_scan:]
        improve[n_scan:] = 1e-3 * bump(draw.t[img])
        after = before - improve.float()
        sampler.observe_probe(ProbeResult(spec=spec, before=before, after=after,
                                          forwards=2 * rows), c)
    return requested


def mass_near(p: torch.Tensor, lo: int, hi: int) -> float:
    return float(p[lo:hi].sum())


@pytest.mark.parametrize("policy,steps,lr,normalize", [
    ("unconditional", 300, 0.05, False), ("cnn", 120, 0.003, False), ("cnn", 100, 0.003, True)])
def test_policy_mass_moves_to_useful_timesteps(policy, steps, lr, normalize):
    params = AdaptiveParams(policy=policy, update_every=1, lr=lr, scan_stride=50, hidden=32,
                            baseline=True, normalize_reward=normalize,
                            entropy_coef=0.01 if normalize else 0.0)
    sampler = AdaptiveSampler(SCHED, params, seed=0)
    sampler.sample(32, ctx(0))
    before = mass_near(sampler.probs(), 550, 850)
    drive(sampler, steps)
    after = mass_near(sampler.probs(), 550, 850)
    assert sampler.updates == steps
    assert after > before + 0.15, (before, after)
    assert math.isfinite(sampler.metrics()["sampler/policy_loss"])


def test_probes_requested_exactly_every_update_every():
    sampler = AdaptiveSampler(SCHED, AdaptiveParams(update_every=7, policy="unconditional",
                                                    scan_stride=100), seed=1)
    requested = drive(sampler, 50)
    assert requested == list(range(0, 50, 7))
    assert sampler.updates == len(requested)


def test_probe_layout_scan_then_reward_rows():
    p = AdaptiveParams(scan_images=2, scan_stride=100, num_features=3, reward_images=5,
                       policy="unconditional")
    sampler = AdaptiveSampler(SCHED, p, seed=0)
    c = ctx(0, n=8)
    sampler.sample(8, c)
    spec = sampler.probe_request(c)
    assert spec.kind == "delta" and spec.loss == "vlb" and not spec.common_noise  # reference
    assert len(spec.t) == 2 * 10 + 5 * 3
    assert spec.t[:10].tolist() == list(range(0, 1000, 100))
    assert spec.t[20:].tolist() == [0, 100, 200] * 5  # initial S: the first grid points
    assert spec.image_index[20:].tolist() == sum(([i] * 3 for i in range(5)), [])
    with pytest.raises(ValueError, match="explicit switches"):
        AdaptiveParams(faithful=True)


def test_f_test_matches_sklearn_and_picks_informative_timesteps():
    rng = np.random.default_rng(0)
    x = rng.normal(scale=0.1, size=(60, 100))
    x[:, [7, 42, 90]] += rng.normal(scale=3.0, size=(60, 3))
    y = x.sum(axis=1)
    ours = f_regression_scores(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    ref, _ = f_regression(x, y)
    np.testing.assert_allclose(ours, ref, rtol=1e-8)
    q = torch.from_numpy(np.vstack([x, np.zeros((5, 100))]))  # unfilled rows are dropped
    assert select_features(q, 3).tolist() == [7, 42, 90]


@pytest.mark.parametrize("columns", [1000, 100])
def test_f_test_matches_sklearn_at_the_queue_sizes(columns):
    """The queue's shape (queue_size 20 rows, one column per scanned timestep), row-sum target."""
    rng = np.random.default_rng(1)
    x = rng.normal(scale=0.01, size=(20, columns))
    y = x.sum(axis=1)
    ours = f_regression_scores(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(ours, f_regression(x, y)[0], rtol=1e-9)


def test_selection_updates_from_the_queue():
    sampler = AdaptiveSampler(SCHED, AdaptiveParams(update_every=1, scan_stride=100,
                                                    policy="unconditional", queue_size=20),
                              seed=0)
    drive(sampler, 30, scan_peak=(300, 800))
    assert len(sampler.queue) == 20
    assert set(sampler.selected.tolist()) >= {300, 800}


def test_discretised_beta_uniform_and_sums_to_one():
    p = discretised_beta(np.array([1.0]), np.array([1.0]), 1000)
    assert p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(p[1:-1], 1 / 999, rtol=1e-9)
    assert p[0] == pytest.approx(0.5 / 999)
    skewed = discretised_beta(np.array([5.0, 2.0]), np.array([1.0, 2.0]), 1000)
    u = 799.5 / 999  # lower edge of t = 800's bin
    expected = 0.5 * (1 - u**5) + 0.5 * (1 - (3 * u**2 - 2 * u**3))  # Beta(5,1), Beta(2,2) tails
    assert skewed[800:].sum() == pytest.approx(expected, rel=1e-9)


def test_nan_probe_values_do_not_poison():
    sampler = AdaptiveSampler(SCHED, AdaptiveParams(update_every=1, scan_stride=100,
                                                    policy="unconditional"), seed=0)
    c = ctx(0)
    sampler.sample(32, c)
    spec = sampler.probe_request(c)
    nan = torch.full((len(spec.t),), float("nan"))
    sampler.observe_probe(ProbeResult(spec=spec, before=nan, after=nan), c)
    assert torch.isfinite(sampler.probs()).all() and sampler.updates == 0
    assert len(sampler.queue) == 0


def test_state_round_trip_continues_identically(tmp_path):
    params = AdaptiveParams(update_every=2, scan_stride=100, hidden=16)
    a = AdaptiveSampler(SCHED, params, seed=3)
    drive(a, 6)
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = AdaptiveSampler(SCHED, params, seed=99)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    c = ctx(6, gen=torch.Generator().manual_seed(5))
    assert torch.equal(a.sample(32, c).t, b.sample(32, c).t)
    torch.testing.assert_close(a.probs(), b.probs())


@pytest.mark.slow
def test_trains_single_process_through_the_real_trainer(tmp_path):
    from tsearch.timesteps import load_config
    from tsearch.tracker import NullTracker
    from tsearch.train import train

    cfg = load_config(ROOT / "experiments" / "smoke.yaml", [
        f"train.out_dir={tmp_path}/runs", f"eval.cache_dir={tmp_path}/c",
        "timesteps.sampler.name=adaptive", "timesteps.sampler.params.update_every=5",
        "timesteps.sampler.params.scan_stride=50", "train.total_kimg=0.64",
    ])
    tracker = NullTracker()
    result = train(cfg, tracker=tracker, evaluate=False)
    assert result.steps == 20
    hist = tracker.history
    assert hist["sampler/updates"][-1][1] == 4  # steps 0, 5, 10, 15
    assert hist["compute/probe_forwards"][-1][1] == 4 * 2 * (20 + 32 * 3)
    assert all(math.isfinite(v) for _, v in hist["sampler/policy_loss"])
    pt = np.load(result.run_dir / "timesteps.npz")["probs"]
    assert pt.shape[1] == 1000 and np.allclose(pt.sum(1), 1.0)


def test_defaults_are_the_reference_algorithm():
    p = AdaptiveParams()
    assert (p.entropy_form, p.common_noise, p.scan_stride, p.baseline, p.normalize_reward,
            p.policy) == ("reference", False, 1, False, False, "cnn")
    assert (p.queue_size, p.num_features, p.update_every, p.lr, p.entropy_coef,
            p.grad_clip, p.init_bias, p.loss) == (20, 3, 40, 1e-2, 1e-2, 1.0, 0.5, "vlb")
    assert len(AdaptiveSampler(SCHED, p).tau_grid) == 1000  # the full-T scan


def _reference_update(policy: torch.nn.Module, x0, u, reward, c=1e-2, lr=1e-2, clip=1.0):
    """docs/algorithms.md 1.4, written out: L = -mean_b[log pi(u_b|x0_b) (r_b + c H_b)], H not
    detached; clip_grad_norm 1.0; Adam(lr 1e-2, betas (0.9, 0.999)), one step."""
    opt = torch.optim.Adam(policy.parameters(), lr=lr, betas=(0.9, 0.999))
    ab = torch.nn.functional.softplus(policy.head.linear(policy.mlp(policy.features(x0))))
    alpha, beta = ab[:, 0] + 1e-5, ab[:, 1] + 1e-5
    dist = torch.distributions.Beta(alpha, beta)
    loss = -(dist.log_prob(u) * (reward.detach() + c * dist.entropy())).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), clip)
    opt.step()


@pytest.mark.parametrize("params,equal", [({}, True), ({"entropy_form": "bonus"}, False)],
                         ids=["defaults", "bonus"])
def test_default_update_equals_the_reference_formula(params, equal):
    """One policy update at the defaults against the formula written out above (the bonus
    form, a switch, must differ: the test can tell them apart)."""
    import copy

    sampler = AdaptiveSampler(SCHED, AdaptiveParams(**params), seed=7)
    gen = torch.Generator().manual_seed(11)
    c = ctx(0, n=16, gen=gen)
    draw = sampler.sample(16, c)
    # A trained-looking policy (not the symmetric init), so every term of the loss matters.
    with torch.no_grad():
        sampler.policy.head.linear.weight.normal_(0.0, 0.05, generator=gen)
    reference = copy.deepcopy(sampler.policy)
    u = sampler._pending["u"]
    assert torch.equal(torch.round(u * 999).long(), draw.t)
    reward = torch.randn(16, generator=gen) * 1e-3
    sampler.update_policy(c.x0, u, reward)
    _reference_update(reference, c.x0, u, reward)
    got = torch.cat([p.flatten() for p in sampler.policy.parameters()])
    want = torch.cat([p.flatten() for p in reference.parameters()])
    assert torch.allclose(got, want, atol=1e-6, rtol=0) is equal, (got - want).abs().max()


def test_reference_entropy_term_lets_the_policy_move():
    """Rewards of the size VLB improvements have (1e-4 bits/dim) that favour t < 300: the
    reference form moves p(t) away from uniform; the detached bonus, ~300x stronger near
    uniform, keeps it there (docs/algorithms.md Decisions)."""
    moved = {}
    for form in ("reference", "bonus"):
        sampler = AdaptiveSampler(SCHED, AdaptiveParams(policy="unconditional", update_every=1,
                                                        scan_stride=100, entropy_form=form),
                                  seed=0)
        gen = torch.Generator().manual_seed(5)
        for step in range(20):
            c = ctx(step, gen=gen)
            draw = sampler.sample(32, c)
            sampler.probe_request(c)
            reward = 1e-4 * (draw.t < 300).float()
            sampler.update_policy(c.x0, sampler._pending["u"], reward)
            sampler._pending = None
        moved[form] = sampler.metrics()["sampler/tv_uniform"]
    assert moved["reference"] > 10 * moved["bonus"], moved


def test_update_metrics_report_movement_and_reward():
    sampler = AdaptiveSampler(SCHED, AdaptiveParams(update_every=1, scan_stride=100,
                                                    policy="unconditional"), seed=0)
    drive(sampler, 6)
    m = sampler.metrics()
    assert m["sampler/updates_in_interval"] == 6
    assert 0.0 < m["sampler/tv_step"] < 1.0 and 0.0 <= m["sampler/tv_uniform"] < 1.0
    assert m["sampler/reward"] > 0 and m["sampler/reward_std"] > 0
    assert "sampler/tv_step" not in sampler.metrics()  # reported once per interval
