"""Where wall time goes: perf/* shares, a search driver's stages, cheaper rung evaluations."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT

from tsearch import names
from tsearch.errors import ConfigError
from tsearch.search import timing
from tsearch.timesteps import load_config
from tsearch.train import stats, train
from tsearch.train.stats import WallClock


def test_laps_charge_their_phase_and_the_rest_is_overhead(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(stats.time, "perf_counter", lambda: now[0])
    clock = WallClock(torch.device("cpu"), started=90.0)  # the caller began 10 s earlier
    for phase, seconds in (("other", 0.0), ("train", 30.0), ("eval", 15.0), ("other", 5.0),
                           ("train", 30.0), ("eval", 10.0)):
        now[0] += seconds
        clock.lap(phase)
    m = clock.metrics()
    assert m[names.PERF_WALL_SECONDS] == pytest.approx(100.0)
    assert m[names.PERF_TRAIN_SECONDS] == pytest.approx(60.0)
    assert m[names.PERF_EVAL_SECONDS] == pytest.approx(25.0)
    assert m[names.PERF_EVAL_SHARE] == pytest.approx(0.25)
    assert m[names.PERF_OVERHEAD_SHARE] == pytest.approx(0.15)  # 10 s set-up + 5 s between


def test_a_real_run_records_its_shares_at_every_evaluation(tmp_path):
    cfg = load_config(ROOT / "experiments" / "smoke.yaml", [
        f"train.out_dir={tmp_path}/runs", f"eval.cache_dir={tmp_path}/cache",
        "train.total_kimg=0.192", "eval.every_kimg=0.064", "eval.num_images=64"])
    reports: list[dict[str, float]] = []
    result = train(cfg, on_report=lambda r, _: reports.append(r))
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    perf = [r for r in rows if names.PERF_EVAL_SHARE in r]
    assert [r["images_seen"] for r in perf] == [r["images_seen"] for r in rows if names.FID in r]
    assert len(perf) == len(reports) == 3
    walls = [r[names.PERF_WALL_SECONDS] for r in perf]
    assert walls == sorted(walls)  # cumulative
    for r in perf:
        parts = r[names.PERF_TRAIN_SECONDS] + r[names.PERF_EVAL_SECONDS]
        assert 0 < r[names.PERF_TRAIN_SECONDS] and 0 < r[names.PERF_EVAL_SECONDS] <= parts
        assert parts <= r[names.PERF_WALL_SECONDS]
        assert r[names.PERF_EVAL_SHARE] + r[names.PERF_OVERHEAD_SHARE] < 1
    # The evaluations' own clock (eval/seconds) fits inside the eval laps.
    evals = sum(r[names.EVAL_SECONDS] for r in rows if names.EVAL_SECONDS in r)
    assert evals <= perf[-1][names.PERF_EVAL_SECONDS] + 1e-6
    assert reports[-1][names.PERF_OVERHEAD_SHARE] == perf[-1][names.PERF_OVERHEAD_SHARE]


def test_stopwatch_adds_stages_in_order_and_the_rest(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    watch = timing.Stopwatch()
    for name, seconds in (("Ray start", 2.0), ("trials", 50.0), ("Ray start", 1.0)):
        with watch.stage(name):
            now[0] += seconds
    assert list(watch.stages) == ["Ray start", "trials"]
    assert watch.stages["Ray start"] == pytest.approx(3.0)
    assert watch.line(60.0) == "time: Ray start 3.0 s, trials 50.0 s, other 7.0 s, total 60.0 s"
    assert 0 < timing.process_age() < 3600  # this test process (Linux /proc)


@pytest.mark.parametrize("at_kimg", ["[0.064, 0.128]", "[]"])
def test_rung_evaluations_are_cheaper_only_before_the_end(tmp_path, monkeypatch, at_kimg):
    """eval.rung_*: intermediate at_kimg points (a search's rungs) only; the final evaluation,
    and runs that evaluate every every_kimg (tsearch train, confirmation), use the full one."""
    from tsearch.metrics import fid_evaluation

    real = fid_evaluation.generate_for_eval
    seen: list[tuple[int, int]] = []

    def spy(model, schedule, seed, eval_cfg, setting):
        seen.append((eval_cfg.num_images, eval_cfg.steps))
        return real(model, schedule, seed, eval_cfg, setting)

    monkeypatch.setattr(fid_evaluation, "generate_for_eval", spy)
    cfg = load_config(ROOT / "experiments" / "smoke.yaml", [
        f"train.out_dir={tmp_path}/runs", f"eval.cache_dir={tmp_path}/cache",
        "train.total_kimg=0.192", "eval.every_kimg=0.064", f"eval.at_kimg={at_kimg}",
        "eval.num_images=64", "eval.steps=8", "eval.rung_num_images=40", "eval.rung_steps=4"])
    result = train(cfg)
    if at_kimg == "[]":
        assert seen == [(64, 8)] * 3
    else:
        assert seen == [(40, 4), (40, 4), (64, 8)]
    assert len(result.evals) == 3 and all(names.FID in m for _, m in result.evals)


def test_rung_steps_beyond_the_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match="eval.rung_steps=2000 exceeds"):
        load_config(ROOT / "experiments" / "smoke.yaml", ["eval.rung_steps=2000"])
