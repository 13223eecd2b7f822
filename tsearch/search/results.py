"""What a finished search returns: its trials, parsed once from Tune's result grid.

The records carry what the summary, the confirmation and ``tsearch search``'s tables need:
FID and compute by images seen, status, error line, the trial's MLflow run and directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsearch import names
from tsearch.records import TrialRecord
from tsearch.search.confirm import Confirmation
from tsearch.search.space import flat_config
from tsearch.search.timing import Stopwatch


@dataclass
class SearchResult:
    """A finished search: its trials as records, its best config and its confirmed ranking."""

    name: str
    parent_run_id: str | None
    experiment_path: Path
    trials: list[TrialRecord]
    best_config: dict[str, Any] | None
    tracking_uri: str
    seconds: float
    labels: list[str] = field(default_factory=list)  # bundle keys: not config fields
    confirmation: Confirmation | None = None  # the confirmed ranking (search.confirm)
    confirm_trials: list[TrialRecord] = field(default_factory=list)
    # Every configuration by the model's predicted final FID (search/recommend.py); empty: none.
    predictions: list[Any] = field(default_factory=list)
    timing: Stopwatch = field(default_factory=Stopwatch)  # the driver's stages (--verbose)

    @property
    def best(self) -> TrialRecord | None:
        ranked = sorted(self.trials, key=lambda t: t.best_fid)
        return ranked[0] if ranked and math.isfinite(ranked[0].best_fid) else None


def trial_records(grid: Any) -> list[TrialRecord]:
    """Each trial of a phase's result grid as a record: its FID and compute by images seen."""
    out = []
    for result in grid:
        df = result.metrics_dataframe
        fids: dict[int, tuple[float, float]] = {}
        compute: dict[str, list[tuple[int, float]]] = {}
        if df is not None and names.TIME_ATTR in df:
            images = [int(round(float(k) * 1000)) for k in df[names.TIME_ATTR]]
            for key in (names.TRAIN_FORWARDS, names.PROBE_FORWARDS):
                if key in df:
                    by_step = {s: float(v) for s, v in zip(images, df[key], strict=True)
                               if v == v}
                    compute[key] = sorted(by_step.items())
            if names.FID in df:
                stamps = df["timestamp"] if "timestamp" in df else [0.0] * len(df)
                for s, f, ts in zip(images, df[names.FID], stamps, strict=True):
                    if f == f:  # a resumed trial may report an evaluation again: keep one
                        fids.setdefault(s, (float(f), float(ts)))
        last = result.metrics or {}
        steps = sorted(fids)
        out.append(TrialRecord(
            trial_id=last.get(names.REPORT_TRIAL_ID, result.path.rsplit("/", 1)[-1]),
            run_id=last.get(names.REPORT_RUN_ID),
            status="ERROR" if result.error else "TERMINATED",
            values=flat_config(result.config),
            fid=[(s, fids[s][0]) for s in steps], fid_times=[fids[s][1] for s in steps],
            train_forwards=compute.get(names.TRAIN_FORWARDS, []),
            probe_forwards=compute.get(names.PROBE_FORWARDS, []),
            node_ip=last.get(names.REPORT_NODE_IP),
            error=str(result.error).strip().splitlines()[-1][:300] if result.error else None,
            path=result.path))
    return out
