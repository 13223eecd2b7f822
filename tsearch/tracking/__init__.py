"""Experiment tracking: the only package that imports MLflow, and only lazily.

The :class:`~tsearch.tracker.Tracker` protocol lives in ``tsearch.tracker`` (the trainer never
imports this package); MLflow is imported when an :class:`MlflowTracker` is built.

- :mod:`~tsearch.tracking.store`: a store's URI resolved and checked, clients, the experiment.
- :mod:`~tsearch.tracking.mlflow_tracker`: :class:`MlflowTracker`, one run.
- :mod:`~tsearch.tracking.queries`: run listings: searches, and trials as records.
- :mod:`~tsearch.tracking.fetch`: what a listing leaves out: histories, p(t), artifacts.
- :mod:`~tsearch.tracking.closing`: the search driver's writes to trial runs Tune ended.
- :mod:`~tsearch.tracking.export`: `tsearch export best`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tsearch.config import TrackingConfig
from tsearch.tracker import NullTracker, Tracker
from tsearch.tracking.mlflow_tracker import MlflowTracker
from tsearch.tracking.store import (
    check_tracking_store,
    ensure_experiment,
    resolve_artifact_root,
    resolve_tracking_uri,
)

__all__ = [
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "build_tracker",
    "check_tracking_store",
    "ensure_experiment",
    "resolve_artifact_root",
    "resolve_tracking_uri",
]


def build_tracker(
    cfg: TrackingConfig,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    base_dir: Path | None = None,
) -> Tracker:
    """The tracker a run's config asks for; ``run_id`` re-opens that run instead of a new one.

    ``run_name`` overrides ``cfg.run_name``; relative paths resolve against ``base_dir`` (default:
    the current directory), which a Ray trial should set to the driver's directory.
    """
    if cfg.backend == "none":
        return NullTracker()
    return MlflowTracker(
        cfg.uri,
        experiment=cfg.experiment,
        artifact_root=cfg.artifact_root,
        run_name=run_name or cfg.run_name,
        parent_run_id=parent_run_id,
        tags=tags,
        run_id=run_id,
        base_dir=base_dir,
    )
