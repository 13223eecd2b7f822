"""Snapshots of a sampler's p(t) over training (what the heatmaps and ``timesteps.npz`` show)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


class TimestepHistory:
    """Snapshots of a sampler's p(t) over training, for the heatmap and the ``.npy`` artifact.

    The trainer appends ``sampler.probs()`` at every evaluation; ``matrix`` is
    ``[n_snapshots, T]`` with rows in append order and ``kimgs`` the matching progress.
    ``state_dict`` holds plain lists so it loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self) -> None:
        self._kimgs: list[float] = []
        self._rows: list[np.ndarray] = []

    def append(self, kimg: float, probs: np.ndarray) -> None:
        """Add the distribution ``probs`` ([T], e.g. a CPU tensor or array) seen at ``kimg``."""
        row = np.asarray(probs, dtype=np.float64).reshape(-1)
        if self._rows and row.shape != self._rows[0].shape:
            raise ValueError(
                f"p(t) snapshot has {row.size} timesteps, earlier ones had {self._rows[0].size}"
            )
        if not math.isfinite(float(kimg)):
            raise ValueError(f"kimg must be finite, got {kimg}")
        self._kimgs.append(float(kimg))
        self._rows.append(row.copy())

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def kimgs(self) -> np.ndarray:
        """Progress of each snapshot in kimg, shape [n_snapshots]."""
        return np.asarray(self._kimgs, dtype=np.float64)

    @property
    def matrix(self) -> np.ndarray:
        """All snapshots stacked, shape [n_snapshots, T] (``[0, 0]`` when empty)."""
        if not self._rows:
            return np.zeros((0, 0), dtype=np.float64)
        return np.stack(self._rows)

    def state_dict(self) -> dict[str, Any]:
        return {"kimgs": list(self._kimgs), "probs": [row.tolist() for row in self._rows]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._kimgs, self._rows = [], []
        for kimg, row in zip(state["kimgs"], state["probs"], strict=True):
            self.append(kimg, np.asarray(row))
