"""Driver-side Tune callbacks: live progress lines and closing trials' MLflow child runs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from tsearch import names
from tsearch.search.space import flat_config


class ProgressCallback(Callback):
    """One line per trial evaluation: which sampler (or bundle label), how far, what FID."""

    def __init__(self, say: Callable[[str], None], labels: list[str] | None = None):
        self.say = say
        self.labels = labels or []

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        fid = result.get(names.FID, math.nan)
        config = flat_config(trial.config)
        name = " ".join(str(config[k]) for k in self.labels if k in config) \
            or config.get("timesteps.sampler.name", "")
        self.say(f"  {trial.trial_id} {name:<11} kimg {result.get(names.TIME_ATTR, 0):6.2f}  "
                 f"FID {fid:8.2f}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self.say(f"  {trial.trial_id} ended at {last.get(names.TIME_ATTR, 0):.2f} kimg, "
                 f"FID {last.get(names.FID, math.nan):.2f}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(f"  {trial.trial_id} failed (see its MLflow run for the reason)")


class MlflowTrialCallback(Callback):
    """Marks a trial's child run ended when Tune ends it (ASHA stops do not run its finally)."""

    def __init__(self, tracking_uri: str):
        self.uri = tracking_uri

    def _close(self, trial: Any, status: str, note: str) -> None:
        from tsearch.tracking.queries import close_trial_run

        close_trial_run(self.uri, trial.trial_id, status, note)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FINISHED", "stopped by the scheduler or completed")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED", "trial errored")
