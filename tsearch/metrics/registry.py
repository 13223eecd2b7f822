"""Evaluations by name (``eval.metrics``); names, once committed, never change meaning."""

from __future__ import annotations

from collections.abc import Sequence

from tsearch.config import DataConfig, EvalConfig
from tsearch.errors import ConfigError
from tsearch.metrics.evaluation import EvalSetting, Evaluation, Evaluations
from tsearch.metrics.fid_evaluation import FIDEvaluation

EVALUATIONS: dict[str, type[Evaluation]] = {
    "fid": FIDEvaluation,
}


def check_evaluations(selected: Sequence[str], needed: str | None = None) -> None:
    """Every name in ``eval.metrics`` is registered, and one of them provides ``needed`` (the
    search metric), else a one-line config error."""
    for name in selected:
        if name not in EVALUATIONS:
            raise ConfigError(f"config error: eval.metrics: unknown evaluation {name!r}; "
                              f"choose among {', '.join(sorted(EVALUATIONS))}")
    if needed is not None and not any(needed in EVALUATIONS[n].provides for n in selected):
        makers = sorted(n for n, cls in EVALUATIONS.items() if needed in cls.provides)
        raise ConfigError(f"config error: eval.metrics = {list(selected)}: none of them "
                          f"computes the search metric {needed!r}; add {' or '.join(makers)}")


def build_evaluations(eval_cfg: EvalConfig, data_cfg: DataConfig,
                      setting: EvalSetting) -> Evaluations:
    """The evaluations ``eval.metrics`` names, in that order."""
    check_evaluations(eval_cfg.metrics)
    return Evaluations([EVALUATIONS[name](eval_cfg, data_cfg, setting)
                        for name in eval_cfg.metrics])
