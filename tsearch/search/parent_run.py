"""Everything a search writes to its parent MLflow run, and to the summary folder beside its trials.

The search config and params when the run opens; after the search phase the trials table, the
FID curves, the best trials' p(t), the best config and its tags; after the confirmation its
ranking, curves and the confirmed winner's config; the run's description (the summary tables)
after each phase. The tuner opens and closes the run; this class only records into it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tsearch import labels, names
from tsearch.config import Config, merge_flat, portable_dict
from tsearch.records import TrialRecord
from tsearch.search import summary
from tsearch.search.confirm import Confirmation
from tsearch.search.results import SearchResult


class ParentRun:
    """The search's parent run (an ``MlflowTracker``) and its summary folder under ``exp_path``."""

    def __init__(self, tracker: Any, exp_path: Path):
        self.tracker = tracker
        self.out = exp_path / names.SEARCH_SUMMARY_SUBDIR

    @property
    def run_id(self) -> str:
        return self.tracker.run_id

    def record_config(self, cfg: Config, warm_from: str | None) -> None:
        """The search's settings and base config, once, when the run is new."""
        self.tracker.log_params({
            names.PARAM_SEARCH: cfg.search.model_dump(mode="json"),
            names.PARAM_BASE: _masked({k: v for k, v in cfg.to_dict().items()
                                       if k != "search"})})
        self.tracker.log_dict(_masked(cfg.to_dict()), names.ARTIFACT_SEARCH_CONFIG)
        if warm_from:
            self.tracker.set_tags({names.TAG_WARM_START: warm_from})

    def note(self, result: SearchResult) -> None:
        """The run's description: the summary tables, so the MLflow UI opens on the answer."""
        self.tracker.set_tags({names.TAG_NOTE: summary.markdown(result)})

    def record_search(self, result: SearchResult,
                      base: dict[str, Any]) -> dict[str, Any] | None:
        """The trials table, FID curves and the best config; returns that config (masked)."""
        from tsearch import plots

        self.out.mkdir(parents=True, exist_ok=True)
        self._trials_table(result.trials)
        series = {_label(t): ([k for k, _ in t.fid_by_kimg], [f for _, f in t.fid_by_kimg])
                  for t in result.trials if t.fid}
        if series:
            self.tracker.log_artifact(plots.plot_fid_curve(
                series, self.out / "fid_vs_kimg.png", title=f"search {result.name}: FID vs kimg"))
        best_cfg = None
        if result.best is not None:
            best = result.best
            best_cfg = _masked(portable_dict(merge_flat(
                base, {k: v for k, v in best.values.items() if k not in result.labels})))
            (self.out / names.ARTIFACT_BEST_CONFIG).write_text(_best_yaml(best_cfg, result, best))
            self.tracker.log_artifact(self.out / names.ARTIFACT_BEST_CONFIG)
            self.tracker.log_metrics({names.SEARCH_BEST_FID: best.best_fid,
                                      names.SEARCH_TRIALS: float(len(result.trials))}, step=0)
            self.tracker.set_tags({names.TAG_BEST_TRIAL_RUN: best.run_id or "",
                                   names.TAG_BEST_FID: f"{best.best_fid:.4f}"})
            if result.predictions:
                top = result.predictions[0]
                self.tracker.log_metrics({names.SEARCH_PREDICTED_FID: top.fid}, step=0)
                self.tracker.set_tags({names.TAG_RECOMMENDED:
                                       summary.trial_label(top.trial, result.labels)})
            self._best_profiles(result.trials)
        self.tracker.flush()
        return best_cfg

    def _trials_table(self, trials: list[TrialRecord]) -> None:
        keys = sorted({k for t in trials for k in t.values})
        with (self.out / "trials.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["trial_id", "status", "best_fid", "final_fid", "kimg",
                             "mlflow_run_id", "node_ip", *keys, "error"])
            for t in sorted(trials, key=lambda t: t.best_fid):
                writer.writerow([t.trial_id, t.status, t.best_fid, t.final_fid, t.kimg,
                                 t.run_id, t.node_ip, *[t.values.get(k, "") for k in keys],
                                 t.error or ""])
        self.tracker.log_artifact(self.out / "trials.csv")

    def _best_profiles(self, trials: list[TrialRecord]) -> None:
        """The p(t) the four best trials ended with, from their run directories."""
        from tsearch import plots

        profiles = {}
        for t in sorted(trials, key=lambda t: t.best_fid)[:4]:
            npz = names.trial_run_dir(t.path or "").timesteps
            if t.path and npz.is_file():
                probs = np.load(npz)["probs"]
                profiles[f"{_label(t)} (FID {t.best_fid:.1f})"] = probs[-1]
        if profiles:
            self.tracker.log_artifact(plots.plot_timestep_profiles(
                profiles, self.out / "best_trials_p_t.png",
                title="learned / chosen p(t) of the best trials (end of training)"))

    def record_confirmation(self, result: SearchResult, base: dict[str, Any],
                            overrides: Mapping[str, Any]) -> None:
        """The confirmed ranking, its curves and the winner's config."""
        from tsearch import plots

        conf = result.confirmation
        assert conf is not None
        self.out.mkdir(parents=True, exist_ok=True)
        ranking = self.out / names.ARTIFACT_CONFIRMED
        ranking.write_text(json.dumps(conf.to_json(), indent=2) + "\n")
        self.tracker.log_artifact(ranking)
        series = {f"{row.label}{' (baseline)' if row.baseline else ''}":
                  ([k for k, _ in row.curve], [f for _, f in row.curve])
                  for row in conf.rows if row.curve}
        if series:
            self.tracker.log_artifact(plots.plot_fid_curve(
                series, self.out / "confirm_fid_vs_kimg.png",
                title=f"confirmation: FID vs kimg, mean over seeds {conf.seeds}"))
        winner = conf.winner
        if winner is None:
            self.tracker.flush()
            return
        raw = merge_flat(base, {**winner.values, **overrides})
        text = best_config_yaml(_masked(portable_dict(raw)), conf, result.name, self.run_id)
        (self.out / names.ARTIFACT_CONFIRMED_CONFIG).write_text(text)
        self.tracker.log_artifact(self.out / names.ARTIFACT_CONFIRMED_CONFIG)
        metrics = {names.CONFIRM_FID_MEAN: winner.mean, names.CONFIRM_FID_STD: winner.std,
                   names.CONFIRM_SPEEDUP_KIMG: winner.speedup_kimg,
                   names.CONFIRM_SPEEDUP_COMPUTE: winner.speedup_compute,
                   names.CONFIRM_WINNERS_CURSE: winner.winners_curse,
                   names.CONFIRM_KENDALL_TAU: conf.kendall_tau,
                   names.CONFIRM_P_VALUE: conf.p_value, names.CONFIRM_RUNS: conf.runs,
                   names.CONFIRM_TRIAL_KIMG: conf.trial_kimg,
                   names.CONFIRM_SPEEDUP_IS_BOUND: (None if winner.speedup_kimg is None else
                                                    float(winner.speedup_is_bound))}
        self.tracker.log_metrics({k: float(v) for k, v in metrics.items() if v is not None},
                                 step=0)
        self.tracker.set_tags({names.TAG_CONFIRMED: winner.label,
                               **({names.TAG_CONFIRM_SPEEDUP: winner.speedup_text("x")}
                                  if winner.speedup_kimg is not None else {}),
                               **({names.TAG_CONFIRM_VERDICT: conf.verdict}
                                  if conf.verdict else {})})
        self.tracker.flush()


def _masked(raw: dict[str, Any]) -> dict[str, Any]:
    """A config dict with the tracking URI's credentials masked (for params and exports)."""
    if isinstance(raw.get("tracking"), dict) and raw["tracking"].get("uri"):
        raw = {**raw, "tracking": {**raw["tracking"],
                                   "uri": names.mask_uri(raw["tracking"]["uri"])}}
    return raw


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


def best_config_yaml(raw: Mapping[str, Any], conf: Confirmation, search: str,
                     parent_run_id: str | None) -> str:
    """The confirmed winner's config file, its header saying what was confirmed and how."""
    w = conf.winner
    assert w is not None
    spread = f" ± {w.std:.2f}" if w.std is not None else ""
    speed = (f", {w.speedup_text('x')} the baseline's speed to its final FID"
             if w.speedup_kimg is not None else "")
    what = "leader (a tie, not a clear winner)" if conf.decided is False else "winner"
    head = (f"# Confirmed {what} of search {search!r}: {w.label}\n"
            f"# FID {w.mean:.2f}{spread} over training seeds {', '.join(map(str, w.seeds))} "
            f"(fresh: no search trial used them){speed}; search FID "
            + (f"{w.search_fid:.2f}" if w.search_fid is not None else "n/a")
            + f" (MLflow parent run {parent_run_id}).\n"
            + (f"# {conf.verdict}\n" if conf.verdict else "")
            + "# Train it alone: tsearch train THIS_FILE\n"
            "# In your own loop: tsearch.timesteps.from_config(THIS_FILE)\n")
    return head + yaml.safe_dump(dict(raw), sort_keys=False)
