"""What each phase of a search hands Ray Tune: the trainable, the trials' meta, the run config.

Both phases (the search, then the confirmation) are Tune experiments built the same way; the
tuner and the confirmation runner take these pieces from here. :class:`TrialMeta` is pickled
to every trial's worker with the base config, so it stays a plain frozen dataclass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tsearch import names

if TYPE_CHECKING:
    from tsearch.config import Config
    from tsearch.search.plan import SearchPlan


@dataclass(frozen=True)
class TrialMeta:
    """What every trial of a phase is told besides its values: where and how it records."""

    parent_run_id: str | None
    search_name: str
    labels: tuple[str, ...] = ()  # bundle keys: in run names, not config fields
    keys: tuple[str, ...] = ()  # the searched keys: run names and short params
    phase: str = names.PHASE_SEARCH
    verbose: bool = False  # Ray's own output in the trial too (search.console)

    def for_phase(self, phase: str) -> TrialMeta:
        """This meta for ``phase``: a confirmation run is labelled by its method alone."""
        labels = (names.METHOD_KEY,) if phase == names.PHASE_CONFIRM else self.labels
        return dataclasses.replace(self, phase=phase, labels=labels)


@dataclass(frozen=True)
class SearchContext:
    """A checked search once its store is up: where it writes, and whether it resumes."""

    cfg: Config
    checked: SearchPlan
    uri: str  # the resolved MLflow tracking URI
    artifact_root: str | None
    storage: str  # search.storage_path, made absolute unless a URI
    exp_path: Path  # the search phase's Tune experiment: storage / name
    resume: bool = False
    verbose: bool = False


def trainable(ctx: SearchContext, base: dict[str, Any], meta: TrialMeta) -> Any:
    """``run_trial`` with the base config, the phase's meta and the trial's resources."""
    from ray import tune

    from tsearch.search.trainable import run_trial

    s = ctx.cfg.search
    resources = {"cpu": s.cpus_per_trial}
    if s.gpus_per_trial > 0:
        resources["gpu"] = s.gpus_per_trial
    return tune.with_resources(tune.with_parameters(run_trial, base=base, meta=meta), resources)


def run_config(ctx: SearchContext, name: str, storage_path: str, labels: list[str],
               base: dict[str, Any], *,
               ends: tuple[float | None, list[float], str | None] = (None, [], None)) -> Any:
    """One phase's Tune run config: its storage, progress lines, MLflow closing, retries.

    ``ends``: the phase's budget in kimg, ASHA's rungs and the parent run, to tell the trial
    runs why they ended."""
    from ray import tune

    from tsearch.search.callbacks import MlflowTrialCallback, ProgressCallback
    from tsearch.search.console import tune_verbosity

    s = ctx.cfg.search
    sampler = base["timesteps"]["sampler"]["name"]
    return tune.RunConfig(
        name=name, storage_path=storage_path, verbose=tune_verbosity(ctx.verbose),
        callbacks=[MlflowTrialCallback(ctx.uri, sampler, *ends),
                   ProgressCallback(labels, sampler)],
        failure_config=tune.FailureConfig(max_failures=s.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=s.num_to_keep))
