"""Conformance of every registered search algorithm: a tiny real search each (real Ray, real
MLflow store, real training), plus a throwaway algorithm added in the test to show that one
class and one registry line are all a new algorithm needs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from conftest import SMOKE
from mlflow import MlflowClient

from tsearch import names
from tsearch.config import Config
from tsearch.search.algorithms import ALGORITHMS, Proposal, SearchAlgorithm
from tsearch.search.plan import plan
from tsearch.search.results import SearchResult
from tsearch.search.space import GRID_KEY, SearchSpace
from tsearch.search.tuner import run_search
from tsearch.timesteps import load_config

LRS = [1.0e-3, 2.0e-3]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One Ray session, MLflow store and FID cache for the module's searches."""
    from tsearch.search.ray_runtime import end_session, init_ray, shutdown_ray

    path = tmp_path_factory.mktemp("algorithms")
    session = init_ray(None)  # started here, so each search joins it instead of its own
    yield path
    end_session(session) if session is not None else shutdown_ray()


def tiny(store: Path, name: str, algorithm: str, *extra: str) -> Config:
    return load_config(SMOKE, [
        f"tracking.uri=sqlite:///{store}/mlflow.db", f"search.storage_path={store}/ray",
        f"eval.cache_dir={store}/cache", f"tracking.artifact_root={store}/artifacts",
        f"search.name={name}", f"search.algorithm={algorithm}",
        "search.space={optim.lr: {choice: [0.001, 0.002]}}", "search.points_to_evaluate=[]",
        "search.num_samples=2", "search.max_concurrent=2", "search.cpus_per_trial=1",
        "train.threads=1", "train.total_kimg=0.2", "eval.every_kimg=0.1",
        "search.asha.grace_kimg=0.1", "eval.num_images=100", *extra])


def check_search(result: SearchResult, store: Path, expected_trials: int) -> None:
    """What every algorithm must give: its trials ran, evaluated and were tracked."""
    assert len(result.trials) == expected_trials
    for trial in result.trials:
        assert trial.status == "TERMINATED", trial.error
        assert trial.values["optim.lr"] in LRS
        assert trial.fid and all(math.isfinite(f) for _, f in trial.fid)
        assert trial.run_id
    assert result.best is not None and result.best_config is not None
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    kids = client.search_runs([parent.info.experiment_id],
                              f"tags.`{names.TAG_PARENT_RUN}` = '{result.parent_run_id}'")
    assert sorted(k.info.run_id for k in kids) == sorted(t.run_id for t in result.trials)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_registered_algorithm_runs_a_real_search(store, name):
    cls = ALGORITHMS[name]
    extra = ["search.points_to_evaluate=[{optim.lr: 0.002}]"] if cls.supports_points else []
    cfg = tiny(store, f"conf-{name}", name, *extra)
    checked = plan(cfg, None)
    assert checked.algorithm.name == name
    result = run_search(cfg, checked=checked)
    check_search(result, store, checked.num_trials)
    cells = checked.cells
    if cells is not None:  # it runs exactly the cells it announced
        assert sorted(t.values["optim.lr"] for t in result.trials) == sorted(
            c["optim.lr"] for c in cells)
    if cls.supports_points:  # the given point is tried
        assert any(t.values["optim.lr"] == 0.002 for t in result.trials)


class EveryChoiceOnce(SearchAlgorithm):
    """A throwaway algorithm: each value of the first searched key once, no searcher."""

    name = "every_choice_once"
    supports_points = False
    supports_bundles = False

    def cells(self, space: SearchSpace) -> list[dict[str, Any]]:
        key, spec = next(iter(space.specs.items()))
        return [{key: v} for v in spec.values() or []]

    def build(self, cfg: Config, space: SearchSpace, name: str, warm=()) -> Proposal:
        from ray import tune

        return Proposal(search_alg=None,
                        param_space={GRID_KEY: tune.grid_search(self.cells(space))},
                        num_samples=1, scheduler=self.scheduler(cfg), max_concurrent_trials=2)


def test_a_new_algorithm_is_one_class_and_one_registry_line(store, monkeypatch):
    monkeypatch.setitem(ALGORITHMS, EveryChoiceOnce.name, EveryChoiceOnce)  # the registry line
    cfg = tiny(store, "throwaway", EveryChoiceOnce.name, "search.asha.enabled=false")
    result = run_search(cfg)
    check_search(result, store, expected_trials=2)
    assert sorted(t.values["optim.lr"] for t in result.trials) == LRS
    assert all(t.kimg >= 0.2 for t in result.trials)  # no ASHA: the full budget


def test_capabilities_are_enforced_before_anything_starts(store, monkeypatch):
    from tsearch.errors import ConfigError

    monkeypatch.setitem(ALGORITHMS, EveryChoiceOnce.name, EveryChoiceOnce)
    with pytest.raises(ConfigError, match="does not take points"):
        plan(tiny(store, "x", EveryChoiceOnce.name,
                  "search.points_to_evaluate=[{optim.lr: 0.002}]"), None)
    with pytest.raises(ConfigError, match="does not support bundles"):
        plan(tiny(store, "x", EveryChoiceOnce.name,
                  "search.space={m: {bundle: {a: {optim.lr: 0.001}}}}"), None)
    with pytest.raises(ConfigError, match="unknown algorithm; choose one of .*tpe"):
        plan(tiny(store, "x", "annealing"), None)
    assert not (store / "ray" / "x").exists()


def test_a_search_that_fails_at_start_up_leaves_its_name_free(store, monkeypatch):
    """Tune's state of a search in which no trial started would block the name and --resume."""
    from ray import tune

    from tsearch.errors import TsearchError
    from tsearch.search.callbacks import ProgressCallback

    def broken(self, *args, **kwargs):
        raise RuntimeError("callback set-up failed")

    monkeypatch.setattr(ProgressCallback, "setup", broken, raising=False)
    cfg = tiny(store, "stillborn", "tpe")
    with pytest.raises(Exception, match="callback set-up failed"):
        run_search(cfg)
    exp = store / "ray" / "stillborn"
    assert not tune.Tuner.can_restore(str(exp))
    assert not (exp / names.SEARCH_STATE).exists()
    with pytest.raises(TsearchError, match="nothing to resume"):
        run_search(cfg, resume=True)
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    parents = client.search_runs(
        [client.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
        f"tags.`{names.TAG_SEARCH}` = 'stillborn'")
    assert [p.info.status for p in parents] == ["FAILED"]
