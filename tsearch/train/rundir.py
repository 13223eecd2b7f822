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
from tsearch.errors import CheckpointError
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
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.tracking.run_name or f"{cfg.timesteps.sampler.name}"
    path = Path(cfg.train.out_dir) / f"{name}-{stamp}-{secrets.token_hex(2)}"
    path.mkdir(parents=True, exist_ok=False)
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
        self.dir.path.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, self.dir.config)

    def start(self, n_params: int, device: str, resumed: bool) -> None:
        if not resumed:
            self.tracker.log_params({names.PARAM_CONFIG: self.cfg.to_dict(),
                                     names.PARAM_MODEL_SIZE: n_params,
                                     names.PARAM_DEVICE: device})
            self.tracker.log_dict(self.cfg.to_dict(), names.ARTIFACT_CONFIG)
        self.tracker.set_tags({names.TAG_RUN_DIR: str(self.dir.path.resolve()),
                               names.TAG_SAMPLER: self.cfg.timesteps.sampler.name,
                               names.TAG_WEIGHTING: self.cfg.timesteps.weighting.name})
        self.dir.run_info.write_text(json.dumps({"run_id": self.tracker.run_id}) + "\n")

    def record(self, metrics: dict[str, float], images_seen: int, **fields: Any) -> None:
        """Log ``metrics`` at ``images_seen`` to the tracker and append them to metrics.jsonl."""
        self.tracker.log_metrics(metrics, step=images_seen)
        with self.dir.metrics.open("a") as f:
            f.write(json.dumps({"images_seen": images_seen, **fields, **metrics}) + "\n")

    def snapshot_pt(self, state: TrainState) -> None:
        """The sampler's p(t) now, as an array artifact and in timesteps.npz."""
        probs = state.sampler.probs().double().cpu().numpy()
        state.pt_history.append(state.kimg, probs)
        self.tracker.log_array(probs, names.pt_artifact(state.images_seen))
        # Written now, not at the end: a trial stopped by ASHA never reaches the end.
        np.savez(self.dir.timesteps, kimg=np.asarray(state.pt_history.kimgs),
                 probs=np.asarray(state.pt_history.matrix))

    def write_plots(self, state: TrainState) -> None:
        """Heatmap of p(t) and the FID curve (written even when the run failed)."""
        from tsearch import plots

        pt, name = state.pt_history, self.cfg.timesteps.sampler.name
        if len(pt.kimgs):
            heat = plots.plot_timestep_heatmap(pt.kimgs, np.asarray(pt.matrix), self.dir.heatmap,
                                               title=f"p(t) over training: {name}")
            self.tracker.log_artifact(heat, names.ARTIFACT_PLOTS)
        fids = [(k, m[names.FID]) for k, m in state.evals if names.FID in m]
        if fids:
            kimgs, values = zip(*fids, strict=True)
            curve = plots.plot_fid_curve({name: (kimgs, values)}, self.dir.fid_curve,
                                         title="FID vs kimg")
            self.tracker.log_artifact(curve, names.ARTIFACT_PLOTS)
