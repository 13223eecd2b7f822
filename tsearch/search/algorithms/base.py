"""The search-algorithm contract: what a registry entry tells the tuner.

An algorithm turns the typed search config and the validated space into what Ray Tune runs: a
searcher (or a fixed ``param_space``), a trial count and a scheduler. The tuner has no branch per
algorithm; it asks the entry. Ray and Optuna are imported inside :meth:`SearchAlgorithm.build`
only, so planning (``--dry-run``) stays cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from tsearch import names
from tsearch.config import Config
from tsearch.search.space import SearchSpace


@dataclass(frozen=True)
class Proposal:
    """What ``tune.Tuner`` gets from an algorithm."""

    search_alg: Any | None  # a Tune Searcher, or None for Tune's own variant generator
    param_space: dict[str, Any] | None  # fixed trial configs (with search_alg None)
    num_samples: int
    scheduler: Any
    max_concurrent_trials: int | None = None  # only without a searcher (which limits itself)


@dataclass(frozen=True)
class WarmTrial:
    """A finished trial of an earlier search, told to a new search before it proposes anything.

    ``params`` are the values the space's define-by-run function suggests (choices, ranges and
    bundle labels; not what a bundle sets), ``value`` its search metric at the new budget.
    """

    params: dict[str, Any]
    value: float


class SearchAlgorithm(ABC):
    """A way to propose trials. Subclasses set ``name`` and the capability flags.

    - ``supports_asha``: trials may be stopped early (the algorithm copes with truncated
      results); if False, a config with ``search.asha.enabled`` is refused at planning.
    - ``supports_points``: ``search.points_to_evaluate`` are tried first.
    - ``supports_bundles``: ``bundle`` entries (several keys at once) in the space.
    """

    name: ClassVar[str]
    supports_asha: ClassVar[bool] = True
    supports_points: ClassVar[bool] = True
    supports_bundles: ClassVar[bool] = True

    def cells(self, space: SearchSpace) -> list[dict[str, Any]] | None:
        """The fixed trial values this algorithm runs, if known up front (else num_samples)."""
        return None

    supports_warm_start: ClassVar[bool] = False  # ``build`` uses ``warm`` trials

    @abstractmethod
    def build(self, cfg: Config, space: SearchSpace, name: str,
              warm: Sequence[WarmTrial] = ()) -> Proposal:
        """The searcher, trial count and scheduler for search ``name`` (imports Ray here).

        ``warm``: an earlier search's trials, known before the first proposal.
        """

    def scheduler(self, cfg: Config) -> Any:
        """ASHA on the search metric, with kimg as its clock; FIFO when ASHA is off."""
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

        s = cfg.search
        if not s.asha.enabled:
            return FIFOScheduler()
        return ASHAScheduler(time_attr=names.TIME_ATTR, max_t=cfg.train.total_kimg,
                             metric=s.metric, mode=s.mode, grace_period=s.asha.grace_kimg,
                             reduction_factor=s.asha.reduction_factor, brackets=s.asha.brackets)


class OptunaAlgorithm(SearchAlgorithm):
    """An Optuna sampler behind Ray's ``OptunaSearch`` on the define-by-run space."""

    supports_warm_start = True

    @abstractmethod
    def optuna_sampler(self, cfg: Config) -> Any:
        """The seeded ``optuna.samplers.BaseSampler``."""

    def build(self, cfg: Config, space: SearchSpace, name: str,
              warm: Sequence[WarmTrial] = ()) -> Proposal:
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        s = cfg.search
        sampler = self.optuna_sampler(cfg)
        study_name = f"tsearch-{name}"  # Optuna's default name is shared between studies
        searcher = OptunaSearch(
            space=space.define_by_run(), metric=s.metric, mode=s.mode,
            points_to_evaluate=[dict(p) for p in s.points_to_evaluate] or None,
            sampler=sampler, study_name=study_name,
            storage=warm_storage(space, warm, study_name, s.mode, sampler) if warm else None,
        )
        if s.repeat_top:
            from tsearch.search.repeats import RepeatTop

            searcher = RepeatTop(searcher, s.repeat_top, cfg.train.total_kimg,
                                 time_attr=names.TIME_ATTR)
        return Proposal(search_alg=ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent),
                        param_space=None, num_samples=s.num_samples,
                        scheduler=self.scheduler(cfg))


def warm_storage(space: SearchSpace, warm: Sequence[WarmTrial], study_name: str, mode: str,
                 sampler: Any) -> Any:
    """An in-memory Optuna storage whose study ``study_name`` holds ``warm`` as COMPLETE trials.

    Ray's ``evaluated_rewards`` refuses a define-by-run space, so the study is made here and
    handed to ``OptunaSearch`` as its storage (it loads an existing study of that name). Each
    trial's distributions are the ones the define-by-run function suggests for its params
    (``FixedTrial`` records them), so ``when`` branches and bundle labels match what the
    search's own trials will have; TPE counts these trials towards its start-up trials.
    """
    import optuna

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                direction="minimize" if mode == "min" else "maximize")
    define = space.define_by_run()
    trials = []
    for point in warm:
        fixed = optuna.trial.FixedTrial(point.params)
        define(fixed)
        trials.append(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, value=point.value, params=fixed.params,
            distributions=fixed.distributions))
    study.add_trials(trials)
    return storage
