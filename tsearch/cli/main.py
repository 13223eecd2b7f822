"""The ``tsearch`` command: the typer app, its command groups, and one line per user mistake.

User errors (``TsearchError``) and usage errors (unknown option or command, missing argument)
print one line and exit with their code (2 for bad input); any other exception is a bug and
keeps its traceback. Each command group lives in its own module of this package.
"""

from __future__ import annotations

import sys

import typer

from tsearch.cli import export, report, runs, search, timesteps, train
from tsearch.errors import TsearchError

# No group shows its help when called without a command: typer prints that help to stdout as
# it builds the error, so a missing command is a one-line usage error instead (see main()).
app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Search for the best diffusion timestep sampler (Ray Tune + Optuna + ASHA + MLflow).",
)
# `tsearch --help` lists the commands in this order, then the groups in theirs.
app.command()(train.train)
app.command("fid-ref")(train.fid_ref)
app.command()(search.search)
app.command()(search.submit)
app.command()(report.report)
app.add_typer(runs.app, name="runs")
app.add_typer(export.app, name="export")
app.add_typer(timesteps.app, name="timesteps")


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
