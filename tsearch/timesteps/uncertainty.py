"""EDM2's learned uncertainty weighting, over the process's discrete timesteps.

docs/algorithms.md 6.4 (Karras et al. 2024, implemented from the formula): a sample's loss L at
timestep t becomes L / e^{u(t)} + u(t), where u is a tiny function of the noise level, trained
jointly with the model by the model's optimizer. For fixed t the objective is minimised at
u(t) = log E[L | t], so the effective weight e^{-u(t)} equalises the expected loss across noise
levels as training goes. u(t) = a linear layer over fixed random Fourier features of
c = log SNR_t / 8 (EDM2's c_noise = ln(sigma) / 4, up to sign), zero-initialised: training
starts from the unweighted loss. The layer is this object's; the trainer adds
:meth:`parameters` to its optimizer (no weight decay) and keeps :meth:`state_dict` in its
checkpoints, and a user of ``from_config`` does the same.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import Field

from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps.base import LossWeighting, Params


class UncertaintyParams(Params):
    features: int = Field(64, ge=1, le=1024)  # random Fourier features of log SNR
    bandwidth: float = Field(1.0, gt=0.0, le=100.0)  # std of their frequencies
    seed: int = Field(0, ge=0, le=2**31 - 1)  # their frequencies and phases (fixed)


class UncertaintyWeighting(LossWeighting):
    """Per-sample objective L e^{-u(t)} + u(t) with a learned u(t); effective weight e^{-u(t)}."""

    name = "uncertainty"
    Params = UncertaintyParams
    learned = True

    def __init__(self, schedule: NoiseSchedule, params: Params | None = None,
                 prediction: str = "eps"):
        super().__init__(schedule, params, prediction)
        p = self.params
        gen = torch.Generator().manual_seed(p.seed)
        freqs = torch.randn(p.features, generator=gen, dtype=torch.float64) * p.bandwidth
        phases = torch.rand(p.features, generator=gen, dtype=torch.float64)
        c = torch.as_tensor(schedule.log_snr, dtype=torch.float64)[:, None] / 8.0
        self._features = (math.sqrt(2.0) * torch.cos(2 * math.pi * (c * freqs + phases))).float()
        self.layer = torch.nn.Linear(p.features, 1)
        torch.nn.init.zeros_(self.layer.weight)
        torch.nn.init.zeros_(self.layer.bias)

    def table(self) -> np.ndarray:
        return np.ones(self.schedule.num_timesteps)  # e^{-u} at the start (u = 0)

    def log_variance(self, t: torch.Tensor) -> torch.Tensor:
        """u(t), differentiable in the layer's parameters."""
        return self.layer(self._features[t]).squeeze(-1)

    def objective(self, losses: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        u = self.log_variance(t)
        return losses * torch.exp(-u) + u

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.exp(-self.log_variance(t)).float()

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.layer.parameters())

    def to(self, device: torch.device | str) -> UncertaintyWeighting:
        self.layer.to(device)
        self._features = self._features.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in self.layer.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.layer.load_state_dict(state)

    def snapshot(self) -> np.ndarray:
        t = torch.arange(self.schedule.num_timesteps, device=self._features.device)
        return self.weights(t).double().cpu().numpy()
