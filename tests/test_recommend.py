"""Recommendation by the model's mean (tsearch/search/recommend.py) on arranged trials.

The arrangement is the winner's curse in miniature: one trial of a poor region got a lucky seed
and is the best observed, while every trial of another region is consistently good. A model of all
observations pulls the lucky trial towards its neighbours and recommends the consistent region.
"""

from __future__ import annotations

import pytest
from conftest import ROOT

from tsearch.records import TrialRecord
from tsearch.search import recommend
from tsearch.search.space import SearchSpace
from tsearch.timesteps import load_config

SPACE = ("search.space={timesteps.sampler.name: {choice: [uniform, speed, lsm]}, "
         "optim.lr: {float: [5.0e-4, 4.0e-3], log: true}}")


def _space() -> SearchSpace:
    return SearchSpace.from_config(load_config(ROOT / "experiments" / "quickstart.yaml", [SPACE]))


def _trial(i: int, sampler: str, lr: float, final: float) -> TrialRecord:
    # A learning curve that ends at ``final``: 2x it at the 4-kimg rung, 1.3x at 12.
    return TrialRecord(trial_id=f"t{i}", status="TERMINATED",
                       values={"timesteps.sampler.name": sampler, "optim.lr": lr},
                       fid=[(4000, 2 * final), (12000, 1.3 * final), (20000, final)])


def test_the_model_recommends_the_consistent_region_over_the_lucky_trial():
    lucky = _trial(0, "uniform", 2.0e-3, 30.0)  # its neighbours all end near 50
    trials = [lucky] + [_trial(i, "uniform", lr, f) for i, (lr, f) in enumerate(
        [(1.8e-3, 50.0), (2.2e-3, 52.0), (1.9e-3, 49.0), (2.1e-3, 51.0)], 1)]
    trials += [_trial(i, "speed", lr, f) for i, (lr, f) in enumerate(
        [(1.8e-3, 35.0), (2.2e-3, 36.0), (1.9e-3, 34.0), (2.1e-3, 37.0)], 10)]
    preds = recommend.predict(trials, _space(), 20.0)
    assert min(trials, key=lambda t: t.best_fid) is lucky
    top = preds[0]
    assert top.trial.values["timesteps.sampler.name"] == "speed"
    shrunk = next(p for p in preds if p.trial is lucky)
    # Pulled towards its neighbours: predicted well above what it observed, and worse than the
    # consistent region's best prediction.
    assert shrunk.fid > lucky.best_fid + 5 and shrunk.fid > top.fid
    assert all(p.low < p.fid < p.high for p in preds)
    assert len(preds) == len(trials)  # every distinct configuration once


def test_too_few_configurations_give_no_model():
    trials = [_trial(i, "uniform", lr, 40.0) for i, lr in enumerate([1e-3, 2e-3, 3e-3])]
    assert recommend.predict(trials, _space(), 20.0) == []


def test_features_one_hot_choices_and_scale_ranges_on_their_log_scale():
    space = _space()
    x = recommend.features({"timesteps.sampler.name": "speed", "optim.lr": 2.0e-3}, space)
    # sampler one-hot (uniform, speed, lsm), then lr on log scale: log(2e-3/5e-4)/log(8) = 2/3.
    assert x[:3] == [0.0, 1.0, 0.0] and x[3] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_a_real_search_logs_the_models_pick_and_confirms_it(tmp_path):
    """Real Ray, MLflow and training: four learning rates (one that cannot learn), the model's
    ranking logged beside the best observed, and the confirmation candidate taken from it."""
    import json
    import sqlite3

    from conftest import SMOKE

    from tests.cli_harness import run_search_in_store
    from tsearch import names

    proc = run_search_in_store(
        tmp_path, SMOKE, "search.algorithm=grid", "search.asha.enabled=false",
        "search.space={optim.lr: {choice: [0.002, 0.0025, 0.003, 1.0e-7]}}",
        "search.points_to_evaluate=[]", "search.confirm.enabled=true", "search.confirm.top_k=1",
        "search.confirm.seeds=[101]", "search.confirm.baseline={optim.lr: 1.0e-7}",
        "search.name=modelled")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "recommendation by the model's mean (a Gaussian process over 8 FIDs of 4 trials)" in out
    assert "model's recommendation: uniform lr=" in proc.stdout
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        run_id, = con.execute("select run_uuid from tags where key=? and value=?",
                              (names.TAG_KIND, names.KIND_SEARCH)).fetchone()
        tags = dict(con.execute("select key, value from tags where run_uuid=?", (run_id,)))
        metrics = dict(con.execute("select key, value from metrics where run_uuid=?", (run_id,)))
    picked = tags[names.TAG_RECOMMENDED]
    # The untrained learning rate is never the model's pick: it is the worst at both evaluations.
    assert picked.startswith("uniform lr=") and picked != "uniform lr=1e-7"
    assert metrics[names.SEARCH_PREDICTED_FID] > 0
    conf = json.loads((tmp_path / "ray" / "modelled" / "summary" /
                       names.ARTIFACT_CONFIRMED).read_text())
    assert {r["label"] for r in conf["rows"] if not r["baseline"]} == {picked}
