"""Schedule tables against the values in docs/algorithms.md 0.1 / 0.2 and SpeeD's constants."""

from __future__ import annotations

import numpy as np
import pytest

from tsearch.diffusion.schedule import NoiseSchedule

LOGSNR = {  # docs/algorithms.md 0.1: logSNR at t = 0 / 100 / 250 / 500 / 750 / 999
    "linear": (4.0e-5, [9.21, 2.14, 0.09, -2.47, -5.71, -10.12]),
    "quad": (7.3e-4, [9.21, 3.52, 1.52, -0.70, -3.23, -7.22]),
    "cosine": (2.4e-9, [10.09, 3.53, 1.70, -0.03, -1.79, -19.84]),
}
T_AT = [0, 100, 250, 500, 750, 999]


@pytest.mark.parametrize("name", sorted(LOGSNR))
def test_alphas_cumprod_and_logsnr_match_table(name):
    s = NoiseSchedule.create(name)
    last, logsnr = LOGSNR[name]
    assert s.alphas_cumprod[-1] == pytest.approx(last, rel=0.02)
    np.testing.assert_allclose(s.log_snr[T_AT], logsnr, atol=0.006)
    assert s.alphas_cumprod.dtype == np.float64
    assert np.all(np.diff(s.alphas_cumprod) < 0)


def test_quad_is_linear_in_sqrt_beta():
    s = NoiseSchedule.create("quad")
    d = np.diff(np.sqrt(s.betas))
    np.testing.assert_allclose(d, d[0], rtol=1e-9)


def test_cosine_betas_clipped():
    s = NoiseSchedule.create("cosine")
    assert s.betas.max() == pytest.approx(0.999)


# docs/algorithms.md 0.2: c_t at t = 1, 10, 100, 250, 500, 750, 999
C_T = {
    ("linear", "fixed_large"): [0.273, 0.068, 0.0100, 0.0053, 0.0055, 0.0077, 0.0102],
    ("linear", "fixed_small"): [0.600, 0.079, 0.0102, 0.0054, 0.0055, 0.0077, 0.0102],
    ("cosine", "fixed_large"): [0.264, 0.062, 0.0094, 0.0043, 0.0031, 0.0045, 500.0],
}


@pytest.mark.parametrize("key", sorted(C_T))
def test_vlb_weight_matches_table(key):
    s = NoiseSchedule.create(key[0], variance=key[1])
    got = s.vlb_weight[[1, 10, 100, 250, 500, 750, 999]]
    np.testing.assert_allclose(got, C_T[key], rtol=0.02)


@pytest.mark.parametrize("name,c0", [("linear", 0.917), ("quad", 0.987)])
def test_vlb_weight_at_zero_uses_the_reference_variance(name, c0):
    """sigma_0^2 = beta~_1 under both variances (improved-diffusion, ATS): c_0 = b0/(2 b~_1 a0)."""
    s = NoiseSchedule.create(name)
    b = s.betas
    ab = np.cumprod(1 - b)
    post_1 = b[1] * (1 - ab[0]) / (1 - ab[1])  # beta~_1
    expected = b[0] / (2 * post_1 * (1 - b[0]))
    assert expected == pytest.approx(c0, abs=5e-4)  # docs/algorithms.md 0.2, last paragraph
    assert s.model_variance[0] == pytest.approx(post_1, rel=1e-12)
    assert s.vlb_weight[0] == pytest.approx(expected, rel=1e-12)
    assert s.vlb_constant[0] == 0.0  # sigma_0^2 equals the clipped beta~_0
    # t >= 1 unchanged: sigma_t^2 = beta_t, so c_t = beta_t / (2 alpha_t (1 - abar_t)).
    np.testing.assert_allclose(s.model_variance[1:], b[1:], rtol=0)
    np.testing.assert_allclose(s.vlb_weight[1:], b[1:] / (2 * (1 - b[1:]) * (1 - ab[1:])),
                               rtol=1e-12)
    assert s.vlb_constant[1:].min() >= 0  # KL constants are non-negative
    assert np.all(np.isfinite(s.vlb_constant))
    # Fixed-small: beta~_0 = 0 clipped to beta~_1 (as before), the same c_0, constants all 0.
    small = NoiseSchedule.create(name, variance="fixed_small")
    assert small.model_variance[0] == pytest.approx(post_1, rel=1e-12)
    assert small.vlb_weight[0] == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(small.model_variance[1:], small.posterior_variance[1:], rtol=0)
    np.testing.assert_allclose(small.vlb_constant, 0.0, atol=1e-12)


def test_snr_sigma_consistent():
    s = NoiseSchedule.create("linear")
    np.testing.assert_allclose(s.sigma, s.snr**-0.5)
    assert s.sigma[0] == pytest.approx(0.0100, rel=0.01)
    assert s.sigma[-1] == pytest.approx(157.4, rel=0.01)


@pytest.mark.parametrize("name,m", [("linear", 642), ("quad", 829), ("cosine", 959)])
def test_speed_meaningful_steps(name, m):
    assert NoiseSchedule.create(name).meaningful_steps() == m


def test_speed_tau_700_is_the_5e5_boundary_and_variance_rate_peak():
    s = NoiseSchedule.create("linear")
    assert s.meaningful_steps(5e-5) == 700
    assert int(np.argmax(s.increment_variance_rate)) == 219


def test_increment_moments_match_monte_carlo():
    s = NoiseSchedule.create("linear", num_timesteps=1000)
    rng = np.random.default_rng(0)
    t, x0 = 300, 0.7
    mean_coef, var = s.increment_moments()
    ab, a_next = s.alphas_cumprod[t], s.alphas[t + 1]
    x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * rng.standard_normal(200_000)
    x_next = np.sqrt(a_next) * x_t + np.sqrt(1 - a_next) * rng.standard_normal(200_000)
    delta = x_next - x_t
    assert delta.mean() == pytest.approx(mean_coef[t] * x0, abs=2e-4)
    assert delta.var() == pytest.approx(var[t], rel=0.02)


def test_rescaled_short_schedule_and_bad_name():
    s = NoiseSchedule.create("linear", num_timesteps=100)
    assert s.betas[0] == pytest.approx(1e-3) and s.betas[-1] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="unknown schedule"):
        NoiseSchedule.create("sigmoid")


def test_flow_betas_are_rectified_flow_as_a_scaled_vp_process():
    from tsearch.diffusion.schedule import flow_betas, flow_times

    T = 1000
    sched = NoiseSchedule(name="flow", betas=flow_betas(T))
    t = flow_times(T)
    assert np.all((sched.betas > 0) & (sched.betas < 1))
    np.testing.assert_allclose(sched.snr, ((1 - t) / t) ** 2, rtol=1e-9)
    np.testing.assert_allclose(sched.sigma, t / (1 - t), rtol=1e-9)  # ln sigma = logit(t)
    # x_t of rectified flow, rescaled, is the VP sample at the same index (same x0 and eps).
    gen = np.random.default_rng(0)
    x0, eps = gen.normal(size=(3, 16)), gen.normal(size=(3, 16))
    for i in (0, 499, 999):
        flow = (1 - t[i]) * x0 + t[i] * eps
        ab = sched.alphas_cumprod[i]
        vp = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
        np.testing.assert_allclose(flow / np.sqrt((1 - t[i]) ** 2 + t[i] ** 2), vp, rtol=1e-9)
