"""A run's records: its directory's files and its tracker, written side by side.

The run directory (``names.RunDir``) keeps its own copy of everything logged (config.json,
metrics.jsonl, timesteps.npz, plots), so a run's results survive an unreachable tracker and can
be read without MLflow. ``train()`` talks to a :class:`RunRecorder` only.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsearch import names
from tsearch.config import Config, save_resolved
from tsearch.errors import CheckpointError, ConfigError
from tsearch.tracker import Tracker
from tsearch.train.state import TrainState


@dataclass
class TrainResult:
    run_dir: Path
    run_id: str | None
    steps: int
    kimg: float
    seconds: float
    evals: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (kimg, metrics)

    @property
    def fid_history(self) -> list[tuple[float, float]]:
        """(kimg, FID) at each evaluation that computed FID."""
        return [(k, m[names.FID]) for k, m in self.evals if names.FID in m]

    @property
    def final_fid(self) -> float | None:
        return self.fid_history[-1][1] if self.fid_history else None

    @property
    def best_fid(self) -> float | None:
        return min(f for _, f in self.fid_history) if self.fid_history else None

    def summary_line(self, n_params: int) -> str:
        rate = self.kimg * 1000 / max(self.seconds, 1e-9)
        fid = ""
        if self.fid_history:
            first, last = self.fid_history[0][1], self.fid_history[-1][1]
            best_kimg, best = min(self.fid_history, key=lambda x: x[1])
            fid = f", FID {first:.2f} -> {last:.2f} (best {best:.2f} at {best_kimg:g} kimg)"
        run = f", MLflow run {self.run_id}" if self.run_id else ""
        return (f"done: {self.kimg:g} kimg, {self.steps} steps in {self.seconds:.0f} s "
                f"({rate:.0f} img/s, {n_params / 1e6:.2f}M params){fid}; run dir {self.run_dir}"
                f"{run}")


def new_run_dir(cfg: Config) -> Path:
    """A fresh directory under ``train.out_dir``, named after the run (never outside it)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.tracking.run_name or f"{cfg.timesteps.sampler.name}"
    problem = names.name_problem(name)
    if problem is not None:
        raise ConfigError(f"config error: tracking.run_name: {problem}")
    root = Path(cfg.train.out_dir).resolve()
    path = (root / f"{name}-{stamp}-{secrets.token_hex(2)}").resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"config error: run directory {path} would lie outside train.out_dir "
                          f"{root}; use a plain tracking.run_name")
    try:
        path.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {path} ({exc.strerror}); set "
                           "train.out_dir to a writable directory") from None
    return path


def resume_config_path(run_dir: str | Path) -> Path:
    """config.json of a run directory (``tsearch train --resume``)."""
    path = names.RunDir(run_dir).config
    if not path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    return path


def previous_run_id(run_dir: str | Path) -> str | None:
    try:
        return json.loads(names.RunDir(run_dir).run_info.read_text()).get("run_id")
    except (OSError, json.JSONDecodeError):
        return None


class RunRecorder:
    """Writes one run's params, metrics, p(t) snapshots and plots to its tracker and directory."""

    def __init__(self, tracker: Tracker, run_dir: Path, cfg: Config):
        self.tracker = tracker
        self.dir = names.RunDir(run_dir)
        self.cfg = cfg
        try:
            self.dir.path.mkdir(parents=True, exist_ok=True)
            save_resolved(cfg, self.dir.config)
        except OSError as exc:
            raise ConfigError(f"cannot write the run directory {self.dir.path} "
                               f"({exc.strerror}); set train.out_dir to a writable "
                               "directory") from None
        # A resume replays from its checkpoint up to where the crash happened (a trial restarted
        # without one, from the start): records already in metrics.jsonl (and in the tracker)
        # are not written twice.
        _drop_partial_line(self.dir.metrics)
        self._recorded = _recorded_keys(self.dir.metrics)

    def start(self, n_params: int, device: str, resumed: bool) -> None:
        if not resumed:
            shown = self.cfg.to_dict()  # what the tracker shows: no credentials
            shown["tracking"]["uri"] = names.mask_uri(shown["tracking"]["uri"])
            self.tracker.log_params({names.PARAM_CONFIG: shown, names.PARAM_MODEL_SIZE: n_params,
                                     names.PARAM_DEVICE: device})
            self.tracker.log_dict(shown, names.ARTIFACT_CONFIG)
        self.tracker.set_tags({names.TAG_RUN_DIR: str(self.dir.path.resolve()),
                               names.TAG_SAMPLER: self.cfg.timesteps.sampler.name,
                               names.TAG_WEIGHTING: self.cfg.timesteps.weighting.name})
        self.dir.run_info.write_text(json.dumps({"run_id": self.tracker.run_id}) + "\n")

    def record(self, metrics: dict[str, float], images_seen: int, **fields: Any) -> None:
        """Log ``metrics`` at ``images_seen`` to the tracker and append them to metrics.jsonl."""
        key = (images_seen, tuple(sorted(metrics)))
        if key in self._recorded:
            return
        self.tracker.log_metrics(metrics, step=images_seen)
        with self.dir.metrics.open("a") as f:
            f.write(json.dumps({"images_seen": images_seen, **fields, **metrics}) + "\n")

    def snapshot_pt(self, state: TrainState) -> None:
        """The sampler's p(t) now, as an array artifact and in timesteps.npz."""
        probs = state.sampler.probs().double().cpu().numpy()
        state.pt_history.append(state.kimg, probs)
        self.tracker.log_array(probs, names.pt_artifact(state.images_seen))
        extra = {}
        if state.weighting.learned:  # its w(t) is learned too: kept beside p(t)
            weights = state.weighting.snapshot()
            state.wt_history.append(state.kimg, weights)
            self.tracker.log_array(weights, names.wt_artifact(state.images_seen))
            extra = {"weight_kimg": np.asarray(state.wt_history.kimgs),
                     "weights": np.asarray(state.wt_history.matrix)}
        # Written now, not at the end: a trial stopped by ASHA never reaches the end.
        np.savez(self.dir.timesteps, kimg=np.asarray(state.pt_history.kimgs),
                 probs=np.asarray(state.pt_history.matrix), **extra)

    def write_plots(self, state: TrainState) -> None:
        """Heatmap of p(t) and the FID curve (written even when the run failed)."""
        from tsearch import plots

        pt, name = state.pt_history, self.cfg.timesteps.sampler.name
        if len(pt.kimgs):
            heat = plots.plot_timestep_heatmap(pt.kimgs, np.asarray(pt.matrix), self.dir.heatmap,
                                               title=f"p(t) over training: {name}")
            self.tracker.log_artifact(heat, names.ARTIFACT_PLOTS)
        wt = state.wt_history
        if len(wt.kimgs):
            heat = plots.plot_timestep_heatmap(
                wt.kimgs, np.asarray(wt.matrix) / state.schedule.num_timesteps,
                self.dir.weight_heatmap,
                title=f"learned weight w(t) over training: {state.weighting.name}")
            self.tracker.log_artifact(heat, names.ARTIFACT_PLOTS)
        fids = [(k, m[names.FID]) for k, m in state.evals if names.FID in m]
        if fids:
            kimgs, values = zip(*fids, strict=True)
            curve = plots.plot_fid_curve({name: (kimgs, values)}, self.dir.fid_curve,
                                         title="FID vs kimg")
            self.tracker.log_artifact(curve, names.ARTIFACT_PLOTS)


def _recorded_keys(path: Path) -> set[tuple[int, tuple[str, ...]]]:
    """(images_seen, metric names) of each complete record in a metrics.jsonl."""
    keys: set[tuple[int, tuple[str, ...]]] = set()
    if not path.is_file():
        return keys
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        seen = record.pop("images_seen", None)
        record.pop("step", None)
        if isinstance(seen, int):
            keys.add((seen, tuple(sorted(record))))
    return keys


def _drop_partial_line(path: Path) -> None:
    """Cut a last line that a crash left without its newline (the next append would join it)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
