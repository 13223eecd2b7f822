"""Searches replayed against a surrogate: the real Tuner, searchers and ASHA, no training.

Comparing search algorithms needs hundreds of searches per algorithm and budget; a real one costs
tens of minutes here. A replay runs the search exactly as ``tsearch search`` builds it (the
registry entry's searcher, ``search.repeat_top``, the ConcurrencyLimiter and ASHA on the same
rungs, inside ``tune.Tuner``), but each trial's trainable asks a surrogate for the learning curve
the real trial would have had on its training seed and reports it evaluation by evaluation, so
ASHA stops it where it would have stopped the real one. A trial is charged the kimg of its last
report: the training the real trial would have spent.

A surrogate is any object with ``curve(values, seed) -> [(kimg, fid), ...]`` at the search's
evaluation points (ASHA's rungs and the end); ``benchmarks/search_surrogate.py`` fits one to the
table of ``benchmarks/search_table.py``.

    from benchmarks.replay import replay_search
    events, trials = replay_search(cfg, surrogate, seed=3, num_samples=40)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsearch import names  # noqa: E402
from tsearch.config import Config  # noqa: E402
from tsearch.labels import SEED_KEY  # noqa: E402
from tsearch.search.plan import search_eval_points  # noqa: E402
from tsearch.search.space import flat_config  # noqa: E402

Curve = list[tuple[float, float]]


class Surrogate(Protocol):
    def curve(self, values: dict[str, Any], seed: int) -> Curve:
        """FID at each evaluation point of a trial with these searched values on ``seed``."""


def values_key(values: dict[str, Any]) -> str:
    """A configuration's identity: its searched values without the seed."""
    import json

    return json.dumps({k: v for k, v in values.items() if k != SEED_KEY}, sort_keys=True,
                      default=str)


class CurveTable:
    """A surrogate that looks curves up: {values_key: {seed: curve}}, as measured (or arranged).

    Importable by Ray's workers (a class defined in a test module is not), and the shape the
    table of ``benchmarks/search_table.py`` has once keyed by configuration."""

    def __init__(self, curves: dict[str, dict[int, Curve]]):
        self.curves = curves

    def curve(self, values: dict[str, Any], seed: int) -> Curve:
        by_seed = self.curves[values_key(values)]
        return by_seed[seed] if seed in by_seed else by_seed[min(by_seed)]


class Synthetic:
    """A surrogate over any space: the curve depends on a hash of the values and the seed.
    For measuring the replay's own cost, where what the curves are does not matter."""

    def __init__(self, points: Sequence[float]):
        self.points = list(points)

    def curve(self, values: dict[str, Any], seed: int) -> Curve:
        import hashlib

        h = int(hashlib.sha256((values_key(values) + str(seed)).encode()).hexdigest()[:8], 16)
        final = 20.0 + 80.0 * h / 0xFFFFFFFF
        return [(k, final * self.points[-1] / k) for k in self.points]


def replay_trainable(config: dict[str, Any], surrogate: Surrogate, metric: str,
                     base_seed: int) -> None:
    """A Tune function trainable: the surrogate's curve, one report per evaluation."""
    from ray import tune

    flat = flat_config(config)
    seed = int(flat.pop(SEED_KEY, base_seed))
    for kimg, fid in surrogate.curve(flat, seed):
        tune.report({metric: float(fid), names.TIME_ATTR: float(kimg)})


def eval_points(cfg: Config) -> list[float]:
    """Where a search trial of ``cfg`` evaluates: ASHA's rungs (or every eval.every_kimg without
    ASHA) and the end, as ``tsearch search`` sets ``eval.at_kimg``."""
    total = cfg.train.total_kimg
    points = search_eval_points(cfg)
    if not points:
        n = int(total / cfg.eval.every_kimg + 1e-9)
        points = [cfg.eval.every_kimg * i for i in range(1, n + 1)]
    return sorted({p for p in points if p < total} | {total})


def replay_search(cfg: Config, surrogate: Surrogate, *, seed: int, num_samples: int,
                  storage: str | Path) -> tuple[list[tuple[float, str, float, float]],
                                                dict[str, dict[str, Any]]]:
    """One search replayed; ``(time, trial, kimg, fid)`` of every report, and each trial's
    searched values (with its seed). Ray must be initialised by the caller (one session serves
    every replay)."""
    from ray import tune

    from tsearch.search.plan import plan

    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(
        update={"seed": seed, "num_samples": num_samples})})
    checked = plan(cfg, None)
    with_points = cfg.model_copy(update={"search": cfg.search.model_copy(
        update={"points_to_evaluate": [dict(p) for p in checked.points]})})
    proposal = checked.algorithm.build(with_points, checked.space, f"replay-{seed}")
    s = cfg.search
    trainable = tune.with_parameters(replay_trainable, surrogate=surrogate, metric=s.metric,
                                     base_seed=cfg.train.seed)
    recorder = _recorder(s.metric)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.01}),
        param_space=proposal.param_space,
        tune_config=tune.TuneConfig(num_samples=proposal.num_samples,
                                    search_alg=proposal.search_alg,
                                    max_concurrent_trials=proposal.max_concurrent_trials,
                                    scheduler=proposal.scheduler, reuse_actors=True),
        run_config=tune.RunConfig(name=f"replay-{seed}-{time.time_ns()}",
                                  storage_path=str(storage), verbose=0, callbacks=[recorder],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    tuner.fit()
    return recorder.events, recorder.trials


def _recorder(metric: str) -> Any:
    """A Tune callback with every result in the order the driver (and so the searcher and ASHA)
    saw it: ``.events`` as ``(time, trial, kimg, fid)`` and ``.trials`` (searched values).

    Tune's own ``timestamp`` counts whole seconds, and a replayed trial lives a fraction of
    one, so ordering by it would tie most of a search's reports and the budget prefixes of
    ``benchmarks/search_study.py`` would cut at arbitrary places. Built here, not at import:
    importing Ray before ``init_ray`` has set its environment gets the driver refused."""
    from ray.tune import Callback

    class Recorder(Callback):
        def __init__(self) -> None:
            self.events: list[tuple[float, str, float, float]] = []
            self.trials: dict[str, dict[str, Any]] = {}

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            if metric not in result:
                return
            self.trials.setdefault(trial.trial_id, flat_config(trial.config))
            self.events.append((time.perf_counter(), trial.trial_id,
                                float(result[names.TIME_ATTR]), float(result[metric])))

    return Recorder()


def charged_kimg(events: Sequence[tuple[float, str, float, float]]) -> float:
    """Trial-kimg a search spent: each trial's last reported kimg, summed."""
    reached: dict[str, float] = {}
    for _, trial, kimg, _ in events:
        reached[trial] = max(reached.get(trial, 0.0), kimg)
    return float(sum(reached.values()))
