"""Optuna's Gaussian-process sampler: a model of FID that treats observations as noisy.

One training seed moves a configuration's FID by about as much as most gaps between
configurations, so the GP is fitted with a noise term (``deterministic_objective=False``)
rather than interpolating every lucky seed. Conditional parameters (``when``) fall outside the
GP's joint space and are sampled independently; Optuna's per-parameter warning about that is
off, since a tsearch space is conditional by design.
"""

from __future__ import annotations

from typing import Any

from tsearch.config import Config
from tsearch.search.algorithms.base import OptunaAlgorithm


class GP(OptunaAlgorithm):
    name = "gp"

    def optuna_sampler(self, cfg: Config) -> Any:
        import optuna

        return optuna.samplers.GPSampler(seed=cfg.search.seed,
                                         n_startup_trials=cfg.search.tpe_startup_trials,
                                         deterministic_objective=False,
                                         warn_independent_sampling=False)
