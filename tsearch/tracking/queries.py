"""Reading searches back from MLflow: `tsearch runs`, `tsearch export`, and closing trial runs."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tsearch import names
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
        best = metrics.get(names.SEARCH_BEST_FID, metrics.get(names.FID, math.inf))
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
    runs = client.search_runs(ids, f"tags.`{names.TAG_KIND}` = '{names.KIND_SEARCH}'",
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
                              f"tags.`{names.TAG_PARENT_RUN}` = '{parent.run_id}'",
                              max_results=5000)
    rows = _rows(runs)
    for row in rows:  # the best FID over the run, not the last one
        history = client.get_metric_history(row.run_id, names.FID)
        finite = [m.value for m in history if math.isfinite(m.value)]
        row.best_fid = min(finite) if finite else math.inf
    return sorted(rows, key=lambda r: r.best_fid)


def download(uri: str, run_id: str, artifact: str, dst: str | Path) -> Path:
    client = _client_for(uri)
    Path(dst).mkdir(parents=True, exist_ok=True)
    try:
        with _no_download_bars():
            return Path(client.download_artifacts(run_id, artifact, str(dst)))
    except Exception as exc:
        raise TsearchError(f"run {run_id} has no artifact {artifact!r} ({type(exc).__name__}); "
                           "did the search finish?") from None


def close_trial_run(uri: str, trial_id: str, status: str, note: str) -> None:
    """End a trial's child run that Tune ended from outside (e.g. an ASHA stop)."""
    client = _client(uri)
    ids = _all_experiment_ids(client)
    runs = client.search_runs(ids, f"tags.`{names.TAG_TRIAL_ID}` = '{trial_id}'",
                              max_results=10)
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, names.TAG_ENDED_BY, note)
            client.set_terminated(run.info.run_id, status)


def run_summary(row: RunRow) -> dict[str, Any]:
    return {"run_id": row.run_id, "name": row.name, "status": row.status,
            "best_fid": row.best_fid}


REPORT_METRICS = (names.FID, names.PROBE_FORWARDS, names.TRAIN_FORWARDS)


@dataclass
class TrialRecord:
    """Everything `tsearch report` needs from one trial's child run.

    ``values`` are the trial's searched values (``trial.*`` params, prefix removed) and
    ``config`` its full resolved config (``config.*`` params), both parsed back from MLflow's
    strings. Histories are ``(step, value)`` pairs sorted by step, step = images seen; ``p_t`` is
    the sampler's p(t) at each evaluation as ``(images_seen, array[T])``, sorted.
    """

    run_id: str
    trial_id: str
    status: str = "FINISHED"
    values: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    fid: list[tuple[int, float]] = field(default_factory=list)
    probe_forwards: list[tuple[int, float]] = field(default_factory=list)
    train_forwards: list[tuple[int, float]] = field(default_factory=list)
    p_t: list[tuple[int, np.ndarray]] = field(default_factory=list)


def parse_param(text: str) -> Any:
    """An MLflow param string back to the value that was logged: ``"101"`` -> 101,
    ``"1e-05"`` -> 1e-05, ``"None"`` -> None, ``"[16, 32]"`` -> [16, 32], other text as is."""
    if text == "None":
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "1e-05" (no dot) as a string; Python wrote it
        try:
            return float(text)
        except ValueError:
            return text
    return value


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    points = client.get_metric_history(run_id, key)
    return [(int(m.step), float(m.value))
            for m in sorted(points, key=lambda m: (m.step, m.timestamp))]


def _timestep_snapshots(client, run_id: str) -> list[tuple[int, np.ndarray]]:
    """The run's ``timesteps/p_t_<images>.npy`` arrays, downloaded in one call."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="tsearch-report-") as tmp:
        try:
            local = Path(client.download_artifacts(run_id, names.TIMESTEPS_DIR, tmp))
        except (MlflowException, OSError):  # no evaluation yet: no snapshot
            return []
        out = []
        for path in local.glob("p_t_*.npy"):
            images_seen = names.pt_images_seen(path.name)
            if images_seen is not None:
                out.append((images_seen, np.load(path, allow_pickle=False)))
    return sorted(out, key=lambda item: item[0])


@contextlib.contextmanager
def _no_download_bars():
    """MLflow draws a tqdm bar per artifact download: noise when fetching dozens of runs."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def search_records(
    uri: str, ref: str | None, progress: Callable[[int, int], None] | None = None
) -> tuple[RunRow, list[TrialRecord]]:
    """A search's parent run and every trial's params, FID/compute histories and p(t) snapshots.

    One ``get_metric_history`` per metric and one download of ``timesteps/`` per run; trials
    come sorted by trial id (creation order). ``progress(done, total)`` is called once the
    search is found (done = 0) and after each run.
    """
    client = _client_for(uri)
    parent = find_search(uri, ref)
    runs, token = [], None
    while True:
        page = client.search_runs([parent.experiment_id],
                                  f"tags.`{names.TAG_PARENT_RUN}` = '{parent.run_id}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    if progress is not None:
        progress(0, len(runs))
    records = []
    with _no_download_bars():
        for i, run in enumerate(runs):
            params = run.data.params
            histories = {key: _history(client, run.info.run_id, key) for key in REPORT_METRICS}
            records.append(TrialRecord(
                run_id=run.info.run_id,
                trial_id=run.data.tags.get(names.TAG_TRIAL_ID) or run.info.run_name or "",
                status=run.info.status,
                values={k: parse_param(v)
                        for k, v in names.strip_prefix(params, names.PARAM_TRIAL).items()},
                config={k: parse_param(v)
                        for k, v in names.strip_prefix(params, names.PARAM_CONFIG).items()},
                fid=histories[names.FID],
                probe_forwards=histories[names.PROBE_FORWARDS],
                train_forwards=histories[names.TRAIN_FORWARDS],
                p_t=_timestep_snapshots(client, run.info.run_id),
            ))
            if progress is not None:
                progress(i + 1, len(runs))
    return parent, sorted(records, key=lambda r: (r.trial_id, r.run_id))
