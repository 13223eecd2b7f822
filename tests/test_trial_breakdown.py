"""benchmarks/trial_breakdown.py: a trial's shares from its perf/* record, summarised."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tsearch import names

_spec = importlib.util.spec_from_file_location(
    "trial_breakdown", Path(__file__).resolve().parents[1] / "benchmarks" / "trial_breakdown.py")
tb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tb)


def _perf(wall: float, train: float, ev: float) -> dict[str, float]:
    return {names.PERF_WALL_SECONDS: wall, names.PERF_TRAIN_SECONDS: train,
            names.PERF_EVAL_SECONDS: ev, names.PERF_EVAL_SHARE: ev / wall,
            names.PERF_OVERHEAD_SHARE: 1 - (train + ev) / wall, names.FID: 50.0}


def test_shares_of_a_trial_and_none_without_perf():
    row = tb.shares(_perf(40.0, 30.0, 6.0))
    assert row == pytest.approx({"wall_seconds": 40.0, "train_share": 0.75, "eval_share": 0.15,
                                 "other_share": 0.10})
    assert tb.shares({names.FID: 50.0}) is None  # a trial logged before perf/* existed


def test_summary_is_median_and_range_over_trials():
    rows = [tb.shares(_perf(w, t, e)) for w, t, e in ((40, 30, 6), (60, 30, 24), (50, 45, 4))]
    s = tb.summarise(rows)
    assert s["trials"] == 3
    assert s["wall_seconds"] == {"median": 50, "min": 40, "max": 60}
    assert s["eval_share"]["median"] == pytest.approx(0.15)
    assert s["eval_share"]["max"] == pytest.approx(0.4)
    assert tb.summarise([])["eval_share"] is None
