"""Reading searches back from MLflow: `tsearch runs`, `tsearch export`, and closing trial runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsearch.errors import TsearchError
from tsearch.tracking.mlflow_tracker import _client, check_tracking_store, resolve_tracking_uri


@dataclass
class RunRow:
    run_id: str
    name: str
    status: str
    start_time: int
    best_fid: float
    tags: dict[str, str]
    params: dict[str, str]
    experiment_id: str
    artifact_uri: str


def _rows(runs) -> list[RunRow]:
    out = []
    for r in runs:
        metrics = r.data.metrics
        best = metrics.get("search/best_fid", metrics.get("eval/fid", math.inf))
        out.append(RunRow(run_id=r.info.run_id, name=r.info.run_name or "",
                          status=r.info.status, start_time=r.info.start_time or 0,
                          best_fid=float(best), tags=dict(r.data.tags),
                          params=dict(r.data.params), experiment_id=r.info.experiment_id,
                          artifact_uri=r.info.artifact_uri))
    return out


def _client_for(uri: str):
    uri = resolve_tracking_uri(uri)
    check_tracking_store(uri)
    return _client(uri)


def _all_experiment_ids(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def list_searches(uri: str) -> list[RunRow]:
    """Parent runs of every search in the store, newest first."""
    client = _client_for(uri)
    ids = _all_experiment_ids(client)
    if not ids:
        return []
    runs = client.search_runs(ids, "tags.`tsearch.kind` = 'search'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    return _rows(runs)


def find_search(uri: str, ref: str | None) -> RunRow:
    """A search by parent run id or name (the newest of that name); None: the newest search."""
    searches = list_searches(uri)
    if not searches:
        raise TsearchError(f"no searches in {uri}; run `tsearch search CONFIG` first")
    if ref is None:
        return searches[0]
    for row in searches:
        if ref in (row.run_id, row.name):
            return row
    names = ", ".join(sorted({r.name for r in searches})[:10])
    raise TsearchError(f"no search {ref!r} in {uri}; known searches: {names}")


def trial_runs(uri: str, parent: RunRow) -> list[RunRow]:
    """Child runs of a search, best FID first (metric eval/fid: the last logged value)."""
    client = _client_for(uri)
    runs = client.search_runs([parent.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
                              max_results=5000)
    rows = _rows(runs)
    for row in rows:  # the best FID over the run, not the last one
        history = client.get_metric_history(row.run_id, "eval/fid")
        finite = [m.value for m in history if math.isfinite(m.value)]
        row.best_fid = min(finite) if finite else math.inf
    return sorted(rows, key=lambda r: r.best_fid)


def download(uri: str, run_id: str, artifact: str, dst: str | Path) -> Path:
    client = _client_for(uri)
    Path(dst).mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, artifact, str(dst)))
    except Exception as exc:
        raise TsearchError(f"run {run_id} has no artifact {artifact!r} ({type(exc).__name__}); "
                           "did the search finish?") from None


def close_trial_run(uri: str, trial_id: str, status: str, note: str) -> None:
    """End a trial's child run that Tune ended from outside (e.g. an ASHA stop)."""
    client = _client(uri)
    ids = _all_experiment_ids(client)
    runs = client.search_runs(ids, f"tags.`tsearch.trial_id` = '{trial_id}'", max_results=10)
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "tsearch.ended_by", note)
            client.set_terminated(run.info.run_id, status)


def run_summary(row: RunRow) -> dict[str, Any]:
    return {"run_id": row.run_id, "name": row.name, "status": row.status,
            "best_fid": row.best_fid}
