"""Forward process and per-sample training losses.

The trainer works with *per-sample* losses [n] so that the weighting and importance factors are
applied in exactly one place (train/loop.py); loss-aware samplers apply the weighting themselves
through ``StepContext.weighting`` when they want the optimised loss.
"""

from __future__ import annotations

import math

import torch

from tsearch.diffusion.schedule import NoiseSchedule


def _gather(schedule: NoiseSchedule, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
    values = schedule.tensor(name, t.device)[t]
    return values.view(-1, *([1] * (ndim - 1)))


def flow_time(schedule: NoiseSchedule, t: torch.Tensor,
              offset: torch.Tensor | None = None) -> torch.Tensor:
    """Rectified-flow time in (0, 1) of index t: (t + offset) / T, offset in [0, 1) (0.5: mid-cell).

    Training draws the offset uniformly so the network sees every t in the index's cell
    (docs/algorithms.md 6.6); probes and generation use fixed times.
    """
    u = 0.5 if offset is None else offset
    return (t.float() + u) / schedule.num_timesteps



def q_sample(
    schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4)."""
    ab = _gather(schedule, "alphas_cumprod", t, x0.ndim)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise


def prediction_target(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    prediction: str,
) -> torch.Tensor:
    """What the network is trained to output: eps, x0, or v = sqrt(abar) eps - sqrt(1-abar) x0."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    ab = _gather(schedule, "alphas_cumprod", t, x0.ndim)
    return ab.sqrt() * noise - (1.0 - ab).sqrt() * x0


def predict_eps(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    output: torch.Tensor,
    prediction: str,
) -> torch.Tensor:
    """eps implied by the network output, for any prediction type."""
    if prediction == "eps":
        return output
    ab = _gather(schedule, "alphas_cumprod", t, x_t.ndim)
    if prediction == "x0":
        return (x_t - ab.sqrt() * output) / (1.0 - ab).sqrt()
    return ab.sqrt() * output + (1.0 - ab).sqrt() * x_t


def predict_x0(
    schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    ab = _gather(schedule, "alphas_cumprod", t, x_t.ndim)
    return (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def per_sample_mse(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    prediction: str = "eps",
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between the network output and its target, one value per sample [n].

    For eps-prediction this is the 'simple' DDPM loss ||eps - eps_theta(x_t, t)||^2 / D. For the
    flow process it is the flow-matching loss ||v_theta(x_s, s) - (eps - x0)||^2 / D at
    x_s = (1 - s) x0 + s eps, s = :func:`flow_time` (``offset`` places s in the cell; None: its
    middle); ``prediction`` is then always the velocity.
    """
    if schedule.process == "flow":
        s = flow_time(schedule, t, offset).view(-1, *([1] * (x0.ndim - 1)))
        x_s = (1.0 - s) * x0 + s * noise
        # Conditioned on s * T: the range of the VP process's index, for the same embedding.
        out = model(x_s, s.flatten() * schedule.num_timesteps)
        return mean_flat((out.float() - (noise - x0)) ** 2)
    x_t = q_sample(schedule, x0, t, noise)
    out = model(x_t, t)
    target = prediction_target(schedule, x0, t, noise, prediction)
    return mean_flat((out.float() - target) ** 2)


def per_sample_vlb_bpd(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    prediction: str = "eps",
) -> torch.Tensor:
    """The VLB term KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) in bits/dim, per sample [n].

    With a fixed model variance this is (const_t + c_t ||eps - eps_theta||^2 / D) / ln 2
    (docs/algorithms.md 0.2). t = 0 uses the same KL (no decoder NLL) with sigma_0^2 = beta~_1
    (``NoiseSchedule.model_variance``), so const_0 = 0 and c_0 = beta_0 / (2 beta~_1 alpha_0):
    the ATS reference's ``compute_kl_divergence`` value at every t, fixed-large or fixed-small.
    """
    if schedule.process == "flow":
        raise ValueError("the VLB term is defined for the vp process; flow matching's look-ahead "
                         "loss is per_sample_mse (the flow-matching loss)")
    x_t = q_sample(schedule, x0, t, noise)
    eps_hat = predict_eps(schedule, x_t, t, model(x_t, t).float(), prediction)
    eps_mse = mean_flat((eps_hat - noise) ** 2)
    c = schedule.tensor("vlb_weight", t.device)[t]
    const = schedule.tensor("vlb_constant", t.device)[t]
    return (const + c * eps_mse) / math.log(2.0)
