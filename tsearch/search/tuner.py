"""Assemble and run a search: Ray Tune + a registered search algorithm + ASHA, in MLflow.

The driver checks MLflow and Ray before any trial starts, creates the MLflow experiment and one
parent run (this also avoids SQLite's schema race between concurrent trials), then runs the
Tuner. Each trial opens its child run itself (``trainable.run_trial``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tsearch import labels, names
from tsearch.config import Config
from tsearch.errors import ConfigError, TsearchError
from tsearch.metrics.registry import check_evaluations
from tsearch.records import TrialRecord
from tsearch.search import confirm as confirming
from tsearch.search import summary
from tsearch.search.algorithms import SearchAlgorithm, WarmTrial, get_algorithm
from tsearch.search.confirm import Confirmation
from tsearch.search.space import (
    SearchSpace,
    check_points,
    default_points,
    flat_config,
    resolve_trial_config,
)
from tsearch.search.timing import Stopwatch
from tsearch.search.tune_state import STATE_FILES


@dataclass
class SearchResult:
    name: str
    parent_run_id: str | None
    experiment_path: Path
    trials: list[TrialRecord]
    best_config: dict[str, Any] | None
    tracking_uri: str
    seconds: float
    labels: list[str] = field(default_factory=list)  # bundle keys: not config fields
    confirmation: Confirmation | None = None  # the confirmed ranking (search.confirm)
    confirm_trials: list[TrialRecord] = field(default_factory=list)
    timing: Stopwatch = field(default_factory=Stopwatch)  # the driver's stages (--verbose)

    @property
    def best(self) -> TrialRecord | None:
        ranked = sorted(self.trials, key=lambda t: t.best_fid)
        return ranked[0] if ranked and math.isfinite(ranked[0].best_fid) else None


def search_name(cfg: Config, config_path: Path | None) -> str:
    if cfg.search.name:
        return cfg.search.name
    return config_path.stem if config_path is not None else "search"


def asha_milestones(cfg: Config) -> list[float]:
    """The kimg at which ASHA compares trials: Ray's rungs for this search config.

    ``AsyncHyperBandScheduler`` puts bracket ``s``'s rungs at grace * rf^(k + s) for k below
    int(log(max_t / grace) / log(rf) - s + 1): every bracket's rungs are among bracket 0's, so
    those are all of them. The same numpy arithmetic here, so the evaluation points and the
    scheduler's milestones cannot drift apart (tested against Ray, with several brackets).
    """
    a = cfg.search.asha
    if not a.enabled:
        return []
    rungs = int(np.log(cfg.train.total_kimg / a.grace_kimg) / np.log(a.reduction_factor) + 1)
    return [float(a.grace_kimg * a.reduction_factor ** k) for k in range(rungs)]


def search_eval_points(cfg: Config) -> list[float]:
    """Where a search-phase trial evaluates (besides its end): ASHA's rungs and, if asked,
    every ``eval.curve_every_kimg``. Without ASHA nothing is decided early: every
    ``eval.every_kimg`` as in ``tsearch train`` (an empty list)."""
    points = asha_milestones(cfg)
    if not points:
        return []
    step = cfg.eval.curve_every_kimg
    if step:
        n = int(cfg.train.total_kimg / step + 1e-9)
        points = sorted(set(points) | {round(step * i, 6) for i in range(1, n + 1)})
    return points


def base_config(cfg: Config, tracking_uri: str, phase: str = names.PHASE_SEARCH
                ) -> dict[str, Any]:
    """The config every trial of ``phase`` starts from, with paths made absolute (trials run
    elsewhere). Search-phase trials evaluate at ASHA's rungs; confirmation runs densely, for
    the curves their ranking and the report read."""
    raw = cfg.to_dict()
    if phase == names.PHASE_SEARCH and not raw["eval"]["at_kimg"]:
        raw["eval"]["at_kimg"] = search_eval_points(cfg)
    raw["tracking"]["uri"] = tracking_uri
    for section, key in (("eval", "cache_dir"), ("tracking", "artifact_root")):
        value = raw[section][key]
        if value and "://" not in value:
            raw[section][key] = str(Path(value).resolve())
    raw["train"]["progress"] = False
    raw["train"]["threads"] = max(int(cfg.search.cpus_per_trial), 1)
    raw["train"]["device"] = "cuda" if cfg.search.gpus_per_trial > 0 else "cpu"
    return raw


@dataclass(frozen=True)
class SearchPlan:
    """A search checked before anything starts: its name, space, algorithm and trial count."""

    name: str
    space: SearchSpace
    algorithm: SearchAlgorithm
    num_trials: int
    cells: list[dict[str, Any]] | None = None  # the fixed trials, if the algorithm has them
    points: tuple[dict[str, Any], ...] = ()  # tried first: points_to_evaluate (+ defaults)
    warm: tuple[WarmTrial, ...] = ()  # an earlier search's trials (--warm-start)
    warm_from: str | None = None  # that search's name


def plan(cfg: Config, config_path: Path | None) -> SearchPlan:
    """Validate everything a search needs before Ray starts (``--dry-run`` shows the result).

    Every searched range and choice is checked against its field's type and bounds, every point
    and every grid cell is resolved into a full config: a mistake is one line here, not a
    failure inside each trial.
    """
    s = cfg.search
    algorithm = get_algorithm(s.algorithm)
    check_evaluations(cfg.eval.metrics, needed=s.metric)
    space = SearchSpace.from_config(cfg)
    if not space.specs:
        raise ConfigError("config error: search.space is empty: list the parameters to search")
    if space.labels and not algorithm.supports_bundles:
        raise ConfigError(f"config error: search.space.{space.labels[0]}: search.algorithm "
                          f"{s.algorithm!r} does not support bundles; use choices instead")
    if s.points_to_evaluate and not algorithm.supports_points:
        raise ConfigError(f"config error: search.points_to_evaluate: search.algorithm "
                          f"{s.algorithm!r} does not take points (it runs fixed trials of "
                          "its own); remove the points or use algorithm tpe or random")
    if s.asha.enabled and not algorithm.supports_asha:
        raise ConfigError(f"config error: search.asha.enabled: search.algorithm "
                          f"{s.algorithm!r} cannot be stopped early; set "
                          "search.asha.enabled=false")
    base = base_config(cfg, cfg.tracking.uri)
    points = [dict(p) for p in s.points_to_evaluate]
    if s.seed_with_defaults:
        if not algorithm.supports_points:
            raise ConfigError(f"config error: search.seed_with_defaults: search.algorithm "
                              f"{s.algorithm!r} does not take points; set it false")
        points += default_points(space, base, points)
    check_points(base, points, space.labels)
    confirming.check_confirm(cfg, space, base, points)
    cells = algorithm.cells(space)
    for i, cell in enumerate(cells or []):
        try:
            resolve_trial_config(base, cell, space.labels)
        except ConfigError as exc:
            raise ConfigError(f"grid cell {i} {cell}: {exc}") from None
    from tsearch.search.space import check_combinations  # (kept inside plan: shared file)

    check_combinations(space, base)  # values that are only wrong together (e.g. tau and T)
    if s.asha.enabled and s.asha.grace_kimg > cfg.train.total_kimg:
        raise ConfigError(f"config error: search.asha.grace_kimg = {s.asha.grace_kimg} exceeds "
                          f"train.total_kimg = {cfg.train.total_kimg}")
    if s.seed_with_defaults and len(points) > s.num_samples:
        raise ConfigError(f"config error: search.seed_with_defaults adds {len(points)} points "
                          f"but search.num_samples = {s.num_samples}; raise num_samples to at "
                          f"least {len(points)}")
    return SearchPlan(name=search_name(cfg, config_path), space=space, algorithm=algorithm,
                      num_trials=len(cells) if cells is not None else s.num_samples, cells=cells,
                      points=tuple(points))


def run_search(
    cfg: Config,
    config_path: Path | None = None,
    *,
    address: str | None = None,
    resume: bool = False,
    log=None,
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

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
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
        say(f"note: trials on other nodes checkpoint to {storage}; it must be a filesystem every "
            "node mounts at that path (NFS), or set search.storage_path to a bucket (s3://...)")

    configure_driver(verbose)
    with watch.stage("Ray start"):
        session = init_ray(address, num_cpus=None)
    keep_logs = True  # Ray's logs help with a crash, not with a user error or a success
    try:
        result = _run(cfg, checked, uri, artifact_root, storage, exp_path, resume, say, watch,
                      verbose)
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
                end_session(session, keep_logs=keep_logs, say=say)
    result.seconds = time.perf_counter() - start
    result.timing = watch
    return result


_RAY_STATE = (*STATE_FILES, ".validate_storage_marker")  # what Tune writes for a search


def _run(cfg: Config, checked: SearchPlan, uri: str, artifact_root: str | None, storage: str,
         exp_path: Path, resume: bool, say, watch: Stopwatch, verbose: bool) -> SearchResult:
    """Open the parent run, run (or restore) the search phase, then the confirmation phase."""
    with watch.stage("Ray Tune and MLflow imports"):
        from ray import tune

        from tsearch.tracking import MlflowTracker

    space, name = checked.space, checked.name
    state_file = exp_path / names.SEARCH_STATE
    state: dict[str, Any] = {}
    if resume:
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
        parent = MlflowTracker(uri, experiment=cfg.tracking.experiment,
                               artifact_root=artifact_root, run_name=name, run_id=parent_id,
                               tags={names.TAG_KIND: names.KIND_SEARCH, names.TAG_SEARCH: name,
                                     names.TAG_STORAGE: str(exp_path)})
    meta = {"parent_run_id": parent.run_id, "search_name": name, "labels": space.labels,
            "keys": list(space.specs),
            "phase": names.PHASE_SEARCH, "verbose": verbose}
    base = base_config(cfg, uri)
    base["tracking"]["artifact_root"] = artifact_root
    try:
        if parent_id is None:
            with watch.stage("MLflow parent run"):
                parent.log_params({
                    names.PARAM_SEARCH: cfg.search.model_dump(mode="json"),
                    names.PARAM_BASE: _masked({k: v for k, v in cfg.to_dict().items()
                                               if k != "search"})})
                parent.log_dict(_masked(cfg.to_dict()), names.ARTIFACT_SEARCH_CONFIG)
                if checked.warm_from:
                    parent.set_tags({names.TAG_WARM_START: checked.warm_from})
                exp_path.mkdir(parents=True, exist_ok=True)
                state = {"parent_run_id": parent.run_id, "name": name}
                _write_state(state_file, state)
        say(f"search {name!r}: {checked.num_trials} trials, up to "
            f"{cfg.search.max_concurrent} at once; MLflow parent run {parent.run_id} at "
            f"{names.mask_uri(uri)}")
        if state.get("search_done"):  # killed in the confirmation phase: its trials are final
            say("search phase: finished before; continuing with the confirmation phase")
            _mend_state(exp_path, name, name, say)
            grid = tune.Tuner.restore(str(exp_path),
                                      trainable=_trainable(cfg, base, meta)).get_results()
        else:
            with watch.stage("search phase (Tune and its trials)"):
                grid = _tuner(cfg, checked, base, meta, storage, uri, resume, exp_path,
                              say).fit()
        with watch.stage("summary (table and plots)"):
            _prune_checkpoints(exp_path, cfg.search.num_to_keep)
            trials = _records(grid)
            _complete_plots(trials, base, uri, say)
            result = SearchResult(name=name, parent_run_id=parent.run_id,
                                  experiment_path=exp_path, trials=trials, best_config=None,
                                  tracking_uri=uri, seconds=0.0, labels=space.labels)
            result.best_config = _finish(parent, result, base, exp_path)
            parent.set_tags({names.TAG_NOTE: summary.markdown(result)})
        if cfg.search.confirm.enabled and result.best is not None:
            state["search_done"] = True
            _write_state(state_file, state)
            with watch.stage("confirmation phase"):
                _confirm(cfg, checked, result, parent, base, meta, storage, uri, exp_path,
                         resume, state, say)
                parent.set_tags({names.TAG_NOTE: summary.markdown(result)})
    except KeyboardInterrupt:
        parent.finish("KILLED", "interrupted; continue with tsearch search --resume")
        if not resume and not _trial_dirs(exp_path):
            _forget_start(exp_path)  # nothing ran: the name is free again
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        parent.finish("FAILED", reason)
        if not resume and not _trial_dirs(exp_path):
            _forget_start(exp_path)  # nothing ran: the name is free again
        if not type(exc).__module__.startswith("ray."):
            raise  # ours: a TsearchError is one line already, anything else is a bug
        raise TsearchError(f"search {name!r} stopped: Ray Tune failed ({reason[:200]})"
                           + ("" if _trial_dirs(exp_path) else
                              f"; no trial started, so the name {name!r} is free again")) from exc
    with watch.stage("MLflow parent run"):
        parent.finish("FINISHED")
    return result


def _write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the search's state file atomically: a kill mid-write must not lose the parent."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


CONFIRM_SUBDIR = "confirm"  # the confirmation phase's Tune experiment, inside the search's


def _confirm(cfg: Config, checked: SearchPlan, result: SearchResult, parent, base, meta,
             storage: str, uri: str, exp_path: Path, resume: bool, state: dict[str, Any],
             say) -> None:
    """Retrain the top configurations and the baseline on fresh seeds; rank them by mean FID."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from tsearch.search.space import GRID_KEY

    c, s = cfg.search.confirm, cfg.search
    cexp = exp_path / CONFIRM_SUBDIR
    saved = state.get("confirm", {}).get("candidates")
    if saved:  # resumed: the candidates chosen when the phase began
        cands = [confirming.Candidate(**x) for x in saved]
    else:
        point = confirming.baseline_point(cfg, checked.space, base, checked.points)
        cands = confirming.candidates(result.trials, checked.space.labels, c.top_k, point,
                                      sampler=cfg.timesteps.sampler.name)
        state["confirm"] = {"candidates": [asdict(x) for x in cands]}
        _write_state(exp_path / names.SEARCH_STATE, state)
    used = {int(t.values.get(labels.SEED_KEY, cfg.train.seed)) for t in result.trials}
    if used & set(c.seeds):  # plan() checked the space; this checks what really ran
        raise TsearchError(f"search.confirm.seeds {sorted(used & set(c.seeds))} were used by "
                           "search trials; confirmation needs fresh seeds")
    kimg = c.set.get(names.TOTAL_KIMG_KEY, cfg.train.total_kimg)
    say(f"confirmation: {len(cands)} configurations x {len(c.seeds)} fresh seeds "
        f"({', '.join(map(str, c.seeds))}) at {kimg:g} kimg, no early stopping"
        + (f"; with {', '.join(f'{k}={v}' for k, v in c.set.items())}" if c.set else ""))
    for cand in cands:
        fid = f"search FID {cand.search_fid:.2f}" if cand.search_fid is not None else "not a trial"
        say(f"  {cand.label}  ({fid}{', baseline' if cand.baseline else ''})")
    cbase = {**base, "eval": {**base["eval"], "at_kimg": list(cfg.eval.at_kimg)}}
    trainable = _trainable(cfg, cbase, confirming.phase_meta(meta, names.PHASE_CONFIRM))
    if resume and tune.Tuner.can_restore(str(cexp)):
        say(f"resuming {cexp}")
        _mend_state(cexp, f"{checked.name}/{CONFIRM_SUBDIR}", checked.name, say)
        _stub_pruned_checkpoints(cexp)
        tuner = tune.Tuner.restore(str(cexp), trainable=trainable, resume_errored=True,
                                   restart_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={GRID_KEY: tune.grid_search(confirming.cells(cands, c.seeds, c.set))},
            tune_config=tune.TuneConfig(num_samples=1, scheduler=FIFOScheduler(),
                                        max_concurrent_trials=c.max_concurrent or
                                        s.max_concurrent, reuse_actors=s.reuse_actors),
            run_config=_run_config(s, CONFIRM_SUBDIR, _join(storage, checked.name), uri,
                                   say, [names.METHOD_KEY], cbase, meta.get("verbose", False),
                                   ends=(kimg, [], parent.run_id)))
    grid = tuner.fit()
    _prune_checkpoints(cexp, s.num_to_keep)
    result.confirm_trials = _records(grid)
    _complete_plots(result.confirm_trials, cbase, uri, say)
    result.confirmation = confirming.rank(
        cands, result.confirm_trials, c.seeds, c.set, search=checked.name,
        parent_run_id=parent.run_id, tracking_uri=uri)
    _finish_confirm(parent, result, base, exp_path, c.set)


def _join(storage: str, *parts: str) -> str:
    """A path under the search storage, which may be a URI (s3://...) that Path would mangle."""
    return "/".join([storage.rstrip("/"), *parts])


def _finish_confirm(parent, result: SearchResult, base: dict[str, Any], exp_path: Path,
                    overrides: dict[str, Any]) -> None:
    """The confirmed ranking, its curves and the winner's config on the parent run."""
    from tsearch import plots
    from tsearch.config import merge_flat, portable_dict

    conf = result.confirmation
    assert conf is not None
    out = exp_path / names.SEARCH_SUMMARY_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    (out / names.ARTIFACT_CONFIRMED).write_text(json.dumps(conf.to_json(), indent=2) + "\n")
    parent.log_artifact(out / names.ARTIFACT_CONFIRMED)
    series = {f"{row.label}{' (baseline)' if row.baseline else ''}":
              ([k for k, _ in row.curve], [f for _, f in row.curve])
              for row in conf.rows if row.curve}
    if series:
        parent.log_artifact(plots.plot_fid_curve(
            series, out / "confirm_fid_vs_kimg.png",
            title=f"confirmation: FID vs kimg, mean over seeds {conf.seeds}"))
    winner = conf.winner
    if winner is None:
        parent.flush()
        return
    raw = merge_flat(base, {**winner.values, **overrides})
    text = confirming.best_config_yaml(_masked(portable_dict(raw)), conf, result.name,
                                       parent.run_id)
    (out / names.ARTIFACT_CONFIRMED_CONFIG).write_text(text)
    parent.log_artifact(out / names.ARTIFACT_CONFIRMED_CONFIG)
    metrics = {names.CONFIRM_FID_MEAN: winner.mean, names.CONFIRM_FID_STD: winner.std,
               names.CONFIRM_SPEEDUP_KIMG: winner.speedup_kimg,
               names.CONFIRM_SPEEDUP_COMPUTE: winner.speedup_compute,
               names.CONFIRM_WINNERS_CURSE: winner.winners_curse,
               names.CONFIRM_KENDALL_TAU: conf.kendall_tau}
    parent.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=0)
    parent.set_tags({names.TAG_CONFIRMED: winner.label})
    parent.flush()


def _masked(raw: dict[str, Any]) -> dict[str, Any]:
    """A config dict with the tracking URI's credentials masked (for params and exports)."""
    if isinstance(raw.get("tracking"), dict) and raw["tracking"].get("uri"):
        raw = {**raw, "tracking": {**raw["tracking"],
                                   "uri": names.mask_uri(raw["tracking"]["uri"])}}
    return raw


def _mend_state(exp_path: Path, rel: str, search_name: str, say) -> None:
    """Before a restore: put back Tune state files a killed driver cut short (tune_state)."""
    from tsearch.search.ray_runtime import ray_temp_root
    from tsearch.search.tune_state import mend

    cut, mended = mend(exp_path, rel, ray_temp_root(), search_name)
    if cut:
        others = [m for m in mended if m not in cut]
        say(f"Ray's copy of {', '.join(cut)} was cut short when its driver was killed; put back "
            "the driver's own intact copy" + (f" (with {', '.join(others)}, saved with it)"
                                              if others else ""))


def _stub_pruned_checkpoints(exp_path: Path) -> None:
    """Recreate, empty, the checkpoint directories Tune pruned after its last state snapshot.

    A driver killed between snapshots leaves Tune's state naming a checkpoint that a newer
    report made it delete; restoring the trial would then fail. An empty directory lets Tune
    restore it, and the trial itself resumes from the newest checkpoint in the storage
    (``trainable._restore``). Local storage only: a bucket is left as it is.
    """
    for trial in _trial_dirs(exp_path):
        indices = sorted(int(p.name.split("_")[1]) for p in trial.glob("checkpoint_*")
                         if p.name.split("_")[1].isdigit())
        for i in range(indices[-1] if indices else 0):
            (trial / f"checkpoint_{i:06d}").mkdir(exist_ok=True)


def _prune_checkpoints(exp_path: Path, keep: int) -> None:
    """Leave each trial its ``keep`` newest checkpoints, and no empty stub.

    Tune prunes as results arrive; a driver killed in between leaves older checkpoints that the
    resumed driver no longer tracks. Once the search has ended, none of them is needed.
    """
    for trial in _trial_dirs(exp_path):
        found = sorted((p for p in trial.glob("checkpoint_*") if p.is_dir()),
                       key=lambda p: p.name)
        full = [p for p in found if any(p.iterdir())]
        for path in [p for p in found if p not in full] + full[:-keep]:
            shutil.rmtree(path, ignore_errors=True)


def _trial_dirs(exp_path: Path) -> list[Path]:
    """Trial directories Tune created (each holds params.json once its trial started)."""
    if not exp_path.is_dir():
        return []
    return [p for p in exp_path.iterdir() if (p / "params.json").is_file()]


def _forget_start(exp_path: Path) -> None:
    """Delete Tune's state of a search that failed before any trial ran.

    Left in place it would block the name (``already exists``) and make ``--resume`` restore a
    search with nothing to resume.
    """
    for pattern in (*_RAY_STATE, names.SEARCH_STATE):
        for path in exp_path.glob(pattern):
            path.unlink(missing_ok=True)
    try:
        exp_path.rmdir()
    except OSError:
        pass  # something else lives there: keep it


def _tuner(cfg, checked: SearchPlan, base, meta, storage, uri, resume, exp_path, say):
    from ray import tune

    s = cfg.search
    trainable = _trainable(cfg, base, meta)
    if resume:
        say(f"resuming {exp_path}")
        _mend_state(exp_path, checked.name, checked.name, say)
        _stub_pruned_checkpoints(exp_path)
        return tune.Tuner.restore(str(exp_path), trainable=trainable, resume_errored=True,
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
        run_config=_run_config(s, checked.name, storage, uri, say, checked.space.labels, base,
                               meta.get("verbose", False),
                               ends=(cfg.train.total_kimg, asha_milestones(cfg),
                                     meta["parent_run_id"])),
    )


def _run_config(s, name: str, storage_path: str, uri: str, say, labels: list[str],
                base: dict[str, Any], verbose: bool,
                ends: tuple[float | None, list[float], str | None] = (None, [], None)):
    """One phase's Tune run config: its storage, progress lines, MLflow closing, retries.

    ``ends``: the phase's budget in kimg, ASHA's rungs and the parent run, to tell the trial
    runs why they ended."""
    from ray import tune

    from tsearch.search.callbacks import MlflowTrialCallback, ProgressCallback
    from tsearch.search.console import tune_verbosity

    sampler = base["timesteps"]["sampler"]["name"]
    return tune.RunConfig(
        name=name, storage_path=storage_path, verbose=tune_verbosity(verbose),
        callbacks=[MlflowTrialCallback(uri, say, sampler, *ends),
                   ProgressCallback(say, labels, sampler)],
        failure_config=tune.FailureConfig(max_failures=s.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=s.num_to_keep))


def _trainable(cfg: Config, base: dict[str, Any], meta: dict[str, Any]):
    """``run_trial`` with the base config, the phase's meta and the trial's resources."""
    from ray import tune

    from tsearch.search.trainable import run_trial

    s = cfg.search
    resources = {"cpu": s.cpus_per_trial}
    if s.gpus_per_trial > 0:
        resources["gpu"] = s.gpus_per_trial
    return tune.with_resources(tune.with_parameters(run_trial, base=base, meta=meta), resources)


def _records(grid) -> list[TrialRecord]:
    """Each trial of a phase's result grid as a record: its FID and compute by images seen."""
    out = []
    for result in grid:
        df = result.metrics_dataframe
        fids: dict[int, tuple[float, float]] = {}
        compute: dict[str, list[tuple[int, float]]] = {}
        if df is not None and names.TIME_ATTR in df:
            images = [int(round(float(k) * 1000)) for k in df[names.TIME_ATTR]]
            for key in (names.TRAIN_FORWARDS, names.PROBE_FORWARDS):
                if key in df:
                    by_step = {s: float(v) for s, v in zip(images, df[key], strict=True)
                               if v == v}
                    compute[key] = sorted(by_step.items())
            if names.FID in df:
                stamps = df["timestamp"] if "timestamp" in df else [0.0] * len(df)
                for s, f, ts in zip(images, df[names.FID], stamps, strict=True):
                    if f == f:  # a resumed trial may report an evaluation again: keep one
                        fids.setdefault(s, (float(f), float(ts)))
        last = result.metrics or {}
        steps = sorted(fids)
        out.append(TrialRecord(
            trial_id=last.get(names.REPORT_TRIAL_ID, result.path.rsplit("/", 1)[-1]),
            run_id=last.get(names.REPORT_RUN_ID),
            status="ERROR" if result.error else "TERMINATED",
            values=flat_config(result.config),
            fid=[(s, fids[s][0]) for s in steps], fid_times=[fids[s][1] for s in steps],
            train_forwards=compute.get(names.TRAIN_FORWARDS, []),
            probe_forwards=compute.get(names.PROBE_FORWARDS, []),
            node_ip=last.get(names.REPORT_NODE_IP),
            error=str(result.error).strip().splitlines()[-1][:300] if result.error else None,
            path=result.path))
    return out


def _finish(parent, result: SearchResult, base: dict[str, Any], exp_path: Path):
    """Results table, plots and the best config on the parent run (and next to the trials)."""
    import csv

    import numpy as np

    from tsearch import plots
    from tsearch.config import merge_flat, portable_dict

    out = exp_path / names.SEARCH_SUMMARY_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for t in result.trials for k in t.values})
    with (out / "trials.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "status", "best_fid", "final_fid", "kimg", "mlflow_run_id",
                         "node_ip", *keys, "error"])
        for t in sorted(result.trials, key=lambda t: t.best_fid):
            writer.writerow([t.trial_id, t.status, t.best_fid, t.final_fid, t.kimg, t.run_id,
                             t.node_ip, *[t.values.get(k, "") for k in keys], t.error or ""])
    parent.log_artifact(out / "trials.csv")
    series = {_label(t): ([k for k, _ in t.fid_by_kimg], [f for _, f in t.fid_by_kimg])
              for t in result.trials if t.fid}
    if series:
        parent.log_artifact(plots.plot_fid_curve(series, out / "fid_vs_kimg.png",
                                                 title=f"search {result.name}: FID vs kimg"))
    best_cfg = None
    if result.best is not None:
        best = result.best
        best_cfg = _masked(portable_dict(merge_flat(
            base, {k: v for k, v in best.values.items() if k not in result.labels})))
        (out / names.ARTIFACT_BEST_CONFIG).write_text(_best_yaml(best_cfg, result, best))
        parent.log_artifact(out / names.ARTIFACT_BEST_CONFIG)
        parent.log_metrics({names.SEARCH_BEST_FID: best.best_fid,
                            names.SEARCH_TRIALS: float(len(result.trials))}, step=0)
        parent.set_tags({names.TAG_BEST_TRIAL_RUN: best.run_id or "",
                         names.TAG_BEST_FID: f"{best.best_fid:.4f}"})
        profiles = {}
        for t in sorted(result.trials, key=lambda t: t.best_fid)[:4]:
            npz = names.trial_run_dir(t.path or "").timesteps
            if t.path and npz.is_file():
                probs = np.load(npz)["probs"]
                profiles[f"{_label(t)} (FID {t.best_fid:.1f})"] = probs[-1]
        if profiles:
            parent.log_artifact(plots.plot_timestep_profiles(
                profiles, out / "best_trials_p_t.png",
                title="learned / chosen p(t) of the best trials (end of training)"))
    parent.flush()
    return best_cfg


def _complete_plots(trials: list[TrialRecord], base: dict[str, Any], uri: str, say) -> None:
    """Every trial's plots, after its phase: the callbacks drew those of trials Tune stopped;
    this catches trials that ended under an earlier driver (``--resume``)."""
    from tsearch.search.trial_plots import complete_plots

    sampler = base["timesteps"]["sampler"]["name"]
    for t in trials:
        complete_plots(t.path, t.run_id, uri, t.values.get(labels.SAMPLER_KEY, sampler), say)


def _label(t: TrialRecord) -> str:
    sampler = t.values.get(labels.SAMPLER_KEY, "")
    return f"{t.trial_id} {sampler}".strip()


def _best_yaml(cfg: dict[str, Any], result: SearchResult, best: TrialRecord) -> str:
    head = (f"# Best trial of search {result.name!r} (unconfirmed: one seed, the minimum of "
            f"{len(result.trials)} noisy trials): FID {best.best_fid:.3f} "
            f"(trial {best.trial_id}, MLflow run {best.run_id}).\n"
            f"# Train it alone: tsearch train THIS_FILE\n"
            f"# In your own loop: tsearch.timesteps.from_config(THIS_FILE)\n")
    return head + yaml.safe_dump(cfg, sort_keys=False)

