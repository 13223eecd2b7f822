"""Image generation through diffusers' schedulers, with per-image seeds.

The per-step update is diffusers': ``DDIMScheduler`` (DDIM), ``DDPMScheduler`` (ancestral
sampling on the respaced steps), ``FlowMatchEulerDiscreteScheduler`` and
``FlowMatchHeunDiscreteScheduler`` (flow matching). Every image i has its own generator seeded
with ``seed + i`` (EDM's ``StackedRandomGenerator``; diffusers' list of generators), which draws
its latent and then, for stochastic samplers, each step's noise: two trials, or a trial before
and after a resume, are judged on exactly the same latents and noise whatever the batch size.
tests/test_generate_diffusers.py checks every sampler against the hand-written loops it replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from tsearch.diffusion.schedule import NoiseSchedule

if TYPE_CHECKING:  # diffusers is imported where it is used: seconds of import time
    from diffusers import SchedulerMixin

VP_METHODS = ("ddim", "ddpm")
FLOW_METHODS = ("euler", "heun")
# tsearch's prediction names -> diffusers' prediction_type.
_PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def per_image_generators(n: int, seed: int) -> list[torch.Generator]:
    """One CPU generator per image, image i seeded with ``seed + i``."""
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def per_image_noise(
    n: int, shape: tuple[int, ...], seed: int, num_draws: int = 1
) -> torch.Tensor:
    """[n, num_draws, *shape]: the draws image i's generator makes in generation, latent first."""
    from diffusers.utils.torch_utils import randn_tensor

    gens = per_image_generators(n, seed)
    return torch.stack([randn_tensor((n, *shape), generator=gens) for _ in range(num_draws)], 1)


def _check_method(schedule: NoiseSchedule, method: str) -> None:
    if schedule.process == "flow" and method not in FLOW_METHODS:
        raise ValueError(f"method {method!r} is not a flow sampler; euler or heun")
    if schedule.process != "flow" and method not in VP_METHODS:
        raise ValueError(f"method {method!r} is not a vp sampler; ddim or ddpm")


def make_scheduler(
    schedule: NoiseSchedule, method: str, steps: int, prediction: str = "eps"
) -> SchedulerMixin:
    """A fresh diffusers scheduler for ``method``, its timesteps set for ``steps`` steps.

    VP: the "leading" spacing range(0, T, T // steps) of improved-diffusion and ATS, x0 clipped
    to [-1, 1]. The schedule's float64 abar replaces the one diffusers recomputes in float32 from
    the betas (up to 1.3e-5 off for cosine, whose last alpha is 1 - 0.999): the sampler uses the
    abar the network was trained with. Flow: Euler and Heun on linspace(1, 0, steps + 1).
    Schedulers are stateful (step index): build one per batch.
    """
    import diffusers

    _check_method(schedule, method)
    T = schedule.num_timesteps
    if schedule.process == "flow":
        if method == "euler":
            scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T)
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
        else:
            # Heun's sigmas are linspace(1, 1 / N, steps) + [0] for N = num_train_timesteps, so
            # N = steps gives linspace(1, 0, steps + 1); the network's time is set by the caller.
            scheduler = diffusers.FlowMatchHeunDiscreteScheduler(num_train_timesteps=steps)
            scheduler.set_timesteps(steps)
        scheduler.set_begin_index(0)
        return scheduler
    common = dict(num_train_timesteps=T, trained_betas=schedule.betas, clip_sample=True,
                  clip_sample_range=1.0, prediction_type=_PREDICTION_TYPES[prediction],
                  timestep_spacing="leading", steps_offset=0)
    if method == "ddim":
        # set_alpha_to_one: the last step lands on abar_prev = 1, i.e. on the clipped x0.
        scheduler = diffusers.DDIMScheduler(**common, set_alpha_to_one=True)
    else:
        # On a respaced subsequence DDPMScheduler takes beta' = 1 - abar_t / abar_prev (fixed
        # large) or its posterior variance (fixed small), improved-diffusion's respacing.
        scheduler = diffusers.DDPMScheduler(**common, variance_type=schedule.variance)
    scheduler.alphas_cumprod = torch.from_numpy(schedule.alphas_cumprod)
    scheduler.set_timesteps(steps)
    return scheduler


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

    ``method="ddim"``: DDIM (Song et al. 2021) with stochasticity ``eta``, eps recomputed from
    the clipped x0 as improved-diffusion's ``ddim_sample`` does; ``"ddpm"``: ancestral sampling on
    the respaced steps with the schedule's fixed variance (improved-diffusion ``respace``). For
    the flow process, ``method`` is "euler" or "heun": the probability-flow ODE dx/ds = v(x, s)
    from s = 1 to 0 in ``steps`` equal steps (Heun: a second-order correction on every step but
    the last, 2 * steps - 1 evaluations); the network sees s * T, as in training.
    """
    device = torch.device(device)
    _check_method(schedule, method)  # before any work
    from diffusers.utils.torch_utils import randn_tensor

    flow = schedule.process == "flow"
    was_training = model.training
    model.eval()
    images = []
    try:
        for start in range(0, num_images, batch_size):
            n = min(batch_size, num_images - start)
            scheduler = make_scheduler(schedule, method, steps, prediction)
            gens = per_image_generators(n, seed + start)
            x = randn_tensor((n, *image_shape), generator=gens, device=device)
            for k, timestep in enumerate(scheduler.timesteps):
                if flow:
                    # scheduler.sigmas[k] is the s of the k-th evaluation (for Heun too).
                    t = timestep
                    time = torch.full((n,), float(scheduler.sigmas[k]) * schedule.num_timesteps,
                                      device=device)
                else:
                    t = int(timestep)
                    time = torch.full((n,), t, device=device, dtype=torch.long)
                with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                    enabled=autocast_dtype is not None):
                    out = model(x, time).float()
                if method == "ddim":
                    x = scheduler.step(out, t, x, eta=eta, use_clipped_model_output=True,
                                       generator=gens).prev_sample
                elif method == "ddpm":
                    x = scheduler.step(out, t, x, generator=gens).prev_sample
                else:
                    x = scheduler.step(out, t, x).prev_sample
            images.append(x.clamp(-1.0, 1.0).float().cpu())
            if progress is not None:
                progress(n)
    finally:
        model.train(was_training)
    return torch.cat(images)
