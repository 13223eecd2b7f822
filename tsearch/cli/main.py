"""The ``tsearch`` command: thin typer glue over the library.

User errors (``TsearchError``) and usage errors (unknown option or command, missing argument)
print one line and exit with their code (2 for bad input); any other exception is a bug and
keeps its traceback. Outputs are checked before any work, and read-only commands never create
an MLflow store.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from tsearch import labels, names
from tsearch.errors import ConfigError, TsearchError

# No group shows its help when called without a command: typer prints that help to stdout as
# it builds the error, so a missing command is a one-line usage error instead (see main()).
app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Search for the best diffusion timestep sampler (Ray Tune + Optuna + ASHA + MLflow).",
)

Overrides = Annotated[
    Optional[list[str]],  # noqa: UP045 (typer needs Optional on Python 3.10)
    typer.Option("--set", "-s", help="Override a config value: --set train.total_kimg=5 "
                 "(repeatable)."),
]
ConfigArg = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Argument(help="Experiment YAML (e.g. experiments/smoke.yaml)."),
]


def _load(config: Path | None, overrides: list[str] | None):
    from tsearch.timesteps import load_config

    return load_config(config, overrides or [])


def _creatable(directory: Path) -> str | None:
    """Why files cannot be made in ``directory`` (which may not exist yet); None if they can.

    Asks the first existing ancestor, by making and removing a file there: permission bits do
    not tell for root or for read-only and virtual file systems.
    """
    ancestor = directory
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a directory"
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".tsearch-write-test-")
    except OSError as err:
        return f"{ancestor} is not writable ({err.strerror})"
    os.close(fd)
    os.unlink(probe)
    return None


def _check_output_file(path: Path, suffixes: tuple[str, ...], what: str,
                       force: bool | None = None) -> None:
    """Refuse an output file before any work: wrong suffix, a directory, an existing file
    (unless ``force``; None: overwriting is fine), or a place where nothing can be written."""
    if path.is_dir():
        raise ConfigError(f"-o {path} is a directory; give a file name, e.g. "
                          f"{path / ('out' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"-o {path}: {what}; give a file name ending in "
                          + " or ".join(suffixes))
    if force is False and (path.exists() or path.is_symlink()):
        raise ConfigError(f"{path} exists; pass --force to overwrite it, or choose another -o")
    problem = _creatable(path.parent)
    if problem:
        raise ConfigError(f"cannot write -o {path}: {problem}")


def _check_output_dir(path: Path) -> None:
    """Refuse an output directory that is a file or cannot be made, before any work."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"-o {path} is a file; the report is a directory: give a new or "
                          "existing directory")
    problem = _creatable(path)
    if problem:
        raise ConfigError(f"cannot write the report to -o {path}: {problem}")


@app.command()
def train(
    config: ConfigArg = None,
    overrides: Overrides = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved config and exit.")
    ] = False,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--resume", help="Continue a run from its directory's newest checkpoint."),
    ] = None,
    overlays: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option("--overlay", help="Merge this YAML onto CONFIG before --set, e.g. the file "
                     "of `tsearch export best --only timesteps,optim` (repeatable)."),
    ] = None,
) -> None:
    """Train one model with one timestep sampler (no Ray needed)."""
    from tsearch.timesteps import load_config

    run_dir = None
    if resume is not None:
        from tsearch.train.rundir import resume_config_path

        if overlays:
            raise ConfigError("--overlay cannot be combined with --resume: a resumed run "
                              "continues with its own config.json; start a new run instead")
        run_dir = resume
        config = resume_config_path(resume)
    elif config is None:
        raise TsearchError("give a config file (e.g. experiments/smoke.yaml) or --resume RUN_DIR")
    # config.json of a run directory is YAML too
    cfg = load_config(config, overrides or [], overlays or [])
    if dry_run:
        _print_dry_run(cfg)
        return
    from tsearch.tracking import build_tracker
    from tsearch.train import train as run_training
    from tsearch.train.rundir import previous_run_id

    _check_store(cfg)
    run_id = previous_run_id(run_dir) if run_dir is not None else None
    tracker = build_tracker(cfg.tracking, run_name=cfg.tracking.run_name, run_id=run_id)
    run_training(cfg, tracker=tracker, run_dir=run_dir, resume=run_dir is not None)


def _check_store(cfg) -> None:
    """A SQLite store URI that is a directory or another file fails now, in one line, not
    after minutes of MLflow retries (a missing file is fine: the run creates it)."""
    if cfg.tracking.backend == "mlflow":
        from tsearch.tracking.store import check_sqlite_store

        check_sqlite_store(cfg.tracking.uri, option="--set tracking.uri=")


def _print_dry_run(cfg) -> None:
    from tsearch.diffusion.model import build_model, count_parameters

    channels = cfg.data.channels or (1 if cfg.data.name in ("digits", "mnist",
                                                            "fashion_mnist") else 3)
    model = build_model(cfg.model, channels, cfg.data.resolution, cfg.diffusion.num_timesteps)
    typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
    typer.echo(f"# model: {cfg.model.arch}, {count_parameters(model) / 1e6:.3f}M parameters")


@app.command("fid-ref")
def fid_ref(config: ConfigArg = None, overrides: Overrides = None) -> None:
    """Precompute (and cache) the FID reference statistics of a dataset."""
    from tsearch.metrics import precompute_reference

    cfg = _load(config, overrides)
    path, stats = precompute_reference(cfg)
    typer.echo(f"reference statistics: {stats.count} images -> {path}")


@app.command()
def search(
    config: ConfigArg = None,
    overrides: Overrides = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved config and the space; exit.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the search of this config (same name).")
    ] = False,
    address: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--address", help="Ray cluster HOST:PORT (or RAY_ADDRESS); default: "
                     "a local Ray on 127.0.0.1."),
    ] = None,
    warm_start: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--warm-start", metavar="SEARCH", help="Tell the Optuna study an earlier "
                     "search's finished trials (name or parent run id, in tracking.uri) before "
                     "it proposes anything."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Let Ray print its own output too (its experiment "
                           "box, status tables, checkpoint lines); at the end, print where the "
                           "search's wall time went (start-up, Ray, MLflow, trials, summary).")
    ] = False,
) -> None:
    """Search timestep samplers and their hyperparameters (Ray Tune + Optuna + ASHA)."""
    if config is None:
        raise TsearchError("give a search config (e.g. experiments/quickstart.yaml)")
    cfg = _load(config, overrides)
    from tsearch.search.tuner import plan

    checked = plan(cfg, config)
    warm_line = None
    if warm_start is not None:
        import dataclasses

        from tsearch.search.warm import warm_trials

        if resume:
            raise ConfigError("--warm-start starts a new search; a resumed one keeps the trials "
                              "its study was told at the start: drop --warm-start")
        warm = warm_trials(cfg.tracking.uri, warm_start, cfg, checked.space,
                           say=lambda msg: typer.echo(msg, err=True))
        checked = dataclasses.replace(checked, warm=warm, warm_from=warm_start)
        warm_line = (f"warm start: {len(warm)} trials of search {warm_start!r} (best FID "
                     f"{min(w.value for w in warm):.2f})")
    if dry_run:
        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
        typer.echo(f"# search {checked.name!r}: {checked.num_trials} trials "
                   f"({cfg.search.algorithm}), ASHA {'on' if cfg.search.asha.enabled else 'off'}"
                   "; space:")
        for line in checked.space.describe():
            typer.echo(f"#   {line}")
        for i, cell in enumerate(checked.cells or []):
            typer.echo(f"# cell {i:3d}: " + ", ".join(f"{k}={v}" for k, v in cell.items()))
        for i, point in enumerate(checked.points):
            typer.echo(f"# point {i:2d} (tried first): "
                       + ", ".join(f"{k}={v}" for k, v in point.items()))
        c = cfg.search.confirm
        if c.enabled:
            typer.echo(f"# then confirmation: top {c.top_k} and the baseline, each on seeds "
                       f"{list(c.seeds)} at full budget"
                       + (f", with {c.set}" if c.set else ""))
        if warm_line:
            typer.echo(f"# {warm_line}")
        return
    from tsearch.search.tuner import run_search

    if warm_line:
        typer.echo(warm_line, err=True)
    from tsearch.search.timing import process_age

    started = process_age()  # Python, imports and the config, before the search's own stages
    _check_store(cfg)
    result = run_search(cfg, config, address=address, resume=resume, checked=checked,
                        verbose=verbose)
    _print_search_result(result)
    if verbose:
        if started is not None:
            result.timing.stages = {"start-up (Python and imports)": started,
                                    **result.timing.stages}
        typer.echo(result.timing.line(process_age()), err=True)
    if result.best is None:
        errors = sorted({t.error for t in result.trials if t.error})
        raise TsearchError(f"no trial of search {result.name!r} reached an evaluation"
                           + (f"; first error: {errors[0]}" if errors else "")
                           + " (each trial's MLflow run and error.txt say more)")


@app.command()
def submit(
    config: ConfigArg = None,
    overrides: Overrides = None,
    address: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--address", help="The cluster's Ray Jobs API, http://HEAD:8265 "
                     "(or RAY_API_SERVER_ADDRESS)."),
    ] = None,
    working_dir: Annotated[
        Path, typer.Option("--working-dir", help="Directory uploaded with the job; holds CONFIG.")
    ] = Path("."),
    wait: Annotated[
        bool, typer.Option("--wait", help="Stream the job's log until it ends; exit with its "
                           "status.")
    ] = False,
) -> None:
    """Run a search on a Ray cluster as a Ray Job (the working directory is uploaded)."""
    if config is None:
        raise TsearchError("give a search config (e.g. experiments/quickstart.yaml)")
    cfg = _load(config, overrides)
    from tsearch.search.submit import follow
    from tsearch.search.submit import submit as submit_job
    from tsearch.search.tuner import plan

    name = plan(cfg, config).name
    sub = submit_job(cfg, config, list(overrides or []), address=address,
                     working_dir=working_dir, name=name)
    address = names.mask_uri(sub.address)
    typer.echo(f"submitted search {name!r} as Ray job {sub.job_id} to {address}")
    typer.echo(f"  runs:   {sub.entrypoint}")
    typer.echo(f"  follow: ray job logs --follow --address {address} {sub.job_id}")
    typer.echo(f"  status: ray job status --address {address} {sub.job_id}")
    typer.echo(f"  stop:   ray job stop --address {address} {sub.job_id}")
    typer.echo("  runs in MLflow: tsearch runs list --tracking-uri "
               f"{names.mask_uri(cfg.tracking.uri)}")
    if wait:
        status = follow(sub)
        typer.echo(f"Ray job {sub.job_id}: {status}")
        if status != "SUCCEEDED":
            raise TsearchError(f"Ray job {sub.job_id} ended {status}; its log is above "
                               f"(ray job logs --address {address} {sub.job_id})")


def _print_search_result(result) -> None:
    import shutil

    from rich.console import Console
    from rich.table import Table

    from tsearch.search import summary

    table = Table(title=summary.best_title(result))
    for col in summary.BEST_COLUMNS[:-1]:
        table.add_column(col, no_wrap=True)
    table.add_column(summary.BEST_COLUMNS[-1])
    for row in summary.best_rows(result):
        table.add_row(*row)
    # Wide enough for the tables when the output is a pipe or a log (rich assumes 80 then).
    console = Console(width=max(shutil.get_terminal_size((120, 24)).columns, 120))
    console.print(table)
    if result.confirmation is not None:
        console.print(_confirm_table(result.confirmation))
        for note in result.confirmation.notes:
            typer.echo(f"note: {note}")
        line = summary.winner_line(result.confirmation)
        if line is not None:
            typer.echo(line)
    uri = names.mask_uri(result.tracking_uri)
    typer.echo(f"MLflow parent run: {result.parent_run_id}")
    typer.echo(f"look at it:   open {uri}" if uri.startswith(("http://", "https://"))
               else f"look at it:   mlflow ui --backend-store-uri {uri}")
    typer.echo(f"export best:  tsearch export best --search {result.name} -o best-sampler.yaml"
               + (f" --tracking-uri {uri}" if uri.startswith("http") else ""))


def _confirm_table(conf):
    """The search's answer: search FID beside the confirmed mean ± std, and speed-ups."""
    from rich.table import Table

    from tsearch.search import summary

    table = Table(title=summary.confirm_title(conf))
    table.add_column("#", no_wrap=True, min_width=1)
    table.add_column("configuration", min_width=30)
    for col in summary.confirm_columns(conf)[2:]:
        table.add_column(col, no_wrap=True)
    for row in summary.confirm_rows(conf):
        table.add_row(*row)
    return table


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


runs_app = typer.Typer(help="Inspect searches and their trials in MLflow.")
app.add_typer(runs_app, name="runs")
TrackingUri = Annotated[
    str, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow store.")
]
DEFAULT_URI = "sqlite:///tsearch-runs/mlflow.db"


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead.")]


@runs_app.command("list")
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
            "experiment_id": row.experiment_id, "artifact_uri": row.artifact_uri}


@runs_app.command("show")
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
                   f"{t.label}")
    typer.echo(f"artifacts: {names.mask_uri(parent.artifact_uri)}/  (trials.csv, fid_vs_kimg.png, "
               "best_trials_p_t.png, best_config.yaml)")


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _time_shares(t) -> str:
    """``eval 31% other 9%`` of a trial's wall time, from its last perf/* record."""
    if t.eval_share is None:
        return ""  # a trial recorded before perf/* existed
    other = "   -" if t.overhead_share is None else f"{t.overhead_share:4.0%}"
    return f"eval {t.eval_share:4.0%} other {other}"


export_app = typer.Typer(help="Export results of a search.")
app.add_typer(export_app, name="export")


@export_app.command("best")
def export_best(
    output: Annotated[Path, typer.Option("--output", "-o", help="YAML file to write.")],
    search_ref: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--search", help="Search name or parent run id (default: the newest)."),
    ] = None,
    tracking_uri: TrackingUri = DEFAULT_URI,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT if it exists.")] = False,
    unconfirmed: Annotated[bool, typer.Option(
        "--unconfirmed", help="Export the search phase's best trial (one seed) even when the "
        "search has a confirmed winner.")] = False,
    only: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--only", metavar="SECTIONS", help="Write an overlay of these config "
                     "sections only (e.g. timesteps,optim), for `tsearch train BASE --overlay "
                     "FILE`."),
    ] = None,
) -> None:
    """Write a search's answer: its confirmed winner when it has one, else its best trial.

    `tsearch train FILE` runs a full export; `train BASE --overlay FILE` applies an overlay.
    """
    from tsearch.config import parse_sections
    from tsearch.tracking.export import export_best as exported_config

    sections = parse_sections(only, "--only") if only is not None else None
    _check_output_file(output, (".yaml", ".yml"), "export writes YAML", force=force)
    exported = exported_config(tracking_uri, search_ref, unconfirmed=unconfirmed,
                               sections=sections)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "wb" if force else "xb") as handle:  # "x": never overwrite unasked
            handle.write(exported.text.encode("utf-8"))
    except FileExistsError:
        raise ConfigError(f"{output} exists; pass --force to overwrite it, or choose another "
                          "-o") from None
    except OSError as err:
        raise TsearchError(f"cannot write -o {output} ({err.strerror})") from None
    if exported.note:
        typer.echo(exported.note)
    typer.echo(f"{exported.summary} -> {output}")


@app.command()
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
    _check_output_dir(output)
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


timesteps_app = typer.Typer(help="Inspect timestep samplers and weightings.")
app.add_typer(timesteps_app, name="timesteps")


@timesteps_app.command("list")
def timesteps_list() -> None:
    """Registered samplers and weightings with their hyperparameters and defaults."""
    from tsearch.timesteps import SAMPLERS, WEIGHTINGS

    for title, registry in (("samplers", SAMPLERS), ("weightings", WEIGHTINGS)):
        typer.echo(f"{title}:")
        for name, cls in registry.items():
            fields = ", ".join(f"{k}={f.default!r}" for k, f in cls.Params.model_fields.items())
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            typer.echo(f"  {name:<11} {doc}")
            if fields:
                typer.echo(f"  {'':<11} params: {fields}")


@timesteps_app.command("show")
def timesteps_show(
    name: Annotated[str, typer.Argument(help="Sampler name (see `tsearch timesteps list`).")],
    overrides: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--set", "-s", help="Sampler hyperparameter: --set k=5 (repeatable)."),
    ] = None,
    weighting: Annotated[str, typer.Option(help="Loss weighting name.")] = "none",
    weighting_set: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--wset", help="Weighting hyperparameter: --wset lam=0.6 (repeatable)."),
    ] = None,
    schedule: Annotated[str, typer.Option(help="linear | quad | cosine | flow (flow "
                                          "matching's noise levels)")] = "linear",
    num_timesteps: Annotated[int, typer.Option("--num-timesteps", "-T")] = 1000,
    prediction: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="eps | v | x0 (Min-SNR and Debias depend on it); default eps, and "
                     "v (the velocity) for flow"),
    ] = None,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="PNG path (default: tsearch-runs/show-NAME.png)"),
    ] = None,
) -> None:
    """Print a sampler's p(t) and a weighting's w(t), and plot them, before training."""
    from tsearch import plots
    from tsearch.config import EvalConfig
    from tsearch.diffusion.schedule import NoiseSchedule
    from tsearch.timesteps import build_sampler, build_weighting, load_config
    from tsearch.timesteps.preview import describe, profiles, weight_summary

    path = output or Path("tsearch-runs") / f"show-{name}-{weighting}.png"
    _check_output_file(path, (".png",), "the plot is a PNG")
    # Generation steps play no part here, but the config refuses more of them than T.
    eval_steps = min(EvalConfig.model_fields["steps"].default, num_timesteps)
    prediction = prediction or ("v" if schedule == "flow" else "eps")
    sets = [f"{labels.SAMPLER_KEY}={name}", f"{labels.WEIGHTING_KEY}={weighting}",
            f"{names.SCHEDULE_KEY}={schedule}", f"diffusion.num_timesteps={num_timesteps}",
            f"diffusion.prediction={prediction}", f"eval.steps={max(eval_steps, 1)}"]
    sets += [f"timesteps.sampler.params.{kv}" for kv in overrides or []]
    sets += [f"timesteps.weighting.params.{kv}" for kv in weighting_set or []]
    cfg = load_config(None, sets)
    sched = NoiseSchedule.create(schedule, num_timesteps, cfg.diffusion.variance)
    sampler = build_sampler(cfg.timesteps.sampler, sched, seed=0)
    weights = build_weighting(cfg.timesteps.weighting, sched, prediction)
    profs = profiles(sampler)
    given = cfg.to_dict()["timesteps"]["sampler"]["params"]
    typer.echo(f"sampler {name} {given or ''} on {schedule} "
               f"(T={num_timesteps}), unbiased={sampler.unbiased}")
    if getattr(sampler, "learned", False):
        typer.echo(f"  note: {name} learns p(t) while training; what follows is its initial "
                   "p(t), before any update (a run's p_t_heatmap.png shows how it changed)")
    for label, p in profs.items():
        d = describe(p)
        quarters = " ".join(f"{d[f'mass_q{i}']:.3f}" for i in range(1, 5))
        typer.echo(f"  {label:<13} entropy {d['entropy_nats']:.3f}/{d['max_entropy']:.3f} nats, "
                   f"median t {d['median_t']:.0f}, p(t)*T in [{d['min_pT']:.3g}, "
                   f"{d['max_pT']:.3g}], mass by quarter of t: {quarters}")
    w = weight_summary(weights)
    points = " ".join(f"{k}={v:.4g}" for k, v in w.items() if k.startswith("w["))
    typer.echo(f"weighting {weighting}: min {w['min']:.4g}, max {w['max']:.4g}, "
               f"mean {w['mean']:.4g}; {points}")
    plots.plot_sampler_preview(profs, weights.table(), weighting, path,
                               title=f"{name} sampler, {weighting} weighting, {schedule} schedule")
    typer.echo(f"plot: {path}")


def _one_line(text: str) -> str:
    """A message as the single line the user sees (a stray newline must not split it)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _click_exception_types() -> list:
    """Typer's bundled click (``typer._click``) and, if installed, the standalone click."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(__import__(module, fromlist=["UsageError"]))
        except ImportError:
            continue
    return found


def _usage_error(exc: Exception) -> tuple[str, int] | None:
    """The one line and exit code of a click/typer error; None if ``exc`` is not one."""
    for mod in _click_exception_types():
        no_args = getattr(mod, "NoArgsIsHelpError", ())
        ctx = getattr(exc, "ctx", None)
        path = ctx.command_path if ctx is not None else "tsearch"
        missing = isinstance(exc, mod.UsageError) and exc.message == "Missing command."
        if (missing or (no_args and isinstance(exc, no_args))) and ctx is not None:
            commands = ", ".join(ctx.command.list_commands(ctx))
            return f"{path} needs a command: {commands} (see {path} --help)", 2
        if isinstance(exc, mod.NoSuchOption):
            guess = sorted(exc.possibilities or [])
            hint = f"; did you mean {' or '.join(guess)}?" if guess else ""
            return f"{exc.message}{hint} (see {path} --help)", exc.exit_code
        if isinstance(exc, mod.UsageError):
            text = exc.format_message().rstrip(".")
            if text.startswith("No such command") and ctx is not None:
                text += "; commands: " + ", ".join(ctx.command.list_commands(ctx))
            return f"{text} (see {path} --help)", exc.exit_code
        if isinstance(exc, mod.ClickException):
            return exc.format_message(), exc.exit_code
        if isinstance(exc, mod.Abort):
            return "aborted", 1
    return None


def _fail(message: str, code: int) -> None:
    message = _one_line(message)
    if not message.startswith(("config error", "error")):
        message = f"error: {message}"
    print(message, file=sys.stderr)
    sys.exit(code)


def main() -> None:
    """The console entry point: every user mistake ends as one stderr line and exit code."""
    try:
        code = app(standalone_mode=False, prog_name="tsearch")
    except TsearchError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        usage = _usage_error(exc)
        if usage is None:
            raise
        _fail(*usage)
    # Without standalone mode, click returns the code of an Exit (typer: Ctrl-C is Exit(130)).
    if code == 130:
        print("interrupted", file=sys.stderr)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
