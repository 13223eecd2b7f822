"""The ``tsearch`` command: thin typer glue over the library.

User errors (``TsearchError``) print one line and exit with their code (2 for bad input); any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from tsearch.errors import TsearchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
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
    from tsearch.config import load_config
    from tsearch.timesteps import check_config

    cfg = load_config(config, overrides or [])
    check_config(cfg)
    return cfg


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
) -> None:
    """Train one model with one timestep sampler (no Ray needed)."""
    run_dir = None
    if resume is not None:
        from tsearch.train.loop import resume_config_path

        run_dir = resume
        config = resume_config_path(resume)
    elif config is None:
        raise TsearchError("give a config file (e.g. experiments/smoke.yaml) or --resume RUN_DIR")
    cfg = _load(config, overrides)  # config.json of a run directory is YAML too
    if dry_run:
        _print_dry_run(cfg)
        return
    from tsearch.tracking import build_tracker
    from tsearch.train import train as run_training
    from tsearch.train.loop import previous_run_id

    run_id = previous_run_id(run_dir) if run_dir is not None else None
    tracker = build_tracker(cfg.tracking, run_name=cfg.tracking.run_name, run_id=run_id)
    run_training(cfg, tracker=tracker, run_dir=run_dir, resume=run_dir is not None)


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


def main() -> None:
    try:
        app(standalone_mode=False)
    except TsearchError as exc:
        print(f"error: {exc}" if not str(exc).startswith(("config error", "error")) else exc,
              file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
