"""Assemble and run a search: Ray Tune + Optuna TPE + ASHA, tracked in MLflow.

The driver checks MLflow and Ray before any trial starts, creates the MLflow experiment and one
parent run (this also avoids SQLite's schema race between concurrent trials), then runs the
Tuner. Each trial opens its child run itself (``trainable.run_trial``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tsearch.config import Config
from tsearch.errors import ConfigError, TsearchError
from tsearch.search.space import (
    GRID_KEY,
    SearchSpace,
    check_points,
    flat_config,
    resolve_trial_config,
)

STATE_FILE = "tsearch-search.json"


@dataclass
class TrialSummary:
    trial_id: str
    status: str
    config: dict[str, Any]
    fids: list[tuple[float, float]] = field(default_factory=list)  # (kimg, fid)
    times: list[float] = field(default_factory=list)  # wall-clock timestamp of each FID
    run_id: str | None = None
    node_ip: str | None = None
    error: str | None = None
    path: str | None = None  # the trial's directory

    @property
    def best_fid(self) -> float:
        finite = [f for _, f in self.fids if math.isfinite(f)]
        return min(finite) if finite else math.inf

    @property
    def kimg(self) -> float:
        return self.fids[-1][0] if self.fids else 0.0


@dataclass
class SearchResult:
    name: str
    parent_run_id: str | None
    experiment_path: Path
    trials: list[TrialSummary]
    best_config: dict[str, Any] | None
    tracking_uri: str
    seconds: float
    labels: list[str] = field(default_factory=list)  # bundle keys: not config fields

    @property
    def best(self) -> TrialSummary | None:
        ranked = sorted(self.trials, key=lambda t: t.best_fid)
        return ranked[0] if ranked and math.isfinite(ranked[0].best_fid) else None


def search_name(cfg: Config, config_path: Path | None) -> str:
    if cfg.search.name:
        return cfg.search.name
    return config_path.stem if config_path is not None else "search"


def base_config(cfg: Config, tracking_uri: str) -> dict[str, Any]:
    """The config every trial starts from, with paths made absolute (trials run elsewhere)."""
    raw = cfg.to_dict()
    raw["tracking"]["uri"] = tracking_uri
    for section, key in (("eval", "cache_dir"), ("tracking", "artifact_root")):
        value = raw[section][key]
        if value and "://" not in value:
            raw[section][key] = str(Path(value).resolve())
    raw["train"]["progress"] = False
    raw["train"]["threads"] = max(int(cfg.search.cpus_per_trial), 1)
    raw["train"]["device"] = "cuda" if cfg.search.gpus_per_trial > 0 else "cpu"
    return raw


def num_trials(cfg: Config, space: SearchSpace) -> int:
    """A grid runs each cell once; the other algorithms run ``search.num_samples`` trials."""
    return len(space.grid()) if cfg.search.algorithm == "grid" else cfg.search.num_samples


def plan(cfg: Config, config_path: Path | None) -> tuple[SearchSpace, dict[str, Any]]:
    """Validate the space and points before anything starts (used by --dry-run too)."""
    space = SearchSpace.from_config(cfg)
    if not space.specs:
        raise ConfigError("config error: search.space is empty: list the parameters to search")
    base = base_config(cfg, cfg.tracking.uri)
    check_points(base, cfg.search.points_to_evaluate, space.labels)
    if cfg.search.algorithm == "grid":
        if cfg.search.points_to_evaluate:
            raise ConfigError("config error: search.points_to_evaluate: a grid runs every cell "
                              "already; remove the points or use algorithm tpe or random")
        for i, cell in enumerate(space.grid()):
            try:
                resolve_trial_config(base, cell, space.labels)
            except ConfigError as exc:
                raise ConfigError(f"grid cell {i} {cell}: {exc}") from None
    asha = cfg.search.asha
    if asha.enabled and asha.grace_kimg > cfg.train.total_kimg:
        raise ConfigError(f"config error: search.asha.grace_kimg = {asha.grace_kimg} exceeds "
                          f"train.total_kimg = {cfg.train.total_kimg}")
    return space, base


def run_search(
    cfg: Config,
    config_path: Path | None = None,
    *,
    address: str | None = None,
    resume: bool = False,
    log=None,
) -> SearchResult:
    """Run (or resume) the search ``cfg.search`` describes and summarise it in MLflow."""
    from tsearch.search.ray_runtime import check_ray_address, init_ray
    from tsearch.tracking import MlflowTracker, check_tracking_store, ensure_experiment
    from tsearch.tracking.mlflow_tracker import resolve_artifact_root, resolve_tracking_uri

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    start = time.perf_counter()
    space, _ = plan(cfg, config_path)
    name = search_name(cfg, config_path)
    if cfg.tracking.backend != "mlflow":
        raise ConfigError("config error: tracking.backend = 'none': a search records its "
                          "trials in MLflow; set tracking.backend=mlflow")
    check_ray_address(address)
    if address and cfg.tracking.uri.startswith("sqlite:"):
        raise ConfigError(
            "config error: tracking.uri is a local sqlite file, which worker nodes cannot "
            "write; start `mlflow server` and pass --set tracking.uri=http://HOST:5000")
    uri = resolve_tracking_uri(cfg.tracking.uri)
    check_tracking_store(uri)
    artifact_root = resolve_artifact_root(cfg.tracking.artifact_root, uri)
    ensure_experiment(uri, cfg.tracking.experiment, artifact_root)
    storage = cfg.search.storage_path
    storage = storage if "://" in storage else str(Path(storage).resolve())
    exp_path = Path(storage) / name
    if (address or os.environ.get("RAY_ADDRESS")) and "://" not in cfg.search.storage_path:
        say(f"note: trials on other nodes checkpoint to {storage}; it must be a filesystem every "
            "node mounts at that path (NFS), or set search.storage_path to a bucket (s3://...)")
    state_file = exp_path / STATE_FILE

    init_ray(address, num_cpus=None)
    from ray import tune

    parent_id = None
    if resume:
        if not tune.Tuner.can_restore(str(exp_path)):
            raise TsearchError(f"nothing to resume at {exp_path}: no search named {name!r} was "
                               "started there (check search.name and search.storage_path)")
        if state_file.is_file():
            parent_id = json.loads(state_file.read_text()).get("parent_run_id")
    elif exp_path.exists() and tune.Tuner.can_restore(str(exp_path)):
        raise TsearchError(f"a search named {name!r} already exists at {exp_path}: pass "
                           "--resume to continue it, or --set search.name=NEW_NAME")
    parent = MlflowTracker(uri, experiment=cfg.tracking.experiment, artifact_root=artifact_root,
                           run_name=name, run_id=parent_id,
                           tags={"tsearch.kind": "search", "tsearch.search": name,
                                 "tsearch.storage": str(exp_path)})
    meta = {"parent_run_id": parent.run_id, "search_name": name, "labels": space.labels}
    base = base_config(cfg, uri)
    base["tracking"]["artifact_root"] = artifact_root
    try:
        if parent_id is None:
            parent.log_params({"search": cfg.search.model_dump(mode="json"),
                               "base": {k: v for k, v in cfg.to_dict().items() if k != "search"}})
            parent.log_dict(cfg.to_dict(), "search_config.json")
            exp_path.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps({"parent_run_id": parent.run_id, "name": name}))
        say(f"search {name!r}: {num_trials(cfg, space)} trials, up to "
            f"{cfg.search.max_concurrent} at once; MLflow parent run {parent.run_id} at {uri}")
        tuner = _tuner(cfg, space, base, meta, storage, name, uri, resume, exp_path, say)
        grid = tuner.fit()
        trials = _summaries(grid)
        result = SearchResult(name=name, parent_run_id=parent.run_id, experiment_path=exp_path,
                              trials=trials, best_config=None, tracking_uri=uri,
                              seconds=time.perf_counter() - start, labels=space.labels)
        result.best_config = _finish(parent, result, base, exp_path)
    except KeyboardInterrupt:
        parent.finish("KILLED", "interrupted; continue with tsearch search --resume")
        raise
    except Exception as exc:
        parent.finish("FAILED", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    parent.finish("FINISHED")
    return result


def _tuner(cfg, space, base, meta, storage, name, uri, resume, exp_path, say):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from tsearch.search.callbacks import MlflowTrialCallback, ProgressCallback
    from tsearch.search.trainable import run_trial

    s = cfg.search
    resources = {"cpu": s.cpus_per_trial}
    if s.gpus_per_trial > 0:
        resources["gpu"] = s.gpus_per_trial
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base, meta=meta),
                                    resources)
    callbacks = [MlflowTrialCallback(uri), ProgressCallback(say, space.labels)]
    if resume:
        say(f"resuming {exp_path}")
        return tune.Tuner.restore(str(exp_path), trainable=trainable, resume_errored=True,
                                  restart_errored=False)
    if s.algorithm == "grid":
        # Each cell as one grid value: cells set different keys, which Tune's own grid (a
        # product of per-key lists) cannot express. No search_alg: Tune's variant generator.
        param_space = {GRID_KEY: tune.grid_search(space.grid())}
        search_alg, num_samples = None, 1
    else:
        import optuna

        searcher = OptunaSearch(
            space=space.define_by_run(),
            metric=s.metric, mode=s.mode,
            points_to_evaluate=[dict(p) for p in s.points_to_evaluate] or None,
            sampler=(optuna.samplers.TPESampler(seed=s.seed,
                                                n_startup_trials=s.tpe_startup_trials)
                     if s.algorithm == "tpe"
                     else optuna.samplers.RandomSampler(seed=s.seed)),
            study_name=f"tsearch-{name}",
        )
        search_alg = ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent)
        param_space, num_samples = None, s.num_samples
    if s.asha.enabled:
        scheduler = ASHAScheduler(time_attr="kimg", max_t=cfg.train.total_kimg,
                                  metric=s.metric, mode=s.mode,
                                  grace_period=s.asha.grace_kimg,
                                  reduction_factor=s.asha.reduction_factor,
                                  brackets=s.asha.brackets)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples, search_alg=search_alg,
            max_concurrent_trials=s.max_concurrent if search_alg is None else None,
            scheduler=scheduler, reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, callbacks=callbacks, verbose=0,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=s.num_to_keep),
        ),
    )


def _summaries(grid) -> list[TrialSummary]:
    out = []
    for result in grid:
        df = result.metrics_dataframe
        fids: list[tuple[float, float]] = []
        times: list[float] = []
        if df is not None and "eval/fid" in df and "kimg" in df:
            stamps = df["timestamp"] if "timestamp" in df else [0.0] * len(df)
            for k, f, ts in zip(df["kimg"], df["eval/fid"], stamps, strict=True):
                if f == f:
                    fids.append((float(k), float(f)))
                    times.append(float(ts))
        last = result.metrics or {}
        status = "ERROR" if result.error else "TERMINATED"
        config = flat_config(result.config)
        out.append(TrialSummary(
            trial_id=last.get("trial_id", result.path.rsplit("/", 1)[-1]), status=status,
            config=config, fids=fids, times=times, run_id=last.get("mlflow_run_id"),
            node_ip=last.get("node_ip"),
            error=str(result.error).strip().splitlines()[-1][:300] if result.error else None,
            path=result.path,
        ))
    return out


def _finish(parent, result: SearchResult, base: dict[str, Any], exp_path: Path):
    """Results table, plots and the best config on the parent run (and next to the trials)."""
    import csv

    import numpy as np

    from tsearch import plots
    from tsearch.search.space import merge_flat

    out = exp_path / "summary"
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for t in result.trials for k in t.config})
    with (out / "trials.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "status", "best_fid", "final_fid", "kimg", "mlflow_run_id",
                         "node_ip", *keys, "error"])
        for t in sorted(result.trials, key=lambda t: t.best_fid):
            final = t.fids[-1][1] if t.fids else float("nan")
            writer.writerow([t.trial_id, t.status, t.best_fid, final, t.kimg, t.run_id,
                             t.node_ip, *[t.config.get(k, "") for k in keys], t.error or ""])
    parent.log_artifact(out / "trials.csv")
    series = {_label(t): ([k for k, _ in t.fids], [f for _, f in t.fids])
              for t in result.trials if t.fids}
    if series:
        parent.log_artifact(plots.plot_fid_curve(series, out / "fid_vs_kimg.png",
                                                 title=f"search {result.name}: FID vs kimg"))
    best_cfg = None
    if result.best is not None:
        best = result.best
        best_cfg = merge_flat(base, {k: v for k, v in best.config.items()
                                     if k not in result.labels})
        best_cfg.pop("search", None)
        best_cfg["tracking"]["run_name"] = None
        (out / "best_config.yaml").write_text(_best_yaml(best_cfg, result, best))
        parent.log_artifact(out / "best_config.yaml")
        parent.log_metrics({"search/best_fid": best.best_fid,
                            "search/trials": float(len(result.trials))}, step=0)
        parent.set_tags({"tsearch.best_trial_run": best.run_id or "",
                         "tsearch.best_fid": f"{best.best_fid:.4f}"})
        profiles = {}
        for t in sorted(result.trials, key=lambda t: t.best_fid)[:4]:
            npz = Path(t.path or "") / "run" / "timesteps.npz"
            if t.path and npz.is_file():
                probs = np.load(npz)["probs"]
                profiles[f"{_label(t)} (FID {t.best_fid:.1f})"] = probs[-1]
        if profiles:
            parent.log_artifact(plots.plot_timestep_profiles(
                profiles, out / "best_trials_p_t.png",
                title="learned / chosen p(t) of the best trials (end of training)"))
    parent.flush()
    return best_cfg


def _label(t: TrialSummary) -> str:
    sampler = t.config.get("timesteps.sampler.name", "")
    return f"{t.trial_id} {sampler}".strip()


def _best_yaml(cfg: dict[str, Any], result: SearchResult, best: TrialSummary) -> str:
    head = (f"# Best configuration of search {result.name!r}: FID {best.best_fid:.3f} "
            f"(trial {best.trial_id}, MLflow run {best.run_id}).\n"
            f"# Train it alone: tsearch train THIS_FILE\n"
            f"# In your own loop: tsearch.timesteps.from_config(THIS_FILE)\n")
    return head + yaml.safe_dump(cfg, sort_keys=False)

