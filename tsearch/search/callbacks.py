"""Driver-side Tune callbacks: live progress lines, closing trials' MLflow child runs and
drawing the plots of trials Tune stopped."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tsearch import labels, names
from tsearch.log import get_logger
from tsearch.search.space import flat_config
from tsearch.search.trial_plots import complete_plots

log = get_logger(__name__)


class ProgressCallback(Callback):
    """One line per trial evaluation: which sampler (or bundle label), how far, what FID."""

    def __init__(self, labels: list[str] | None = None, sampler: str = ""):
        self.labels = labels or []
        self.sampler = sampler  # the base config's: a trial that does not search it uses it

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        fid = result.get(names.FID, math.nan)
        config = flat_config(trial.config)
        name = " ".join(str(config[k]) for k in self.labels if k in config) \
            or config.get(labels.SAMPLER_KEY, self.sampler)
        log.info(f"  {trial.trial_id} {name:<11} kimg {result.get(names.TIME_ATTR, 0):6.2f}  "
                 f"FID {fid:8.2f}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        log.info(f"  {trial.trial_id} ended at {last.get(names.TIME_ATTR, 0):.2f} kimg, "
                 f"FID {last.get(names.FID, math.nan):.2f}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.info(f"  {trial.trial_id} failed (see its MLflow run for the reason)")


class MlflowTrialCallback(Callback):
    """Marks a trial's child run ended when Tune ends it, records why (``end_reason``) and
    draws the plots the trial did not (:func:`complete_plots`).

    Tune stops a trial (ASHA, or its last report at ``total_kimg``) by ending the thread of its
    function: ``tune.report`` raises ``SystemExit``, so ``train`` closes its run FINISHED either
    way, or not at all when the actor goes first. Only the driver knows which it was.
    """

    # Class defaults: a search resumed from an older tsearch unpickles a callback without them.
    total_kimg: float | None = None
    rungs: list[float] = []  # noqa: RUF012 (never mutated)
    parent_run_id: str | None = None
    sampler: str = ""

    def __init__(self, tracking_uri: str, sampler: str = "", total_kimg: float | None = None,
                 rungs: list[float] | None = None, parent_run_id: str | None = None):
        self.uri = tracking_uri
        self.sampler = sampler  # the base config's: a trial that does not search it uses it
        self.total_kimg = total_kimg  # the phase's budget (a trial may search or set its own)
        self.rungs = rungs or []  # ASHA's milestones in kimg; none in a phase without ASHA
        self.parent_run_id = parent_run_id

    def _close(self, trial: Any, status: str, note: str, reason: str) -> None:
        from tsearch.tracking.closing import close_trial_run

        close_trial_run(self.uri, trial.trial_id, status, note, end_reason=reason,
                        parent_run_id=self.parent_run_id)
        result = trial.last_result or {}
        sampler = flat_config(trial.config).get(labels.SAMPLER_KEY, self.sampler)
        complete_plots(trial.path, result.get(names.REPORT_RUN_ID), self.uri, sampler)

    def end_reason(self, trial: Any) -> str:
        """finished, or stopped (by ASHA at its rung) before the trial's budget."""
        kimg = float((trial.last_result or {}).get(names.TIME_ATTR, 0.0))
        total = flat_config(trial.config).get(names.TOTAL_KIMG_KEY, self.total_kimg)
        if total is None or kimg >= float(total) - 1e-9:
            return names.END_FINISHED
        reached = [r for r in self.rungs if r <= kimg + 1e-9]
        return names.stopped_at(reached[-1] if reached else kimg, asha=bool(reached))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FINISHED", "stopped by the scheduler or completed",
                    self.end_reason(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED", "trial errored", names.failed_with(_error_line(trial)))


def _error_line(trial: Any) -> str:
    """The last line of a trial's error.txt (the exception), or what to look at."""
    try:
        lines = [x.strip() for x in Path(trial.error_file).read_text().splitlines() if x.strip()]
    except (AttributeError, TypeError, OSError):
        lines = []
    return lines[-1][:300] if lines else "the trial errored (see error.txt in its directory)"
