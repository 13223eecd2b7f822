"""A surrogate of the search table: configuration -> learning-curve mean and seed spread.

Fitted to ``benchmarks/results/search_table.json`` (real curves of quickstart-space
configurations on several seeds, ``benchmarks/search_table.py``):

- the mean: a Gaussian process over (the configuration's model inputs, as the search's
  recommendation encodes them, and log kimg) -> the seed-mean log FID at each evaluation point;
- the seed spread: log FID residuals from each configuration's seed mean, pooled over
  configurations, with their sd at each evaluation point and their correlation along a curve (a
  lucky seed tends to stay lucky), drawn deterministically per (configuration, seed) so that a
  configuration retrained on the same seed gets the same curve, as real training does.

Validated on held-out configurations (k-fold by configuration): the Spearman correlation between
predicted and measured final mean FID (target >= 0.8), and the ratio of predicted to measured
seed spread (target within a factor of 1.5).

    python benchmarks/search_surrogate.py [--folds 5]  # -> results/search_surrogate.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.replay import Curve, values_key  # noqa: E402
from tsearch.search.recommend import features  # noqa: E402
from tsearch.search.space import SearchSpace  # noqa: E402
from tsearch.timesteps import load_config  # noqa: E402

Row = tuple[dict[str, Any], dict[int, dict[float, float]]]  # values, {seed: {kimg: FID}}


def load_table(path: Path, min_seeds: int = 1) -> list[Row]:
    """The table's configurations with at least ``min_seeds`` finished runs, FIDs by kimg."""
    table = json.loads(Path(path).read_text())
    rows = []
    for row in table["configs"].values():
        runs = {int(s): {float(k): float(f) for k, f in r["fid"].items()}
                for s, r in row["runs"].items() if r.get("fid")}
        if len(runs) >= min_seeds:
            rows.append((row["values"], runs))
    return rows


def _points(rows: Sequence[Row]) -> list[float]:
    """The evaluation points every run has (kimg as measured: 4.032, not 4)."""
    sets = [set(c) for _, runs in rows for c in runs.values()]
    return sorted(set.intersection(*sets)) if sets else []


class Surrogate:
    """Fitted mean GP and pooled seed-noise model; ``curve`` is what a replayed trial reports."""

    def __init__(self, space: SearchSpace, points: Sequence[float]):
        self.space = space
        self.points = [float(p) for p in points]
        self.gp: Any = None
        self.noise_sd = np.zeros(len(self.points))
        self.noise_rho = 0.0
        self.scale = 1.0  # kimg of the last point: the log-kimg input is relative to it

    def _x(self, values: dict[str, Any]) -> np.ndarray:
        base = features(values, self.space)
        return np.asarray([base + [math.log(k / self.scale)] for k in self.points])

    def fit(self, rows: Sequence[Row]) -> Surrogate:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        self.scale = self.points[-1]
        xs, ys, resid = [], [], []
        for values, runs in rows:
            logs = np.log(np.asarray([[c[k] for k in self.points] for c in runs.values()]))
            mean = logs.mean(axis=0)
            xs.append(self._x(values))
            ys.append(mean)
            if len(runs) > 1:
                resid.append(logs - mean)
        x, y = np.concatenate(xs), np.concatenate(ys)
        kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * Matern(1.0, (1e-2, 1e2), nu=2.5)
                  + WhiteKernel(0.01, (1e-6, 1.0)))
        self.gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True,
                                           n_restarts_optimizer=2, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gp.fit(x, y)
        if resid:
            # Residuals from a mean over n seeds understate the spread by sqrt((n - 1) / n).
            r = np.concatenate(resid)
            dof = sum(len(x) - 1 for x in resid)
            self.noise_sd = np.sqrt((r ** 2).sum(axis=0) / max(dof, 1))
            z = r / np.where(self.noise_sd > 0, self.noise_sd, 1.0)
            corr = np.corrcoef(z.T)
            off = corr[~np.eye(len(self.points), dtype=bool)]
            self.noise_rho = float(np.clip(np.nanmean(off), 0.0, 1.0)) if off.size else 0.0
        return self

    def mean_curve(self, values: dict[str, Any]) -> np.ndarray:
        """The predicted seed-mean FID at each point (exp of the mean log FID)."""
        return np.exp(self.gp.predict(self._x(values)))

    def curve(self, values: dict[str, Any], seed: int) -> Curve:
        values = {k: v for k, v in values.items() if k in self.space.specs}
        digest = hashlib.sha256(f"{values_key(values)}|{seed}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        shared, own = rng.standard_normal(), rng.standard_normal(len(self.points))
        z = math.sqrt(self.noise_rho) * shared + math.sqrt(1 - self.noise_rho) * own
        logs = self.gp.predict(self._x(values)) + self.noise_sd * z
        return [(k, float(math.exp(v))) for k, v in zip(self.points, logs, strict=True)]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def validate(rows: Sequence[Row], space: SearchSpace, folds: int = 5, seed: int = 0
             ) -> dict[str, Any]:
    """Held-out configurations: predicted vs measured final mean FID, and seed spread."""
    points = _points(rows)
    order = np.random.default_rng(seed).permutation(len(rows))
    pred, meas, spread_pred, spread_meas = [], [], [], []
    for f in range(folds):
        held = set(order[f::folds].tolist())
        model = Surrogate(space, points).fit([r for i, r in enumerate(rows) if i not in held])
        for i in sorted(held):
            values, runs = rows[i]
            finals = np.asarray([c[points[-1]] for c in runs.values()])
            pred.append(float(model.mean_curve(values)[-1]))
            meas.append(float(np.exp(np.log(finals).mean())))
            if len(runs) > 1:
                spread_meas.append(float(np.log(finals).std(ddof=1)))
                draws = [model.curve(values, s)[-1][1] for s in range(200)]
                spread_pred.append(float(np.log(draws).std(ddof=1)))
    ratio = (float(np.sqrt(np.mean(np.square(spread_pred)) / np.mean(np.square(spread_meas))))
             if spread_meas else None)
    return {"configurations": len(rows), "folds": folds,
            "spearman_final_mean": spearman(pred, meas),
            "spread_ratio": ratio,  # predicted / measured RMS seed sd of log final FID
            "predicted": pred, "measured": meas}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    ap.add_argument("--table", default=str(ROOT / "benchmarks" / "results" /
                                           "search_table.json"))
    ap.add_argument("--min-seeds", type=int, default=2)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "search_surrogate.json"))
    args = ap.parse_args()
    space = SearchSpace.from_config(load_config(args.config))
    rows = load_table(Path(args.table), args.min_seeds)
    if len(rows) < 2 * args.folds:
        raise SystemExit(f"{len(rows)} configurations with >= {args.min_seeds} seeds in "
                         f"{args.table}: too few to validate; run benchmarks/search_table.py")
    result = validate(rows, space, args.folds)
    result["targets"] = {"spearman_final_mean": ">= 0.8", "spread_ratio": "in [1/1.5, 1.5]"}
    result["command"] = "python benchmarks/search_surrogate.py " + " ".join(sys.argv[1:])
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['configurations']} configurations: Spearman {result['spearman_final_mean']:.3f}"
          f", seed spread ratio {result['spread_ratio']} -> {args.out}")


if __name__ == "__main__":
    main()
