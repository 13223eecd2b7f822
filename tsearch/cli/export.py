"""``tsearch export``: a search's answer as a config file or an overlay."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tsearch.cli.common import DEFAULT_URI, TrackingUri, check_output_file
from tsearch.errors import ConfigError, TsearchError

app = typer.Typer(help="Export results of a search.")


@app.command("best")
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
    check_output_file(output, (".yaml", ".yml"), "export writes YAML", force=force)
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
