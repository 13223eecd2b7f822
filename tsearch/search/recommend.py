"""Recommendation by a model's mean: the configuration a search bets on, not its luckiest trial.

The best observed trial is the minimum of many noisy single-seed FIDs, so it flatters itself by
about a standard deviation of the seed noise. Ax and mlrMBO recommend by the posterior mean of a
model fitted to every observation instead. Here the model is a Gaussian process over (searched
values, training progress) -> log FID, with a white-noise term whose level is fitted to the
data: each trial's FID at every evaluation (ASHA's rungs included) informs the prediction at the
full budget, and a configuration whose neighbours did worse is pulled towards them
(docs/search.md, section 3).

Pure functions over :class:`~tsearch.records.TrialRecord` and the search space, so the search,
the report and the surrogate benchmark's replay recommend alike.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tsearch.labels import SEED_KEY
from tsearch.records import TrialRecord
from tsearch.search.space import ParamSpec, SearchSpace

MIN_TRIALS = 4  # fewer distinct configurations: no model, the best observed stands


@dataclass
class Prediction:
    """A configuration's predicted final FID under the model (median of the log-normal), and
    the 1-sd interval around it."""

    trial: TrialRecord  # the trial that ran it (its best observed FID, if several did)
    fid: float
    low: float
    high: float
    observed: float  # its best observed FID

    @property
    def spread(self) -> float:
        return (self.high - self.low) / 2


def _encode(spec: ParamSpec, value: Any) -> list[float]:
    """One parameter as model inputs in [0, 1]: one-hot for a choice, the scaled value for a
    range (log-scaled when searched on a log scale); zeros when the parameter is inactive."""
    options = spec.values()
    if options is not None:
        return [1.0 if value is not None and value == o else 0.0 for o in options]
    lo, hi = spec.float_range or spec.int_range  # type: ignore[misc]
    if value is None:
        return [0.0]
    x = float(value)
    if spec.log:
        lo, hi, x = math.log(lo), math.log(hi), math.log(max(x, 1e-300))
    return [min(max((x - lo) / (hi - lo), 0.0), 1.0)]


def features(values: dict[str, Any], space: SearchSpace) -> list[float]:
    """The model's inputs for one configuration (searched values by dotted key)."""
    out: list[float] = []
    for key, spec in space.specs.items():
        if key == SEED_KEY:
            continue
        out += _encode(spec, values.get(key))
    return out


def _identity(values: dict[str, Any], space: SearchSpace) -> str:
    return json.dumps({k: values.get(k) for k in space.specs if k != SEED_KEY}, sort_keys=True,
                      default=str)


def predict(trials: Sequence[TrialRecord], space: SearchSpace, total_kimg: float
            ) -> list[Prediction]:
    """Every distinct configuration the trials ran, best predicted final FID first; empty when
    fewer than :data:`MIN_TRIALS` distinct configurations have a finite FID."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    done = [t for t in trials if any(math.isfinite(f) for _, f in t.fid_by_kimg)]
    by_config: dict[str, list[TrialRecord]] = {}
    for t in done:
        by_config.setdefault(_identity(t.values, space), []).append(t)
    if len(by_config) < MIN_TRIALS:
        return []
    xs, ys = [], []
    for t in done:
        base = features(t.values, space)
        for kimg, fid in t.fid_by_kimg:
            if math.isfinite(fid) and fid > 0 and kimg > 0:
                xs.append(base + [math.log(kimg / total_kimg)])
                ys.append(math.log(fid))
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * Matern(1.0, (1e-2, 1e2), nu=2.5)
              + WhiteKernel(0.05, (1e-6, 1.0)))
    gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=3,
                                  random_state=0)
    with warnings.catch_warnings():  # a length scale at its bound is a fit, not an error
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(x, y)
    groups = list(by_config.values())
    at_end = np.asarray([features(g[0].values, space) + [0.0] for g in groups])
    mu, sd = gp.predict(at_end, return_std=True)
    out = []
    for g, m, s in zip(groups, mu, sd, strict=True):
        best = min(g, key=lambda t: t.best_fid)
        out.append(Prediction(trial=best, fid=math.exp(m), low=math.exp(m - s),
                              high=math.exp(m + s), observed=best.best_fid))
    out.sort(key=lambda p: p.fid)
    return out
