"""Discrete DDPM noise schedules and every per-timestep quantity derived from them.

One home per formula (STYLE.md): SNR, sigma, the VLB weight c_t, the posterior variance and the
SpeeD process-increment rates are computed here, in float64, and nowhere else. t is 0-indexed,
t in {0, ..., T-1}, as in the reference code (docs/algorithms.md section 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

SCHEDULES = ("linear", "quad", "cosine", "flow")


def linear_betas(num_timesteps: int) -> np.ndarray:
    """beta_t = linspace(1e-4, 0.02, T) (Ho et al. 2020).

    For T != 1000 the endpoints are rescaled by 1000/T as improved-diffusion does, so that the
    total noise added stays comparable.
    """
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def quad_betas(num_timesteps: int) -> np.ndarray:
    """beta_t = linspace(sqrt(1e-4), sqrt(0.02), T)^2: linear in sqrt(beta) (DDPM "quad").

    Same as diffusers' "scaled_linear". Endpoints rescaled by 1000/T like ``linear_betas``.
    """
    scale = 1000.0 / num_timesteps
    return np.linspace(math.sqrt(scale * 1e-4), math.sqrt(scale * 0.02), num_timesteps) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021: beta_t = min(1 - f((t+1)/T) / f(t/T), 0.999).

    f(u) = cos^2(((u + s) / (1 + s)) * pi / 2) (improved-diffusion ``betas_for_alpha_bar``).
    """

    def f(u: np.ndarray) -> np.ndarray:
        return np.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    t = np.arange(num_timesteps, dtype=np.float64)
    betas = 1.0 - f((t + 1) / num_timesteps) / f(t / num_timesteps)
    return np.minimum(betas, max_beta)


def flow_times(num_timesteps: int) -> np.ndarray:
    """Rectified-flow time of each index: the middle of its cell [i/T, (i+1)/T) (t = 1 is noise)."""
    return (np.arange(num_timesteps, dtype=np.float64) + 0.5) / num_timesteps


def flow_betas(num_timesteps: int) -> np.ndarray:
    """The VP process that rectified flow is, up to the scale of x_t (docs/algorithms.md 6.6).

    x_t = (1 - t) x0 + t eps divided by sqrt((1 - t)^2 + t^2) is sqrt(abar) x0 + sqrt(1 - abar)
    eps with abar = (1 - t)^2 / ((1 - t)^2 + t^2), i.e. SNR = ((1 - t) / t)^2. Betas that give
    this abar at each index's mid-cell time make every SNR-based table (samplers, weightings,
    SpeeD's thresholds) defined for flow matching by the same formulas as for DDPM; the flow
    loss and its sampler (``diffusion/loss.py``, ``diffusion/generate.py``) use t itself.
    """
    t = flow_times(num_timesteps)
    abar = (1.0 - t) ** 2 / ((1.0 - t) ** 2 + t**2)
    return 1.0 - abar / np.append(1.0, abar[:-1])


_BETAS = {"linear": linear_betas, "quad": quad_betas, "cosine": cosine_betas,
          "flow": flow_betas}


@dataclass(frozen=True)
class NoiseSchedule:
    """All per-timestep tables of one schedule, as float64 numpy arrays of length T.

    Built with :meth:`NoiseSchedule.create`; use :meth:`tensor` to move a table to a device.
    ``process`` is "vp" (DDPM: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps) or "flow" (rectified
    flow: x_t = (1 - t) x0 + t eps, index i the cell [i/T, (i+1)/T) of t); the "flow" schedule's
    tables are those of the VP process it equals up to scale (:func:`flow_betas`).
    """

    name: str
    betas: np.ndarray
    variance: str = "fixed_large"
    process: str = "vp"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def create(
        cls, name: str, num_timesteps: int = 1000, variance: str = "fixed_large"
    ) -> NoiseSchedule:
        if name not in _BETAS:
            raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
        if variance not in ("fixed_large", "fixed_small"):
            raise ValueError(f"unknown variance {variance!r}; fixed_large or fixed_small")
        process = "flow" if name == "flow" else "vp"
        return cls(name=name, betas=_BETAS[name](num_timesteps), variance=variance,
                   process=process)

    # --- basic tables -----------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """abar_t = prod_{s<=t} alpha_s."""
        return np.cumprod(self.alphas)

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        """abar_{t-1}, with abar_{-1} = 1."""
        return np.append(1.0, self.alphas_cumprod[:-1])

    @property
    def snr(self) -> np.ndarray:
        """SNR(t) = abar_t / (1 - abar_t)."""
        ab = self.alphas_cumprod
        return ab / (1.0 - ab)

    @property
    def log_snr(self) -> np.ndarray:
        return np.log(self.snr)

    @property
    def sigma(self) -> np.ndarray:
        """EDM-style noise level sigma_t = sqrt((1 - abar_t) / abar_t) = SNR^(-1/2)."""
        return 1.0 / np.sqrt(self.snr)

    # --- posterior and VLB ------------------------------------------------------------------
    @property
    def posterior_variance(self) -> np.ndarray:
        """beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t); 0 at t = 0."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_variance_clipped(self) -> np.ndarray:
        """beta~_t with beta~_0 := beta~_1, as improved-diffusion clips it for the log."""
        pv = self.posterior_variance
        return np.append(pv[1], pv[1:])

    @property
    def model_variance(self) -> np.ndarray:
        """sigma_t^2 of p(x_{t-1} | x_t): beta_t (fixed-large) or beta~_t (fixed-small).

        At t = 0 both are beta~_1, the reference convention (improved-diffusion
        ``model_log_variance``: FIXED_LARGE = log(append(posterior_variance[1], betas[1:])),
        FIXED_SMALL = the clipped posterior log variance; the ATS code follows it), so that every
        VLB term and c_0 equal the reference's (docs/algorithms.md 0.2, last paragraph).
        """
        if self.variance == "fixed_large":
            return np.append(self.posterior_variance[1], self.betas[1:])
        return self.posterior_variance_clipped

    @property
    def vlb_weight(self) -> np.ndarray:
        """c_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)), nats per dim per unit eps-MSE.

        The weight of the eps-MSE inside the VLB term L_{t-1} (Ho et al. 2020, eq. 12;
        docs/algorithms.md 0.2), with sigma_t^2 = :attr:`model_variance`. At t = 0 (sigma_0^2 =
        beta~_1 under either variance) c_0 = beta_0 / (2 beta~_1 alpha_0): 0.917 for linear,
        0.987 for quad at T = 1000 (not the 0.5 that sigma_0^2 = beta_0 would give).
        """
        b, a, ab = self.betas, self.alphas, self.alphas_cumprod
        return b**2 / (2.0 * self.model_variance * a * (1.0 - ab))

    @property
    def vlb_constant(self) -> np.ndarray:
        """The t-dependent constant of KL(q || p) per dim: 0.5 [log(s2/b~) + b~/s2 - 1].

        Zero for fixed-small, and at t = 0 for both (sigma_0^2 = beta~_1 = the clipped
        beta~_0, as in the reference code).
        """
        s2, pv = self.model_variance, self.posterior_variance_clipped
        return 0.5 * (np.log(s2 / pv) + pv / s2 - 1.0)

    # --- the trained loss against the eps-MSE ---------------------------------------------
    def eps_mse_ratio(self, prediction: str) -> np.ndarray:
        """eps-MSE per unit of the per-sample MSE the trainer minimises, at each index.

        For one denoiser the errors of its implied predictions are proportional (docs/
        algorithms.md 6.5, 6.6). Given x_t, eps = sqrt(1 - abar) x_t + sqrt(abar) v and x0 =
        (x_t - sqrt(1 - abar) eps) / sqrt(abar), so eps-MSE = abar v-MSE = SNR x0-MSE; under flow,
        eps = x_t + (1 - t) u for the velocity u = eps - x0, so eps-MSE = (1 - t)^2 flow-MSE at
        the cell's middle t (the time the tables describe; prediction is the velocity then). A
        weighting defined on the eps-MSE times this ratio is the same objective for every target.
        """
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"unknown prediction {prediction!r}; eps, x0 or v")
        if self.process == "flow":
            return (1.0 - flow_times(self.num_timesteps)) ** 2
        if prediction == "eps":
            return np.ones(self.num_timesteps)
        return self.snr if prediction == "x0" else self.alphas_cumprod

    # --- SpeeD process increment (docs/algorithms.md 2.0-2.2) ------------------------------------
    @property
    def increment_mean_rate(self) -> np.ndarray:
        """d/dt sqrt(1 - abar_t) by central differences (np.gradient), as SpeeD computes it."""
        return np.gradient(np.sqrt(1.0 - self.alphas_cumprod))

    @property
    def increment_variance_rate(self) -> np.ndarray:
        """g_t = d/dt (1 - abar_t) by np.gradient: SpeeD's change-aware weighting input."""
        return np.gradient(1.0 - self.alphas_cumprod)

    def meaningful_steps(self, threshold: float = 1e-4) -> int:
        """m = argmax_t [d/dt sqrt(1-abar_t) < threshold] + 1 (SpeeD's dual-sampling pivot).

        642 for linear at T = 1000 with the default threshold.
        """
        below = self.increment_mean_rate < threshold
        return int(np.argmax(below)) + 1

    def increment_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean coefficient and variance of delta_t = x_{t+1} - x_t given x0 (length T-1).

        delta_t | x0 ~ N((sqrt(alpha_{t+1}) - 1) sqrt(abar_t) x0,
                         [(sqrt(alpha_{t+1}) - 1)^2 (1 - abar_t) + beta_{t+1}] I).
        """
        a_next = self.alphas[1:]
        ab = self.alphas_cumprod[:-1]
        coef = np.sqrt(a_next) - 1.0
        return coef * np.sqrt(ab), coef**2 * (1.0 - ab) + self.betas[1:]

    # --- torch access ----------------------------------------------------------------------
    def tensor(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """A table as a float32 tensor on ``device``, cached (used on the training hot path)."""
        key = (name, str(device))
        if key not in self._cache:
            values = getattr(self, name)
            self._cache[key] = torch.as_tensor(np.asarray(values), dtype=torch.float32).to(device)
        return self._cache[key]
