"""``tsearch timesteps``: the registered samplers and weightings, and a preview of one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tsearch import labels, names
from tsearch.cli.common import check_output_file

app = typer.Typer(help="Inspect timestep samplers and weightings.")


@app.command("list")
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


@app.command("show")
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
    check_output_file(path, (".png",), "the plot is a PNG")
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
