"""Forward process, losses and generation on tiny real diffusers networks."""

from __future__ import annotations

import math

import pytest
import torch

from tsearch.config import ModelConfig
from tsearch.diffusion.generate import generate_images, make_scheduler, per_image_noise
from tsearch.diffusion.loss import (
    per_sample_mse,
    per_sample_vlb_bpd,
    predict_eps,
    predict_x0,
    prediction_target,
    q_sample,
)
from tsearch.diffusion.model import build_model
from tsearch.diffusion.schedule import NoiseSchedule

SCHED = NoiseSchedule.create("linear")


class Oracle(torch.nn.Module):
    """Returns a fixed output: lets losses be checked in closed form."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, t):
        return self.out


def test_q_sample_and_inversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0, 10, 200, 500, 800, 999])
    x_t = q_sample(SCHED, x0, t, eps)
    torch.testing.assert_close(predict_x0(SCHED, x_t, t, eps), x0, atol=2e-3, rtol=1e-3)
    for pred in ("eps", "x0", "v"):
        target = prediction_target(SCHED, x0, t, eps, pred)
        torch.testing.assert_close(predict_eps(SCHED, x_t, t, target, pred), eps,
                                   atol=5e-3, rtol=1e-3)


def test_per_sample_losses_closed_form():
    x0 = torch.zeros(3, 1, 2, 2)
    eps = torch.ones(3, 1, 2, 2)
    t = torch.tensor([1, 100, 500])
    out = torch.zeros(3, 1, 2, 2)  # predicts eps = 0, so eps-MSE = 1 everywhere
    mse = per_sample_mse(Oracle(out), SCHED, x0, t, eps)
    torch.testing.assert_close(mse, torch.ones(3))
    bpd = per_sample_vlb_bpd(Oracle(out), SCHED, x0, t, eps)
    expected = (SCHED.vlb_constant[t.numpy()] + SCHED.vlb_weight[t.numpy()]) / math.log(2)
    torch.testing.assert_close(bpd, torch.as_tensor(expected, dtype=torch.float32))
    perfect = per_sample_vlb_bpd(Oracle(eps), SCHED, x0, t, eps)
    torch.testing.assert_close(perfect, torch.as_tensor(SCHED.vlb_constant[t.numpy()] /
                                                        math.log(2), dtype=torch.float32))


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
@pytest.mark.parametrize("name", ["linear", "quad"])
def test_vlb_bpd_matches_the_reference_gaussian_kl_at_every_t(name, variance):
    """per_sample_vlb_bpd = ATS ``compute_kl_divergence``: normal_kl(q posterior, p), t = 0 too.

    The reference, in float64: posterior log variance clipped at t = 0 to log beta~_1; model log
    variance log(append(beta~_1, betas[1:])) (fixed-large) or the clipped posterior one
    (fixed-small); model mean = posterior mean at the predicted x0 (no clipping).
    """
    sched = NoiseSchedule.create(name, variance=variance)
    b = torch.as_tensor(sched.betas)
    ab = torch.cumprod(1 - b, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    post = b * (1 - ab_prev) / (1 - ab)
    post_logvar = torch.log(torch.cat([post[1:2], post[1:]]))
    model_logvar = (torch.log(torch.cat([post[1:2], b[1:]])) if variance == "fixed_large"
                    else post_logvar)
    g = torch.Generator().manual_seed(5)
    t = torch.tensor([0, 0, 1, 10, 100, 999])
    x0 = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    eps_hat = eps + 0.3 * torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)

    def view(v):
        return v[t].view(-1, 1, 1, 1)

    x_t = view(ab).sqrt() * x0 + (1 - view(ab)).sqrt() * eps
    coef1 = view(b) * view(ab_prev).sqrt() / (1 - view(ab))
    coef2 = (1 - view(b)).sqrt() * (1 - view(ab_prev)) / (1 - view(ab))
    pred_x0 = (x_t - (1 - view(ab)).sqrt() * eps_hat) / view(ab).sqrt()
    m1, m2 = coef1 * x0 + coef2 * x_t, coef1 * pred_x0 + coef2 * x_t
    lv1, lv2 = view(post_logvar), view(model_logvar)
    kl = 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2))
    reference = kl.flatten(1).mean(1) / math.log(2)

    ours = per_sample_vlb_bpd(Oracle(eps_hat.float()), sched, x0.float(), t, eps.float())
    torch.testing.assert_close(ours.double(), reference, rtol=1e-4, atol=1e-6)
    # t = 0: no constant, c_0 = beta_0 / (2 beta~_1 alpha_0) on the eps-MSE.
    mse0 = ((eps_hat - eps) ** 2).flatten(1).mean(1)[:2]
    c0 = float(b[0] / (2 * post[1] * (1 - b[0])))
    torch.testing.assert_close(ours[:2].double(), c0 * mse0 / math.log(2), rtol=1e-5, atol=0)


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_models_build_and_predict_input_shape(arch):
    cfg = ModelConfig(arch=arch, channels=(8, 16), attention=(False, True), norm_groups=4,
                      dit_layers=1, dit_heads=2, dit_head_dim=8, patch_size=2)
    model = build_model(cfg, channels=3, resolution=8)
    x = torch.randn(2, 3, 8, 8)
    out = model(x, torch.tensor([3, 900]))
    assert out.shape == x.shape
    loss = per_sample_mse(model, SCHED, x, torch.tensor([3, 900]), torch.randn_like(x))
    loss.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_per_image_noise_independent_of_batching():
    a = per_image_noise(5, (1, 4, 4), seed=10)
    b = torch.cat([per_image_noise(2, (1, 4, 4), seed=10), per_image_noise(3, (1, 4, 4), 12)])
    torch.testing.assert_close(a, b)


def test_timestep_subsequence():
    """The 'leading' skip range(0, T, T // S) of ATS and improved-diffusion, run backwards."""
    for method in ("ddim", "ddpm"):
        seq = make_scheduler(SCHED, method, 50).timesteps.tolist()
        assert seq == list(range(980, -1, -20))


@pytest.mark.parametrize("method,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_generation_is_seeded_per_image(method, eta):
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=(8, 16), attention=(False, False), norm_groups=4),
                        channels=1, resolution=8)
    kwargs = dict(method=method, steps=5, eta=eta, seed=7)
    full = generate_images(model, SCHED, 6, (1, 8, 8), batch_size=6, **kwargs)
    split = generate_images(model, SCHED, 6, (1, 8, 8), batch_size=4, **kwargs)
    assert full.shape == (6, 1, 8, 8)
    assert full.min() >= -1 and full.max() <= 1
    torch.testing.assert_close(full, split, atol=1e-5, rtol=1e-5)
    other = generate_images(model, SCHED, 6, (1, 8, 8), batch_size=6,
                            **{**kwargs, "seed": 8})
    assert not torch.allclose(full, other)


def test_ddim_with_oracle_recovers_the_data():
    """With an exact eps predictor for a single data point, DDIM lands on that point."""
    target = torch.full((1, 1, 2, 2), 0.5)

    class Exact(torch.nn.Module):
        def forward(self, x, t):
            ab = SCHED.tensor("alphas_cumprod")[t].view(-1, 1, 1, 1)
            return (x - ab.sqrt() * target) / (1 - ab).sqrt()

    out = generate_images(Exact(), SCHED, 3, (1, 2, 2), steps=20, seed=0)
    torch.testing.assert_close(out, target.expand(3, 1, 2, 2), atol=1e-3, rtol=0)


FLOW = NoiseSchedule.create("flow")


def test_flow_loss_trains_the_velocity_at_the_drawn_time():
    """x_s = (1 - s) x0 + s eps, s = (t + offset) / T, the network sees s * T, target eps - x0."""
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, x, time):
            seen.update(x=x.clone(), time=time.clone())
            return torch.zeros_like(x)

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 2, 2, generator=g) * 2 - 1
    eps = torch.randn(3, 1, 2, 2, generator=g)
    t, offset = torch.tensor([0, 500, 999]), torch.tensor([0.25, 0.0, 0.99])
    mse = per_sample_mse(Recorder(), FLOW, x0, t, eps, "v", offset=offset)
    s = ((t + offset) / 1000).view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x"], (1 - s) * x0 + s * eps)
    torch.testing.assert_close(seen["time"], t + offset)
    torch.testing.assert_close(mse, ((eps - x0) ** 2).flatten(1).mean(1))
    per_sample_mse(Recorder(), FLOW, x0, t, eps, "v")  # no offset: the cell's middle
    torch.testing.assert_close(seen["time"], t + 0.5)
    with pytest.raises(ValueError, match="flow-matching loss"):
        per_sample_vlb_bpd(Recorder(), FLOW, x0, t, eps)


def _gaussian_velocity(a: float):
    """The exact marginal velocity when x0 ~ N(0, a^2): E[eps - x0 | x_s] is linear in x_s."""

    class Exact(torch.nn.Module):
        def forward(self, x, time):
            s = (time / FLOW.num_timesteps).view(-1, 1, 1, 1)
            var = (1 - s) ** 2 * a**2 + s**2
            return (s - (1 - s) * a**2) / var * x

    return Exact()


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_flow_samplers_follow_the_exact_ode(method):
    """For x0 ~ N(0, a^2) the ODE maps the latent z to a z; Heun's error is far below Euler's."""
    a = 0.3
    z = per_image_noise(4, (1, 2, 2), seed=5)[:, 0]
    err = {}
    for steps in (10, 200):
        out = generate_images(_gaussian_velocity(a), FLOW, 4, (1, 2, 2), method=method,
                              steps=steps, seed=5)
        err[steps] = float((out - a * z).abs().max())
    # 20x the steps: Euler's error falls ~20x (first order), Heun's ~400x (second order).
    ratio = err[200] / err[10]
    assert (0.03 < ratio < 0.1) if method == "euler" else ratio < 0.01
    assert err[200] < (1e-2 if method == "euler" else 1e-4)


def test_flow_sampler_with_an_exact_velocity_lands_on_a_single_data_point():
    """Straight paths: Euler is exact for one data point, whatever the number of steps."""
    target = torch.full((1, 1, 2, 2), 0.5)

    class Exact(torch.nn.Module):
        def forward(self, x, time):
            s = (time / FLOW.num_timesteps).view(-1, 1, 1, 1)
            return (x - target) / s

    for steps in (1, 3, 10):
        out = generate_images(Exact(), FLOW, 3, (1, 2, 2), method="euler", steps=steps, seed=0)
        torch.testing.assert_close(out, target.expand(3, 1, 2, 2), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not a flow sampler"):
        generate_images(Exact(), FLOW, 1, (1, 2, 2), method="ddim", steps=3)
    with pytest.raises(ValueError, match="not a vp sampler"):
        generate_images(Exact(), SCHED, 1, (1, 2, 2), method="euler", steps=3)
