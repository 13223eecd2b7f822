"""Optuna's TPE: random start-up trials, then a model of good and bad configurations."""

from __future__ import annotations

from typing import Any

from tsearch.config import Config
from tsearch.search.algorithms.base import OptunaAlgorithm


class TPE(OptunaAlgorithm):
    name = "tpe"

    def optuna_sampler(self, cfg: Config) -> Any:
        import optuna

        return optuna.samplers.TPESampler(seed=cfg.search.seed,
                                          n_startup_trials=cfg.search.tpe_startup_trials)
