"""Seeded random search: the baseline a model-based search has to beat."""

from __future__ import annotations

from typing import Any

from tsearch.config import Config
from tsearch.search.algorithms.base import OptunaAlgorithm


class Random(OptunaAlgorithm):
    name = "random"

    def optuna_sampler(self, cfg: Config) -> Any:
        import optuna

        return optuna.samplers.RandomSampler(seed=cfg.search.seed)
