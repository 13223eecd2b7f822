"""Racing the confirmation seeds: stop retraining once one candidate has clearly won.

One training seed moves a configuration's final FID about as much as most gaps between
configurations, so a fixed set of three seeds either wastes runs (the answer was plain after
two) or ends on a coin flip it does not admit. Racing treats seeds as instances, as SMAC's
intensification and F-Race do: every surviving candidate runs on the same seeds (paired, so a seed
that is hard for everyone cancels out), each round keeps the better half and adds a seed, and the
race stops when the leader beats the runner-up by a one-sided paired t-test at ``alpha``, or
when ``search.confirm.seeds`` is spent; then the answer is a stated tie
(docs/search.md, section 1).

Pure functions over {candidate: {seed: final FID or None}}: the confirmation stage runs one Tune
experiment per round and calls :func:`next_round` between them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Results = Mapping[str, Mapping[int, float | None]]  # candidate -> seed -> final FID (None: failed)


@dataclass
class Verdict:
    """The leader against the runner-up, over the seeds both ran."""

    leader: str
    runner_up: str | None  # None: every other candidate failed
    diff_mean: float | None = None  # runner-up minus leader, mean over paired seeds (> 0)
    diff_sd: float | None = None  # ddof=1; None with one seed
    n: int = 0  # paired seeds
    p_value: float | None = None  # one-sided paired t-test: the leader's FID is lower
    alpha: float = 0.05
    decided: bool = False

    def sentence(self, final: bool = True) -> str:
        """The race's answer in words: a winner and its evidence, or a tie that says so;
        ``final=False``: the standing while seeds remain."""
        if self.runner_up is None:
            return f"{self.leader}: the only candidate whose runs all finished"
        spread = f" ± {self.diff_sd:.1f}" if self.diff_sd is not None else ""
        diff = (f"difference {self.diff_mean:.1f}{spread} FID (mean ± sd) over {self.n} paired "
                f"seed{'s' if self.n != 1 else ''}")
        if self.decided:
            return (f"{self.leader} beats {self.runner_up}: {diff}, paired t-test "
                    f"p = {self.p_value:.3g} <= {self.alpha:g}")
        test = (f"; paired t-test p = {self.p_value:.3g} > {self.alpha:g}"
                if self.p_value is not None else "; no test with one seed")
        if not final:
            return f"{self.leader} leads {self.runner_up}: {diff}{test}"
        return f"tie: {self.leader} and {self.runner_up}: {diff}{test}"


@dataclass
class Round:
    """What to run next: the surviving candidates and the seeds they all run on."""

    alive: list[str]  # best first
    seeds: list[int]  # empty: the race is over
    verdict: Verdict | None  # None before any seed has run


def paired(a: Mapping[int, float | None], b: Mapping[int, float | None]
           ) -> tuple[np.ndarray, np.ndarray]:
    """The two candidates' final FIDs on the seeds both finished, in seed order."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    return (np.array([a[s] for s in seeds], dtype=np.float64),
            np.array([b[s] for s in seeds], dtype=np.float64))


def paired_test(leader: Mapping[int, float | None], other: Mapping[int, float | None]
                ) -> tuple[float | None, float | None, int, float | None]:
    """(mean, sd, n, p) of ``other - leader`` over paired seeds; p is the one-sided paired
    t-test's for "the leader is better" (None with fewer than 2 seeds)."""
    from scipy import stats

    x, y = paired(leader, other)
    d = y - x
    n = int(d.size)
    if n == 0:
        return None, None, 0, None
    mean = float(d.mean())
    if n < 2:
        return mean, None, n, None
    sd = float(d.std(ddof=1))
    if sd == 0.0:  # identical differences: certain if positive, no evidence otherwise
        return mean, sd, n, 0.0 if mean > 0 else 1.0
    t = mean / (sd / math.sqrt(n))
    return mean, sd, n, float(stats.t.sf(t, df=n - 1))


def standing(results: Results, alive: Sequence[str]) -> list[str]:
    """``alive`` best first: by mean final FID over the seeds they all finished; a candidate
    with a failed seed after every other (it cannot be the answer)."""
    ok = [c for c in alive if all(f is not None for f in results.get(c, {}).values())]
    shared = set.intersection(*(set(results.get(c, {})) for c in ok)) if ok else set()

    def mean(c: str) -> float:
        got = [results[c][s] for s in shared]
        return float(np.mean(got)) if got else math.inf

    ranked = sorted(ok, key=lambda c: (mean(c), alive.index(c)))
    return ranked + [c for c in alive if c not in ok]


def next_round(results: Results, alive: Sequence[str], seeds: Sequence[int], *,
               alpha: float, keep: str | None = None, per_round: int = 1) -> Round:
    """The race after the runs in ``results``: who survives, and on which seeds they run next.

    ``alive`` are the candidates still racing; ``seeds`` the seed budget in order; ``keep`` a
    candidate never dropped while it finishes (the baseline, which speed-ups are measured
    against). The better half of ``alive`` survives (at least two); the race ends when the
    leader beats the runner-up at ``alpha`` or when the next seed would exceed the budget.
    """
    alive = list(alive)
    ran = [s for s in seeds if all(s in results.get(c, {}) for c in alive)]
    if not ran:
        return Round(alive=alive, seeds=list(seeds[:per_round]), verdict=None)
    ranked = standing(results, alive)
    failed = [c for c in ranked if any(f is None for f in results.get(c, {}).values())]
    finishing = [c for c in ranked if c not in failed]
    if not finishing:
        return Round(alive=[], seeds=[], verdict=None)
    leader = finishing[0]
    runner = finishing[1] if len(finishing) > 1 else None
    verdict = Verdict(leader=leader, runner_up=runner, alpha=alpha)
    if runner is None:
        verdict.decided = True
        return Round(alive=[leader], seeds=[], verdict=verdict)
    verdict.diff_mean, verdict.diff_sd, verdict.n, verdict.p_value = paired_test(
        results[leader], results[runner])
    verdict.decided = verdict.p_value is not None and verdict.p_value <= alpha
    survivors = finishing[:max(2, math.ceil(len(finishing) / 2))]
    if keep is not None and keep in finishing and keep not in survivors:
        survivors.append(keep)
    left = [s for s in seeds if s not in ran]
    if verdict.decided or not left:
        return Round(alive=survivors, seeds=[], verdict=verdict)
    return Round(alive=survivors, seeds=left[:per_round], verdict=verdict)


def race(finals: Results, candidates: Sequence[str], seeds: Sequence[int], *, alpha: float,
         keep: str | None = None, per_round: int = 1) -> tuple[list[list[tuple[str, int]]], Round]:
    """The whole race against known results (the runs each round would start, and the last
    round): what the stage does, for tests and the surrogate benchmark's replay."""
    results: dict[str, dict[int, float | None]] = {c: {} for c in candidates}
    alive, rounds = list(candidates), []
    step = next_round(results, alive, seeds, alpha=alpha, keep=keep, per_round=per_round)
    while step.seeds:
        runs = [(c, s) for s in step.seeds for c in step.alive]
        rounds.append(runs)
        for c, s in runs:
            results[c][s] = finals[c][s]
        step = next_round(results, step.alive, seeds, alpha=alpha, keep=keep,
                          per_round=per_round)
    return rounds, step
