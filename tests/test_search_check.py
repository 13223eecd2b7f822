"""The rules the surrogate study and its real check share (benchmarks/search_study.py,
benchmarks/search_check.py): what a search had evaluated within a budget, what it recommends
from that, and how a real median is set against the study's band."""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT))

from benchmarks.search_check import inside, num_trials  # noqa: E402
from benchmarks.search_study import prefix, recommend  # noqa: E402
from tsearch.search.space import SearchSpace  # noqa: E402
from tsearch.timesteps import load_config  # noqa: E402

QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
# (order, trial, kimg, fid), deliberately listed out of order: the order is the first field.
EVENTS = [(3, "a", 12.0, 60.0), (1, "a", 4.0, 90.0), (2, "b", 4.0, 80.0), (4, "b", 12.0, 70.0)]


@pytest.mark.parametrize("budget,kept", [(3.9, 0), (4.0, 1), (8.0, 2), (15.9, 2), (16.0, 3),
                                         (24.0, 4)])
def test_a_prefix_holds_the_evaluations_made_within_the_trial_kimg_budget(budget, kept):
    got = prefix(EVENTS, budget)
    assert [e[0] for e in got] == [1, 2, 3, 4][:kept]


def test_the_best_observed_rule_recommends_the_lowest_fid_within_the_budget():
    space = SearchSpace.from_config(load_config(QUICKSTART))
    trials = {"a": {"optim.lr": 1e-3, "train.seed": 0}, "b": {"optim.lr": 2e-3, "train.seed": 0}}
    assert recommend(prefix(EVENTS, 8.0), trials, space, 20.0, False) == {"optim.lr": 2e-3}
    assert recommend(prefix(EVENTS, 16.0), trials, space, 20.0, False) == {"optim.lr": 1e-3}
    assert recommend([], trials, space, 20.0, False) is None


def test_a_real_median_is_inside_the_band_only_between_its_quartiles():
    band = {"q25": 30.0, "median": 33.0, "q75": 36.0}
    assert inside(30.0, band) and inside(36.0, band)
    assert not inside(29.9, band) and not inside(36.1, band)
    assert inside(None, band) is None and inside(31.0, None) is None


def test_a_check_search_gets_enough_trials_for_the_budget_to_end_it():
    full = load_config(QUICKSTART, ["search.asha.enabled=false",
                                    "search.seed_with_defaults=false"])
    asha = load_config(QUICKSTART, ["search.seed_with_defaults=false"])
    total = full.train.total_kimg
    assert num_trials(full, 200.0) * total >= 200.0
    assert num_trials(asha, 200.0) == 3 * num_trials(full, 200.0)  # most stop at a rung
    seeded = load_config(QUICKSTART)
    assert num_trials(seeded, 40.0) >= 12  # every default gets its trial
