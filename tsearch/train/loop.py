"""The training loop: the only place that knows the step order (docs/design.md section 3).

What a run builds and checkpoints is :mod:`tsearch.train.state`; what it records and where is
:mod:`tsearch.train.rundir`; probes are :mod:`tsearch.train.probe`; evaluations come from
:mod:`tsearch.metrics` by name. Never imports ray, mlflow or ``tsearch.tracking``: results leave
through a :class:`~tsearch.tracker.Tracker` and an ``on_report`` callback (the Ray trainable
passes one that calls ``tune.report``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from tsearch import names
from tsearch.config import Config, EvalConfig
from tsearch.diffusion.loss import per_sample_mse
from tsearch.diffusion.model import count_parameters
from tsearch.log import get_logger
from tsearch.metrics import EvalSetting, Evaluations, build_evaluations
from tsearch.timesteps import StepContext, TimestepSampler
from tsearch.tracker import NullTracker, Tracker, exception_reason, resilient
from tsearch.train.optim import OptimState, apply_schedule, schedule_at
from tsearch.train.points import Every
from tsearch.train.points import eval_points as when_to_evaluate
from tsearch.train.progress import Progress
from tsearch.train.rundir import RunRecorder, TrainResult, new_run_dir
from tsearch.train.state import TrainState, autocast_dtype, build_state
from tsearch.train.stats import LossStats, WallClock, divergence

log = get_logger(__name__)

ReportFn = Callable[[dict[str, float], Path], None]


class RunStopped(BaseException):
    """Raised by an ``on_report`` callback whose caller stops the run there (Ray Tune's
    scheduler). ``train`` then ends at once, FINISHED, without drawing its plots: the caller
    draws them, as its process may be torn down any moment now."""


def train(
    cfg: Config,
    *,
    tracker: Tracker | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    sampler: TimestepSampler | None = None,
    on_report: ReportFn | None = None,
    evaluate: bool = True,
    max_steps: int | None = None,
    checkpoint_dir: str | Path | None = None,
    keep_checkpoints: int = 2,
    started: float | None = None,
    summary: bool = True,
) -> TrainResult:
    """Train one diffusion model with the configured timestep sampler and weighting.

    Args:
        cfg: the resolved config.
        tracker: where params, metrics and artifacts go (a NullTracker if None). ``train``
            finishes it on every way out, including a failure before the first step: FINISHED,
            or FAILED with the reason. A tracker that fails mid-run is given up with one warning
            line (the run directory keeps every record) and training goes on.
        run_dir: directory for config.json, checkpoints and local metrics (created if None).
        resume: continue from the newest readable checkpoint (exact: same next losses).
        sampler: an already-built sampler (tests); by default built from ``cfg``.
        on_report: called after each evaluation with its metrics and the checkpoint path;
            it may raise :class:`RunStopped` to end the run there.
        evaluate: run ``eval.metrics`` at evaluation points (checkpoints are written either way).
        max_steps: stop after this many optimizer steps (benchmarks, tests).
        checkpoint_dir: where checkpoints go (default: ``run_dir/checkpoints``); a Ray trial
            passes a scratch directory, as Tune keeps the reported copies.
        keep_checkpoints: how many of the newest checkpoints ``checkpoint_dir`` keeps.
        started: ``time.perf_counter()`` when the caller's work began (a trial's set-up is
            its overhead too); the ``perf/*`` shares count from it. Default: now.
        summary: log the one-line summary at the end (a search's driver says its own).
    """
    # Set up the tracker, threads and the clock.
    tracker = resilient(tracker or NullTracker(), log.warning)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    status, reason, plots = "FINISHED", None, True
    st = recorder = bar = None
    start = time.perf_counter() if started is None else started
    try:
        # Create the run directory; build data, model, EMA, optimizer, sampler and evaluations.
        recorder = RunRecorder(tracker, Path(run_dir) if run_dir is not None
                               else new_run_dir(cfg), cfg)
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else recorder.dir.checkpoints
        st = build_state(cfg, sampler)
        clock = WallClock(st.device, start)
        evaluations, rung_evaluations = _build_evaluations(st) if evaluate else (None, None)

        # Resume from the newest readable checkpoint.
        if resume:
            path = st.resume(ckpt_dir, warn=log.warning)
            log.info(f"resumed from {path} at {st.kimg:.2f} kimg (step {st.step})")
        total_images = int(round(tc.total_kimg * 1000))
        eval_points = when_to_evaluate(cfg.eval.every_kimg, cfg.eval.at_kimg, st.images_seen)
        log_points = Every(tc.log_every_kimg, st.images_seen)
        n_params = count_parameters(st.model)
        recorder.start(n_params, st.device.type, resumed=resume)
        stats = LossStats(st.schedule.num_timesteps, st.device)
        bar = Progress(total_kimg=tc.total_kimg, enabled=tc.progress, start_kimg=st.kimg)

        # Prepare evaluations (reference statistics) before training; optionally evaluate kimg 0.
        if evaluations is not None:
            _prepare_evaluations(st, evaluations, rung_evaluations, recorder, clock)
        st.model.train()
        clock.lap("other")
        while st.images_seen < total_images and (max_steps is None or st.step < max_steps):
            # Take one optimizer step.
            ostate = _step(st, stats, total_images)

            # Log the interval.
            at_eval = eval_points.due(st.images_seen) or st.images_seen >= total_images
            if log_points.due(st.images_seen) or at_eval:
                last = _log_interval(st, stats, ostate, recorder)
                bar.update(st.kimg, loss=last.get(names.TRAIN_LOSS))
                log_points.advance(st.images_seen)
            if not at_eval:
                continue

            # Evaluate.
            clock.lap("train")
            report = _evaluate_point(st, evaluations, rung_evaluations, recorder, bar,
                                     final=st.images_seen >= total_images)
            clock.lap("eval")
            eval_points.advance(st.images_seen)

            # Snapshot p(t), checkpoint, and report to the caller (Ray Tune).
            _checkpoint_and_report(st, recorder, clock, report, last, ckpt_dir=ckpt_dir,
                                   keep=keep_checkpoints, on_report=on_report)
            clock.lap("other")
    except BaseException as exc:
        # Note how the run ended.
        status, reason, plots = _ending(exc)
        raise
    finally:
        # Close the bar, draw the plots and finish the tracker, on every way out.
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        try:
            if plots and recorder is not None and st is not None:
                recorder.write_plots(st)
        finally:
            tracker.finish(status, reason)

    # Summarise.
    result = TrainResult(run_dir=recorder.dir.path, run_id=tracker.run_id, steps=st.step,
                         kimg=st.kimg, seconds=seconds, evals=st.evals)
    if summary:
        log.info(result.summary_line(n_params))
    return result


def _build_evaluations(st: TrainState) -> tuple[Evaluations, Evaluations | None]:
    """The configured evaluations, and cheaper ones for the intermediate ``eval.at_kimg`` points."""
    cfg = st.cfg
    setting = EvalSetting(st.image_shape, cfg.diffusion.prediction, st.device,
                          autocast_dtype(st.device, cfg.train.precision))
    evaluations = build_evaluations(cfg.eval, cfg.data, setting)
    rung_cfg = _rung_eval(cfg)
    if rung_cfg is None:
        return evaluations, None
    return evaluations, build_evaluations(rung_cfg, cfg.data, setting)


def _prepare_evaluations(st: TrainState, evaluations: Evaluations,
                         rung_evaluations: Evaluations | None, recorder: RunRecorder,
                         clock: WallClock) -> None:
    """Reference statistics before the first step (no trial races for them); kimg 0 if asked."""
    recorder.tracker.set_tags(evaluations.prepare())
    if rung_evaluations is not None:
        rung_evaluations.prepare()
    if st.cfg.eval.at_start and st.images_seen == 0:
        clock.lap("other")
        _evaluate(st, evaluations, recorder)
        clock.lap("eval")
        recorder.snapshot_pt(st)


def _ending(exc: BaseException) -> tuple[str, str | None, bool]:
    """(status, reason, draw plots) of a run that ``exc`` ended.

    A stopped run (:class:`RunStopped`) is FINISHED without plots: its caller draws them.
    """
    if isinstance(exc, RunStopped):
        return "FINISHED", None, False
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", "interrupted by the user", True
    if isinstance(exc, Exception):
        return "FAILED", exception_reason(exc), True
    return "FINISHED", None, True


def _evaluate_point(st: TrainState, evaluations: Evaluations | None,
                    rung_evaluations: Evaluations | None, recorder: RunRecorder, bar: Progress,
                    *, final: bool) -> dict[str, float]:
    """kimg, step and the metrics of an evaluation point: the cheaper rung ones unless final."""
    report = {names.TIME_ATTR: st.kimg, names.REPORT_STEP: float(st.step)}
    if evaluations is not None:
        now = evaluations if final or rung_evaluations is None else rung_evaluations
        report.update(_evaluate(st, now, recorder))
        bar.update(st.kimg, metric=evaluations.headline(report))
    return report


def _checkpoint_and_report(st: TrainState, recorder: RunRecorder, clock: WallClock,
                           report: dict[str, float], last: dict[str, float], *, ckpt_dir: Path,
                           keep: int, on_report: ReportFn | None) -> None:
    """Write p(t) and a checkpoint, record the compute shares, then hand ``on_report`` the lot.

    ``report`` (the evaluation's metrics) gains the last interval's train and compute metrics.
    """
    recorder.snapshot_pt(st)
    path = st.save(ckpt_dir, keep=keep)
    perf = clock.metrics()  # up to this report (its upload falls in the next lap)
    recorder.record(perf, st.images_seen)
    recorder.tracker.flush()
    if on_report is not None:
        report.update({k: v for k, v in last.items()
                       if k.startswith((names.TRAIN_PREFIX, names.COMPUTE_PREFIX))})
        report.update(perf)
        on_report(report, path)


def _rung_eval(cfg: Config) -> EvalConfig | None:
    """The eval config of intermediate ``eval.at_kimg`` points, if cheaper ones are set."""
    e = cfg.eval
    if not e.at_kimg or (e.rung_num_images is None and e.rung_steps is None):
        return None
    cheaper = e.model_copy(update={"num_images": e.rung_num_images or e.num_images,
                                   "steps": e.rung_steps or e.steps})
    return None if (cheaper.num_images, cheaper.steps) == (e.num_images, e.steps) else cheaper


def _step(st: TrainState, stats: LossStats, total_images: int) -> OptimState:
    """One optimizer step in docs/design.md's order; returns the optimizer schedule it used."""
    cfg, device = st.cfg, st.device
    ostate = schedule_at(cfg.optim, st.kimg)
    apply_schedule(st.optimizer, ostate)
    x0 = st.loader.next_batch()
    if device.type == "cuda":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    ctx = StepContext(step=st.step, kimg=st.kimg, progress=st.images_seen / total_images,
                      lr=ostate.lr, x0=x0, weighting=st.weighting)

    # Draw timesteps; fix probe images and noise, measure "before".
    draw = st.sampler.sample(x0.shape[0], ctx)
    t = draw.t.to(device, non_blocking=True)
    spec = st.sampler.probe_request(ctx)
    probe_state = st.probe.before(spec, x0) if spec is not None else None

    # Per-sample losses, fed unweighted to the sampler (ctx.weighting gives it w(t)).
    noise = torch.randn(x0.shape, generator=st.noise_gen, device=device)
    # Flow matching trains on every time in the drawn index's cell (docs/algorithms.md 6.6).
    offset = (torch.rand(t.shape, generator=st.noise_gen, device=device)
              if st.schedule.process == "flow" else None)
    with st.autocast():
        losses = per_sample_mse(st.model, st.schedule, x0, t, noise, cfg.diffusion.prediction,
                                offset=offset)
    st.sampler.observe(draw, losses.detach(), ctx)

    # Weighted objective, backward, optimizer step.
    objective = (st.weighting.objective(losses, t) * draw.importance_weight.to(device)).mean()
    st.optimizer.zero_grad(set_to_none=True)
    objective.backward()
    grad_norm = None
    if cfg.optim.grad_clip is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(st.model.parameters(), cfg.optim.grad_clip,
                                                   foreach=True)
    st.optimizer.step()

    # Update EMA.
    decay = min(cfg.train.ema_decay, (1 + st.step) / (10 + st.step))
    torch._foreach_lerp_(list(st.ema.parameters()),
                         [p.detach() for p in st.model.parameters()], 1.0 - decay)

    # Look-ahead measurements on the same images and noise.
    if spec is not None:
        result = st.probe.after(spec, probe_state)
        st.probe_forwards += result.forwards
        st.sampler.observe_probe(result, ctx)

    st.step += 1
    st.images_seen += x0.shape[0]
    stats.add(losses, objective, t, grad_norm)
    return ostate


def _log_interval(st: TrainState, stats: LossStats, ostate: OptimState,
                  recorder: RunRecorder) -> dict[str, float]:
    """Loss statistics since the last log point, sampler metrics and compute counters."""
    metrics = stats.summary()
    error = divergence(metrics, st.images_seen, st.step)
    if error is not None:
        recorder.tracker.log_metrics(metrics, step=st.images_seen)
        raise error
    metrics.update(st.sampler.metrics())
    metrics.update({
        names.PROGRESS_KIMG: st.kimg, names.TRAIN_LR: ostate.lr,
        names.TRAIN_BETA1: ostate.beta1, names.PROBE_FORWARDS: float(st.probe_forwards),
        names.TRAIN_FORWARDS: 3.0 * st.images_seen, names.IMAGES_PER_S: stats.images_per_s(),
    })
    recorder.record(metrics, st.images_seen, step=st.step)
    if st.sampler.learned:
        recorder.check_collapse(metrics, st.kimg)
    stats.reset()
    return metrics


def _evaluate(st: TrainState, evaluations: Evaluations, recorder: RunRecorder) -> dict[str, float]:
    """Run every configured evaluation on the EMA model, with the fixed evaluation seed."""
    metrics = evaluations(st.ema, st.schedule, st.cfg.eval.seed)
    st.evals.append((st.kimg, metrics))
    recorder.record(metrics, st.images_seen)
    images = evaluations.last_images()
    if images is not None:
        recorder.write_grid(st.kimg, images)
    return metrics


__all__ = ["TrainResult", "train"]
