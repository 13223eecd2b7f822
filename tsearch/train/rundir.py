"""A run's records: its directory's files and its tracker, written side by side.

The run directory (``names.RunDir``) keeps its own copy of everything logged (config.json,
metrics.jsonl, timesteps.npz, plots), so a run's results survive an unreachable tracker and can
be read without MLflow. ``train()`` talks to a :class:`RunRecorder` only.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsearch import names
from tsearch.config import Config, save_resolved
from tsearch.errors import CheckpointError, ConfigError
from tsearch.log import get_logger
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
        records = _records(self.dir.metrics)
        self._recorded = {(seen, tuple(sorted(k for k in r if k != "step")))
                          for seen, r in records}
        # Warned and tagged once per run, a resumed one included.
        self._collapsed = any(names.collapse_problem(r) for _, r in records)

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

    def check_collapse(self, metrics: dict[str, float], kimg: float) -> None:
        """A learned p(t) that collapsed gets one warning and a tag with the kimg, so that a
        run training on a few timesteps is not mistaken for a sampler that lost fairly."""
        why = None if self._collapsed else names.collapse_problem(metrics)
        if why is None:
            return
        self._collapsed = True
        warn(f"the learned p(t) collapsed at {kimg:.2f} kimg ({why}): training now sees only a "
             "few timesteps; the stable form (timesteps.sampler.params.preset: stable) bounds "
             "how far one policy update moves p(t) (docs/algorithms.md 1.10)")
        self.tracker.set_tags({names.TAG_PT_COLLAPSED: f"{kimg:.2f}"})

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

    def write_grid(self, kimg: float, images: torch.Tensor) -> None:
        """A PNG grid of this evaluation's first generated images, in the run dir and MLflow.

        The images come from the first per-image seeds, the same in every trial and at every
        evaluation, so grids compare across trials and over training.
        """
        from torchvision.utils import save_image

        path = self.dir.grid(kimg)
        path.parent.mkdir(parents=True, exist_ok=True)
        x = images.detach().float().cpu().clamp(-1, 1)
        save_image((x + 1) / 2, path, nrow=8, padding=1, pad_value=1.0)
        self.tracker.log_artifact(path, names.ARTIFACT_SAMPLES)

    def write_plots(self, state: TrainState) -> None:
        """Heatmap of p(t) and the FID curve (written even when the run failed)."""
        wt = state.wt_history
        drawn = draw_plots(
            self.dir, sampler=self.cfg.timesteps.sampler.name,
            weighting=state.weighting.name, num_timesteps=state.schedule.num_timesteps,
            pt=(state.pt_history.kimgs, state.pt_history.matrix),
            wt=(wt.kimgs, wt.matrix) if len(wt.kimgs) else None,
            fids=[(k, m[names.FID]) for k, m in state.evals if names.FID in m])
        for path in drawn:
            self.tracker.log_artifact(path, names.ARTIFACT_PLOTS)


warn = get_logger(__name__).warning

PlotRows = tuple[Sequence[float], Sequence[Any]]  # (kimg of each snapshot, its row over t)


def draw_plots(run_dir: names.RunDir, *, sampler: str, weighting: str, num_timesteps: int,
               pt: PlotRows | None, wt: PlotRows | None,
               fids: Sequence[tuple[float, float]]) -> list[Path]:
    """Draw a run's plots into its directory; returns the files drawn.

    The p(t) heatmap (if p(t) was snapshot), the learned w(t) heatmap (a learned weighting)
    and the FID curve (if FID was computed). One drawing for the trainer and for a search's
    driver, which draws them from the run's files for trials Tune stopped.
    """
    from tsearch import plots

    drawn = []
    if pt is not None and len(pt[0]):
        drawn.append(plots.plot_timestep_heatmap(pt[0], np.asarray(pt[1]), run_dir.heatmap,
                                                 title=f"p(t) over training: {sampler}"))
    if wt is not None and len(wt[0]):
        drawn.append(plots.plot_timestep_heatmap(
            wt[0], np.asarray(wt[1]) / num_timesteps, run_dir.weight_heatmap,
            title=f"learned weight w(t) over training: {weighting}"))
    if fids:
        kimgs, values = zip(*fids, strict=True)
        drawn.append(plots.plot_fid_curve({sampler: (kimgs, values)}, run_dir.fid_curve,
                                          title="FID vs kimg"))
    return drawn


def plot_names(run_dir: str | Path) -> list[str]:
    """File names of the plots a run's records call for (see :func:`draw_plots`)."""
    rd = names.RunDir(run_dir)
    return [p.name for p, needed in ((rd.heatmap, _has_rows(rd.timesteps, "kimg")),
                                     (rd.weight_heatmap, _has_rows(rd.timesteps, "weight_kimg")),
                                     (rd.fid_curve, bool(_recorded_fids(rd.metrics))))
            if needed]


def draw_plots_from_files(run_dir: str | Path) -> list[Path]:
    """Draw a run's plots from its directory's records (config.json, timesteps.npz,
    metrics.jsonl), for a run whose own process ended before drawing them."""
    rd = names.RunDir(run_dir)
    raw = json.loads(rd.config.read_text())
    pt = wt = None
    if rd.timesteps.is_file():
        with np.load(rd.timesteps) as npz:
            if "kimg" in npz:
                pt = (npz["kimg"].tolist(), npz["probs"])
            if "weight_kimg" in npz:
                wt = (npz["weight_kimg"].tolist(), npz["weights"])
    return draw_plots(rd, sampler=raw["timesteps"]["sampler"]["name"],
                      weighting=raw["timesteps"]["weighting"]["name"],
                      num_timesteps=int(raw["diffusion"]["num_timesteps"]), pt=pt, wt=wt,
                      fids=_recorded_fids(rd.metrics))


def _has_rows(npz_path: Path, key: str) -> bool:
    if not npz_path.is_file():
        return False
    try:
        with np.load(npz_path) as npz:
            return key in npz and npz[key].size > 0
    except (OSError, ValueError):  # cut short by a kill: nothing to draw from
        return False


def _recorded_fids(path: Path) -> list[tuple[float, float]]:
    """(kimg, FID) of each evaluation in a metrics.jsonl, in order, each point once."""
    fids: dict[int, float] = {}
    if not path.is_file():
        return []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        if names.FID in record and isinstance(record.get("images_seen"), int):
            fids.setdefault(record["images_seen"], float(record[names.FID]))
    return [(seen / 1000, fid) for seen, fid in sorted(fids.items())]


def _records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(images_seen, the rest) of each complete record in a metrics.jsonl."""
    out: list[tuple[int, dict[str, Any]]] = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        seen = record.pop("images_seen", None)
        if isinstance(seen, int):
            out.append((seen, record))
    return out


def _drop_partial_line(path: Path) -> None:
    """Cut a last line that a crash left without its newline (the next append would join it)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
