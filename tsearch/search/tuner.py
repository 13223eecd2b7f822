"""Run a search: Ray Tune + a registered search algorithm + ASHA, in MLflow.

The driver checks MLflow and Ray before any trial starts, creates the MLflow experiment and one
parent run (this also avoids SQLite's schema race between concurrent trials), then runs the
Tuner: the search phase, then the confirmation phase (``confirm_phase.run_phase``). Each trial opens
its child run itself (``trainable.run_trial``). What a search will do is checked before, by
``plan.plan``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tsearch import names
from tsearch.config import Config
from tsearch.errors import ConfigError, TsearchError
from tsearch.log import get_logger
from tsearch.search import confirm_phase, phase, tune_state
from tsearch.search.parent_run import ParentRun
from tsearch.search.phase import SearchContext, TrialMeta
from tsearch.search.plan import SearchPlan, asha_milestones, base_config, plan
from tsearch.search.results import SearchResult, trial_records
from tsearch.search.timing import Stopwatch
from tsearch.search.trial_plots import complete_phase_plots

__all__ = ["SearchResult", "plan", "run_search"]  # plan and SearchResult: re-exported for cli
log = get_logger(__name__)


def run_search(
    cfg: Config,
    config_path: Path | None = None,
    *,
    address: str | None = None,
    resume: bool = False,
    checked: SearchPlan | None = None,
    verbose: bool = False,
) -> SearchResult:
    """Run (or resume) the search ``cfg.search`` describes and summarise it in MLflow.

    ``checked`` is the :func:`plan` of this config if the caller made it already. ``verbose``
    lets Ray (and Optuna) print their own output too (``search.console``).
    """
    from tsearch.search.console import configure_driver
    from tsearch.search.ray_runtime import check_ray_address, end_session, init_ray
    from tsearch.tracking.store import (
        check_tracking_store,
        ensure_experiment,
        resolve_artifact_root,
        resolve_tracking_uri,
    )

    start = time.perf_counter()
    watch = Stopwatch()
    checked = checked or plan(cfg, config_path)
    name = checked.name
    if cfg.tracking.backend != "mlflow":
        raise ConfigError("config error: tracking.backend = 'none': a search records its "
                          "trials in MLflow; set tracking.backend=mlflow")
    check_ray_address(address)
    if address and cfg.tracking.uri.startswith("sqlite:"):
        raise ConfigError(
            "config error: tracking.uri is a local sqlite file, which worker nodes cannot "
            "write; start `mlflow server` and pass --set tracking.uri=http://HOST:5000")
    with watch.stage("MLflow store"):
        uri = resolve_tracking_uri(cfg.tracking.uri)
        check_tracking_store(uri)
        artifact_root = resolve_artifact_root(cfg.tracking.artifact_root, uri)
        ensure_experiment(uri, cfg.tracking.experiment, artifact_root)
    storage = cfg.search.storage_path
    storage = storage if "://" in storage else str(Path(storage).resolve())
    problem = names.name_problem(name)
    if problem is not None:
        raise ConfigError(f"config error: search name {problem}; pass --set search.name=NAME")
    exp_path = Path(storage) / name
    if "://" not in storage and not exp_path.resolve().is_relative_to(Path(storage)):
        raise ConfigError(f"config error: search {name!r} would be written outside "
                          f"search.storage_path {storage}; pass --set search.name=NAME")
    if (address or os.environ.get("RAY_ADDRESS")) and "://" not in cfg.search.storage_path:
        log.info(f"note: trials on other nodes checkpoint to {storage}; it must be a filesystem "
                 "every node mounts at that path (NFS), or set search.storage_path to a bucket "
                 "(s3://...)")

    configure_driver(verbose)
    with watch.stage("Ray start"):
        session = init_ray(address, num_cpus=None)
    ctx = SearchContext(cfg=cfg, checked=checked, uri=uri, artifact_root=artifact_root,
                        storage=storage, exp_path=exp_path, resume=resume, verbose=verbose)
    keep_logs = True  # Ray's logs help with a crash, not with a user error or a success
    try:
        result = _run(ctx, watch)
        keep_logs = False
    except KeyboardInterrupt:
        keep_logs = False
        raise
    except TsearchError as exc:  # a user error, unless it is Ray's own failure rephrased
        keep_logs = type(exc.__cause__).__module__.startswith("ray.")
        raise
    finally:
        if session is not None:  # a local Ray this search started: stop it, drop its files
            with watch.stage("Ray stop"):
                end_session(session, keep_logs=keep_logs)
    result.seconds = time.perf_counter() - start
    result.timing = watch
    return result


def _run(ctx: SearchContext, watch: Stopwatch) -> SearchResult:
    """Open the parent run, run (or restore) the search phase, then the confirmation phase."""
    with watch.stage("Ray Tune and MLflow imports"):
        from ray import tune

        from tsearch.tracking import MlflowTracker

    cfg, checked, exp_path = ctx.cfg, ctx.checked, ctx.exp_path
    space, name = checked.space, checked.name
    state_file = exp_path / names.SEARCH_STATE
    state: dict[str, Any] = {}
    if ctx.resume:
        if not tune.Tuner.can_restore(str(exp_path)):
            raise TsearchError(f"nothing to resume at {exp_path}: no search named {name!r} was "
                               "started there (check search.name and search.storage_path)")
        if state_file.is_file():
            state = json.loads(state_file.read_text())
    elif exp_path.exists() and tune.Tuner.can_restore(str(exp_path)):
        raise TsearchError(f"a search named {name!r} already exists at {exp_path}: pass "
                           "--resume to continue it, or --set search.name=NEW_NAME")
    parent_id = state.get("parent_run_id")
    with watch.stage("MLflow parent run"):
        tracker = MlflowTracker(ctx.uri, experiment=cfg.tracking.experiment,
                                artifact_root=ctx.artifact_root, run_name=name, run_id=parent_id,
                                tags={names.TAG_KIND: names.KIND_SEARCH, names.TAG_SEARCH: name,
                                      names.TAG_STORAGE: str(exp_path)})
    parent = ParentRun(tracker, exp_path)
    meta = TrialMeta(parent_run_id=parent.run_id, search_name=name, labels=tuple(space.labels),
                     keys=tuple(space.specs), phase=names.PHASE_SEARCH, verbose=ctx.verbose)
    base = base_config(cfg, ctx.uri)
    base["tracking"]["artifact_root"] = ctx.artifact_root
    try:
        if parent_id is None:
            with watch.stage("MLflow parent run"):
                parent.record_config(cfg, checked.warm_from)
                exp_path.mkdir(parents=True, exist_ok=True)
                state = {"parent_run_id": parent.run_id, "name": name}
                tune_state.write_state(state_file, state)
        log.info(f"search {name!r}: {checked.num_trials} trials, up to "
                 f"{cfg.search.max_concurrent} at once; MLflow parent run {parent.run_id} at "
                 f"{names.mask_uri(ctx.uri)}")
        if state.get("search_done"):  # killed in the confirmation phase: its trials are final
            log.info("search phase: finished before; continuing with the confirmation phase")
            tune_state.mend_state(exp_path, name, name)
            grid = tune.Tuner.restore(str(exp_path),
                                      trainable=phase.trainable(ctx, base, meta)).get_results()
        else:
            with watch.stage("search phase (Tune and its trials)"):
                grid = _tuner(ctx, base, meta).fit()
        with watch.stage("summary (table and plots)"):
            tune_state.prune_checkpoints(exp_path, cfg.search.num_to_keep)
            trials = trial_records(grid)
            complete_phase_plots(trials, base, ctx.uri)
            result = SearchResult(name=name, parent_run_id=parent.run_id,
                                  experiment_path=exp_path, trials=trials, best_config=None,
                                  tracking_uri=ctx.uri, seconds=0.0, labels=space.labels)
            result.predictions = _recommend(ctx, result)
            result.best_config = parent.record_search(result, base)
            parent.note(result)
        if cfg.search.confirm.enabled and result.best is not None:
            state["search_done"] = True
            tune_state.write_state(state_file, state)
            with watch.stage("confirmation phase"):
                confirm_phase.run_phase(ctx, result, parent, base=base, meta=meta,
                                        state=state)
                parent.note(result)
    except KeyboardInterrupt:
        tracker.finish("KILLED", "interrupted; continue with tsearch search --resume")
        _free_name(ctx)
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        tracker.finish("FAILED", reason)
        _free_name(ctx)
        if not type(exc).__module__.startswith("ray."):
            raise  # ours: a TsearchError is one line already, anything else is a bug
        raise TsearchError(f"search {name!r} stopped: Ray Tune failed ({reason[:200]})"
                           + ("" if tune_state.trial_dirs(exp_path) else
                              f"; no trial started, so the name {name!r} is free again")) from exc
    with watch.stage("MLflow parent run"):
        tracker.finish("FINISHED")
    return result


def _recommend(ctx: SearchContext, result: SearchResult) -> list[Any]:
    """The model's ranking of the configurations, logged beside the best observed trial."""
    from tsearch.search import recommend
    from tsearch.search.summary import trial_label

    try:
        preds = recommend.predict(result.trials, ctx.checked.space, ctx.cfg.train.total_kimg)
    except Exception as exc:  # a model that cannot be fitted leaves the best observed
        log.warning(f"no model recommendation ({type(exc).__name__}: {exc}); the best observed "
                    "trial stands")
        return []
    best = result.best
    if preds and best is not None:
        top = preds[0]
        log.info(f"recommendation by the model's mean (a Gaussian process over "
                 f"{sum(len(t.fid) for t in result.trials)} FIDs of {len(result.trials)} trials): "
                 f"{trial_label(top.trial, result.labels)}, predicted final FID {top.fid:.2f} "
                 f"({top.low:.2f}-{top.high:.2f}; observed {top.observed:.2f}); best observed: "
                 f"{trial_label(best, result.labels)}, FID {best.best_fid:.2f}")
    return preds


def _free_name(ctx: SearchContext) -> None:
    """After a new search failed before any trial ran: the name is free again."""
    if not ctx.resume and not tune_state.trial_dirs(ctx.exp_path):
        tune_state.forget_start(ctx.exp_path)


def _tuner(ctx: SearchContext, base: dict[str, Any], meta: TrialMeta) -> Any:
    """The search phase's Tuner: restored from its experiment, or new from the plan."""
    from ray import tune

    cfg, checked, s = ctx.cfg, ctx.checked, ctx.cfg.search
    trainable = phase.trainable(ctx, base, meta)
    if ctx.resume:
        log.info(f"resuming {ctx.exp_path}")
        tune_state.mend_state(ctx.exp_path, checked.name, checked.name)
        tune_state.stub_pruned_checkpoints(ctx.exp_path)
        return tune.Tuner.restore(str(ctx.exp_path), trainable=trainable, resume_errored=True,
                                  restart_errored=False)
    # The points (points_to_evaluate, plus every sampler's defaults) as plan() resolved them.
    with_points = cfg.model_copy(update={"search": s.model_copy(
        update={"points_to_evaluate": [dict(p) for p in checked.points]})})
    proposal = checked.algorithm.build(with_points, checked.space, checked.name,
                                       warm=checked.warm)
    return tune.Tuner(
        trainable,
        param_space=proposal.param_space,
        tune_config=tune.TuneConfig(
            num_samples=proposal.num_samples, search_alg=proposal.search_alg,
            max_concurrent_trials=proposal.max_concurrent_trials,
            scheduler=proposal.scheduler, reuse_actors=s.reuse_actors,
        ),
        run_config=phase.run_config(ctx, checked.name, ctx.storage, checked.space.labels, base,
                                    ends=(cfg.train.total_kimg, asha_milestones(cfg),
                                          meta.parent_run_id)),
    )
