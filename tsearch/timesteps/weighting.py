"""Per-timestep loss weightings. Each is a closed-form table over t built from the schedule."""

from __future__ import annotations

import numpy as np

from tsearch.timesteps.base import LossWeighting


class NoWeighting(LossWeighting):
    """w_t = 1: the 'simple' DDPM loss."""

    name = "none"

    def table(self) -> np.ndarray:
        return np.ones(self.schedule.num_timesteps)
