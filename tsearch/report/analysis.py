"""The numbers of `tsearch report`, with no drawing or document formatting.

Trials are grouped into *cells* (their searched values minus the seed) and cells into *blocks*
(one per noise schedule). Per block: FID at each evaluation point (mean +- std over seeds), the
training (kimg) and the compute (forward passes, probes charged) each cell needs to reach the
baseline's final FID, and which cells learn p(t) over training.

Pure functions over :class:`~tsearch.records.TrialRecord`; which trials form a cell and what its
row is called is :mod:`tsearch.report.cells`' job, fetching the records from MLflow
:mod:`tsearch.tracking`'s (the report imports neither mlflow nor tracking). Kept free of drawing
and formatting (no matplotlib, HTML or Markdown here) so the numbers have one home: the HTML,
Markdown and JSON outputs all read the same :class:`Report`, and tests check it on hand-made
records.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from tsearch import labels, names
from tsearch.errors import ConfigError, TsearchError
from tsearch.records import TrialRecord
from tsearch.report.cells import Row, rows_by_block, value_key
from tsearch.report.curves import (
    INTERPOLATION,
    _mean_std,
    compute_at,
    crossing_bracket,
    evaluations,
    kimg_to_target,
    ratio_range,
)

SCHEDULE_ORDER = ("linear", "cosine", "quad", "flow")  # flow: the flow-matching process
MISSING = "–"


@dataclass
class EvalStat:
    """One cell's FID at one evaluation point (the index-th evaluation of each seed)."""

    index: int
    kimg: float  # mean over the seeds that have this evaluation
    mean: float
    std: float | None  # ddof=1; None with one seed
    n: int
    values: list[float]


@dataclass
class TargetStat:
    """Training and compute a cell needs to reach its block's target FID, per seed and summed."""

    n: int
    n_reached: int
    kimg: list[float | None]  # per seed, None: never reached
    compute: list[float | None]  # forward-pass equivalents, None: never reached (or unlogged)
    kimg_mean: float | None = None
    kimg_std: float | None = None
    compute_mean: float | None = None
    compute_std: float | None = None
    # The headline: where the seed-mean FID curve reaches the target. Averaging per-seed
    # crossings over only the seeds that cross would credit a cell whose other seeds never do.
    kimg_curve: float | None = None
    compute_curve: float | None = None
    ratio_kimg: float | None = None  # baseline kimg_curve / this kimg_curve: > 1 is faster
    ratio_compute: float | None = None
    # Where the seed-mean curve's crossing can lie between its evaluations (lo 0: at or before
    # the first), and the speed-ups' resulting ranges (hi inf: only a lower bound).
    kimg_bracket: tuple[float, float] | None = None
    compute_bracket: tuple[float, float] | None = None
    ratio_kimg_range: tuple[float, float] | None = None
    ratio_compute_range: tuple[float, float] | None = None


@dataclass
class Block:
    schedule: str
    columns: list[float]  # kimg label of each evaluation point
    column_ranges: list[tuple[float, float]]
    rows: list[Row]
    baseline: Row | None = None
    target_fid: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    search: str
    parent_run_id: str
    tracking_uri: str
    generated: str
    n_trials: int
    statuses: dict[str, int]
    seed_key: str
    baseline: str
    blocks: list[Block]
    label_header: str = "method"


def _block_order(name: str) -> tuple[int, str]:
    return (SCHEDULE_ORDER.index(name), "") if name in SCHEDULE_ORDER else (len(SCHEDULE_ORDER),
                                                                           name)


def _column_labels(kimgs: list[float]) -> list[float]:
    """kimg rounded to 1 decimal, or more where that would merge two columns."""
    for decimals in (1, 2, 3):
        rounded = [round(k, decimals) for k in kimgs]
        if len(set(rounded)) == len(rounded):
            return rounded
    return [round(k, 3) for k in kimgs]


def _is_uniform_baseline(row: Row) -> bool:
    config = row.trials[0].config
    return (config.get(labels.SAMPLER_KEY) == "uniform"
            and config.get(labels.WEIGHTING_KEY) == "none")


def _find_baseline(rows: list[Row], baseline: str) -> tuple[Row | None, str | None]:
    named = [r for r in rows if r.label == baseline]
    if named:
        return named[0], None
    if baseline != "uniform":
        return None, None
    candidates = [r for r in rows if _is_uniform_baseline(r)]
    if not candidates:
        return None, None
    note = None
    if len(candidates) > 1:
        note = (f"{len(candidates)} rows use the uniform sampler without weighting; the first, "
                f"{candidates[0].label!r}, is the baseline")
    return candidates[0], note


def _target_stats(row: Row, target: float) -> TargetStat:
    kimgs: list[float | None] = []
    computes: list[float | None] = []
    spent: list[np.ndarray] = []  # each trial's compute at each of its evaluations
    for record in row.trials:
        steps, fids = evaluations(record)
        spent.append(compute_at(record, steps))
        kimg, comp = kimg_to_target(steps / 1000, fids, target, spent[-1])
        kimgs.append(kimg)
        computes.append(comp)
    stat = TargetStat(n=row.n, n_reached=sum(k is not None for k in kimgs), kimg=kimgs,
                      compute=computes)
    stat.kimg_mean, stat.kimg_std = _mean_std(kimgs)
    stat.compute_mean, stat.compute_std = _mean_std(computes)
    # Seed-mean curve over the evaluations every seed has (a finite FID from each).
    full = [e for e in row.evals if e is not None and e.n == row.n]
    if full:
        comp = [float(np.mean([c[e.index] for c in spent])) for e in full]
        stat.kimg_curve, stat.compute_curve = kimg_to_target(
            [e.kimg for e in full], [e.mean for e in full], target, comp)
        bracket = crossing_bracket([e.kimg for e in full], [e.mean for e in full], target, comp)
        if bracket is not None:
            stat.kimg_bracket = bracket[0], bracket[1]
            if bracket[2] is not None and bracket[3] is not None:
                stat.compute_bracket = bracket[2], bracket[3]
            if bracket[1] == full[-1].kimg and math.isclose(target, full[-1].mean,
                                                            rel_tol=1e-9):
                # The baseline at its own final FID: the target is defined there, so the
                # crossing is that evaluation, not somewhere in the interval before it.
                stat.kimg_bracket = (stat.kimg_curve, stat.kimg_curve)
                if stat.compute_curve is not None:
                    stat.compute_bracket = (stat.compute_curve, stat.compute_curve)
    return stat


def _range(r: tuple[float, float] | None) -> list[float | None] | None:
    """A ratio range for JSON: an unbounded end as null."""
    return None if r is None else [r[0], None if math.isinf(r[1]) else r[1]]


def _ratio(base: float | None, this: float | None) -> float | None:
    return base / this if base is not None and this else None


def _speed(block: Block, baseline: str) -> None:
    base, note = _find_baseline(block.rows, baseline)
    if note:
        block.notes.append(note)
    if base is None:
        block.notes.append(f"no {baseline!r} row in this block: no speed table")
        return
    finals, final_kimgs = [], []
    for record in base.trials:
        steps, fids = evaluations(record)
        ok = np.flatnonzero(np.isfinite(fids))
        if ok.size:
            finals.append(float(fids[ok[-1]]))
            final_kimgs.append(float(steps[ok[-1]]) / 1000)
    if not finals:
        block.notes.append(f"baseline {base.label!r} has no finite FID: no speed table")
        return
    block.baseline, block.target_fid = base, float(np.mean(finals))
    for row in block.rows:
        row.target = _target_stats(row, block.target_fid)
    ref = base.target
    assert ref is not None
    for row in block.rows:
        assert row.target is not None
        row.target.ratio_kimg = _ratio(ref.kimg_curve, row.target.kimg_curve)
        row.target.ratio_compute = _ratio(ref.compute_curve, row.target.compute_curve)
        row.target.ratio_kimg_range = ratio_range(ref.kimg_bracket, row.target.kimg_bracket)
        row.target.ratio_compute_range = ratio_range(ref.compute_bracket,
                                                     row.target.compute_bracket)
    # Does the baseline reach its own target before its last evaluation interval?
    in_last_interval = []
    for record in base.trials:
        steps, fids = evaluations(record)
        hits = np.flatnonzero(fids <= block.target_fid)
        if hits.size:
            in_last_interval.append(int(hits[0]) == int(np.flatnonzero(np.isfinite(fids))[-1]))
    if in_last_interval and all(in_last_interval):
        block.notes.append(
            f"{base.label} reaches its own final FID only in its last evaluation interval "
            f"({_f(ref.kimg_mean)} of {_f(float(np.mean(final_kimgs)))} kimg): its speed-up "
            "of 1.00 stands for (nearly) its full budget, and the ratios compare with that")
    if ref.n_reached < ref.n:
        block.notes.append(
            f"{ref.n - ref.n_reached} of {ref.n} {base.label} seeds end above the target (the "
            "mean of the seeds' final FIDs); its kimg to target is the mean over the seeds "
            "that reach it")


def _no_evaluations(search: str, records: Sequence[TrialRecord]) -> TsearchError:
    return TsearchError(f"search {search!r} has no finished evaluations ({len(records)} "
                        "trials); wait for its first FID or check its trials' MLflow runs")


def check_options(records: Sequence[TrialRecord], *, search: str, seed_key: str | None,
                  baseline: str) -> None:
    """Refuse options that do not fit the search, from its trial listing, before fetching.

    ``records`` need only values, config and ``latest`` metrics (no histories), so a typo
    costs one MLflow query, not a fetch of every trial. ``seed_key`` None is the default
    (``train.seed``), which a search without repeats may lack; a key given must be searched.
    A ``baseline`` other than the default ``uniform`` must label a row.
    """
    if not any(names.FID in r.latest or r.fid for r in records):
        raise _no_evaluations(search, records)
    if seed_key is not None and not any(seed_key in r.values for r in records):
        searched = sorted({k for r in records for k in r.values})
        raise ConfigError(f"--seed-key {seed_key!r} is not a searched key of {search!r}; "
                          f"searched keys: {', '.join(searched) or 'none'}")
    if baseline != "uniform":
        rows = rows_by_block(records, seed_key or labels.SEED_KEY)
        known = sorted({r.label for block in rows.values() for r in block})
        if baseline not in known:
            raise ConfigError(f"--baseline {baseline!r} is not a row of {search!r}; rows: "
                              + ", ".join(known[:20]))


def build_report(
    records: Sequence[TrialRecord],
    *,
    search: str,
    parent_run_id: str,
    tracking_uri: str,
    seed_key: str = labels.SEED_KEY,
    baseline: str = "uniform",
    generated: str | None = None,
) -> Report:
    """Group a search's trials into blocks and cells and compute every table's numbers."""
    if not any(len(r.fid) for r in records):
        raise _no_evaluations(search, records)
    by_block = rows_by_block(records, seed_key)
    blocks = []
    for schedule in sorted(by_block, key=_block_order):
        rows = by_block[schedule]
        per_trial = {id(t): evaluations(t) for row in rows for t in row.trials}
        n_cols = max(len(steps) for steps, _ in per_trial.values())
        kimg_cols = [[float(steps[j]) / 1000 for steps, _ in per_trial.values() if len(steps) > j]
                     for j in range(n_cols)]
        block = Block(schedule=schedule,
                      columns=_column_labels([float(np.mean(k)) for k in kimg_cols]),
                      column_ranges=[(min(k), max(k)) for k in kimg_cols], rows=rows)
        collapsed = [f"{row.label} at {t.pt_collapsed_kimg:g} kimg" for row in rows
                     for t in row.trials if t.pt_collapsed_kimg is not None]
        if collapsed:
            block.notes.append(
                f"learned p(t) collapsed (entropy < {names.COLLAPSE_ENTROPY:g} nat or TV from "
                f"uniform > {names.COLLAPSE_TV:g}; those runs trained on a few timesteps): "
                + "; ".join(collapsed))
        running = sum(t.status == "RUNNING" for row in rows for t in row.trials)
        if running:
            block.notes.append(f"{running} trial(s) of this block are still running: their "
                               "last FID so far is not their final one")
        for j, (lo, hi) in enumerate(block.column_ranges):
            if hi - lo > max(0.05, 0.05 * hi):
                block.notes.append(f"evaluation {j + 1} is at different points in different "
                                   f"trials ({_f(lo)} to {_f(hi)} kimg)")
        for row in rows:
            counts = Counter(value_key(seed) for seed in row.seeds if seed is not None)
            twice = sorted({labels.compact(seed) for seed in row.seeds
                            if seed is not None and counts[value_key(seed)] > 1})
            if twice:  # e.g. two reported searches ran the same cell with the same seed
                block.notes.append(f"{row.label} has {seed_key} = {', '.join(twice)} more "
                                   "than once: its spread counts repeats of one seed")
            for j in range(n_cols):
                pts = [(float(s[j]) / 1000, float(f[j])) for s, f in
                       (per_trial[id(t)] for t in row.trials) if len(s) > j]
                finite = [v for _, v in pts if math.isfinite(v)]
                if not finite:
                    row.evals.append(None)
                    continue
                mean, std = _mean_std(finite)
                assert mean is not None
                row.evals.append(EvalStat(index=j, kimg=float(np.mean([k for k, _ in pts])),
                                          mean=mean, std=std, n=len(finite), values=finite))
        _speed(block, baseline)
        blocks.append(block)

    if baseline != "uniform" and all(b.baseline is None for b in blocks):
        known = sorted({r.label for b in blocks for r in b.rows})
        raise TsearchError(f"no row labelled {baseline!r} in search {search!r}; rows: "
                           + ", ".join(known[:20]))
    has_method = any(names.METHOD_KEY in r.values for b in blocks for r in b.rows)
    return Report(
        search=search, parent_run_id=parent_run_id,
        tracking_uri=names.mask_uri(tracking_uri, strip=True),
        generated=generated or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        n_trials=len(records), statuses=dict(Counter(r.status for r in records)),
        seed_key=seed_key, baseline=baseline, blocks=blocks,
        label_header="method" if has_method else "cell")


def _f(x: float | None, digits: int = 2) -> str:
    return MISSING if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def report_json(report: Report) -> dict[str, Any]:
    """Every number of the tables (NaN as null), per block and per cell."""
    blocks, cells = [], []
    for block in report.blocks:
        blocks.append({
            "schedule": block.schedule,
            "columns": [{"index": j, "kimg": k, "kimg_min": lo, "kimg_max": hi}
                        for j, (k, (lo, hi)) in
                        enumerate(zip(block.columns, block.column_ranges, strict=True))],
            "baseline": block.baseline.label if block.baseline else None,
            "target_fid": _num(block.target_fid), "notes": block.notes,
        })
        for row in block.rows:
            t = row.target
            cells.append({
                "block": block.schedule, "label": row.label, "values": row.values, "n": row.n,
                "seeds": row.seeds, "trial_ids": [r.trial_id for r in row.trials],
                "run_ids": [r.run_id for r in row.trials],
                "statuses": [r.status for r in row.trials],
                "fid": [None if s is None else
                        {"index": s.index, "column_kimg": block.columns[s.index],
                         "kimg": s.kimg, "mean": s.mean, "std": s.std, "n": s.n,
                         "values": s.values} for s in row.evals],
                "to_target": None if t is None else {
                    "target_fid": _num(block.target_fid), "n": t.n, "n_reached": t.n_reached,
                    "kimg": t.kimg, "kimg_mean": t.kimg_mean, "kimg_std": t.kimg_std,
                    "compute": t.compute, "compute_mean": t.compute_mean,
                    "compute_std": t.compute_std, "kimg_curve": t.kimg_curve,
                    "compute_curve": t.compute_curve, "ratio_kimg": t.ratio_kimg,
                    "ratio_compute": t.ratio_compute, "kimg_bracket": t.kimg_bracket,
                    "ratio_kimg_range": _range(t.ratio_kimg_range),
                    "ratio_compute_range": _range(t.ratio_compute_range)},
                "learned_p_t": row.learned,
            })
    return {
        "search": report.search, "parent_run_id": report.parent_run_id,
        "tracking_uri": report.tracking_uri, "generated": report.generated,
        "n_trials": report.n_trials, "statuses": report.statuses, "seed_key": report.seed_key,
        "baseline": report.baseline, "interpolation": INTERPOLATION,
        "compute_unit": "forward-pass equivalents: 3 per training image + probe forwards",
        "blocks": blocks, "cells": cells,
    }
