"""``tsearch report``: fetch one or more searches' trials and write their report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tsearch import labels, names
from tsearch.cli.common import DEFAULT_URI, TrackingUri, check_output_dir
from tsearch.errors import ConfigError


def report(
    search_refs: Annotated[list[str], typer.Argument(
        metavar="SEARCH...", help="Search name or parent run id; several searches make one "
        "report (cells with the same values are merged, e.g. more seeds run later).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write "
                                         "report.html, report.md, report.json and PNGs to.")],
    tracking_uri: TrackingUri = DEFAULT_URI,
    seed_key: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--seed-key", help="Searched key whose values are repeats (mean +- std "
                     "over them); default train.seed."),
    ] = None,
    baseline: Annotated[str, typer.Option("--baseline", help="Row the speed-ups are relative "
                                          "to (its final FID is the target).")] = "uniform",
    phase: Annotated[str, typer.Option("--phase", help="Trials to report: confirm (the "
                                       "retrained top configurations, on fresh seeds), search "
                                       "(the proposals), or auto: confirm when the search has "
                                       "a confirmation stage.")] = "auto",
) -> None:
    """Tables and plots of a search: FID per cell and kimg, speed-ups, learned p(t)."""
    from tsearch.report import build_report, check_options, write_report
    from tsearch.tracking.fetch import fetch_histories
    from tsearch.tracking.queries import find_search, search_trials
    from tsearch.tracking.store import resolve_read_uri

    if phase not in ("auto", names.PHASE_SEARCH, names.PHASE_CONFIRM):
        raise ConfigError(f"--phase {phase!r}: choose auto, {names.PHASE_SEARCH} or "
                          f"{names.PHASE_CONFIRM}")
    check_output_dir(output)
    uri = resolve_read_uri(tracking_uri)
    shown = names.mask_uri(uri)
    # A search named twice (e.g. by name and by run id) is fetched once.
    wanted = {p.run_id: p for p in (find_search(uri, ref) for ref in search_refs)}
    listed = [search_trials(uri, run_id) for run_id in wanted]
    parents = [parent for parent, _ in listed]
    records = [r for _, found in listed for r in found]
    title = " + ".join(p.name for p in parents)
    records, phase = _phase_records(records, phase, title)
    kept = {id(r) for r in records}
    listed = [(parent, [r for r in found if id(r) in kept]) for parent, found in listed]
    # Options are checked on the listing, so a typo costs one query, not a fetch of every trial.
    check_options(records, search=title, seed_key=seed_key, baseline=baseline)
    tty = sys.stderr.isatty()
    for parent, found in listed:

        def progress(done: int, total: int, name: str = parent.name) -> None:
            # Shown once fetching works (a live line on a terminal, the total in a log).
            if tty or done == total:
                print(f"\rfetching trial runs of search {name!r} from {shown}: {done}/{total}",
                      end="" if tty and done < total else "\n", file=sys.stderr, flush=True)

        fetch_histories(uri, found, progress)
    rep = build_report(records, search=title,
                       parent_run_id=", ".join(p.run_id for p in parents),
                       tracking_uri=uri, seed_key=seed_key or labels.SEED_KEY, baseline=baseline)
    paths = write_report(rep, output)
    cells = sum(len(b.rows) for b in rep.blocks)
    what = "search" if len(parents) == 1 else f"{len(parents)} searches"
    typer.echo(f"report of {what} {rep.search} ({len(records)} trials, {cells} cells in "
               f"{len(rep.blocks)} block(s)) -> {output}/")
    for path in paths.values():
        typer.echo(f"  {path}")


def _phase_records(records: list, phase: str, title: str) -> tuple[list, str]:
    """One phase's trials: a search's proposals and its confirmation runs are different
    experiments (one seed and early stopping vs fresh seeds at full budget)."""
    def of(r) -> str:
        return r.phase or names.PHASE_SEARCH  # stores before phases had search trials only

    if phase == "auto":
        phase = (names.PHASE_CONFIRM if any(of(r) == names.PHASE_CONFIRM for r in records)
                 else names.PHASE_SEARCH)
        if phase == names.PHASE_CONFIRM:
            print(f"report of {title}: its confirmation runs (--phase search for the "
                  "proposals)", file=sys.stderr)
    chosen = [r for r in records if of(r) == phase]
    if not chosen:
        raise ConfigError(f"--phase {phase}: search {title} has no {phase}-phase trials")
    return chosen, phase
