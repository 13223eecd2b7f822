"""Image generation (DDIM / respaced DDPM; Euler / Heun for flow matching) with per-image seeds.

Every image i is generated from its own generator seeded with ``seed + i`` (EDM's
``StackedRandomGenerator`` idea), so two trials, or a trial before and after a resume, are judged
on exactly the same latents whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tsearch.diffusion.loss import predict_eps, predict_x0
from tsearch.diffusion.schedule import NoiseSchedule


def timestep_subsequence(num_timesteps: int, steps: int) -> np.ndarray:
    """DDIM's 'uniform' skip: range(0, T, T // S), the ATS and improved-diffusion default."""
    stride = max(num_timesteps // steps, 1)
    return np.arange(0, num_timesteps, stride)[:steps]


def per_image_noise(
    n: int, shape: tuple[int, ...], seed: int, num_draws: int = 1
) -> torch.Tensor:
    """[n, num_draws, *shape] standard normal noise; image i only depends on ``seed + i``."""
    out = torch.empty((n, num_draws, *shape))
    for i in range(n):  # one call per image (not per step): fixed latents per image index
        g = torch.Generator().manual_seed(seed + i)
        out[i] = torch.randn((num_draws, *shape), generator=g)
    return out


@torch.no_grad()
def generate_images(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    num_images: int,
    image_shape: tuple[int, int, int],
    *,
    method: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    prediction: str = "eps",
    seed: int = 0,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Generate ``num_images`` images in [-1, 1] (float32, CPU).

    ``method="ddim"``: DDIM (Song et al. 2021) with stochasticity ``eta``; ``"ddpm"``: ancestral
    sampling on the respaced steps with the schedule's fixed variance (improved-diffusion
    ``respace``). x0 predictions are clipped to [-1, 1] and eps is recomputed from the clipped x0,
    as improved-diffusion's ``ddim_sample`` does. For the flow process, ``method`` is "euler" or
    "heun": the probability-flow ODE dx/ds = v(x, s) from s = 1 to 0 in ``steps`` equal steps
    (Heun: a second-order correction on every step but the last, 2 * steps - 1 evaluations).
    """
    device = torch.device(device)
    if schedule.process == "flow":
        return _generate_flow(model, schedule, num_images, image_shape, method=method,
                              steps=steps, seed=seed, batch_size=batch_size, device=device,
                              autocast_dtype=autocast_dtype, progress=progress)
    if method not in ("ddim", "ddpm"):
        raise ValueError(f"method {method!r} is not a vp sampler; ddim or ddpm")
    seq = timestep_subsequence(schedule.num_timesteps, steps)
    ab_all = schedule.alphas_cumprod
    stochastic = method == "ddpm" or eta > 0
    draws = 1 + (len(seq) if stochastic else 0)
    was_training = model.training
    model.eval()
    images = []
    try:
        for start in range(0, num_images, batch_size):
            n = min(batch_size, num_images - start)
            noise = per_image_noise(n, image_shape, seed + start, draws).to(device)
            x = noise[:, 0]
            for k, t_now in enumerate(seq[::-1]):
                i = len(seq) - 1 - k
                ab = float(ab_all[t_now])
                ab_prev = float(ab_all[seq[i - 1]]) if i > 0 else 1.0
                t = torch.full((n,), int(t_now), device=device, dtype=torch.long)
                with torch.autocast(
                    device.type, dtype=autocast_dtype or torch.bfloat16,
                    enabled=autocast_dtype is not None,
                ):
                    out = model(x, t)
                eps = predict_eps(schedule, x, t, out.float(), prediction)
                x0 = predict_x0(schedule, x, t, eps).clamp(-1.0, 1.0)
                eps = (x - ab**0.5 * x0) / (1.0 - ab) ** 0.5
                if method == "ddpm":
                    beta = 1.0 - ab / ab_prev
                    post_var = beta * (1.0 - ab_prev) / (1.0 - ab)
                    var = beta if schedule.variance == "fixed_large" else post_var
                    coef_x0 = ab_prev**0.5 * beta / (1.0 - ab)
                    coef_xt = (1.0 - beta) ** 0.5 * (1.0 - ab_prev) / (1.0 - ab)
                    mean = coef_x0 * x0 + coef_xt * x
                    sigma = var**0.5 if i > 0 else 0.0
                else:
                    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
                    mean = ab_prev**0.5 * x0 + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * eps
                x = mean + sigma * noise[:, 1 + k] if stochastic and i > 0 else mean
            images.append(x.clamp(-1.0, 1.0).float().cpu())
            if progress is not None:
                progress(n)
    finally:
        model.train(was_training)
    return torch.cat(images)


@torch.no_grad()
def _generate_flow(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    num_images: int,
    image_shape: tuple[int, int, int],
    *,
    method: str,
    steps: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    progress: Callable[[int], None] | None,
) -> torch.Tensor:
    """Euler or Heun on x_s = (1 - s) x0 + s eps, from the same per-image latents as DDIM."""
    if method not in ("euler", "heun"):
        raise ValueError(f"method {method!r} is not a flow sampler; euler or heun")
    T = schedule.num_timesteps
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()

    def velocity(x: torch.Tensor, s: float) -> torch.Tensor:
        # The network was trained on s * T (diffusion/loss.py): the same scale here.
        time = torch.full((x.shape[0],), s * T, device=device, dtype=torch.float32)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            return model(x, time).float()

    was_training = model.training
    model.eval()
    images = []
    try:
        for start in range(0, num_images, batch_size):
            n = min(batch_size, num_images - start)
            x = per_image_noise(n, image_shape, seed + start)[:, 0].to(device)
            for s_now, s_next in zip(grid[:-1], grid[1:], strict=True):
                v = velocity(x, s_now)
                x_next = x + (s_next - s_now) * v
                if method == "heun" and s_next > 0.0:
                    v_next = velocity(x_next, s_next)
                    x_next = x + (s_next - s_now) * 0.5 * (v + v_next)
                x = x_next
            images.append(x.clamp(-1.0, 1.0).float().cpu())
            if progress is not None:
                progress(n)
    finally:
        model.train(was_training)
    return torch.cat(images)
