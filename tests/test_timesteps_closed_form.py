"""Closed-form checks of every sampler and weighting against docs/algorithms.md's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tsearch.diffusion.schedule import SCHEDULES, NoiseSchedule, flow_betas, flow_times
from tsearch.errors import ConfigError
from tsearch.timesteps import (
    SAMPLERS,
    WEIGHTINGS,
    Draw,
    ProbeResult,
    StepContext,
    load_config,
)
from tsearch.timesteps.curriculum import CurriculumSampler
from tsearch.timesteps.gradvar import GradVarSampler
from tsearch.timesteps.importance import LossSecondMomentSampler, occurrence_rank
from tsearch.timesteps.lognormal import LogNormalSampler
from tsearch.timesteps.speed import SpeedSampler
from tsearch.timesteps.weighting import (
    MinSNRWeighting,
    P2Weighting,
    SpeedWeighting,
    VLBWeighting,
)

LINEAR = NoiseSchedule.create("linear")


def ctx(step: int = 0, progress: float = 0.0, n: int = 8) -> StepContext:
    return StepContext(step=step, kimg=0.0, progress=progress, lr=1e-3,
                       x0=torch.zeros(n, 1, 8, 8))


# --- weightings -----------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_weighting_tables_finite_positive(name, schedule, prediction):
    s = NoiseSchedule.create(schedule)
    w = WEIGHTINGS[name](s, WEIGHTINGS[name].Params(), prediction)
    table = w.table()
    assert table.shape == (1000,) and np.all(np.isfinite(table)) and np.all(table > 0)
    t = torch.tensor([0, 500, 999])
    assert w.weights(t).dtype == torch.float32
    np.testing.assert_allclose(w.weights(t).numpy(), table[[0, 500, 999]], rtol=1e-6)


def test_min_snr_forms():
    snr = LINEAR.snr
    for gamma in (1.0, 5.0):
        clamp = np.minimum(snr, gamma)
        eps = MinSNRWeighting(LINEAR, MinSNRWeighting.Params(gamma=gamma), "eps").table()
        np.testing.assert_allclose(eps, clamp / snr, rtol=1e-12)
        x0 = MinSNRWeighting(LINEAR, MinSNRWeighting.Params(gamma=gamma), "x0").table()
        np.testing.assert_allclose(x0, clamp, rtol=1e-12)
        v = MinSNRWeighting(LINEAR, MinSNRWeighting.Params(gamma=gamma), "v").table()
        np.testing.assert_allclose(v, clamp / (snr + 1), rtol=1e-12)
        # eps form: non-increasing in SNR, i.e. non-decreasing in t.
        assert np.all(np.diff(eps) >= -1e-12)
    eps = MinSNRWeighting(LINEAR).table()
    assert eps[100] == pytest.approx(0.586, abs=1e-3)  # ALGORITHMS 4.2
    assert int(np.argmax(eps >= 1.0)) == 130  # < 1 only for t < 130
    cos = MinSNRWeighting(NoiseSchedule.create("cosine")).table()
    assert int(np.argmax(cos >= 1.0)) == 261
    # Not SpeeD's broken 5 / (SNR + 1).
    assert not np.allclose(eps, 5.0 / (snr + 1))
    with pytest.raises(ValueError, match="prediction"):
        MinSNRWeighting(LINEAR, prediction="sample")


def test_debias_values_at_three_timesteps():
    from tsearch.timesteps.weighting import DebiasWeighting

    # Linear betas 1e-4 .. 0.02 from their definition, not from NoiseSchedule.
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    raw = DebiasWeighting.Params(normalize=False)
    t = [0, 500, 999]
    eps = DebiasWeighting(LINEAR, raw, "eps").table()
    np.testing.assert_allclose(eps[t], np.sqrt((1 - abar[t]) / abar[t]), rtol=1e-9)
    assert eps[0] == pytest.approx(0.0100005, rel=1e-5)  # sqrt(1e-4 / 0.9999)
    v = DebiasWeighting(LINEAR, raw, "v").table()
    # sqrt(SNR) / (SNR + 1), the eps objective on the v-MSE (v-MSE = (SNR + 1) / SNR eps-MSE).
    np.testing.assert_allclose(v[t], np.sqrt(abar[t] * (1 - abar[t])), rtol=1e-9)
    x0 = DebiasWeighting(LINEAR, raw, "x0").table()
    np.testing.assert_allclose(x0[t], np.sqrt(abar[t] / (1 - abar[t])), rtol=1e-9)
    normalized = DebiasWeighting(LINEAR).table()  # default: mean 1 over t, same shape
    assert normalized.mean() == pytest.approx(1.0) and np.allclose(normalized, eps / eps.mean())


STEPS = torch.tensor([0, 1, 100, 250, 500, 750, 900, 998, 999])
# The VP process with the flow schedule's tables: at index i, the SNR of the flow cell's middle.
FLOW_AS_VP = NoiseSchedule(name="flow", betas=flow_betas(1000))


class ImpliedPrediction(torch.nn.Module):
    """One denoiser, whose estimate of eps is ``eps_hat``, reporting in one parametrisation.

    Each output follows from the definitions alone, given the network's input x: VP x =
    sqrt(abar) x0 + sqrt(1 - abar) eps and v = sqrt(abar) eps - sqrt(1 - abar) x0; flow x =
    (1 - s) x0 + s eps with velocity eps - x0, the network seeing s * T.
    """

    def __init__(self, schedule: NoiseSchedule, eps_hat: torch.Tensor, target: str):
        super().__init__()
        self.schedule, self.eps_hat, self.target = schedule, eps_hat, target

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        if self.schedule.process == "flow":
            s = (time / self.schedule.num_timesteps).view(-1, 1, 1, 1)
            return (self.eps_hat - x) / (1 - s)  # x0 = x - s u, eps = x + (1 - s) u
        ab = self.schedule.tensor("alphas_cumprod")[time].view(-1, 1, 1, 1)
        if self.target == "eps":
            return self.eps_hat
        if self.target == "x0":
            return (x - (1 - ab).sqrt() * self.eps_hat) / ab.sqrt()
        return (self.eps_hat - (1 - ab).sqrt() * x) / ab.sqrt()  # eps = sqrt(1-ab) x + sqrt(ab) v


def weighted_losses(schedule: NoiseSchedule, name: str, target: str, t: torch.Tensor,
                    params: dict | None = None) -> torch.Tensor:
    """w(t) x the per-sample MSE of the same denoiser (fixed x0, noise and eps error)."""
    from tsearch.diffusion.loss import per_sample_mse

    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(t.numel(), 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    eps_hat = noise + 0.3 * torch.randn(x0.shape, generator=g)
    model = ImpliedPrediction(schedule, eps_hat, target)
    losses = per_sample_mse(model, schedule, x0, t, noise, target)  # flow: at the cell's middle
    cls = WEIGHTINGS[name]
    return cls(schedule, cls.Params(**(params or {})), target).weights(t).double() * losses


@pytest.mark.parametrize("name,params", [("debias", {"normalize": False}), ("min_snr", {}),
                                         ("min_snr", {"gamma": 1.0})])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_weightings_by_target_are_the_eps_objective(name, params, schedule):
    sched = NoiseSchedule.create(schedule)
    on_eps = weighted_losses(sched, name, "eps", STEPS, params)
    # The loss path is float32 (schedule.tensor): 1 - abar is exact from the float32 abar but
    # that abar is off by up to 2^-25, i.e. 2^-25 / (1 - abar) relative (1.7e-4 at linear t = 0);
    # the implied outputs cancel terms of size 1 to an error of size 0.3 (about 1e-6 relative).
    one_minus = torch.as_tensor(1 - sched.alphas_cumprod[STEPS.numpy()])
    rtol = 1e-5 + 2 * 2.0**-25 / one_minus
    for target in ("v", "x0"):
        on_target = weighted_losses(sched, name, target, STEPS, params)
        assert torch.all((on_target - on_eps).abs() <= rtol * on_eps), on_target / on_eps


@pytest.mark.parametrize("name,params", [("debias", {"normalize": False}), ("min_snr", {}),
                                         ("min_snr", {"gamma": 1.0})])
def test_flow_weightings_equal_their_vp_objectives(name, params):
    """weighting(flow) x flow loss = weighting(VP v) x VP v-MSE at the same index.

    The VP process with the flow schedule's tables has, at index i, the SNR of the flow cell's
    middle, ((1 - t) / t)^2 with t = (i + 0.5) / T: the point the code maps the index to; the
    flow loss is taken there (no offset), so both see the same x0, noise and noise level.
    """
    flow, vp = NoiseSchedule.create("flow"), FLOW_AS_VP
    on_flow = weighted_losses(flow, name, "v", STEPS, params)
    t = (STEPS.double() + 0.5) / 1000
    # The flow loss runs on float32 time (loss.flow_time), and the test model recovers s from
    # s * T: each rounds s by up to 2^-24, which the loss squares through 1 / (1 - s), so allow
    # 4 x 2^-24 / (1 - t) relative (4.8e-4 at t = 0.9995), plus 1e-5 of float32 cancellation.
    rtol = 1e-5 + 4 * 2.0**-24 / (1 - t)
    for target in ("v", "eps"):
        on_vp = weighted_losses(vp, name, target, STEPS, params)
        assert torch.all((on_flow - on_vp).abs() <= rtol * on_vp.abs()), (on_flow / on_vp)
    # At t = 0.5 the velocity loss is twice the VP v-MSE: the VP v table alone would double it.
    w = WEIGHTINGS[name]
    ratio = w(flow, w.Params(**params), "v").table() / w(vp, w.Params(**params), "v").table()
    mid = flow_times(1000)
    # float64 tables; the cumprod of the flow betas gives abar to ~1e-13 relative.
    np.testing.assert_allclose(ratio, (1 - mid) ** 2 + mid**2, rtol=1e-9)


def test_normalized_debias_is_the_same_objective_up_to_scale_under_flow():
    flow = NoiseSchedule.create("flow")
    w_flow = WEIGHTINGS["debias"](flow, prediction="v").table()
    w_vp = WEIGHTINGS["debias"](FLOW_AS_VP, prediction="v").table()
    t = flow_times(1000)
    assert w_flow.mean() == pytest.approx(1.0) and w_vp.mean() == pytest.approx(1.0)
    ratio = w_flow / (w_vp * ((1 - t) ** 2 + t**2))  # a constant: the two means differ
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)  # float64, abar to ~1e-13
    raw = WEIGHTINGS["debias"](flow, WEIGHTINGS["debias"].Params(normalize=False), "v").table()
    np.testing.assert_allclose(raw, t * (1 - t), rtol=1e-9)  # sigma (1 - t)^2 = t (1 - t)


def test_min_snr_is_one_where_snr_is_zero():
    betas = LINEAR.betas.copy()
    betas[-1] = 1.0  # zero terminal SNR
    s = NoiseSchedule(name="zsnr", betas=betas)
    assert s.snr[-1] == 0.0
    for prediction in ("eps", "v", "x0"):
        table = MinSNRWeighting(s, prediction=prediction).table()
        assert table[-1] == 1.0 and np.all(np.isfinite(table))


def test_p2_closed_form_and_values():
    for gamma, k in ((1.0, 1.0), (0.5, 1.0), (1.0, 3.0)):
        w = P2Weighting(LINEAR, P2Weighting.Params(gamma=gamma, k=k)).table()
        np.testing.assert_allclose(w, 1.0 / (k + LINEAR.snr) ** gamma, rtol=1e-12)
    w = P2Weighting(LINEAR).table()
    assert w[0] == pytest.approx(1e-4, rel=0.01)
    assert w[100] == pytest.approx(0.105, abs=1e-3)
    assert w[250] == pytest.approx(0.479, abs=1e-3)
    assert w[500] == pytest.approx(0.92, abs=5e-3)
    assert np.all(w[750:] > 0.99)


def test_vlb_weight_is_c_t():
    for variance in ("fixed_large", "fixed_small"):
        s = NoiseSchedule.create("linear", variance=variance)
        b, a, ab = s.betas, 1 - s.betas, np.cumprod(1 - s.betas)
        ab_prev = np.append(1.0, ab[:-1])
        if variance == "fixed_large":
            var = b.copy()
        else:
            var = b * (1 - ab_prev) / (1 - ab)
        var[0] = b[1] * (1 - ab[0]) / (1 - ab[1])  # sigma_0^2 = beta~_1 (reference convention)
        c = b**2 / (2 * var * a * (1 - ab))  # ALGORITHMS 0.2
        raw = VLBWeighting(s, VLBWeighting.Params(normalize=False)).table()
        np.testing.assert_allclose(raw, c, rtol=1e-10)
        norm = VLBWeighting(s).table()
        np.testing.assert_allclose(norm, c / c.mean(), rtol=1e-10)
        assert norm.mean() == pytest.approx(1.0)
    raw = VLBWeighting(LINEAR, VLBWeighting.Params(normalize=False)).table()
    expected = {1: 0.273, 10: 0.068, 100: 0.0100, 250: 0.0053, 500: 0.0055, 750: 0.0077,
                999: 0.0102}
    for t, value in expected.items():
        assert raw[t] == pytest.approx(value, rel=0.02), t
    # w(0) follows c_0 = beta_0 / (2 beta~_1 alpha_0) = 0.917 (linear), 0.987 (quad).
    for name, c0 in (("linear", 0.917), ("quad", 0.987)):
        s = NoiseSchedule.create(name)
        b = s.betas
        c0_formula = b[0] / (2 * s.posterior_variance[1] * (1 - b[0]))
        assert c0_formula == pytest.approx(c0, abs=5e-4)
        raw = VLBWeighting(s, VLBWeighting.Params(normalize=False))
        assert raw.table()[0] == pytest.approx(c0_formula, rel=1e-12)
        assert float(raw.weights(torch.tensor([0]))) == pytest.approx(c0_formula, rel=1e-6)
        norm = VLBWeighting(s).table()
        assert norm[0] == pytest.approx(c0_formula / s.vlb_weight.mean(), rel=1e-12)


def test_speed_weighting():
    w = SpeedWeighting(LINEAR).table()
    assert np.all(w[:700] >= 0.4 - 1e-12) and np.all(w[:700] <= 0.6 + 1e-12)
    assert np.all(w[700:] == 1.0)
    assert w[0] == pytest.approx(0.409, abs=1e-3)
    assert w[100] == pytest.approx(0.539, abs=1e-3)
    assert w[300] == pytest.approx(0.577, abs=1e-3)
    assert int(np.argmax(w[:700])) == 219 and w[219] == pytest.approx(0.6)
    flat = SpeedWeighting(LINEAR, SpeedWeighting.Params(lam=0.5)).table()
    np.testing.assert_allclose(flat[:700], 0.5)
    # lam = 1 with no cut reaches min g: floored, still positive.
    full = SpeedWeighting(LINEAR, SpeedWeighting.Params(lam=1.0, tau=1000)).table()
    assert full.min() == pytest.approx(1e-4) and full.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tau"):
        SpeedWeighting(LINEAR, SpeedWeighting.Params(tau=1001))
    with pytest.raises(ValidationError):
        SpeedWeighting.Params(lam=0.4)


# --- SpeeD sampling -------------------------------------------------------------------------


def test_speed_base_probs_and_effective_marginal():
    T, tau = 1000, 700
    for k in (1.0, 2.0, 5.0):
        s = SpeedSampler(LINEAR, SpeedSampler.Params(k=k))
        p = s.base_probs()
        np.testing.assert_allclose(p[:tau], k / (T + tau * (k - 1)), rtol=1e-12)
        np.testing.assert_allclose(p[tau:], 1 / (T + tau * (k - 1)), rtol=1e-12)
    assert s.pivot == 642
    no_dual = SpeedSampler(LINEAR, SpeedSampler.Params(dual=False))
    dual = SpeedSampler(LINEAR)
    assert float(no_dual.probs()[tau:].sum()) == pytest.approx(0.079, abs=5e-4)
    assert float(dual.probs()[tau:].sum()) == pytest.approx(0.039, abs=5e-4)  # large-n limit
    k2 = SpeedSampler(LINEAR, SpeedSampler.Params(k=2.0))
    assert float(k2.probs()[tau:].sum()) == pytest.approx(0.088, abs=5e-4)


def test_speed_dual_draws_reflect_and_match_probs():
    s = SpeedSampler(LINEAR, seed=3)
    m, n = s.pivot, 256
    h = n // 2 + 1
    hits = 0
    for step in range(60):
        t = s.sample(n, ctx(step, n=n)).t
        torch.testing.assert_close(t[h:], s.reflect(t[: n - h]))
        assert int(t[h:].max()) <= m
        hits += int((t >= 700).sum())
    # probs() is the marginal for this n: (129/256) * 0.0789 of the batch lands at t >= 700.
    expected = float(s.probs()[700:].sum())
    assert expected == pytest.approx(0.0789 * h / n, abs=5e-4)
    assert hits / (60 * n) == pytest.approx(expected, abs=0.006)
    # n = 2: n//2 + 1 = 2 draws, nothing reflected.
    s.sample(2, ctx(n=2))
    torch.testing.assert_close(s.probs(), s.base_probs())


def test_speed_tau_must_be_below_T():
    with pytest.raises(ValueError, match="tau = 1000 must be < the number of timesteps"):
        SpeedSampler(LINEAR, SpeedSampler.Params(tau=1000))
    small = NoiseSchedule.create("linear", num_timesteps=100)
    with pytest.raises(ValueError, match="tau"):
        SpeedSampler(small, SpeedSampler.Params(tau=700))  # an index past T
    assert SpeedSampler(small).tau == 70  # the default is a fraction of T (0.7)
    with pytest.raises(ValueError, match="tau = 1.0 must be < the number of timesteps"):
        SpeedSampler(small, SpeedSampler.Params(tau=1))  # 1 is the fraction 1, i.e. T
    # Degenerate pivots (threshold never reached, or m = T) still reflect into [0, T).
    for name, T in (("cosine", 50), ("quad", 50)):
        s = SpeedSampler(NoiseSchedule.create(name, num_timesteps=T),
                         SpeedSampler.Params(tau=10))
        assert 1 <= s.pivot <= T - 1
        t = s.sample(64, ctx(n=64)).t
        assert int(t.min()) >= 0 and int(t.max()) < T


# --- log-normal -----------------------------------------------------------------------------


def median_t(p: torch.Tensor) -> int:
    return int(torch.nonzero(torch.cumsum(p, 0) >= 0.5)[0])


def test_lognormal_linear_and_cosine():
    p = LogNormalSampler(LINEAR).probs()
    assert 80 <= median_t(p) <= 96
    assert float(p[:100].sum()) == pytest.approx(0.54, abs=0.01)
    assert float(p[100:300].sum()) == pytest.approx(0.34, abs=0.01)
    assert float(p[600:].sum()) == pytest.approx(0.006, abs=0.001)
    cos = LogNormalSampler(NoiseSchedule.create("cosine")).probs()
    assert abs(median_t(cos) - 179) <= 8
    assert float(cos[:100].sum()) == pytest.approx(0.32, abs=0.01)


def test_lognormal_probs_match_nearest_log_sigma_monte_carlo():
    """p(t) equals the law of argmin_t |ln sigma_t - ln sigma| with ln sigma ~ N(-1.2, 1.2^2)."""
    gen = torch.Generator().manual_seed(0)
    log_sigma = torch.as_tensor(np.log(LINEAR.sigma))
    draws = torch.randn(200_000, generator=gen, dtype=torch.float64) * 1.2 - 1.2
    t = torch.bucketize(draws, 0.5 * (log_sigma[1:] + log_sigma[:-1]))
    empirical = torch.bincount(t, minlength=1000).double() / len(t)
    p = LogNormalSampler(LINEAR).probs()
    for lo, hi in ((0, 50), (50, 100), (100, 300), (300, 1000)):
        assert float(empirical[lo:hi].sum()) == pytest.approx(float(p[lo:hi].sum()), abs=0.004)
    sampled = LogNormalSampler(LINEAR, seed=1).sample(20_000, ctx(n=1)).t
    assert abs(float(sampled.double().median()) - median_t(p)) <= 6


# --- curriculum -----------------------------------------------------------------------------


def test_curriculum_moves_mass_off_the_easiest_quarter():
    s = CurriculumSampler(LINEAR)
    easy = [float(s.probs_at(pr)[750:].sum()) for pr in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert easy[0] == pytest.approx(0.25, abs=1e-12)  # uniform at progress 0
    assert all(a > b for a, b in zip(easy, easy[1:], strict=False))
    torch.testing.assert_close(s.probs(), SAMPLERS["uniform"](LINEAR).probs())
    # Gaussian part: N_disc((t + 0.5)/T; 0.3, 0.2), normalised over t.
    u = (np.arange(1000) + 0.5) / 1000
    g = np.exp(-0.5 * ((u - 0.3) / 0.2) ** 2)
    np.testing.assert_allclose(s.probs_at(1.0).numpy(), 0.2 / 1000 + 0.8 * g / g.sum(),
                               rtol=1e-10)
    # probs() follows the progress of the last sample() call; lam saturates after ramp_end.
    s.sample(4, ctx(progress=0.5))
    torch.testing.assert_close(s.probs(), s.probs_at(0.5))
    late = CurriculumSampler(LINEAR, CurriculumSampler.Params(ramp_start=0.2, ramp_end=0.4))
    assert late.weight_at(0.1) == 0.0 and late.weight_at(0.3) == pytest.approx(0.4)
    assert late.weight_at(0.4) == pytest.approx(0.8) and late.weight_at(0.9) == pytest.approx(0.8)
    with pytest.raises(ValidationError, match="ramp_start"):
        CurriculumSampler.Params(ramp_start=0.5, ramp_end=0.5)


# --- loss-second-moment ---------------------------------------------------------------------


def feed(s: LossSecondMomentSampler, t: list[int] | torch.Tensor, losses) -> None:
    t = torch.as_tensor(t, dtype=torch.int64)
    s.observe(Draw(t=t, importance_weight=torch.ones(len(t))),
              torch.as_tensor(losses, dtype=torch.float32), ctx())


def test_lsm_warmup_then_sqrt_second_moment():
    T, H = 20, 3
    s = LossSecondMomentSampler(NoiseSchedule.create("linear", num_timesteps=T),
                                LossSecondMomentSampler.Params(history=H))
    uniform = torch.full((T,), 1 / T, dtype=torch.float64)
    rng = np.random.default_rng(0)
    table = rng.uniform(0.1, 2.0, size=(5, T))  # 5 rounds of one loss per timestep
    for r in range(5):
        order = rng.permutation(T)
        feed(s, order, table[r, order])
        if r < H - 1:
            torch.testing.assert_close(s.probs(), uniform)  # warm-up: some t lacks H losses
            assert s.metrics()["sampler/warmup_fraction"] == 0.0
    kept = table[-H:].astype(np.float32).astype(np.float64)  # FIFO keeps the last H rounds
    w = np.sqrt((kept**2).mean(axis=0))
    expected = 0.999 * w / w.sum() + 0.001 / T
    np.testing.assert_allclose(s.probs().numpy(), expected, rtol=1e-10)
    assert s.metrics()["sampler/warmup_fraction"] == 1.0
    # Drawn weights are 1/(T p_t).
    draw = s.sample(64, ctx(n=64))
    np.testing.assert_allclose(draw.importance_weight.numpy(),
                               1 / (T * expected[draw.t.numpy()]), rtol=1e-6)


def test_lsm_repeated_timesteps_in_one_batch_and_non_finite():
    T, H = 4, 3
    s = LossSecondMomentSampler(NoiseSchedule.create("linear", num_timesteps=T),
                                LossSecondMomentSampler.Params(history=H))
    # t = 1 six times in one batch: only its last 3 losses (4, 5, 6) survive.
    feed(s, [1, 0, 1, 1, 2, 1, 3, 1, 1, 0, 2, 3, 0, 2, 3],
         [1, 7, 2, 3, 8, 4, float("nan"), 5, 6, 7, 8, 9, 7, 8, 9])
    assert s.state_dict()["writes"].tolist() == [3, 6, 3, 2]  # the NaN was not stored
    feed(s, [3], [float("inf")])
    assert not s.warmed_up()
    feed(s, [3], [9])
    assert s.warmed_up()
    w = np.sqrt(np.array([49, (16 + 25 + 36) / 3, 64, 81]))
    np.testing.assert_allclose(s.probs().numpy(), 0.999 * w / w.sum() + 0.001 / T, rtol=1e-6)
    # Ring buffer wraps: two more losses for t = 1 replace its two oldest (4 and 5).
    feed(s, [1, 1], [10, 10])
    w[1] = np.sqrt((36 + 100 + 100) / 3)
    np.testing.assert_allclose(s.probs().numpy(), 0.999 * w / w.sum() + 0.001 / T, rtol=1e-6)


def weighted_ctx(weighting, n: int = 8) -> StepContext:
    return StepContext(step=0, kimg=0.0, progress=0.0, lr=1e-3, x0=torch.zeros(n, 1, 8, 8),
                       weighting=weighting)


def test_step_context_loss_weight():
    t = torch.tensor([0, 7, 999])
    torch.testing.assert_close(ctx().loss_weight(t), torch.ones(3))
    vlb = VLBWeighting(LINEAR)
    torch.testing.assert_close(weighted_ctx(vlb).loss_weight(t), vlb.weights(t))


def test_lsm_stores_the_weighted_loss_exactly():
    T = 10
    sched = NoiseSchedule.create("linear", num_timesteps=T)
    p2 = P2Weighting(sched)
    losses = np.linspace(0.5, 2.0, T)
    weighted = LossSecondMomentSampler(sched, LossSecondMomentSampler.Params(history=1))
    unweighted = LossSecondMomentSampler(
        sched, LossSecondMomentSampler.Params(history=1, observe="unweighted"))
    for s in (weighted, unweighted):
        s.observe(Draw(t=torch.arange(T), importance_weight=torch.ones(T)),
                  torch.as_tensor(losses, dtype=torch.float32), weighted_ctx(p2))
    w = p2.weights(torch.arange(T)).double().numpy() * losses.astype(np.float32)
    np.testing.assert_allclose(weighted.probs().numpy(), 0.999 * w / w.sum() + 0.001 / T,
                               rtol=1e-10)
    u = losses.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(unweighted.probs().numpy(), 0.999 * u / u.sum() + 0.001 / T,
                               rtol=1e-10)


def test_lsm_with_vlb_weighting_converges_to_sqrt_weighted_second_moment():
    """Driven with its own draws: p_t -> (1 - u) s_t / sum s + u / T, s_t = sqrt(E[(w_t L_t)^2]).

    Known per-t law: L_t = m_t U_t with m_t = 2 - t/T; U_t = 1 for odd t and {0.2, 1.8} with
    probability 1/2 each for even t, so E[L_t] = m_t but E[L_t^2] = 1.64 m_t^2 on even t (a 28%
    gap between sqrt(E L^2) and E L). uniform_prob = 0.2 so the mixing term is large.
    """
    T, H, n, u = 50, 1000, 5000, 0.2
    sched = NoiseSchedule.create("linear", num_timesteps=T)
    vlb = VLBWeighting(sched)  # normalised c_t: 3.05 at t = 0 down to 0.55
    c = weighted_ctx(vlb, n)
    tt = torch.arange(T)
    m = 2.0 - tt.double() / T
    second = torch.where(tt % 2 == 0, 0.5 * (0.2**2 + 1.8**2), 1.0)  # E[U_t^2]
    w = vlb.weights(tt).double()
    uniform = torch.full((T,), 1 / T, dtype=torch.float64)

    def expected(scale: torch.Tensor) -> torch.Tensor:
        return (1 - u) * scale / scale.sum() + u / T

    def drive(s: LossSecondMomentSampler, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        steps = 0
        while not s.warmed_up():  # uniform draws until every t holds H losses
            torch.testing.assert_close(s.probs(), uniform)
            draw = s.sample(n, c)
            coin = torch.rand(n, generator=gen) < 0.5
            noise = torch.where(draw.t % 2 == 0, torch.where(coin, 0.2, 1.8), 1.0)
            s.observe(draw, (m[draw.t] * noise).float(), c)
            steps += 1
        for _ in range(20):  # then its own non-uniform draws refresh the FIFOs
            draw = s.sample(n, c)
            coin = torch.rand(n, generator=gen) < 0.5
            noise = torch.where(draw.t % 2 == 0, torch.where(coin, 0.2, 1.8), 1.0)
            s.observe(draw, (m[draw.t] * noise).float(), c)
        assert steps >= T * H // n

    params = dict(history=H, uniform_prob=u)
    weighted = LossSecondMomentSampler(sched, LossSecondMomentSampler.Params(**params), seed=1)
    drive(weighted, seed=2)
    p_weighted = expected(w * m * second.sqrt())
    # Tolerance: about 3 standard errors of sqrt(mean of H = 1000 draws of U^2) on even t.
    torch.testing.assert_close(weighted.probs(), p_weighted, rtol=0.05, atol=0)

    plain = LossSecondMomentSampler(
        sched, LossSecondMomentSampler.Params(**params, observe="unweighted"), seed=1)
    drive(plain, seed=2)
    p_plain = expected(m * second.sqrt())
    torch.testing.assert_close(plain.probs(), p_plain, rtol=0.05, atol=0)
    # The two targets are far apart (w spans 0.55..3.05), and neither is sqrt-free E[L].
    assert float((p_weighted / p_plain).max() / (p_weighted / p_plain).min()) > 4
    assert float((expected(w * m) / p_weighted - 1).abs().max()) > 0.1


def test_gradvar_scales_probed_norms_by_the_squared_weight():
    T, bins = 100, 4
    sched = NoiseSchedule.create("linear", num_timesteps=T)
    vlb = VLBWeighting(sched)
    results = {}
    for mode in ("weighted", "unweighted"):
        s = GradVarSampler(sched, GradVarSampler.Params(bins=bins, probe_every=1,
                                                        rows_per_probe=8, observe=mode), seed=4)
        c = weighted_ctx(vlb, 16)
        spec = s.probe_request(c)
        g = 1.0 + spec.t.float()
        s.observe_probe(ProbeResult(spec=spec, before=torch.zeros(8), grad_sq_norm=g), c)
        gw = g.double() * (vlb.weights(spec.t).double() ** 2 if mode == "weighted" else 1.0)
        b = spec.t * bins // T
        mean = torch.bincount(b, weights=gw, minlength=bins) / torch.bincount(b, minlength=bins)
        torch.testing.assert_close(s.state_dict()["ema"], mean, rtol=1e-12, atol=0)
        rms = mean.sqrt()
        torch.testing.assert_close(s.probs().view(bins, T // bins).sum(1),
                                   0.9 * rms / rms.sum() + 0.1 * (T // bins) / T)
        results[mode] = s.probs()
    assert not torch.allclose(results["weighted"], results["unweighted"])


def test_occurrence_rank():
    t = torch.tensor([5, 3, 5, 5, 0, 3, 9])
    assert occurrence_rank(t).tolist() == [0, 0, 1, 2, 0, 1, 0]


# --- gradient-variance sampler --------------------------------------------------------------


def test_gradvar_probe_schedule_and_round_robin():
    s = GradVarSampler(LINEAR, GradVarSampler.Params(probe_every=5, bins=20, rows_per_probe=8))
    seen_bins = []
    for step in range(30):
        spec = s.probe_request(ctx(step, n=16))
        if step % 5:
            assert spec is None
            continue
        assert spec.kind == "grad_norm" and spec.loss == "mse"
        assert spec.t.shape == (8,) and spec.image_index.shape == (8,)
        assert int(spec.image_index.max()) < 16
        seen_bins.extend(torch.div(spec.t * 20, 1000, rounding_mode="floor").tolist())
    assert seen_bins[:24] == [i % 20 for i in range(24)]  # round-robin over bins
    assert set(seen_bins) == set(range(20))


def test_gradvar_moves_towards_large_gradient_bins():
    T, bins = 100, 4
    s = GradVarSampler(NoiseSchedule.create("linear", num_timesteps=T),
                       GradVarSampler.Params(bins=bins, probe_every=1, rows_per_probe=4,
                                             ema=0.5, uniform_mix=0.1))
    uniform = torch.full((T,), 1 / T, dtype=torch.float64)
    big = {0: 16.0, 1: 1.0, 2: 1.0, 3: 4.0}  # squared gradient norms per bin

    def probe_once(step: int, values: dict[int, float], bad: bool = False) -> None:
        spec = s.probe_request(ctx(step))
        g = torch.tensor([values[int(b)] for b in spec.t // 25])
        if bad:
            g[0], g[1] = float("nan"), float("inf")
        s.observe_probe(ProbeResult(spec=spec, before=torch.zeros(len(g)), grad_sq_norm=g),
                        ctx(step))

    torch.testing.assert_close(s.probs(), uniform)
    probe_once(0, big)
    p = s.probs()
    rms = torch.tensor([4.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    p_bin = 0.9 * rms / rms.sum() + 0.1 * 25 / T
    torch.testing.assert_close(p.view(bins, 25).sum(1), p_bin)
    assert torch.equal(p[:25], p[:25].flip(0))  # uniform within a bin
    # EMA (0.5) towards a new measurement; non-finite values leave their bins alone.
    probe_once(1, {0: 0.0, 1: 1.0, 2: 1.0, 3: 36.0}, bad=True)  # bins 0, 1 get NaN / inf
    ema = torch.tensor([16.0, 1.0, 1.0, 20.0], dtype=torch.float64)
    torch.testing.assert_close(s.state_dict()["ema"], ema)
    rms = ema.sqrt()
    torch.testing.assert_close(s.probs().view(bins, 25).sum(1),
                               0.9 * rms / rms.sum() + 0.1 * 25 / T)
    assert float(s.probs()[:25].sum()) > float(s.probs()[25:50].sum())


# --- config errors --------------------------------------------------------------------------


def test_bad_sampler_param_names_the_field():
    with pytest.raises(ConfigError) as info:  # refused when the config loads
        load_config(None, ["timesteps.sampler.name=speed", "timesteps.sampler.params.k=0"])
    msg = str(info.value)
    assert "timesteps.sampler.params.k" in msg and "\n" not in msg


def test_unknown_param_lists_accepted_ones():
    with pytest.raises(ConfigError, match="speed accepts: dual, dual_threshold, k, tau"):
        load_config(None, ["timesteps.sampler.name=speed", "timesteps.sampler.params.kk=2"])
    with pytest.raises(ConfigError, match="min_snr accepts: gamma"):
        load_config(None, ["timesteps.weighting.name=min_snr",
                           "timesteps.weighting.params.snr_gamma=5"])


def test_curriculum_ramp_order_is_a_config_error():
    with pytest.raises(ConfigError, match="ramp_start .* must be less than ramp_end") as info:
        load_config(None, ["timesteps.sampler.name=curriculum",
                           "timesteps.sampler.params.ramp_start=0.6",
                           "timesteps.sampler.params.ramp_end=0.2"])
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# logit_normal, mode, laplace (docs/algorithms.md 6.1-6.3): noise-level laws on discrete timesteps


def nearest_index(schedule: NoiseSchedule, log_snr: np.ndarray) -> np.ndarray:
    """The timestep whose log SNR is nearest each value (log SNR decreases with t)."""
    lam = schedule.log_snr
    mid = 0.5 * (lam[1:] + lam[:-1])  # decreasing
    return np.searchsorted(-mid, -np.asarray(log_snr))


def histogram_agrees(p: torch.Tensor, idx: np.ndarray) -> None:
    """Empirical frequencies of ``idx`` within 5 binomial standard deviations of ``p``."""
    n = idx.size
    emp = np.bincount(idx, minlength=p.numel()) / n
    q = p.numpy()
    tol = 5 * np.sqrt(q * (1 - q) / n) + 2.0 / n
    assert np.all(np.abs(emp - q) <= tol), float(np.max(np.abs(emp - q) - tol))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("m,s", [(0.0, 1.0), (-1.2, 1.2), (0.8, 0.5)])
def test_logit_normal_is_lognormal_with_p_mean_m_and_p_std_s(schedule, m, s):
    from tsearch.timesteps.logit_normal import LogitNormalSampler

    sched = NoiseSchedule.create(schedule)
    p = LogitNormalSampler(sched, LogitNormalSampler.Params(m=m, s=s)).probs()
    same = LogNormalSampler(sched, LogNormalSampler.Params(p_mean=m, p_std=s)).probs()
    assert torch.allclose(p, same, rtol=1e-12, atol=1e-15)
    # From SD3's own definition: t = sigmoid(u), SNR = ((1 - t) / t)^2, nearest in log SNR.
    u = np.random.default_rng(0).normal(m, s, 1_000_000)
    t = 1.0 / (1.0 + np.exp(-u))
    histogram_agrees(p, nearest_index(sched, 2.0 * np.log((1.0 - t) / t)))


@pytest.mark.parametrize("s", [1.29, 0.0, -0.9, 1.7])
def test_mode_probs_match_a_million_draws(s):
    from tsearch.timesteps.mode import ModeSampler

    sched = NoiseSchedule.create("linear")
    p = ModeSampler(sched, ModeSampler.Params(s=s)).probs()
    u = np.random.default_rng(1).uniform(0.0, 1.0, 1_000_000)
    t = 1.0 - u - s * (np.cos(np.pi * u / 2.0) ** 2 - 1.0 + u)  # SD3's f_mode
    t = t[(t > 0) & (t < 1)]
    histogram_agrees(p, nearest_index(sched, 2.0 * np.log((1.0 - t) / t)))


# Under flow, index i is the cell [i/T, (i+1)/T) of t that training draws from (docs 6.6).
FLOW_EDGES = np.arange(1001) / 1000


@pytest.mark.parametrize("s", [1.29, 0.0, -0.9, 1.7])
def test_flow_mode_cell_masses_are_exact(s):
    """P(i) = P(f(u) in [i/T, (i+1)/T)) for u ~ U(0, 1): F(upper) - F(lower), F(t) = 1 - f^-1(t)."""
    from scipy.optimize import brentq

    from tsearch.timesteps.mode import ModeSampler

    p = ModeSampler(NoiseSchedule.create("flow"), ModeSampler.Params(s=s)).probs().numpy()

    def f(u):
        return 1.0 - u - s * (np.cos(np.pi * u / 2.0) ** 2 - 1.0 + u)  # SD3's f_mode

    # Every edge: the mass below i/T is P(t < i/T) = 1 - f^-1(i/T), so f(1 - cumsum) = i/T.
    # float64 cumsum of 1000 terms errs by < 1e-13, times |f'| <= 1 + |s| (1 + pi/2) < 6.
    below = np.concatenate([[0.0], np.cumsum(p)])
    np.testing.assert_allclose(f(1.0 - below), FLOW_EDGES, rtol=0, atol=1e-12)
    # The end cells (13% off at s = 1.29 with the VP midpoint cells), from a root finder:
    # xtol 1e-15 on u against masses above 1e-4, so 1e-9 relative is loose.
    def inverse(tau):
        return brentq(lambda u: f(u) - tau, 0.0, 1.0, xtol=1e-15)

    assert p[0] == pytest.approx(1.0 - inverse(FLOW_EDGES[1]), rel=1e-9)
    assert p[-1] == pytest.approx(inverse(FLOW_EDGES[-2]), rel=1e-9)


def flow_cell_masses(cdf, sf, lower: np.ndarray, upper: np.ndarray, centre: float) -> np.ndarray:
    """F(upper) - F(lower), from the survival function above ``centre`` (tail-exact)."""
    return np.where(lower > centre, sf(lower) - sf(upper), cdf(upper) - cdf(lower))


@pytest.mark.parametrize("name,params", [("logit_normal", {}), ("logit_normal", {"m": 0.8,
                                                                                   "s": 0.5}),
                                         ("lognormal", {})])
def test_flow_gaussian_cell_masses_are_exact(name, params):
    from scipy import stats

    sampler = SAMPLERS[name](NoiseSchedule.create("flow"), SAMPLERS[name].Params(**params))
    m, s = (params.get("m", 0.0), params.get("s", 1.0)) if name == "logit_normal" else (-1.2, 1.2)
    with np.errstate(divide="ignore"):
        edges = np.log(FLOW_EDGES / (1.0 - FLOW_EDGES))  # ln sigma = logit(t), ends -inf, inf
    law = stats.norm(m, s)
    expected = flow_cell_masses(law.cdf, law.sf, edges[:-1], edges[1:], m)
    # Both sides float64 and tail-exact; 1e-9 relative covers scipy's and torch's ndtr.
    np.testing.assert_allclose(sampler.probs().numpy(), expected, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("shape,mu,scale", [("laplace", 0.0, 0.5), ("cauchy", 2.0, 0.3)])
def test_flow_laplace_cell_masses_are_exact(shape, mu, scale):
    from scipy import stats

    from tsearch.timesteps.laplace import LaplaceSampler

    params = LaplaceSampler.Params(mu=mu, scale=scale, shape=shape)
    p = LaplaceSampler(NoiseSchedule.create("flow"), params).probs().numpy()
    with np.errstate(divide="ignore"):
        lam = -2.0 * np.log(FLOW_EDGES / (1.0 - FLOW_EDGES))  # log SNR, decreasing in t
    law = (stats.laplace if shape == "laplace" else stats.cauchy)(loc=mu, scale=scale)
    expected = flow_cell_masses(law.cdf, law.sf, lam[1:], lam[:-1], mu)
    np.testing.assert_allclose(p, expected, rtol=1e-9, atol=1e-300)  # as above


def test_mode_refuses_scales_where_it_is_not_monotone():
    from tsearch.timesteps.mode import ModeSampler

    for bad in (-1.01, 2.0 / (np.pi - 2.0) + 1e-3):
        with pytest.raises(ValidationError):
            ModeSampler.Params(s=bad)
    ModeSampler.Params(s=-1.0)  # both ends of SD3's range are valid
    ModeSampler.Params(s=2.0 / (np.pi - 2.0))


@pytest.mark.parametrize("shape,mu,scale", [("laplace", 0.0, 0.5), ("laplace", -3.0, 2.0),
                                            ("cauchy", 0.0, 1.0), ("cauchy", 2.0, 0.3)])
def test_laplace_and_cauchy_cell_masses_and_median_in_log_snr(shape, mu, scale):
    from scipy import stats

    from tsearch.timesteps.laplace import LaplaceSampler

    sched = NoiseSchedule.create("linear")
    params = LaplaceSampler.Params(mu=mu, scale=scale, shape=shape)
    p = LaplaceSampler(sched, params).probs().numpy()
    law = (stats.laplace if shape == "laplace" else stats.cauchy)(loc=mu, scale=scale)
    lam = sched.log_snr
    mid = 0.5 * (lam[1:] + lam[:-1])
    for i in (1, 300, 600, 998):  # a cell holds log SNR between its two midpoints
        assert p[i] == pytest.approx(law.cdf(mid[i - 1]) - law.cdf(mid[i]), rel=1e-9, abs=1e-15)
    assert p[0] == pytest.approx(law.sf(mid[0]), rel=1e-9)  # the open end cells
    assert p[-1] == pytest.approx(law.cdf(mid[-1]), rel=1e-9, abs=1e-15)
    # The median of log SNR is mu: the cumulative mass passes 1/2 in the cell holding mu.
    median_index = int(np.searchsorted(np.cumsum(p), 0.5))
    assert median_index == int(nearest_index(sched, np.array([mu]))[0])


# --------------------------------------------------------------------------------------------
# uncertainty (EDM2, docs/algorithms.md 6.4): a learned u(t) that equalises the expected loss


def test_uncertainty_weighting_equalises_a_loss_that_differs_100x_across_t():
    from tsearch.timesteps.uncertainty import UncertaintyWeighting

    T = LINEAR.num_timesteps
    mean_loss = torch.as_tensor(10 ** (2 * np.arange(T) / (T - 1)), dtype=torch.float32)
    w = UncertaintyWeighting(LINEAR)
    assert torch.equal(w.weights(torch.arange(T)), torch.ones(T))  # starts unweighted
    opt = torch.optim.Adam(w.parameters(), lr=2e-2)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 2000)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):  # exponential per-sample losses with mean mean_loss[t]
        t = torch.randint(0, T, (256,), generator=g)
        losses = mean_loss[t] * -torch.log(torch.rand(256, generator=g))
        opt.zero_grad()
        w.objective(losses, t).mean().backward()
        opt.step()
        decay.step()
    weighted = (mean_loss * w.weights(torch.arange(T))).numpy().reshape(10, 100).mean(axis=1)
    unweighted = mean_loss.numpy().reshape(10, 100).mean(axis=1)
    assert unweighted.max() / unweighted.min() > 30  # deciles of t: far apart unweighted ...
    assert np.all(np.abs(weighted / weighted.mean() - 1) < 0.10), weighted  # ... within 10%


def test_uncertainty_state_round_trips_and_the_plan_refuses_a_factor():
    from tsearch.timesteps.base import Draw
    from tsearch.timesteps.plan import from_config
    from tsearch.timesteps.uncertainty import UncertaintyWeighting

    a, b = UncertaintyWeighting(LINEAR), UncertaintyWeighting(LINEAR)
    with torch.no_grad():
        a.layer.weight.normal_()
    b.load_state_dict(a.state_dict())
    t = torch.arange(1000)
    assert torch.equal(a.weights(t), b.weights(t)) and not torch.equal(a.weights(t), t * 0 + 1)
    cfg = load_config(None, ["timesteps.weighting.name=uncertainty"])
    plan = from_config(cfg)
    draw = Draw(t=torch.tensor([3, 500]), importance_weight=torch.ones(2))
    with pytest.raises(TypeError, match=r"plan\.loss"):
        plan.loss_factor(draw)
    losses = torch.tensor([2.0, 3.0], requires_grad=True)
    plan.loss(draw, losses).backward()  # u = 0 at the start: the plain mean, and a gradient
    assert torch.allclose(losses.grad, torch.tensor([0.5, 0.5]))
    assert all(p.grad is not None for p in plan.weighting.parameters())
