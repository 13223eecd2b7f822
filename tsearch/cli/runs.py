"""``tsearch runs``: the searches in an MLflow store and the trials of one."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from tsearch import names
from tsearch.cli.common import DEFAULT_URI, TrackingUri

app = typer.Typer(help="Inspect searches and their trials in MLflow.")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead.")]


@app.command("list")
def runs_list(tracking_uri: TrackingUri = DEFAULT_URI, as_json: JsonFlag = False) -> None:
    """Searches: their phase, trials and how they ended, and best FID."""
    import json

    from tsearch.tracking.queries import SearchCounts, list_searches, search_counts

    rows = list_searches(tracking_uri)
    counts = search_counts(tracking_uri) if rows else {}
    if as_json:
        typer.echo(json.dumps([_search_json(r, counts.get(r.run_id)) for r in rows], indent=2))
        return
    if not rows:
        typer.echo(f"no searches in {names.mask_uri(tracking_uri)}")
        return
    typer.echo(f"{'search':<24} {'parent run':<34} {'status':<10} {'phase':<8} "
               f"{'trials':<16} {'ended':<36} {'best FID':>9}")
    for r in rows:
        c = counts.get(r.run_id) or SearchCounts(phase=names.PHASE_SEARCH)
        typer.echo(f"{r.name:<24} {r.run_id:<34} {r.status:<10} {c.phase:<8} "
                   f"{_trial_counts(c):<16} {_ended(c):<36} {r.best_fid:9.2f}")


def _trial_counts(c) -> str:
    """``12`` or ``12 + 8 confirm``: trials by phase."""
    text = str(c.trials.get(names.PHASE_SEARCH, 0))
    confirm = c.trials.get(names.PHASE_CONFIRM, 0)
    return f"{text} + {confirm} confirm" if confirm else text


def _ended(c) -> str:
    """``9 finished, 3 stopped``: trials by how they ended (running ones too)."""
    order = ("finished", "stopped", "failed", "killed", "running")
    kinds = sorted(c.ended, key=lambda k: (order.index(k) if k in order else len(order), k))
    return ", ".join(f"{c.ended[k]} {k}" for k in kinds) or "-"


def _search_json(row, counts) -> dict:
    return {"name": row.name, "run_id": row.run_id, "status": row.status,
            "phase": counts.phase if counts else names.PHASE_SEARCH,
            "trial_counts": dict(counts.trials) if counts else {},
            "ended": dict(counts.ended) if counts else {},
            "best_fid": row.best_fid if math.isfinite(row.best_fid) else None,
            "confirmed_winner": row.tags.get(names.TAG_CONFIRMED),
            "confirmed_speedup": row.tags.get(names.TAG_CONFIRM_SPEEDUP),
            "confirm_verdict": row.tags.get(names.TAG_CONFIRM_VERDICT),
            "experiment_id": row.experiment_id, "artifact_uri": row.artifact_uri}


@app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="Search name or parent run id.")],
    tracking_uri: TrackingUri = DEFAULT_URI,
    as_json: JsonFlag = False,
) -> None:
    """A search's trials: phase, how each ended, kimg, best and last FID, probe compute and
    the searched values (search phase first, best FID first)."""
    import json

    from tsearch.records import trial_views
    from tsearch.tracking.queries import SearchCounts, find_search, trial_runs

    parent = find_search(tracking_uri, run)
    trials = trial_views(trial_runs(tracking_uri, parent))
    counts = SearchCounts(phase=names.PHASE_SEARCH)
    for t in trials:
        counts.add(t.phase, t.end_reason)
    if as_json:
        out = {**_search_json(parent, counts), "trials": [t.to_json() for t in trials]}
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"search {parent.name} ({parent.run_id}, {parent.status}), phase {counts.phase}, "
               f"{_trial_counts(counts)} trials ({_ended(counts)}), best FID "
               f"{parent.best_fid:.2f}")
    typer.echo(f"  {'trial':<16} {'phase':<7} {'status':<9} {'end':<34} {'kimg':>6} "
               f"{'best FID':>8} {'last FID':>8} {'probe':>7}  {'time':<20} {'run':<32}  values")
    for t in trials:
        end = t.end_reason or "running"
        typer.echo(f"  {t.trial_id:<16} {t.phase:<7} {t.status:<9} "
                   f"{end if len(end) <= 34 else end[:33] + '…':<34} {_num(t.kimg, 'g'):>6} "
                   f"{_num(t.best_fid, '.2f'):>8} {_num(t.last_fid, '.2f'):>8} "
                   f"{_num(t.probe_forwards, '.3g'):>7}  {_time_shares(t):<20} {t.run_id:<32}  "
                   f"{t.label}" + _collapse_mark(t))
    confirmed = parent.tags.get(names.TAG_CONFIRMED)
    if confirmed:
        speed = parent.tags.get(names.TAG_CONFIRM_SPEEDUP)
        verdict = parent.tags.get(names.TAG_CONFIRM_VERDICT)
        typer.echo(f"confirmed winner: {confirmed}"
                   + (f", {speed} the baseline's speed" if speed else "")
                   + (f"; {verdict}" if verdict else ""))
    typer.echo(f"artifacts: {names.mask_uri(parent.artifact_uri)}/  (trials.csv, fid_vs_kimg.png, "
               "best_trials_p_t.png, best_config.yaml)")


def _collapse_mark(t) -> str:
    """Beside a trial whose learned p(t) collapsed: its FID is that of a few timesteps."""
    kimg = t.pt_collapsed_kimg
    return "" if kimg is None else f"  [p(t) collapsed at {kimg:g} kimg]"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _time_shares(t) -> str:
    """``eval 31% other 9%`` of a trial's wall time, from its last perf/* record."""
    if t.eval_share is None:
        return ""  # a trial recorded before perf/* existed
    other = "   -" if t.overhead_share is None else f"{t.overhead_share:4.0%}"
    return f"eval {t.eval_share:4.0%} other {other}"
