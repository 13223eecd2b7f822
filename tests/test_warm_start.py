"""Warm start (``tsearch search CONFIG --warm-start SEARCH``, issue 14 item 5).

At the Optuna level (cheap and real): the study built by ``OptunaAlgorithm.build`` holds the
warm trials as COMPLETE before the first proposal, with a conditional space and a bundle, and TPE
proposes from their good region where the same seed without them does not. Against MLflow
stores built here as a search leaves them (tsearch.names tags and params): which trials count
with which value, and every refusal as one line. One real tiny search A, then a real search B
warm-started from it (slow).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from cli_harness import assert_one_line, logged, run_cli
from conftest import SMOKE

from tsearch import names
from tsearch.config import Config
from tsearch.errors import ConfigError
from tsearch.search.algorithms import WarmTrial, get_algorithm
from tsearch.search.space import SearchSpace
from tsearch.search.warm import point_of, value_at_budget, warm_trials
from tsearch.timesteps import load_config
from tsearch.tracker import flatten_params

SAMPLER, K, LR = "timesteps.sampler.name", "timesteps.sampler.params.k", "optim.lr"
SPACE = ("search.space={timesteps.sampler.name: {choice: [uniform, speed]}, "
         "timesteps.sampler.params.k: {float: [2.0, 8.0], when: {timesteps.sampler.name: speed}}"
         ", optim.lr: {float: [1.0e-4, 1.0e-2], log: true}}")


def smoke(*extra: str) -> Config:
    return load_config(SMOKE, ["search.points_to_evaluate=[]", "search.name=b", *extra])


# --- A real search, then a real search warm-started from it ----------------------------------
# The module's one Ray session; the file's tests pass in any order (checked by running them
# reversed), so nothing here depends on when ray is first imported.

REAL_SPACE = ("search.space={timesteps.sampler.name: {choice: [uniform, speed]}, "
              "optim.lr: {choice: [1.0e-6, 3.0e-3]}}")


@pytest.fixture(scope="module")
def ray_session():
    from tsearch.search.ray_runtime import end_session, init_ray, shutdown_ray

    session = init_ray(None)  # started here, so each search joins it instead of its own
    yield
    end_session(session) if session is not None else shutdown_ray()


@pytest.mark.slow
def test_a_warm_started_search_first_proposes_the_earlier_winner(ray_session, tmp_path,
                                                                    capfd, monkeypatch):
    from mlflow import MlflowClient

    from tsearch.search.tuner import run_search
    from tsearch.tracking.queries import search_trials

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    paths = [f"tracking.uri={uri}", f"search.storage_path={tmp_path}/ray",
             f"eval.cache_dir={tmp_path}/cache", f"tracking.artifact_root={tmp_path}/artifacts",
             "train.threads=1", "search.cpus_per_trial=1", "eval.num_images=100", REAL_SPACE]
    # A: all four cells of a 2 x 2 space (a learning rate of 1e-6 barely trains), ASHA on.
    cells = [f"{{timesteps.sampler.name: {s}, optim.lr: {lr}}}"
             for s in ("uniform", "speed") for lr in ("1.0e-6", "3.0e-3")]
    a = load_config(SMOKE, [*paths, "search.name=a", "search.num_samples=4",
                            f"search.points_to_evaluate=[{', '.join(cells)}]"])
    result = run_search(a)
    assert len(result.trials) == 4 and all(t.fid for t in result.trials)
    # What B is told: each trial's FID at B's budget (0.2 kimg: the evaluation at 224 images).
    client = MlflowClient(uri)
    at_budget = {}
    for t in result.trials:
        history = sorted(client.get_metric_history(t.run_id, names.FID), key=lambda m: m.step)
        at_budget[(t.values[SAMPLER], t.values[LR])] = history[0].value
    winner = min(at_budget, key=at_budget.get)

    b = [*paths, "search.name=b", "search.num_samples=1", "search.points_to_evaluate=[]",
         "search.seed=0", "search.tpe_startup_trials=2", "train.total_kimg=0.2",
         "search.asha.enabled=false"]
    # Control: cold, this seed's first proposal is not A's winner (lr 1e-6 never wins).
    cold_cfg = load_config(SMOKE, b)
    cold = get_algorithm("tpe").build(cold_cfg, SearchSpace.from_config(cold_cfg), "b")
    assert (lambda p: (p[SAMPLER], p[LR]))(cold.search_alg.suggest("t0")) != winner

    args = [arg for item in b for arg in ("--set", item)]
    out = run_cli(capfd, "search", str(SMOKE), *args, "--warm-start", "a")
    assert out.code == 0, out.err[-3000:]
    assert (f"warm start: 4 trials of search 'a' (best FID {at_budget[winner]:.2f})"
            in out.err_lines)
    parent, trials = search_trials(uri, "b")
    assert parent.tags.get(names.TAG_WARM_START) == "a"
    assert [(t.values[SAMPLER], t.values[LR]) for t in trials] == [winner]


# --- The Optuna study -------------------------------------------------------------------------

BUNDLES = ("search.space={method: {bundle: {uniform: {timesteps.sampler.name: uniform}, "
           "speed: {timesteps.sampler.name: speed}}}, timesteps.sampler.params.k: "
           "{float: [2.0, 8.0], when: {method: speed}}, optim.lr: {float: [1.0e-4, 1.0e-2], "
           "log: true}}")
# Speed with a large k is good (FID 10-12); speed with a small k and uniform are bad.
GOOD = [(7.0, 2e-3, 10.0), (6.5, 3e-3, 12.0)]
WARM = ([WarmTrial({"method": "speed", K: k, LR: lr}, fid)
         for k, lr, fid in [*GOOD, (3.0, 2e-3, 60.0), (2.5, 1e-4, 90.0)]]
        + [WarmTrial({"method": "uniform", LR: lr}, fid)
           for lr, fid in [(2e-3, 55.0), (1e-4, 95.0), (5e-3, 50.0), (3e-4, 80.0)]])


def _proposals(warm: list[WarmTrial], n: int) -> tuple[Any, list[dict[str, Any]]]:
    cfg = smoke(BUNDLES, "timesteps.sampler.name=speed", "search.seed=2",
                "search.tpe_startup_trials=4", "search.max_concurrent=8")
    proposal = get_algorithm("tpe").build(cfg, SearchSpace.from_config(cfg), "b", warm=warm)
    searcher = proposal.search_alg.searcher  # Ray's OptunaSearch inside the ConcurrencyLimiter
    return searcher, [proposal.search_alg.suggest(f"t{i}") for i in range(n)]


def _in_good_region(proposals: list[dict[str, Any]]) -> bool:
    return all(p["method"] == "speed" and p[K] > 4.0 for p in proposals)


def test_the_study_holds_warm_trials_before_the_first_proposal(tmp_path):
    searcher, first = _proposals(WARM, 3)
    study = searcher._ot_study  # noqa: SLF001 (what Optuna's TPE reads)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert [(t.params, t.value) for t in done] == [(w.params, w.value) for w in WARM]
    assert set(done[0].distributions) == {"method", K, LR}  # the `when` branch is taken
    assert set(done[-1].distributions) == {"method", LR}  # and skipped
    assert all(t.number >= len(WARM) for t in study.trials if t.state.name == "RUNNING")
    # TPE models at once (4 start-up trials are met) and proposes from the good region, with
    # the bundle's values merged in as in any trial; the same seed cold proposes elsewhere.
    assert _in_good_region(first), first
    assert all(p[SAMPLER] == "speed" for p in first)
    _, cold = _proposals([], 3)
    assert not _in_good_region(cold), cold
    # Ray's searcher state (what --resume restores) keeps them.
    searcher.save(str(tmp_path / "searcher.pkl"))
    again, _ = _proposals([], 0)
    again.restore(str(tmp_path / "searcher.pkl"))
    assert len([t for t in again._ot_study.trials if t.state.name == "COMPLETE"]) == len(WARM)


def test_point_of_checks_values_and_conditions():
    space = SearchSpace.from_config(smoke(SPACE))
    assert point_of(space, {SAMPLER: "speed", K: 3, LR: 1e-3}) == (
        {SAMPLER: "speed", K: 3.0, LR: 1e-3}, None)
    assert point_of(space, {SAMPLER: "uniform", LR: 1e-3}) == ({SAMPLER: "uniform", LR: 1e-3}, None)
    for values, why in [
        ({SAMPLER: "speed", K: 9.0, LR: 1e-3}, "timesteps.sampler.params.k=9 is outside [2, 8]"),
        ({SAMPLER: "adaptive", LR: 1e-3}, "is not among the choices"),
        ({SAMPLER: "uniform", K: 3.0, LR: 1e-3}, "its `when` does not hold here"),
        ({SAMPLER: "speed", LR: 1e-3}, "no value for timesteps.sampler.params.k"),
        ({SAMPLER: "uniform", LR: 1e-3, "train.seed": 3}, "it searched train.seed"),
    ]:
        params, problem = point_of(space, values)
        assert params is None and why in problem, (values, problem)


def test_value_at_budget_is_what_the_new_search_would_see():
    curve = [(224, 50.0), (416, 30.0), (800, 20.0)]  # batch 32: evaluations just past a point
    assert value_at_budget(curve, 400, 32) == 30.0  # the evaluation at the budget
    assert value_at_budget(curve, 10_000, 32) == 20.0  # stopped before: its last value
    assert value_at_budget(curve, 300, 32) == 50.0  # no evaluation at 300: the one before
    assert value_at_budget(curve, 100, 32) is None  # nothing yet
    assert value_at_budget([(224, math.nan)], 400, 32) is None  # diverged


# --- Earlier searches in a store --------------------------------------------------------------

def _log(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    flat = [Param(k, v) for k, v in flatten_params(params).items()]
    for i in range(0, len(flat), 100):
        client.log_batch(run_id, params=flat[i:i + 100])


def add_search(uri: str, name: str, cfg: Config, trials: list[dict[str, Any]],
               metric: str | None = None) -> None:
    """A search as tsearch leaves it: parent run with search/base params, one child per trial.

    Each trial: ``values`` (its trial.* params), ``fids`` [(images, FID)], optional ``phase``
    (None: a store from before the phase tag) and ``status``. ``metric``: the search metric
    it logged, if not the config's (a config cannot name another one yet).
    """
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tsearch")
    exp_id = exp.experiment_id if exp else client.create_experiment("tsearch")
    parent = client.create_run(exp_id, run_name=name, tags={
        names.TAG_KIND: names.KIND_SEARCH, names.TAG_SEARCH: name}).info.run_id
    raw = cfg.to_dict()
    search = cfg.search.model_dump(mode="json") | ({"metric": metric} if metric else {})
    _log(client, parent, {names.PARAM_SEARCH: search,
                          names.PARAM_BASE: {k: v for k, v in raw.items() if k != "search"}})
    for i, trial in enumerate(trials):
        tags = {names.TAG_PARENT_RUN: parent, names.TAG_KIND: names.KIND_TRIAL,
                names.TAG_TRIAL_ID: f"{name}_{i:05d}", names.TAG_SEARCH: name}
        if trial.get("phase", names.PHASE_SEARCH):
            tags[names.TAG_PHASE] = trial.get("phase", names.PHASE_SEARCH)
        run = client.create_run(exp_id, run_name=f"{name}_{i}", tags=tags).info.run_id
        _log(client, run, {names.PARAM_TRIAL: trial["values"],
                           names.PARAM_CONFIG: {"train": {"batch_size": cfg.train.batch_size}}})
        for step, fid in trial.get("fids", []):
            client.log_metric(run, names.FID, fid, step=step)
        client.set_terminated(run, trial.get("status", "FINISHED"))
    client.set_terminated(parent)


A_TRIALS = [  # smoke budget 0.4 kimg, batch 32: evaluations at 224 and 416 images
    {"values": {SAMPLER: "speed", K: 6.0, LR: 2e-3}, "fids": [(224, 50.0), (416, 30.0)]},
    {"values": {SAMPLER: "uniform", LR: 3e-4}, "fids": [(224, 80.0)]},  # stopped by ASHA
    {"values": {SAMPLER: "uniform", LR: 2e-3}, "fids": []},  # no evaluation: skipped
    {"values": {SAMPLER: "speed", K: 6.0, LR: 2e-3}, "fids": [(416, 5.0)],
     "phase": names.PHASE_CONFIRM},  # a confirmation run: not a proposal
    {"values": {SAMPLER: "uniform", LR: 1e-3}, "fids": [(416, 40.0)], "phase": None},  # old
    {"values": {SAMPLER: "uniform", LR: 1e-3}, "fids": [(224, 20.0)], "status": "FAILED"},
    {"values": {SAMPLER: "speed", K: 2.5, LR: 2e-3}, "fids": [(224, 70.0), (416, 60.0)]},
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("warm")
    uri = f"sqlite:///{root}/mlflow.db"
    cfg = smoke(SPACE, "search.name=a")
    add_search(uri, "a", cfg, A_TRIALS)
    other = smoke("search.space={timesteps.sampler.name: {choice: [uniform, speed]}, "
                  "train.batch_size: {choice: [16, 32]}}")
    add_search(uri, "other-keys", other,
               [{"values": {SAMPLER: "uniform", "train.batch_size": 16}, "fids": [(416, 9.0)]}])
    add_search(uri, "no-fids", cfg, [{"values": {SAMPLER: "uniform", LR: 1e-3}}])
    return uri


@pytest.fixture
def notes() -> Iterator[list[str]]:
    """What tsearch logs during the test (warm_trials' note lines)."""
    with logged() as lines:
        yield lines


def test_warm_trials_are_the_search_phase_at_the_new_budget(store, notes):
    cfg = smoke(SPACE)
    warm = warm_trials(store, "a", cfg, SearchSpace.from_config(cfg))
    assert [(w.params, w.value) for w in warm] == [
        ({SAMPLER: "speed", K: 6.0, LR: 2e-3}, 30.0),
        ({SAMPLER: "uniform", LR: 3e-4}, 80.0),
        ({SAMPLER: "uniform", LR: 1e-3}, 40.0),
        ({SAMPLER: "speed", K: 2.5, LR: 2e-3}, 60.0),
    ]
    assert notes == []
    cfg = smoke(SPACE, "train.total_kimg=0.2", "search.asha.grace_kimg=0.1")  # a shorter one
    warm = warm_trials(store, "a", cfg, SearchSpace.from_config(cfg))
    assert [w.value for w in warm] == [50.0, 80.0, 70.0]  # at 224 images; the old one has none
    # FIDs measured differently are told, not refused.
    cfg = smoke(SPACE, "eval.num_images=100")
    warm_trials(store, "a", cfg, SearchSpace.from_config(cfg))
    assert len(notes) == 1 and "eval.num_images 200 there, 100 here" in notes[0], notes


@pytest.fixture
def here(tmp_path, monkeypatch, store) -> list[str]:
    """CLI arguments for a search of SMOKE against the store, in an empty directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return ["search", str(SMOKE), "--set", f"tracking.uri={store}",
            "--set", f"search.storage_path={tmp_path}/ray", "--set", SPACE,
            "--set", "search.points_to_evaluate=[]"]


def test_dry_run_shows_the_warm_trials_and_notes_skipped_ones(here, capfd, tmp_path):
    narrow = "search.space.optim.lr={float: [1.0e-3, 1.0e-2], log: true}"  # drops lr 3e-4
    result = run_cli(capfd, *here, "--set", narrow, "--warm-start", "a", "--dry-run")
    assert result.code == 0, result.err
    assert "# warm start: 3 trials of search 'a' (best FID 30.00)" in result.out
    assert result.err_lines == [
        "note: warm start skips 1 of 4 trials of search 'a', outside this space: a_00001 "
        "(optim.lr=0.0003 is outside [0.001, 0.01])"], result.err
    assert not (tmp_path / "ray").exists()


@pytest.mark.parametrize("extra,fragments,code", [
    (["--warm-start", "other-keys"],
     ["--warm-start other-keys", "search different keys", "only there: train.batch_size",
      "only here: optim.lr, timesteps.sampler.params.k"], 2),
    (["--warm-start", "a", "--set", "search.space.optim.lr={float: [1.0e-2, 1.0e-1]}"],
     ["none of the 4 trials of 'a' is a point of this space", "widen search.space"], 2),
    (["--warm-start", "no-fids"], ["no finished search trial of 'no-fids' has a eval/fid"], 2),
    (["--warm-start", "a", "--set", "search.algorithm=grid", "--set",
      "search.space={timesteps.sampler.name: {choice: [uniform, speed]}}"],
     ["search.algorithm 'grid' runs fixed trials", "use one of gp, random, tpe"], 2),
    (["--warm-start", "a", "--resume"], ["--warm-start starts a new search"], 2),
    (["--warm-start", "nope"], ["no search 'nope'", "known searches: a"], 1),
])
def test_a_warm_start_that_cannot_work_is_one_line(here, capfd, tmp_path, extra, fragments,
                                                     code):
    result = run_cli(capfd, *here, *extra)  # no --dry-run: refused before Ray starts
    assert_one_line(result, *fragments, code=code)
    assert not (tmp_path / "ray").exists()


def test_a_search_on_another_metric_is_refused(store):
    cfg = smoke(SPACE)
    add_search(store, "by-kid", cfg, [{"values": {SAMPLER: "uniform", LR: 1e-3},
                                       "fids": [(416, 9.0)]}], metric="eval/kid")
    with pytest.raises(ConfigError, match=r"ranked trials by eval/kid \(min\), this one by "
                                          r"eval/fid \(min\)"):
        warm_trials(store, "by-kid", cfg, SearchSpace.from_config(cfg))

