"""The arithmetic of benchmarks/search_efficiency.py: recommendations under a compute budget."""

from __future__ import annotations

import importlib.util
import math

import pytest
from conftest import ROOT

_spec = importlib.util.spec_from_file_location("search_efficiency",
                                               ROOT / "benchmarks" / "search_efficiency.py")
eff = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eff)

# Two trials evaluated in wall-clock order: (timestamp, trial, kimg, fid).
EVENTS = [(1, "a", 4, 90.0), (2, "b", 4, 80.0), (3, "a", 12, 60.0), (4, "b", 12, 70.0),
          (5, "a", 20, 50.0), (6, "c", 4, float("nan")), (7, "c", 8, 40.0)]


@pytest.mark.parametrize("budget,trial", [
    (3.9, None),    # nothing evaluated within the budget
    (4, "a"), (8, "b"),  # b's 80 beats a's 90 once both ran 4 kimg
    (16, "a"),      # a at 12 kimg (60) after 16 trial-kimg
    (24, "a"), (32, "a"),  # b at 12 (70) does not beat it; a at 20 (50) needs 32
    (36, "a"),      # c's NaN at 4 kimg is spent compute, not a recommendation
    (39.9, "a"), (40, "c"),  # c's 40 at 8 kimg lands when the trials have trained 40 kimg
])
def test_recommendation_is_the_best_fid_within_the_budget(budget, trial):
    assert eff.recommendation(EVENTS, budget) == trial


def test_events_count_in_time_order_not_list_order():
    assert eff.recommendation(list(reversed(EVENTS)), 8) == "b"


def test_compute_to_reach_interpolates_the_median_curve():
    assert eff.compute_to_reach([10, 20, 30], [80, 60, 40], 50) == pytest.approx(25)
    assert eff.compute_to_reach([10, 20, 30], [40, 30, 20], 50) == 10
    assert eff.compute_to_reach([10, 20, 30], [None, 60, 55], 50) is None


def test_quartiles_and_config_key():
    q = eff.quartiles([1.0, 2.0, 3.0, 4.0, math.nan, None])
    assert (q["median"], q["q25"], q["q75"], q["n"]) == (2.5, 1.75, 3.25, 4)
    assert eff.quartiles([1.0, 2.0, math.inf])["median"] == 2.0  # a failed run ranks last
    assert eff.config_key({"a": 1, "b": 2}) == eff.config_key({"b": 2, "a": 1})
    assert eff.config_key({"a": 1}) != eff.config_key({"a": 2})
