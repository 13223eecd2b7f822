"""Seeds inside the search: a configuration that reaches the top rung is repeated on more seeds.

A single-seed FID moves by about as much as most gaps between configurations, so the searcher's
model learns from noise and the best observed trial is the luckiest. With
``search.repeat_top: [1, 2]`` every configuration that trains to the full budget is run again on
training seeds 1 and 2 (the same seeds for every configuration: paired), each repeat an ordinary
trial that ASHA may stop like any other; the searcher is told the configuration's mean final FID
over its seeds once the repeats end, instead of the first seed's value (docs/search.md, 4).

:class:`RepeatTop` wraps the algorithm's Tune searcher inside the ``ConcurrencyLimiter``, so repeats
count towards ``max_concurrent`` and ``num_samples`` like the trials they repeat.
"""

from __future__ import annotations

import copy
import math
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from tsearch.labels import SEED_KEY


class RepeatTop(Searcher):
    """Repeats top-rung configurations on ``seeds`` and tells ``searcher`` their seed mean."""

    def __init__(self, searcher: Searcher, seeds: Sequence[int], top_kimg: float,
                 time_attr: str = "kimg"):
        self.searcher = searcher
        self.seeds = [int(s) for s in seeds]
        self.top_kimg = float(top_kimg)
        self.time_attr = time_attr
        self.configs: dict[str, dict[str, Any]] = {}  # the searcher's trials: their configs
        self.queue: list[tuple[str, int]] = []  # (origin trial, seed) repeats not yet started
        self.repeat_of: dict[str, tuple[str, int]] = {}  # repeat trial -> (origin, seed)
        # origin -> its top-rung result and each repeat's final value (None: stopped early or
        # failed), until every repeat has ended
        self.held: dict[str, dict[str, Any]] = {}
        self.told: dict[str, dict[str, Any]] = {}  # origin -> {"mean", "values"} told
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    # --- Tune's Searcher interface ------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return ok

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return False  # the ConcurrencyLimiter around this counts repeats too

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.queue:
            origin, seed = self.queue.pop(0)
            self.repeat_of[trial_id] = (origin, seed)
            return {**copy.deepcopy(self.configs[origin]), SEED_KEY: seed}
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self.configs[trial_id] = copy.deepcopy(config)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.repeat_of:  # the searcher never proposed a repeat
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self.repeat_of:
            origin, seed = self.repeat_of[trial_id]
            held = self.held.get(origin)
            if held is not None:
                held["values"][str(seed)] = self._top_value(result, error)
                if len(held["values"]) == len(self.seeds):
                    self._tell(origin)
            return
        if self.seeds and self._top_value(result, error) is not None:
            self.held[trial_id] = {"result": dict(result or {}), "values": {}}
            self.queue += [(trial_id, s) for s in self.seeds]
            return
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # --- Its own logic --------------------------------------------------------------------
    def _top_value(self, result: dict | None, error: bool) -> float | None:
        """The trial's metric if it trained to the full budget (a repeat stopped by ASHA at a
        lower rung is not comparable with a final FID), else None."""
        if error or not result:
            return None
        value = result.get(self.metric)
        kimg = result.get(self.time_attr)
        if value is None or kimg is None or not math.isfinite(float(value)):
            return None
        return float(value) if float(kimg) >= self.top_kimg * (1 - 1e-6) else None

    def _tell(self, origin: str) -> None:
        """The seed mean over the origin and its repeats that reached the top, to the searcher."""
        held = self.held.pop(origin)
        values = [float(held["result"][self.metric])] + [
            v for v in held["values"].values() if v is not None]
        mean = sum(values) / len(values)
        self.told[origin] = {"mean": mean, "values": values}
        self.searcher.on_trial_complete(origin, result={**held["result"], self.metric: mean})

    # --- Resume ---------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"configs": self.configs, "queue": self.queue, "repeat_of": self.repeat_of,
                "held": self.held, "told": self.told}

    def save(self, checkpoint_path: str) -> None:
        """One file, as Tune renames it: the wrapped searcher's bytes and this state."""
        self.searcher.save(checkpoint_path)
        inner = Path(checkpoint_path).read_bytes()
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"searcher": inner, "repeats": self._state()}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        with tempfile.TemporaryDirectory() as tmp:
            inner = Path(tmp) / "searcher.pkl"
            inner.write_bytes(saved["searcher"])
            self.searcher.restore(str(inner))
        self.set_state(saved["repeats"])

    def get_state(self) -> dict[str, Any]:
        return copy.deepcopy(self._state())

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(copy.deepcopy(state))
