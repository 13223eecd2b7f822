"""`tsearch report`: a finished search as tables and plots (static HTML, Markdown and JSON).

Trials are grouped into *cells* (their searched values minus the seed) and cells into *blocks*
(one per noise schedule). Per block the report gives FID at each evaluation point (mean +- std
over seeds; methods as rows, kimg as columns, as in the adaptive-sampling paper's table), the
training (kimg) and the compute (forward passes, probes charged) each cell needs to reach the
baseline's final FID, FID curves, and the timestep distributions: learned p(t) over training
beside the final p(t) of every method.

Pure functions over :class:`~tsearch.tracking.queries.TrialRecord`; fetching the records from
MLflow is :func:`tsearch.tracking.queries.search_records`' job (no mlflow or ray import here).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tsearch import plots
from tsearch.errors import TsearchError
from tsearch.tracking.queries import TrialRecord

SCHEDULE_ORDER = ("linear", "cosine", "quad")
LABEL_KEY = "method"
SCHEDULE_KEY = "diffusion.schedule"
MISSING = "–"
# p(t) * T moving by more than this between snapshots counts as a learned (changing) p(t).
LEARNED_TOLERANCE = 1e-3
INTERPOLATION = (
    "linear interpolation of FID between the two evaluations that bracket the crossing (the "
    "first evaluation at or below the target and the one before it); a seed already at or "
    "below the target at its first evaluation counts that evaluation's kimg"
)


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


@dataclass
class Row:
    """One cell of a block: its seeds' trials and their statistics."""

    label: str
    values: dict[str, Any]
    trials: list[TrialRecord]
    seeds: list[Any]
    evals: list[EvalStat | None] = field(default_factory=list)  # one per block column
    target: TargetStat | None = None
    learned: bool = False  # p(t) changes over training: gets a heatmap

    @property
    def n(self) -> int:
        return len(self.trials)


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


# --- analysis --------------------------------------------------------------------------------


def evaluations(record: TrialRecord) -> tuple[np.ndarray, np.ndarray]:
    """A trial's evaluation steps (images seen) and FIDs, one per step (the last logged wins,
    e.g. after a resume re-evaluated a step), sorted by step."""
    by_step = dict(record.fid)
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps.tolist()], dtype=np.float64)


def value_at(history: Sequence[tuple[int, float]], steps: np.ndarray) -> np.ndarray:
    """The logged value at or last before each step (NaN before the first log)."""
    if not history:
        return np.full(len(steps), np.nan)
    at = sorted(dict(history).items())
    logged = np.array([s for s, _ in at], dtype=np.int64)
    values = np.array([v for _, v in at], dtype=np.float64)
    idx = np.searchsorted(logged, np.asarray(steps, dtype=np.int64), side="right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], np.nan)


def compute_at(record: TrialRecord, steps: np.ndarray) -> np.ndarray:
    """Forward-pass equivalents spent by each step: training (3 per image, as the trainer logs
    it) plus the sampler's probe forwards."""
    return value_at(record.train_forwards, steps) + value_at(record.probe_forwards, steps)


def kimg_to_target(
    kimgs: Sequence[float], fids: Sequence[float], target: float,
    compute: Sequence[float] | None = None,
) -> tuple[float | None, float | None]:
    """Training progress (and compute) at which FID first reaches ``target``, or None.

    Linear interpolation between the evaluation before the first one at or below the target and
    that one; a curve already at or below it at its first evaluation returns that evaluation.
    """
    k = np.asarray(kimgs, dtype=np.float64)
    f = np.asarray(fids, dtype=np.float64)
    c = np.full(k.shape, np.nan) if compute is None else np.asarray(compute, dtype=np.float64)
    hits = np.flatnonzero(f <= target)
    if hits.size == 0:
        return None, None
    i = int(hits[0])
    if i == 0 or not math.isfinite(f[i - 1]):
        kimg, comp = float(k[i]), float(c[i])
    else:
        frac = (f[i - 1] - target) / (f[i - 1] - f[i])
        kimg = float(k[i - 1] + frac * (k[i] - k[i - 1]))
        comp = float(c[i - 1] + frac * (c[i] - c[i - 1]))
    return kimg, (comp if math.isfinite(comp) else None)


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return None, None
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _seed_sort(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def group_cells(records: Sequence[TrialRecord], seed_key: str = "train.seed"
                ) -> list[tuple[dict[str, Any], list[TrialRecord]]]:
    """Trials grouped by their searched values minus ``seed_key``, in order of first trial.

    A trial whose values lack ``seed_key`` is a cell of its own (n = 1).
    """
    cells: dict[str, tuple[dict[str, Any], list[TrialRecord]]] = {}
    for record in records:
        if seed_key in record.values:
            values = {k: v for k, v in record.values.items() if k != seed_key}
            key = _key(values)
        else:
            values, key = dict(record.values), f"trial:{record.run_id}"
        cells.setdefault(key, (values, []))[1].append(record)
    for _, trials in cells.values():
        trials.sort(key=lambda r: _seed_sort(r.values.get(seed_key)))
    return list(cells.values())


def _short(key: str) -> str:
    return key[len("timesteps."):] if key.startswith("timesteps.") else key


def _fmt_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _join(values: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{_short(k)}={_fmt_value(values[k])}" for k in keys if k in values)


def _labels(cells: list[tuple[dict[str, Any], list[TrialRecord]]]) -> list[str]:
    """Row labels: the ``method`` bundle label, else the varying values, else the trial id."""
    rest = [{k: v for k, v in values.items() if k != SCHEDULE_KEY} for values, _ in cells]
    keys = sorted({k for values in rest for k in values})
    varying = [k for k in keys if len({_key(values.get(k, "\0missing")) for values in rest}) > 1]
    labels = []
    for values, (_, trials) in zip(rest, cells, strict=True):
        if LABEL_KEY in values:
            labels.append(str(values[LABEL_KEY]))
        elif any(k in values for k in varying):
            labels.append(_join(values, varying))
        elif values:
            labels.append(_join(values, sorted(values)))
        else:
            labels.append(trials[0].trial_id if len(trials) == 1 else "all trials")
    return labels


def _disambiguate(rows: list[Row]) -> None:
    """Rows of one block with the same label get the values that tell them apart."""
    by_label: dict[str, list[Row]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    for same in by_label.values():
        if len(same) < 2:
            continue
        keys = sorted({k for r in same for k in r.values if k not in (LABEL_KEY, SCHEDULE_KEY)})
        differ = [k for k in keys if len({_key(r.values.get(k)) for r in same}) > 1]
        for row in same:
            extra = _join(row.values, differ) or row.trials[0].trial_id
            row.label = f"{row.label} ({extra})"


def _schedule(record: TrialRecord) -> str:
    return str(record.config.get(SCHEDULE_KEY, record.values.get(SCHEDULE_KEY, "unknown")))


def _block_order(name: str) -> tuple[int, str]:
    return (SCHEDULE_ORDER.index(name), "") if name in SCHEDULE_ORDER else (len(SCHEDULE_ORDER),
                                                                           name)


def _column_labels(kimgs: list[float]) -> list[float]:
    """kimg rounded to 1 decimal, or more where that would merge two columns."""
    for decimals in (1, 2, 3):
        labels = [round(k, decimals) for k in kimgs]
        if len(set(labels)) == len(labels):
            return labels
    return [round(k, 3) for k in kimgs]


def _is_learned(record: TrialRecord) -> bool:
    if record.config.get("timesteps.sampler.name") == "adaptive":
        return bool(record.p_t)
    if len(record.p_t) < 2:
        return False
    probs = np.stack([np.asarray(p, dtype=np.float64) for _, p in record.p_t])
    return bool(np.max(np.abs(probs - probs[0])) * probs.shape[1] > LEARNED_TOLERANCE)


def _is_uniform_baseline(row: Row) -> bool:
    config = row.trials[0].config
    return (config.get("timesteps.sampler.name") == "uniform"
            and config.get("timesteps.weighting.name") == "none")


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
    return stat


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


def build_report(
    records: Sequence[TrialRecord],
    *,
    search: str,
    parent_run_id: str,
    tracking_uri: str,
    seed_key: str = "train.seed",
    baseline: str = "uniform",
    generated: str | None = None,
) -> Report:
    """Group a search's trials into blocks and cells and compute every table's numbers."""
    if not any(len(r.fid) for r in records):
        raise TsearchError(f"search {search!r} has no finished evaluations ({len(records)} "
                           "trials); wait for its first FID or check its trials' MLflow runs")
    cells = group_cells(records, seed_key)
    labels = _labels(cells)
    by_block: dict[str, list[Row]] = {}
    for (values, trials), label in zip(cells, labels, strict=True):
        row = Row(label=label, values=values, trials=trials,
                  seeds=[t.values.get(seed_key, t.config.get(seed_key)) for t in trials],
                  learned=_is_learned(trials[0]))
        by_block.setdefault(_schedule(trials[0]), []).append(row)

    blocks = []
    for schedule in sorted(by_block, key=_block_order):
        rows = by_block[schedule]
        _disambiguate(rows)
        per_trial = {id(t): evaluations(t) for row in rows for t in row.trials}
        n_cols = max(len(steps) for steps, _ in per_trial.values())
        kimg_cols = [[float(steps[j]) / 1000 for steps, _ in per_trial.values() if len(steps) > j]
                     for j in range(n_cols)]
        block = Block(schedule=schedule,
                      columns=_column_labels([float(np.mean(k)) for k in kimg_cols]),
                      column_ranges=[(min(k), max(k)) for k in kimg_cols], rows=rows)
        running = sum(t.status == "RUNNING" for row in rows for t in row.trials)
        if running:
            block.notes.append(f"{running} trial(s) of this block are still running: their "
                               "last FID so far is not their final one")
        for j, (lo, hi) in enumerate(block.column_ranges):
            if hi - lo > max(0.05, 0.05 * hi):
                block.notes.append(f"evaluation {j + 1} is at different points in different "
                                   f"trials ({_f(lo)} to {_f(hi)} kimg)")
        for row in rows:
            counts = Counter(_key(seed) for seed in row.seeds if seed is not None)
            twice = sorted({_fmt_value(seed) for seed in row.seeds
                            if seed is not None and counts[_key(seed)] > 1})
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
    has_method = any(LABEL_KEY in r.values for b in blocks for r in b.rows)
    return Report(
        search=search, parent_run_id=parent_run_id, tracking_uri=_redact(tracking_uri),
        generated=generated or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        n_trials=len(records), statuses=dict(Counter(r.status for r in records)),
        seed_key=seed_key, baseline=baseline, blocks=blocks,
        label_header="method" if has_method else "cell")


def _redact(uri: str) -> str:
    """A tracking URI without credentials (user:password@host)."""
    return re.sub(r"(//)[^/@]+@", r"\1", uri)


# --- tables ----------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 2) -> str:
    return MISSING if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _si(x: float | None) -> str:
    """Forward-pass counts: 3 significant digits with k / M / G."""
    if x is None or not math.isfinite(x):
        return MISSING
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _pm(mean: float | None, std: float | None, fmt: Callable[[float | None], str] = _f) -> str:
    if mean is None:
        return MISSING
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"


@dataclass
class Table:
    header: list[str]
    rows: list[list[tuple[str, bool]]]  # (text, bold)
    align: list[str]  # "l" | "r" per column


def fid_table(block: Block, label_header: str = "method") -> Table:
    """Rows = cells, columns = evaluation points; the best mean per column in bold."""
    best = []
    for j in range(len(block.columns)):
        means = [r.evals[j].mean for r in block.rows if r.evals[j] is not None]
        best.append(min(means) if means else None)
    rows = []
    for row in block.rows:
        cells: list[tuple[str, bool]] = [(row.label, False), (str(row.n), False)]
        for j, stat in enumerate(row.evals):
            if stat is None:
                cells.append((MISSING, False))
                continue
            text = _pm(stat.mean, stat.std)
            if stat.n < row.n:
                text += f" (n={stat.n})"
            cells.append((text, stat.mean == best[j]))
        rows.append(cells)
    header = [f"{label_header} \\ kimg", "n"] + [f"{k:g}" for k in block.columns]
    return Table(header=header, rows=rows, align=["l", "r"] + ["r"] * len(block.columns))


def speed_table(block: Block, label_header: str = "method") -> Table | None:
    """kimg and compute to the baseline's final FID, and the speed-ups over the baseline."""
    if block.baseline is None:
        return None
    rows = []
    for row in block.rows:
        t = row.target
        assert t is not None
        rows.append([(row.label, row is block.baseline), (_f(t.kimg_curve), False),
                     (_f(t.ratio_kimg), False), (_si(t.compute_curve), False),
                     (_f(t.ratio_compute), False), (f"{t.n_reached} / {t.n}", False),
                     (_pm(t.kimg_mean, t.kimg_std), False)])
    header = [label_header, f"kimg to FID {_f(block.target_fid)}", "speed-up (kimg)",
              "forward passes to it", "speed-up (compute)", "seeds reaching it",
              "their kimg (mean ± std)"]
    return Table(header=header, rows=rows, align=["l", "r", "r", "r", "r", "r", "r"])


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def table_markdown(table: Table) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    out = [line([_md_escape(h) for h in table.header]),
           line([":--" if a == "l" else "--:" for a in table.align])]
    for row in table.rows:
        out.append(line([f"**{_md_escape(t)}**" if b else _md_escape(t) for t, b in row]))
    return "\n".join(out)


def table_html(table: Table) -> str:
    def cell(tag: str, text: str, align: str, bold: bool = False) -> str:
        body = html.escape(text)
        return f'<{tag} class="{align}">' + (f"<b>{body}</b>" if bold else body) + f"</{tag}>"

    head = "".join(cell("th", h, a) for h, a in zip(table.header, table.align, strict=True))
    body = "".join(
        "<tr>" + "".join(cell("td", t, a, b) for (t, b), a in zip(row, table.align, strict=True))
        + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- figures ---------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


@dataclass
class Figure:
    path: Path
    caption: str


def block_figures(block: Block, out_dir: Path) -> dict[str, list[Figure]]:
    """FID curves, learned-p(t) heatmaps and final p(t) profiles of one block, as PNGs."""
    figs: dict[str, list[Figure]] = {"fid": [], "heatmaps": [], "profiles": []}
    tag = _slug(block.schedule)
    series = {}
    for row in block.rows:
        stats = [s for s in row.evals if s is not None]
        if stats:
            series[row.label] = ([s.kimg for s in stats], [s.mean for s in stats],
                                 [np.nan if s.std is None else s.std for s in stats])
    path = plots.plot_fid_bands(series, out_dir / f"fid_{tag}.png",
                                title=f"FID over training, {block.schedule} schedule "
                                      "(mean ± std over seeds)")
    figs["fid"].append(Figure(path, f"FID over training, {block.schedule} schedule"))
    used: set[str] = set()
    finals = {}
    for row in block.rows:
        seed, record = next(((s, t) for s, t in zip(row.seeds, row.trials, strict=True)
                             if t.p_t), (None, None))
        if record is None:
            continue
        finals[row.label] = record.p_t[-1][1]
        if not row.learned:
            continue
        name = _slug(row.label)
        while name in used:
            name += "_"
        used.add(name)
        what = f"{row.label}, {block.schedule} schedule, seed {seed}"
        path = plots.plot_timestep_heatmap(
            [s / 1000 for s, _ in record.p_t], np.stack([p for _, p in record.p_t]),
            out_dir / f"pt_{tag}_{name}.png", title=f"learned p(t) over training: {what}")
        figs["heatmaps"].append(Figure(path, f"learned p(t) over training: {what}"))
    if finals:
        path = plots.plot_timestep_profiles(finals, out_dir / f"pt_final_{tag}.png",
                                            title=f"final p(t) of each method, {block.schedule} "
                                                  "schedule")
        figs["profiles"].append(Figure(path, f"final p(t) of each method, {block.schedule} "
                                             "schedule"))
    return figs


# --- documents -------------------------------------------------------------------------------


def _status_text(report: Report) -> str:
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(report.statuses.items()))


def _header_rows(report: Report) -> list[tuple[str, str]]:
    return [
        ("search", report.search), ("parent run", report.parent_run_id),
        ("tracking URI", report.tracking_uri),
        ("trials", f"{report.n_trials} ({_status_text(report)})"),
        ("seeds", f"grouped by `{report.seed_key}`"), ("baseline", report.baseline),
        ("generated", report.generated),
        ("machine", "not recorded by the runs; state it when quoting these numbers"),
    ]


READING = [
    "A *cell* is one combination of the searched values except the seed; *n* is its number of "
    "seeds (trials). One block per noise schedule.",
    "FID table: evaluations grouped by their order in each trial, labelled with their mean "
    "kimg; entries are mean ± standard deviation (ddof = 1) over seeds, a single value with one "
    "seed, (n=k) when only k seeds got that far, – when none did. Bold: the lowest mean FID of "
    "the column in the block.",
    "Speed table: the target is the baseline's final FID (the mean over its seeds of each "
    "seed's last FID). *kimg to FID* is where the cell's seed-mean FID curve (over the "
    f"evaluations all its seeds have) first reaches the target, by {INTERPOLATION}; a cell "
    "whose mean curve never gets there shows –, however many single seeds do. Speed-up = the "
    "baseline's kimg ÷ this row's (> 1: faster). *Forward passes* charge training 3 "
    "forward-equivalents per image (forward + backward, as the trainer logs it) plus the "
    "sampler's probe forward passes, interpolated the same way. The last two columns give the "
    "spread: how many seeds reach the target on their own, and their kimg (mean ± std).",
]


def _images(figs: dict[str, list[Figure]], key: str) -> list[Figure]:
    return figs.get(key, [])


def render_markdown(report: Report, figures: dict[str, dict[str, list[Figure]]]) -> str:
    out = [f"# tsearch report: {report.search}", ""]
    out += [f"- **{k}**: {v}" for k, v in _header_rows(report)]
    out += ["", "## How to read it", ""] + [f"- {line}" for line in READING]
    for block in report.blocks:
        figs = figures.get(block.schedule, {})
        out += ["", f"## {block.schedule} schedule", "", "### FID at each evaluation point", "",
                table_markdown(fid_table(block, report.label_header)), ""]
        out += [f"![{f.caption}]({f.path.name})" for f in _images(figs, "fid")]
        out += ["", "### Training and compute to the baseline's final FID", ""]
        table = speed_table(block, report.label_header)
        if table is not None and block.baseline is not None:
            out += [f"Baseline **{_md_escape(block.baseline.label)}**, target FID "
                    f"{_f(block.target_fid)}.", "", table_markdown(table)]
        out += [""] + [f"- Note: {note}" for note in block.notes]
        out += ["", "### Timestep distributions p(t)", ""]
        pics = _images(figs, "heatmaps") + _images(figs, "profiles")
        out += [f"![{f.caption}]({f.path.name})" for f in pics] or ["(no p(t) snapshots)"]
    return "\n".join(out).rstrip() + "\n"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1em}
th,td{border:1px solid #ccc;padding:.25em .6em;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}
td.r,th.r{text-align:right} td.l,th.l{text-align:left}
table.meta td{border:none;padding:.1em .8em .1em 0}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:0;flex:1 1 480px;max-width:800px} figure img{width:100%;height:auto}
figcaption{font-size:.9em;color:#555}
.note{color:#7a4b00}
code{background:#f3f3f3;padding:0 .2em}
"""


def _figure_html(fig: Figure) -> str:
    data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
    caption = html.escape(fig.caption)
    return (f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _inline_md(text: str) -> str:
    """The few Markdown marks of the fixed texts (`code`, *emphasis*) as HTML."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)


def render_html(report: Report, figures: dict[str, dict[str, list[Figure]]]) -> str:
    """One static page: inline CSS, figures embedded as base64 PNG, no scripts or links."""
    title = html.escape(f"tsearch report: {report.search}")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{title}</title><style>{CSS}</style></head><body>", f"<h1>{title}</h1>",
             '<table class="meta">']
    parts += [f"<tr><td><b>{html.escape(k)}</b></td><td>{_inline_md(v)}</td></tr>"
              for k, v in _header_rows(report)]
    parts += ["</table>", "<h2>How to read it</h2><ul>"]
    parts += [f"<li>{_inline_md(line)}</li>" for line in READING]
    parts.append("</ul>")
    for block in report.blocks:
        figs = figures.get(block.schedule, {})
        parts += [f"<h2>{html.escape(block.schedule)} schedule</h2>",
                  "<h3>FID at each evaluation point</h3>",
                  table_html(fid_table(block, report.label_header))]
        parts += ['<div class="figs">'] + [_figure_html(f) for f in _images(figs, "fid")]
        parts += ["</div>", "<h3>Training and compute to the baseline's final FID</h3>"]
        table = speed_table(block, report.label_header)
        if table is not None and block.baseline is not None:
            parts += [f"<p>Baseline <b>{html.escape(block.baseline.label)}</b>, "
                      f"target FID {_f(block.target_fid)}.</p>", table_html(table)]
        parts += [f'<p class="note">Note: {html.escape(note)}</p>' for note in block.notes]
        parts.append("<h3>Timestep distributions p(t)</h3>")
        pics = _images(figs, "heatmaps") + _images(figs, "profiles")
        parts += ['<div class="figs">'] + [_figure_html(f) for f in pics] + ["</div>"]
        if not pics:
            parts.append("<p>(no p(t) snapshots)</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


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
                    "ratio_compute": t.ratio_compute},
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


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj if obj is None or isinstance(obj, str | int | bool) else str(obj)


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write report.html, report.md, report.json and the PNGs into ``out_dir``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TsearchError(f"cannot create the report directory {out} ({err.strerror})") from None
    figures = {block.schedule: block_figures(block, out) for block in report.blocks}
    paths = {"html": out / "report.html", "markdown": out / "report.md",
             "json": out / "report.json"}
    paths["html"].write_text(render_html(report, figures), encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report, figures), encoding="utf-8")
    paths["json"].write_text(json.dumps(_json_safe(report_json(report)), indent=1) + "\n",
                             encoding="utf-8")
    return paths
