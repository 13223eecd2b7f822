"""Seeds inside the search (tsearch/search/repeats.py): a top-rung configuration is repeated on
the same further seeds, and the searcher (a real OptunaSearch) is told the seed mean.

First driven through Tune's Searcher interface with fixed results, then in a real search (Ray
Tune with ASHA, real training, MLflow), whose saved searcher state is read back.
"""

from __future__ import annotations

import json
import pickle
import sqlite3

import pytest
from conftest import SMOKE

from tsearch import names
from tsearch.labels import SEED_KEY


def _space(trial):
    trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)


def _optuna(points=None):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(space=_space, metric="fid", mode="min", points_to_evaluate=points,
                        sampler=optuna.samplers.RandomSampler(seed=0))


def test_a_top_rung_configuration_is_repeated_and_the_searcher_told_its_seed_mean():
    from tsearch.search.repeats import RepeatTop

    inner = _optuna()
    rep = RepeatTop(inner, seeds=[1, 2], top_kimg=20.0)
    a = rep.suggest("a")
    b = rep.suggest("b")
    rep.on_trial_complete("b", {"fid": 90.0, "kimg": 4.0})  # stopped at the first rung
    rep.on_trial_complete("a", {"fid": 30.0, "kimg": 20.0})  # reached the top: held
    r1, r2 = rep.suggest("a1"), rep.suggest("a2")
    assert r1 == {**a, SEED_KEY: 1} and r2 == {**a, SEED_KEY: 2}  # same values, paired seeds
    c = rep.suggest("c")
    assert SEED_KEY not in c and c != a  # the queue is empty: a new proposal
    rep.on_trial_complete("a1", {"fid": 40.0, "kimg": 20.0})
    trials = {t.number: t for t in inner._ot_study.trials}
    assert trials[0].state.name == "RUNNING"  # not told until every repeat has ended
    assert trials[1].state.name == "COMPLETE" and trials[1].value == 90.0  # told at once
    rep.on_trial_complete("a2", {"fid": 44.0, "kimg": 20.0})
    trials = {t.number: t for t in inner._ot_study.trials}
    assert trials[0].value == pytest.approx((30 + 40 + 44) / 3)
    assert rep.told["a"]["values"] == [30.0, 40.0, 44.0]
    assert len(inner._ot_study.trials) == 3  # repeats are not Optuna trials
    assert b is not None


def test_a_repeat_stopped_early_does_not_enter_the_mean():
    from tsearch.search.repeats import RepeatTop

    inner = _optuna()
    rep = RepeatTop(inner, seeds=[1, 2], top_kimg=20.0)
    rep.suggest("a")
    rep.on_trial_complete("a", {"fid": 30.0, "kimg": 20.0})
    rep.suggest("a1"), rep.suggest("a2")
    rep.on_trial_complete("a1", {"fid": 80.0, "kimg": 12.0})  # ASHA stopped it at a rung
    rep.on_trial_complete("a2", None, error=True)
    assert inner._ot_study.trials[0].value == 30.0 and rep.told["a"]["values"] == [30.0]


def test_the_state_survives_save_and_restore(tmp_path):
    from tsearch.search.repeats import RepeatTop

    rep = RepeatTop(_optuna(), seeds=[1], top_kimg=20.0)
    a = rep.suggest("a")
    rep.on_trial_complete("a", {"fid": 30.0, "kimg": 20.0})
    path = str(tmp_path / "searcher.pkl")
    rep.save(path)
    again = RepeatTop(_optuna(), seeds=[1], top_kimg=20.0)
    again.restore(path)
    assert again.suggest("a1") == {**a, SEED_KEY: 1}
    again.on_trial_complete("a1", {"fid": 50.0, "kimg": 20.0})
    assert again.searcher._ot_study.trials[0].value == pytest.approx(40.0)


@pytest.mark.slow
def test_a_real_search_repeats_its_top_configurations_and_tells_the_mean(tmp_path):
    from tests.cli_harness import run_search_in_store

    # Seven trials: the slow learner is stopped by ASHA at 0.2 kimg, the others reach the top
    # (0.4 kimg) and are repeated on seed 1, as trials of their own.
    proc = run_search_in_store(tmp_path, SMOKE, "search.algorithm=random",
                               "search.num_samples=7", "search.max_concurrent=2",
                               "search.repeat_top=[1]", "search.name=repeated")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        runs = {}
        for run_id, in con.execute("select run_uuid from runs"):
            params = dict(con.execute("select key, value from params where run_uuid=?",
                                      (run_id,)))
            tags = dict(con.execute("select key, value from tags where run_uuid=?", (run_id,)))
            if tags.get(names.TAG_KIND) != names.KIND_TRIAL:
                continue
            fids = con.execute("select step, value from metrics where run_uuid=? and key=? "
                               "order by step", (run_id, names.FID)).fetchall()
            runs[tags[names.TAG_TRIAL_ID]] = {"params": params, "fids": fids}
    assert len(runs) == 7
    repeats = {t: r for t, r in runs.items() if r["params"].get("trial.train.seed") == "1"}
    assert repeats, "no configuration was repeated"
    # Tune keeps each searcher wrapper's get_state() in its search-generator state file.
    state_file = max((tmp_path / "ray" / "repeated").glob("search_gen_state-*.json"))
    with open(state_file, "rb") as f:
        saved = pickle.load(f)["name:RepeatTop"]
    for origin, told in saved["told"].items():
        reps = [t for t, (o, _) in saved["repeat_of"].items() if o == origin]
        finals = [runs[origin]["fids"][-1][1]] + [runs[t]["fids"][-1][1] for t in reps
                                                  if runs[t]["fids"][-1][0] >= 400]
        # The value told is the mean of the final FIDs MLflow holds for the same runs (MLflow
        # stores float64 as given: exact up to the sum's rounding).
        assert told["mean"] == pytest.approx(sum(finals) / len(finals), rel=1e-9)
        values = {k: v for k, v in runs[origin]["params"].items() if k.startswith("trial.")}
        for t in reps:  # a repeat: the same searched values on another seed
            got = {k: v for k, v in runs[t]["params"].items()
                   if k.startswith("trial.") and k != "trial.train.seed"}
            assert got == values
    assert saved["told"], json.dumps(saved)[:2000]


@pytest.mark.parametrize("sets,expected", [
    (["search.repeat_top=[0, 1]"], "give distinct seeds other than train.seed (0)"),
    (["search.repeat_top=[1]", "search.algorithm=grid", "search.asha.enabled=false",
      "search.points_to_evaluate=[]"], "search.repeat_top: search.algorithm 'grid'"),
    (["search.repeat_top=[1]", "search.confirm.enabled=true", "search.confirm.seeds=[1, 2]"],
     "search.confirm.seeds [1] are also training seeds"),
])
def test_repeat_seeds_that_cannot_work_are_one_line(capfd, sets, expected):
    from tests.cli_harness import assert_one_line, run_cli

    args = [a for s in sets for a in ("--set", s)]
    assert_one_line(run_cli(capfd, "search", str(SMOKE), *args, "--dry-run"), expected)
