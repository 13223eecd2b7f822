"""The confirmation stage: a search's top configurations retrained on fresh seeds.

A search's best trial is the minimum of many noisy trials on one training seed, so its FID
flatters it (the winner's curse). After the search phase the top-k distinct configurations and
the baseline are trained again from scratch, at full budget and without early stopping, on
seeds no search trial used (``search.confirm``), optionally at a larger scale
(``confirm.set``). Their ranking by mean final FID over those seeds is the search's answer.

Pure functions (candidates, cells, ranking); :mod:`tsearch.search.confirm_phase` runs the
trials as Tune experiments inside the search's. The ranking's kimg and compute to the baseline's
final FID come from :func:`tsearch.report.analysis.build_report`, so they are the numbers
``tsearch report`` prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tsearch import labels
from tsearch.config import Config
from tsearch.errors import ConfigError
from tsearch.labels import SAMPLER_KEY, SEED_KEY, WEIGHTING_KEY
from tsearch.log import get_logger
from tsearch.names import METHOD_KEY
from tsearch.records import TrialRecord
from tsearch.search.defaults import default_point
from tsearch.search.space import SearchSpace, resolve_trial_config

if TYPE_CHECKING:
    pass

log = get_logger(__name__)
CONFIRM_SUBDIR = "confirm"  # the confirmation phase's Tune experiment, inside the search's


@dataclass
class Candidate:
    """One configuration to confirm: the search's values, and how it did in the search."""

    label: str
    values: dict[str, Any]  # flat dotted config values (no bundle labels, no seed)
    search_fid: float | None = None  # its best FID in the search phase (None: never a trial)
    search_kimg: float | None = None  # where the search evaluated it last
    trial_id: str | None = None
    baseline: bool = False


@dataclass
class ConfirmRow:
    """A candidate's confirmation runs: final FID per seed, and speed to the baseline's FID."""

    label: str
    values: dict[str, Any]
    baseline: bool
    search_fid: float | None
    seeds: list[int]
    finals: list[float | None]  # final FID per seed (None: the run failed)
    kimg: list[float | None]  # kimg of each seed's final evaluation
    run_ids: list[str | None]
    mean: float | None = None
    std: float | None = None  # ddof=1; None with one seed
    kimg_to_target: float | None = None  # seed-mean curve reaches the baseline's final FID
    compute_to_target: float | None = None  # forward passes, probes charged
    speedup_kimg: float | None = None  # baseline's kimg_to_target / this one (> 1: faster)
    speedup_compute: float | None = None
    # The speed-ups' ranges over the evaluations that bracket the crossings; hi None: only a
    # lower bound (the curve was at the target at its first evaluation). docs/search.md, 2.
    speedup_kimg_range: list[float | None] | None = None
    speedup_compute_range: list[float | None] | None = None
    curve: list[tuple[float, float]] = field(default_factory=list)  # seed-mean (kimg, FID)
    # Against the confirmed leader over the seeds both ran (this minus it; None for the leader).
    paired_diff: float | None = None
    paired_sd: float | None = None
    paired_n: int = 0

    @property
    def n(self) -> int:
        return sum(f is not None for f in self.finals)

    def speedup_text(self, unit: str = "") -> str:
        """The kimg speed-up as measured: ">= 3.96" when only a bound (see ratio_text)."""
        from tsearch.report.curves import ratio_text

        lo, hi = self.speedup_kimg_range or (None, None)
        return ratio_text(self.speedup_kimg, lo, math.inf if self.speedup_kimg_range and
                          hi is None else hi, unit)

    def compute_speedup_text(self, unit: str = "") -> str:
        from tsearch.report.curves import ratio_text

        lo, hi = self.speedup_compute_range or (None, None)
        return ratio_text(self.speedup_compute, lo, math.inf if self.speedup_compute_range and
                          hi is None else hi, unit)

    @property
    def speedup_is_bound(self) -> bool:
        return bool(self.speedup_kimg_range) and self.speedup_kimg_range[1] is None

    @property
    def winners_curse(self) -> float | None:
        """How much better the search said it was than it is: search FID minus confirmed mean."""
        if self.search_fid is None or self.mean is None:
            return None
        return self.search_fid - self.mean


@dataclass
class Confirmation:
    """The confirmed ranking (best first) and what it was measured against."""

    seeds: list[int]
    rows: list[ConfirmRow]
    baseline: str
    target_fid: float | None  # the baseline's final FID, mean over seeds
    overrides: dict[str, Any] = field(default_factory=dict)  # confirm.set
    kendall_tau: float | None = None  # search ranking vs confirmed ranking (candidates only)
    notes: list[str] = field(default_factory=list)
    # The leader against the runner-up (racing.Verdict.sentence): a winner or a stated tie.
    verdict: str | None = None
    decided: bool | None = None  # None: fewer than two candidates finished
    p_value: float | None = None
    raced: bool = False  # seeds were raced (rows may have run different numbers of seeds)
    runs: int = 0  # confirmation runs the stage started
    trial_kimg: float = 0.0  # kimg those runs trained together

    @property
    def winner(self) -> ConfirmRow | None:
        return self.rows[0] if self.rows and self.rows[0].mean is not None else None

    @property
    def baseline_row(self) -> ConfirmRow | None:
        return next((r for r in self.rows if r.baseline), None)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for row, raw in zip(self.rows, out["rows"], strict=True):
            raw["winners_curse"] = row.winners_curse
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Confirmation:
        rows = [ConfirmRow(**{k: v for k, v in r.items() if k != "winners_curse"})
                for r in raw["rows"]]
        return cls(**{**raw, "rows": rows})


# --- Before the confirmation runs ---------------------------------------------------------------
def search_seeds(cfg: Config, space: SearchSpace,
                 points: Sequence[Mapping[str, Any]]) -> set[int]:
    """Every training seed a search trial can use: the base seed, or what the space searches."""
    spec = space.specs.get(SEED_KEY)
    if spec is None:
        seeds = {cfg.train.seed}
    elif spec.choice is not None:
        seeds = {int(v) for v in spec.choice}
    elif spec.int_range is not None:
        lo, hi = spec.int_range
        seeds = set(range(int(lo), int(hi) + 1))
    else:
        seeds = set()
    seeds |= {int(p[SEED_KEY]) for p in points if SEED_KEY in p}
    return seeds | {int(s) for s in cfg.search.repeat_top}


def check_confirm(cfg: Config, space: SearchSpace, base: Mapping[str, Any],
                  points: Sequence[Mapping[str, Any]]) -> None:
    """One-line errors, before Ray starts, for a confirmation stage that cannot run as asked."""
    c = cfg.search.confirm
    if not c.enabled:
        return
    used = search_seeds(cfg, space, points) & set(c.seeds)
    if used:
        raise ConfigError(f"config error: search.confirm.seeds {sorted(used)} are also training "
                          "seeds of the search trials; confirmation needs fresh seeds (e.g. "
                          "--set 'search.confirm.seeds=[101, 102, 103]')")
    try:
        resolve_trial_config(base, {**c.set, SEED_KEY: c.seeds[0]})
    except ConfigError as exc:
        raise ConfigError(f"search.confirm.set: {exc}") from None
    point = baseline_point(cfg, space, base, points)
    try:
        resolve_trial_config(base, {**point, **c.set}, space.labels)
    except ConfigError as exc:
        raise ConfigError(f"search.confirm.baseline {point}: {exc}") from None


def baseline_point(cfg: Config, space: SearchSpace, base: Mapping[str, Any],
                   points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The baseline as a point of the space (see ``ConfirmConfig.baseline``)."""
    named = cfg.search.confirm.baseline
    if isinstance(named, dict):
        return dict(named)
    if named is None and points:
        return dict(points[0])
    sampler = named or "uniform"
    from tsearch.timesteps import SAMPLERS

    if sampler not in SAMPLERS:
        raise ConfigError(f"config error: search.confirm.baseline = {sampler!r}: not a sampler; "
                          f"choose one of {', '.join(SAMPLERS)} or give a point {{key: value}}")
    point = default_point(space, base, sampler)
    point[SAMPLER_KEY] = sampler  # also when the space does not choose the sampler
    return point


def _config_key(values: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in values.items() if k != SEED_KEY}, sort_keys=True,
                      default=str)


def describe(values: Mapping[str, Any], bundle: str | None = None,
             sampler: str = "uniform") -> str:
    """A configuration's readable label (:func:`tsearch.labels.describe`), seed left out: the
    method (bundle label or sampler), then its other values.

    ``sampler``: the base config's, for values that do not choose one.
    """
    return labels.describe({k: v for k, v in values.items() if k != SEED_KEY}, bundle, sampler)


def candidates(trials: Sequence[TrialRecord], labels: Sequence[str], top_k: int,
               baseline: Mapping[str, Any], sampler: str = "uniform",
               order: Sequence[TrialRecord] | None = None) -> list[Candidate]:
    """The top-k distinct configurations other than the baseline, then it: by search FID, or in
    ``order`` (the model's ranking, search/recommend.py) when given.

    ``trials`` are the search phase's records (from Tune's result grid). A trial that ran the
    baseline point (its values include the point's) stands for it, so the baseline keeps the
    values the search gave its unlisted keys and its search FID; when it ranks among the best,
    the next configuration takes its place, so k configurations are always checked against it.
    """
    ranked = sorted((t for t in trials if math.isfinite(t.best_fid)), key=lambda t: t.best_fid)
    if order:
        ranked = [t for t in order if math.isfinite(t.best_fid)]

    def make(trial: TrialRecord) -> Candidate:
        values = {k: v for k, v in trial.values.items() if k not in labels and k != SEED_KEY}
        bundle = " ".join(str(trial.values[k]) for k in labels if k in trial.values) or None
        return Candidate(label=describe(values, bundle, sampler), values=values,
                         search_fid=trial.best_fid, search_kimg=trial.kimg,
                         trial_id=trial.trial_id)

    wanted = {k: v for k, v in baseline.items() if k not in labels and k != SEED_KEY}
    ran = [t for t in ranked if all(t.values.get(k) == v for k, v in wanted.items())]
    base = make(ran[0]) if ran else Candidate(label=describe(wanted, None, sampler),
                                              values=wanted)
    base.baseline = True
    seen = {_config_key(base.values)}
    out: list[Candidate] = []
    for trial in ranked:
        if len(out) == top_k:
            break
        cand = make(trial)
        key = _config_key(cand.values)
        if key not in seen:
            seen.add(key)
            out.append(cand)
    out.append(base)
    taken: dict[str, int] = {}
    for cand in out:  # labels name rows: make them unique
        taken[cand.label] = taken.get(cand.label, 0) + 1
        if taken[cand.label] > 1:
            cand.label = f"{cand.label} ({taken[cand.label]})"
    return out


def cells(cands: Sequence[Candidate], seeds: Sequence[int],
          overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The confirmation trials' flat configs, seed-major (a partial stage ranks every one)."""
    return [{METHOD_KEY: c.label, **c.values, **overrides, SEED_KEY: int(seed)}
            for seed in seeds for c in cands]


# --- After them ---------------------------------------------------------------------------------
def rank(cands: Sequence[Candidate], trials: Sequence[TrialRecord], seeds: Sequence[int],
         overrides: Mapping[str, Any], *, search: str, parent_run_id: str,
         tracking_uri: str, alpha: float = 0.05, raced: bool = False) -> Confirmation:
    """The confirmed ranking: mean final FID over the seeds (best first), and speed-ups.

    ``trials`` are the confirmation runs' records (from Tune's grid, with compute per evaluation).
    ``raced``: candidates ran the seeds racing gave them (a prefix of ``seeds`` each), and the
    ones that ran more rank first; else every candidate has every seed. The leader is tested
    against the runner-up by a paired t-test at ``alpha`` either way.
    """
    from tsearch.report.analysis import build_report
    from tsearch.search import racing

    by_label = {c.label: c for c in cands}
    ran = {(t.values.get(METHOD_KEY), t.values.get(SEED_KEY)) for t in trials}

    def seeds_of(label: str) -> list[int]:
        return [int(s) for s in seeds if not raced or (label, s) in ran]

    rows = {c.label: ConfirmRow(label=c.label, values=c.values, baseline=c.baseline,
                                search_fid=c.search_fid, seeds=seeds_of(c.label),
                                finals=[None] * len(seeds_of(c.label)),
                                kimg=[None] * len(seeds_of(c.label)),
                                run_ids=[None] * len(seeds_of(c.label))) for c in cands}
    records = []
    for t in trials:
        label, seed = t.values.get(METHOD_KEY), t.values.get(SEED_KEY)
        if label not in rows or seed not in rows[label].seeds:
            continue
        row, i = rows[label], rows[label].seeds.index(seed)
        finite = [(k, f) for k, f in t.fid_by_kimg if math.isfinite(f)]
        row.run_ids[i] = t.run_id
        if finite and not t.failed:
            row.kimg[i], row.finals[i] = finite[-1]
        # The report groups by the label alone: one cell per candidate, one block.
        records.append(dataclasses.replace(
            t, run_id=t.run_id or t.trial_id, status="FAILED" if t.failed else "FINISHED",
            values={METHOD_KEY: label, SEED_KEY: seed},
            config={k: by_label[label].values.get(k) for k in (SAMPLER_KEY, WEIGHTING_KEY)}))
    for row in rows.values():
        got = np.array([f for f in row.finals if f is not None], dtype=np.float64)
        if got.size:
            row.mean = float(got.mean())
            row.std = float(got.std(ddof=1)) if got.size > 1 else None
    baseline = next(c.label for c in cands if c.baseline)
    result = Confirmation(seeds=[int(s) for s in seeds], rows=list(rows.values()),
                          baseline=baseline, target_fid=None, overrides=dict(overrides),
                          raced=raced, runs=len(trials),
                          trial_kimg=float(sum(t.kimg for t in trials)))
    if any(r.fid for r in records):
        report = build_report(records, search=search, parent_run_id=parent_run_id,
                              tracking_uri=tracking_uri, seed_key=SEED_KEY, baseline=baseline)
        for block in report.blocks:
            result.notes.extend(block.notes)
            result.target_fid = block.target_fid if block.baseline else result.target_fid
            for r in block.rows:
                if r.label in rows:  # the seed-mean curve over the evaluations all seeds have
                    rows[r.label].curve = [(e.kimg, e.mean) for e in r.evals
                                           if e is not None and e.n == r.n]
                if r.label in rows and r.target is not None:
                    row = rows[r.label]
                    row.kimg_to_target = r.target.kimg_curve
                    row.compute_to_target = r.target.compute_curve
                    row.speedup_kimg = r.target.ratio_kimg
                    row.speedup_compute = r.target.ratio_compute
                    row.speedup_kimg_range = _span(r.target.ratio_kimg_range)
                    row.speedup_compute_range = _span(r.target.ratio_compute_range)
    # Best first; a candidate with failed seeds after those with all of theirs; raced, the ones
    # that survived more rounds first.
    result.rows.sort(key=lambda r: (r.mean is None, r.n < len(r.seeds), -len(r.seeds),
                                    r.mean if r.mean is not None else math.inf))
    _verdict(result, alpha, racing)
    result.kendall_tau = kendall_tau(
        [r.search_fid for r in result.rows if r.search_fid is not None and r.mean is not None],
        [r.mean for r in result.rows if r.search_fid is not None and r.mean is not None])
    return result


def _span(r: tuple[float, float] | None) -> list[float | None] | None:
    return None if r is None else [r[0], None if math.isinf(r[1]) else r[1]]


def _verdict(conf: Confirmation, alpha: float, racing: Any) -> None:
    """Paired differences to the leader, and the leader against the runner-up in words."""
    finals = {r.label: dict(zip(r.seeds, r.finals, strict=True)) for r in conf.rows}
    complete = [r for r in conf.rows if r.mean is not None and r.n == len(r.seeds)]
    if not complete:
        return
    leader = complete[0]
    for row in conf.rows:
        if row is not leader:
            diff, sd, n, _ = racing.paired_test(finals[leader.label], finals[row.label])
            row.paired_diff, row.paired_sd, row.paired_n = diff, sd, n
    if len(complete) < 2:
        return
    runner = complete[1]
    verdict = racing.Verdict(leader=leader.label, runner_up=runner.label, alpha=alpha)
    verdict.diff_mean, verdict.diff_sd, verdict.n, verdict.p_value = racing.paired_test(
        finals[leader.label], finals[runner.label])
    verdict.decided = verdict.p_value is not None and verdict.p_value <= alpha
    conf.verdict, conf.decided, conf.p_value = verdict.sentence(), verdict.decided, \
        verdict.p_value


def kendall_tau(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Kendall's tau-b between two rankings of the same items (None with fewer than 2)."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.size < 2:
        return None
    i, j = np.triu_indices(a.size, k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    concordant = float(np.sum(da * db))
    n_a, n_b = float(np.sum(da != 0)), float(np.sum(db != 0))
    if n_a == 0 or n_b == 0:
        return None
    return concordant / math.sqrt(n_a * n_b)
