"""Driver-side Tune callbacks: live progress lines, closing trials' MLflow child runs and
drawing the plots of trials Tune stopped."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from tsearch import names
from tsearch.search.space import flat_config
from tsearch.search.trial_plots import complete_plots


class ProgressCallback(Callback):
    """One line per trial evaluation: which sampler (or bundle label), how far, what FID."""

    def __init__(self, say: Callable[[str], None], labels: list[str] | None = None,
                 sampler: str = ""):
        self.say = say
        self.labels = labels or []
        self.sampler = sampler  # the base config's: a trial that does not search it uses it

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        fid = result.get(names.FID, math.nan)
        config = flat_config(trial.config)
        name = " ".join(str(config[k]) for k in self.labels if k in config) \
            or config.get("timesteps.sampler.name", self.sampler)
        self.say(f"  {trial.trial_id} {name:<11} kimg {result.get(names.TIME_ATTR, 0):6.2f}  "
                 f"FID {fid:8.2f}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self.say(f"  {trial.trial_id} ended at {last.get(names.TIME_ATTR, 0):.2f} kimg, "
                 f"FID {last.get(names.FID, math.nan):.2f}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(f"  {trial.trial_id} failed (see its MLflow run for the reason)")


class MlflowTrialCallback(Callback):
    """Ends a trial's child run when Tune ends it (ASHA stops do not run its finally) and
    draws the plots the trial did not (:func:`complete_plots`)."""

    def __init__(self, tracking_uri: str, say: Callable[[str], None], sampler: str = ""):
        self.uri = tracking_uri
        self.say = say
        self.sampler = sampler  # the base config's: a trial that does not search it uses it

    def _close(self, trial: Any, status: str, note: str) -> None:
        from tsearch.tracking.queries import close_trial_run

        close_trial_run(self.uri, trial.trial_id, status, note)
        result = trial.last_result or {}
        sampler = flat_config(trial.config).get("timesteps.sampler.name", self.sampler)
        complete_plots(trial.path, result.get(names.REPORT_RUN_ID), self.uri, sampler, self.say)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FINISHED", "stopped by the scheduler or completed")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED", "trial errored")
