"""Search algorithms by name: one file each, one line in ``ALGORITHMS``.

Adding one: subclass :class:`~tsearch.search.algorithms.base.SearchAlgorithm` (or
``OptunaAlgorithm`` for an Optuna sampler) in a new file and register it below; the conformance
test runs every entry through a tiny real search. Names, once committed, never change meaning.
"""

from __future__ import annotations

from tsearch.errors import ConfigError
from tsearch.search.algorithms.base import OptunaAlgorithm, Proposal, SearchAlgorithm, WarmTrial
from tsearch.search.algorithms.gp import GP
from tsearch.search.algorithms.grid import Grid
from tsearch.search.algorithms.random import Random
from tsearch.search.algorithms.tpe import TPE

ALGORITHMS: dict[str, type[SearchAlgorithm]] = {
    "tpe": TPE,
    "random": Random,
    "grid": Grid,
    "gp": GP,
}


def get_algorithm(name: str) -> SearchAlgorithm:
    """The registered algorithm ``name``; an unknown name is a one-line config error."""
    if name not in ALGORITHMS:
        raise ConfigError(f"config error: search.algorithm = {name!r}: unknown algorithm; "
                          f"choose one of {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]()


__all__ = ["ALGORITHMS", "OptunaAlgorithm", "Proposal", "SearchAlgorithm", "WarmTrial",
           "get_algorithm"]
