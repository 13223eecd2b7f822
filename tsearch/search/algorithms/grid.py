"""Every cell of the space once (choices and bundles; ``when`` prunes): replication studies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tsearch.config import Config
from tsearch.search.algorithms.base import Proposal, SearchAlgorithm, WarmTrial
from tsearch.search.space import GRID_KEY, SearchSpace


class Grid(SearchAlgorithm):
    name = "grid"
    supports_points = False  # every cell runs already

    def cells(self, space: SearchSpace) -> list[dict[str, Any]]:
        return space.grid()

    def build(self, cfg: Config, space: SearchSpace, name: str,
              warm: Sequence[WarmTrial] = ()) -> Proposal:
        from ray import tune

        # Each cell as one grid value: cells set different keys, which Tune's own grid (a
        # product of per-key lists) cannot express. No searcher: Tune's variant generator.
        return Proposal(search_alg=None,
                        param_space={GRID_KEY: tune.grid_search(self.cells(space))},
                        num_samples=1, scheduler=self.scheduler(cfg),
                        max_concurrent_trials=cfg.search.max_concurrent)
