"""The commands that run one config without Ray: ``train`` and ``fid-ref``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from tsearch.cli.common import ConfigArg, Overrides, check_store, load
from tsearch.errors import ConfigError, TsearchError


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

    check_store(cfg)
    run_id = previous_run_id(run_dir) if run_dir is not None else None
    tracker = build_tracker(cfg.tracking, run_name=cfg.tracking.run_name, run_id=run_id)
    run_training(cfg, tracker=tracker, run_dir=run_dir, resume=run_dir is not None)


def _print_dry_run(cfg) -> None:
    from tsearch.data import resolved_channels
    from tsearch.diffusion.model import build_model, count_parameters

    channels = resolved_channels(cfg.data)
    model = build_model(cfg.model, channels, cfg.data.resolution, cfg.diffusion.num_timesteps)
    typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
    typer.echo(f"# model: {cfg.model.arch}, {count_parameters(model) / 1e6:.3f}M parameters")


def fid_ref(config: ConfigArg = None, overrides: Overrides = None) -> None:
    """Precompute (and cache) the FID reference statistics of a dataset."""
    from tsearch.metrics import precompute_reference

    cfg = load(config, overrides)
    path, stats = precompute_reference(cfg)
    typer.echo(f"reference statistics: {stats.count} images -> {path}")
