"""Racing the confirmation seeds, on fixed per-seed results (the pure part of the stage).

The stage runs one Tune experiment per round; tests/test_confirm.py runs it for real. Here the
results are arranged so the right answer is known: a dominating candidate, seeds that disagree,
a failed run, and the pairing of seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tsearch.search import racing

SEEDS = [101, 102, 103, 104, 105, 106]


def test_a_dominating_candidate_stops_the_race_early():
    # "a" is 20 FID better than "b" on every seed, give or take 1: decided after two seeds
    # (t = 20 / (sd / sqrt 2) is far beyond the df=1 critical value 6.31).
    finals = {"a": dict(zip(SEEDS, [30, 31, 29, 30, 31, 29], strict=True)),
              "b": dict(zip(SEEDS, [50, 50, 50, 50, 50, 50], strict=True))}
    rounds, last = racing.race(finals, ["b", "a"], SEEDS, alpha=0.05)
    assert rounds == [[("b", 101), ("a", 101)], [("a", 102), ("b", 102)]]
    v = last.verdict
    assert v.decided and v.leader == "a" and v.runner_up == "b" and v.n == 2
    assert v.diff_mean == pytest.approx(19.5) and v.diff_sd == pytest.approx(math.sqrt(0.5))
    assert v.p_value == pytest.approx(stats.ttest_rel([50, 50], [30, 31],
                                                      alternative="greater").pvalue)
    assert v.sentence().startswith("a beats b: difference 19.5 ± 0.7 FID")


def test_seeds_that_disagree_end_in_a_stated_tie_when_the_budget_is_spent():
    # Each seed favours a different one by 5: the mean difference is 0, never significant.
    a = [30, 40, 30, 40, 30, 40]
    b = [35, 35, 35, 35, 35, 35]
    finals = {"a": dict(zip(SEEDS, a, strict=True)), "b": dict(zip(SEEDS, b, strict=True))}
    rounds, last = racing.race(finals, ["a", "b"], SEEDS, alpha=0.05)
    assert len(rounds) == len(SEEDS) and last.seeds == []  # every seed of the budget ran
    v = last.verdict
    assert not v.decided and v.n == len(SEEDS) and v.diff_mean == pytest.approx(0.0)
    assert {v.leader, v.runner_up} == {"a", "b"}
    assert v.sentence().startswith("tie: ") and "over 6 paired seeds" in v.sentence()


def test_every_survivor_runs_the_same_seeds_and_the_worse_half_drops_out():
    # Six candidates, means 30..80 with a seed effect shared by all (pairing cancels it) and c1's
    # own wobble: after seed 101 the best three go on (and the baseline c6), after 102 the best
    # two. c1 - c2 differences 10, 4, 13: t = 2.33 after two seeds (df 1 needs 6.31), 3.40
    # after three (df 2 needs 2.92), so the leader wins on seed 103.
    shift = {101: 0.0, 102: 8.0, 103: -8.0, 104: 4.0, 105: 0.0, 106: 0.0}
    wobble = {101: 0.0, 102: 6.0, 103: -3.0, 104: 0.0, 105: 0.0, 106: 0.0}
    finals = {f"c{i}": {s: 20.0 + 10.0 * i + shift[s] + (wobble[s] if i == 1 else 0.0)
                        for s in SEEDS} for i in range(1, 7)}
    rounds, last = racing.race(finals, [f"c{i}" for i in range(6, 0, -1)], SEEDS, alpha=0.05,
                               keep="c6")
    ran: dict[str, list[int]] = {}
    for runs in rounds:
        assert len({s for _, s in runs}) == 1  # one seed per round, every survivor on it
        for c, s in runs:
            ran.setdefault(c, []).append(s)
    for c, seeds in ran.items():  # a candidate's seeds are a prefix of the budget: paired
        assert seeds == SEEDS[:len(seeds)], c
    assert len(rounds[0]) == 6
    assert {c for c, _ in rounds[1]} == {"c1", "c2", "c3", "c6"}  # best half + the baseline kept
    assert {c for c, _ in rounds[2]} == {"c1", "c2", "c6"}
    assert last.verdict.decided and last.verdict.leader == "c1" and last.verdict.runner_up == "c2"
    assert len(rounds) == 3 and last.verdict.n == 3
    # Unpaired, c1 (30, 44, 19) would not separate from c2 (40, 48, 32) on these three seeds.
    assert stats.ttest_ind([30, 44, 19], [40, 48, 32], alternative="less").pvalue > 0.05


def test_a_failed_run_drops_the_candidate_and_the_survivor_wins_alone():
    finals = {"a": {101: 30.0, 102: None}, "b": {101: 40.0, 102: 41.0}}
    rounds, last = racing.race(finals, ["a", "b"], [101, 102, 103], alpha=0.05)
    assert len(rounds) == 2 and last.verdict.decided and last.verdict.leader == "b"
    assert last.verdict.runner_up is None and "only candidate" in last.verdict.sentence()


def test_identical_differences_are_certain_only_when_positive():
    assert racing.paired_test({1: 10.0, 2: 10.0}, {1: 12.0, 2: 12.0})[3] == 0.0
    assert racing.paired_test({1: 10.0, 2: 10.0}, {1: 10.0, 2: 10.0})[3] == 1.0
    assert racing.paired_test({1: 10.0}, {1: 12.0}) == (2.0, None, 1, None)


def test_mid_race_standing_is_not_called_a_tie():
    v = racing.Verdict(leader="a", runner_up="b", diff_mean=3.0, n=1)
    assert v.sentence(final=False).startswith("a leads b: difference 3.0 FID")
    assert v.sentence().startswith("tie: a and b") and "no test with one seed" in v.sentence()


def test_a_raced_ranking_puts_survivors_first_and_pairs_differences_with_the_leader():
    from rich.console import Console

    from tsearch.cli.search import _confirm_table
    from tsearch.records import TrialRecord
    from tsearch.search import confirm as confirming
    from tsearch.search import summary

    long = "lognormal p_mean=-1.2 p_std=1.2 weighting=min_snr lr=2e-3"
    cands = [confirming.Candidate(label=x, values={}, baseline=x == "base")
             for x in (long, "gone", "base")]
    # "gone" was third on seed 101 and dropped out; the survivors ran 101-103.
    finals = {(long, 101): 31.0, (long, 102): 29.0, (long, 103): 30.0, ("gone", 101): 35.0,
              ("base", 101): 40.0, ("base", 102): 41.0, ("base", 103): 45.0}
    trials = [TrialRecord(trial_id=f"{label}{seed}", status="TERMINATED",
                          values={"method": label, "train.seed": seed}, fid=[(4000, f)])
              for (label, seed), f in finals.items()]
    conf = confirming.rank(cands, trials, [101, 102, 103, 104], {}, search="s",
                           parent_run_id="p", tracking_uri="x", raced=True)
    assert [r.label for r in conf.rows] == [long, "base", "gone"]
    lead, base, gone = conf.rows
    assert lead.seeds == [101, 102, 103] and gone.seeds == [101] and gone.finals == [35.0]
    assert base.paired_diff == pytest.approx(12.0) and base.paired_n == 3
    assert base.paired_sd == pytest.approx(float(np.std([9, 12, 15], ddof=1)))
    assert gone.paired_diff == pytest.approx(4.0) and gone.paired_n == 1
    assert conf.runs == 7 and conf.decided is True
    assert conf.verdict.startswith(f"{long} beats base: difference 12.0 ± 3.0 FID")
    console = Console(width=120, record=True)
    console.print(_confirm_table(conf))
    text = console.export_text()
    assert long in text.replace("\n", " ") or all(w in text for w in long.split())
    assert "+12.0 ± 3.0" in text and "raced over fresh seeds 101, 102, 103, 104; 7 runs" in text
    assert summary.winner_line(conf).startswith(f"confirmed winner: {long}, FID 30.00")


def _curve_trials(curves):
    from tsearch.records import TrialRecord

    return [TrialRecord(trial_id=f"{label}{seed}", status="TERMINATED",
                        values={"method": label, "train.seed": seed},
                        fid=[(k, f) for k, f in zip([5000, 10000, 15000, 20000], fids,
                                                    strict=True)])
            for (label, seed), fids in curves.items()]


@pytest.mark.parametrize("fast,shown", [
    # Already below the baseline's final FID (40) at its first evaluation: crossing in (0, 5],
    # speed-up 20 / 5 = 4 is only a lower bound.
    ([35, 30, 28, 27], ">= 4.00"),
    # Crossing bracketed by 5 and 10 kimg (interpolated 7.5): speed-up 2.67, range 2-4.
    ([45, 35, 30, 28], "2.67 (2.00-4.00)"),
])
def test_a_speedup_that_is_a_bound_or_loosely_bracketed_prints_so(fast, shown):
    from tsearch.search import confirm as confirming
    from tsearch.search import summary

    cands = [confirming.Candidate(label="fast", values={}),
             confirming.Candidate(label="base", values={}, baseline=True)]
    curves = {("fast", 1): fast, ("fast", 2): fast,
              ("base", 1): [80, 60, 50, 40], ("base", 2): [80, 60, 50, 40]}
    conf = confirming.rank(cands, _curve_trials(curves), [1, 2], {}, search="s",
                           parent_run_id="p", tracking_uri="x")
    w = conf.winner
    assert w.label == "fast" and w.speedup_text() == shown
    assert w.speedup_is_bound == shown.startswith(">=")
    assert summary.confirm_rows(conf)[0][-1].startswith(shown)
    assert f"{shown.split(' (')[0]}x" in summary.winner_line(conf)
    base = conf.rows[1]  # the baseline reaches its own final FID at its last evaluation: exact
    assert base.speedup_text() == "1.00"
