"""The plan of a search: what it will do, checked before Ray starts (``--dry-run`` shows it).

Its name, space, algorithm, trial count, fixed cells and first points; the base config every
trial starts from; ASHA's rungs, where search-phase trials evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tsearch import names
from tsearch.config import Config
from tsearch.errors import ConfigError
from tsearch.labels import SEED_KEY
from tsearch.metrics.registry import check_evaluations
from tsearch.search import confirm as confirming
from tsearch.search.algorithms import OptunaAlgorithm, SearchAlgorithm, WarmTrial, get_algorithm
from tsearch.search.defaults import default_points
from tsearch.search.space import (
    SearchSpace,
    check_combinations,
    check_points,
    resolve_trial_config,
)


def search_name(cfg: Config, config_path: Path | None) -> str:
    """``search.name``, else the config file's name: a search's key in MLflow and the storage."""
    if cfg.search.name:
        return cfg.search.name
    return config_path.stem if config_path is not None else "search"


def asha_milestones(cfg: Config) -> list[float]:
    """The kimg at which ASHA compares trials: Ray's rungs for this search config.

    ``AsyncHyperBandScheduler`` puts bracket ``s``'s rungs at grace * rf^(k + s) for k below
    int(log(max_t / grace) / log(rf) - s + 1): every bracket's rungs are among bracket 0's, so
    those are all of them. The same numpy arithmetic here, so the evaluation points and the
    scheduler's milestones cannot drift apart (tested against Ray, with several brackets).
    """
    a = cfg.search.asha
    if not a.enabled:
        return []
    rungs = int(np.log(cfg.train.total_kimg / a.grace_kimg) / np.log(a.reduction_factor) + 1)
    return [float(a.grace_kimg * a.reduction_factor ** k) for k in range(rungs)]


def search_eval_points(cfg: Config) -> list[float]:
    """Where a search-phase trial evaluates (besides its end): ASHA's rungs and, if asked,
    every ``eval.curve_every_kimg``. Without ASHA nothing is decided early: every
    ``eval.every_kimg`` as in ``tsearch train`` (an empty list)."""
    points = asha_milestones(cfg)
    if not points:
        return []
    step = cfg.eval.curve_every_kimg
    if step:
        n = int(cfg.train.total_kimg / step + 1e-9)
        points = sorted(set(points) | {round(step * i, 6) for i in range(1, n + 1)})
    return points


def base_config(cfg: Config, tracking_uri: str, phase: str = names.PHASE_SEARCH
                ) -> dict[str, Any]:
    """The config every trial of ``phase`` starts from, with paths made absolute (trials run
    elsewhere). Search-phase trials evaluate at ASHA's rungs; confirmation runs densely, for
    the curves their ranking and the report read."""
    raw = cfg.to_dict()
    if phase == names.PHASE_SEARCH and not raw["eval"]["at_kimg"]:
        raw["eval"]["at_kimg"] = search_eval_points(cfg)
    raw["tracking"]["uri"] = tracking_uri
    for section, key in (("eval", "cache_dir"), ("tracking", "artifact_root")):
        value = raw[section][key]
        if value and "://" not in value:
            raw[section][key] = str(Path(value).resolve())
    raw["train"]["progress"] = False
    raw["train"]["threads"] = max(int(cfg.search.cpus_per_trial), 1)
    raw["train"]["device"] = "cuda" if cfg.search.gpus_per_trial > 0 else "cpu"
    return raw


@dataclass(frozen=True)
class SearchPlan:
    """A search checked before anything starts: its name, space, algorithm and trial count."""

    name: str
    space: SearchSpace
    algorithm: SearchAlgorithm
    num_trials: int
    cells: list[dict[str, Any]] | None = None  # the fixed trials, if the algorithm has them
    points: tuple[dict[str, Any], ...] = ()  # tried first: points_to_evaluate (+ defaults)
    warm: tuple[WarmTrial, ...] = ()  # an earlier search's trials (--warm-start)
    warm_from: str | None = None  # that search's name


def plan(cfg: Config, config_path: Path | None) -> SearchPlan:
    """Validate everything a search needs before Ray starts (``--dry-run`` shows the result).

    Every searched range and choice is checked against its field's type and bounds, every point
    and every grid cell is resolved into a full config: a mistake is one line here, not a
    failure inside each trial.
    """
    s = cfg.search
    algorithm = get_algorithm(s.algorithm)
    check_evaluations(cfg.eval.metrics, needed=s.metric)
    space = SearchSpace.from_config(cfg)
    if not space.specs:
        raise ConfigError("config error: search.space is empty: list the parameters to search")
    if space.labels and not algorithm.supports_bundles:
        raise ConfigError(f"config error: search.space.{space.labels[0]}: search.algorithm "
                          f"{s.algorithm!r} does not support bundles; use choices instead")
    if s.points_to_evaluate and not algorithm.supports_points:
        raise ConfigError(f"config error: search.points_to_evaluate: search.algorithm "
                          f"{s.algorithm!r} does not take points (it runs fixed trials of "
                          "its own); remove the points or use algorithm tpe or random")
    if s.asha.enabled and not algorithm.supports_asha:
        raise ConfigError(f"config error: search.asha.enabled: search.algorithm "
                          f"{s.algorithm!r} cannot be stopped early; set "
                          "search.asha.enabled=false")
    base = base_config(cfg, cfg.tracking.uri)
    points = [dict(p) for p in s.points_to_evaluate]
    if s.seed_with_defaults:
        if not algorithm.supports_points:
            raise ConfigError(f"config error: search.seed_with_defaults: search.algorithm "
                              f"{s.algorithm!r} does not take points; set it false")
        points += default_points(space, base, points)
    check_points(base, points, space.labels)
    if s.repeat_top:
        if not isinstance(algorithm, OptunaAlgorithm):
            raise ConfigError(f"config error: search.repeat_top: search.algorithm "
                              f"{s.algorithm!r} runs fixed trials; use tpe, gp or random")
        if SEED_KEY in space.specs:
            raise ConfigError("config error: search.repeat_top and a searched train.seed: "
                              "choose one way to vary seeds")
        if cfg.train.seed in s.repeat_top or len(set(s.repeat_top)) != len(s.repeat_top):
            raise ConfigError(f"config error: search.repeat_top = {list(s.repeat_top)}: give "
                              f"distinct seeds other than train.seed ({cfg.train.seed})")
    confirming.check_confirm(cfg, space, base, points)
    cells = algorithm.cells(space)
    for i, cell in enumerate(cells or []):
        try:
            resolve_trial_config(base, cell, space.labels)
        except ConfigError as exc:
            raise ConfigError(f"grid cell {i} {cell}: {exc}") from None
    check_combinations(space, base)  # values that are only wrong together (e.g. tau and T)
    if s.asha.enabled and s.asha.grace_kimg > cfg.train.total_kimg:
        raise ConfigError(f"config error: search.asha.grace_kimg = {s.asha.grace_kimg} exceeds "
                          f"train.total_kimg = {cfg.train.total_kimg}")
    if s.seed_with_defaults and len(points) > s.num_samples:
        raise ConfigError(f"config error: search.seed_with_defaults adds {len(points)} points "
                          f"but search.num_samples = {s.num_samples}; raise num_samples to at "
                          f"least {len(points)}")
    return SearchPlan(name=search_name(cfg, config_path), space=space, algorithm=algorithm,
                      num_trials=len(cells) if cells is not None else s.num_samples, cells=cells,
                      points=tuple(points))
