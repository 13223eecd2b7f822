"""Forward process, losses and generation on tiny real diffusers networks."""

from __future__ import annotations

import math

import pytest
import torch

from tsearch.config import ModelConfig
from tsearch.diffusion.generate import generate_images, per_image_noise, timestep_subsequence
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
    seq = timestep_subsequence(1000, 50)
    assert len(seq) == 50 and seq[0] == 0 and seq[-1] == 980


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
