"""Per-timestep loss weightings. Each is a closed-form table over t built from the schedule.

The trainer multiplies each sample's loss by w[t] (and by the sampler's importance weight). Every
table reads SNR, c_t and the SpeeD increment rates from ``NoiseSchedule`` (one home per formula).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from tsearch.timesteps.base import FractionOrIndex, LossWeighting, Params, timestep_index


class NoWeighting(LossWeighting):
    """w_t = 1: the 'simple' DDPM loss."""

    name = "none"

    def table(self) -> np.ndarray:
        return np.ones(self.schedule.num_timesteps)


class VLBParams(Params):
    normalize: bool = True  # divide c_t by its mean over t (keeps the lr comparable to 'none')


class VLBWeighting(LossWeighting):
    """w_t = c_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) (docs/algorithms.md 0.2).

    c_t is the weight of the eps-MSE inside the VLB term L_{t-1}, so the weighted loss is the
    VLB up to t-dependent constants (Ho et al. 2020, eq. 12). ``NoiseSchedule.vlb_weight`` is the
    one home of c_t, with the reference convention sigma_0^2 = beta~_1 at t = 0 (c_0 = 0.917
    linear, 0.987 quad at T = 1000; improved-diffusion, ATS). Its raw scale is ~0.005-0.9 nats
    per unit MSE, which would shrink the gradient about 100-fold against the unweighted loss;
    ``normalize`` divides by mean_t c_t so that a uniform-t batch keeps the same average weight
    and learning rates stay comparable across weightings.
    """

    name = "vlb"
    Params = VLBParams

    def table(self) -> np.ndarray:
        c = self.schedule.vlb_weight
        return c / c.mean() if self.params.normalize else c.copy()


class P2Params(Params):
    gamma: float = Field(1.0, ge=0.0, le=10.0)  # paper: 0.5 or 1; 0 = off
    k: float = Field(1.0, gt=0.0, le=1e6)  # paper: 1


class P2Weighting(LossWeighting):
    """w_t = 1 / (k + SNR(t))^gamma on the eps-MSE (Choi et al. 2022; docs/algorithms.md 4.1).

    Code: ``jychoi118/P2-weighting`` ``guided_diffusion/gaussian_diffusion.py``. Linear,
    gamma = k = 1: 1e-4 at t = 0, 0.105 at t = 100, 0.479 at t = 250, 0.92 at t = 500.
    """

    name = "p2"
    Params = P2Params

    def table(self) -> np.ndarray:
        return 1.0 / (self.params.k + self.schedule.snr) ** self.params.gamma


class MinSNRParams(Params):
    gamma: float = Field(5.0, gt=0.0, le=1e6)  # SNR clamp; paper and diffusers recommend 5


class MinSNRWeighting(LossWeighting):
    """Min-SNR-gamma (Hang et al. 2023; docs/algorithms.md 4.2): min(SNR, g) on the x0-MSE.

    Code: ``TiankaiHang/Min-SNR-Diffusion-Training`` ``guided_diffusion/gaussian_diffusion.py``.
    On the loss being trained (``NoiseSchedule.eps_mse_ratio``): eps min(SNR, g) / SNR; x0
    min(SNR, g); v min(SNR, g) / (SNR + 1) (the original ``vmin_snr`` form, not diffusers'
    newer min(SNR+1, g)/(SNR+1)); flow min(SNR, g) t^2, the v form times (1 - t)^2 + t^2, as
    the velocity loss is the VP v-MSE divided by that. w = 1 where SNR = 0. Not SpeeD's
    variant, which is 5 / (SNR + 1) by an indexing slip (docs/algorithms.md 2.5).
    """

    name = "min_snr"
    Params = MinSNRParams

    def table(self) -> np.ndarray:
        snr = self.schedule.snr
        on_eps = np.minimum(snr, self.params.gamma) / np.where(snr > 0, snr, 1.0)
        w = on_eps * self.schedule.eps_mse_ratio(self.prediction)
        return np.where(snr > 0, w, 1.0)


class SpeedWeightingParams(Params):
    lam: float = Field(0.6, ge=0.5, le=1.0)  # symmetry ceiling: w in [1-lam, lam] below tau
    # w = 1 from here on (SpeeD's convergence area): a fraction of T (0.7 = SpeeD's 700 at
    # T = 1000; 1 = no cut) or an index > 1, at most T.
    tau: FractionOrIndex = 0.7

    def timesteps_problem(self, num_timesteps: int) -> str | None:
        """tau must name an index of at most T."""
        index = timestep_index(self.tau, num_timesteps)
        if index <= num_timesteps:
            return None
        return (f"tau = {self.tau}: timestep index {index} must be <= diffusion.num_timesteps = "
                f"{num_timesteps}; give tau as a fraction of T (default 0.7) or an index up to "
                f"{num_timesteps}")


# Floor for the one case that reaches 0: lam = 1 and the minimum of g lies below tau.
_SPEED_FLOOR = 1e-4


class SpeedWeighting(LossWeighting):
    """SpeeD change-aware weighting (docs/algorithms.md 2.2; ``Speed_IDDPM._weights``, "ours").

    g_t = d/dt (1 - abar_t) (``NoiseSchedule.increment_variance_rate``). For t < tau:
    w_t = (1 - lam) + (2 lam - 1) (g_t - min g) / (max g - min g), min and max over all T, so
    w in [1 - lam, lam]; w_t = 1 for t >= tau (the released code's jump). Linear, lam = 0.6:
    0.409 at t = 0, 0.539 at t = 100, 0.577 at t = 300. Weights are floored at 1e-4, which only
    matters for lam = 1 when the minimum of g falls below tau (e.g. tau = T). tau is a fraction
    of T (default 0.7, SpeeD's 700 at T = 1000) or an index, resolved when the table is built.
    """

    name = "speed"
    Params = SpeedWeightingParams

    def table(self) -> np.ndarray:
        T, lam = self.schedule.num_timesteps, self.params.lam
        tau = timestep_index(self.params.tau, T)
        if tau > T:
            raise ValueError(f"speed weighting: tau = {self.params.tau} must be <= the number of "
                             f"timesteps ({T}) as index {tau}; give a fraction of T (default 0.7)")
        g = self.schedule.increment_variance_rate
        span = g.max() - g.min()
        scaled = (g - g.min()) / span if span > 0 else np.zeros_like(g)
        w = np.ones(T)
        w[:tau] = (1.0 - lam) + (2.0 * lam - 1.0) * scaled[:tau]
        return np.maximum(w, _SPEED_FLOOR)


class DebiasParams(Params):
    # Divide by the mean over t, as ``vlb`` does: the raw weights average 18 (linear) to 25
    # (cosine) on the eps loss, which would multiply the effective learning rate as much.
    normalize: bool = True


class DebiasWeighting(LossWeighting):
    """w_t = 1 / sqrt(SNR_t) on the eps-MSE (Yu et al. 2023; docs/algorithms.md 6.5).

    That is sigma_t = sqrt((1 - abar_t) / abar_t): 0.010 at t = 0 and 157 at t = 999 (linear),
    so noisy timesteps dominate. The paper derives it for eps-prediction; its code
    (``yuhuUSTC/Debias`` ``gaussian_diffusion.py``) multiplies 1 / sqrt(SNR) into whichever
    target's MSE, under a "noise-prediction" comment. Here other targets get the eps objective
    through the MSE identities (``NoiseSchedule.eps_mse_ratio``): x0 sqrt(SNR), v sqrt(SNR) /
    (SNR + 1), flow t (1 - t).
    """

    name = "debias"
    Params = DebiasParams

    def table(self) -> np.ndarray:
        w = self.schedule.eps_mse_ratio(self.prediction) / np.sqrt(self.schedule.snr)
        return w / w.mean() if self.params.normalize else w
