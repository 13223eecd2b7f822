"""The commands that run a search, ``search`` and ``submit``, and the tables a search prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from tsearch import names
from tsearch.cli.common import ConfigArg, Overrides, check_store, load
from tsearch.config import Config
from tsearch.errors import ConfigError, TsearchError


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
    cfg = _search_config(config, overrides)
    from tsearch.search.tuner import plan

    checked = plan(cfg, config)
    warm_line = None
    if warm_start is not None:
        import dataclasses

        from tsearch.search.warm import warm_trials

        if resume:
            raise ConfigError("--warm-start starts a new search; a resumed one keeps the trials "
                              "its study was told at the start: drop --warm-start")
        warm = warm_trials(cfg.tracking.uri, warm_start, cfg, checked.space)
        checked = dataclasses.replace(checked, warm=warm, warm_from=warm_start)
        warm_line = (f"warm start: {len(warm)} trials of search {warm_start!r} (best FID "
                     f"{min(w.value for w in warm):.2f})")
    if dry_run:
        _print_plan(cfg, checked, warm_line)
        return
    from tsearch.search.tuner import run_search

    if warm_line:
        typer.echo(warm_line, err=True)
    from tsearch.search.timing import process_age

    started = process_age()  # Python, imports and the config, before the search's own stages
    check_store(cfg)
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


def _print_plan(cfg, checked, warm_line: str | None) -> None:
    """What ``--dry-run`` shows: the resolved config, then the search it would run."""
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
    cfg = _search_config(config, overrides)
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
    console = Console(width=max(shutil.get_terminal_size((140, 24)).columns, 140))
    console.print(table)
    line = summary.recommendation_line(result)
    if line:
        typer.echo(line)
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
    table.add_column("configuration", min_width=24)
    cols = summary.confirm_columns(conf)[2:]
    for i, col in enumerate(cols):  # the speed columns may wrap in a narrow terminal
        table.add_column(col, no_wrap=i < len(cols) - 2)
    for row in summary.confirm_rows(conf):
        table.add_row(*row)
    return table


def _search_config(config: Path | None, overrides: list[str] | None) -> Config:
    """A search needs a config file: the defaults alone have no space to search."""
    if config is None:
        raise TsearchError("give a search config (e.g. experiments/quickstart.yaml)")
    return load(config, overrides)
