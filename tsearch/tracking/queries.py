"""Run listings of a store: its searches (parent runs), and a search's trials as records.

What `tsearch runs`, `report`, `export` and ``--warm-start`` read first: one listing per question,
each metric's last value with it; the histories a listing leaves out are
:mod:`tsearch.tracking.fetch`'s job. Reading only: nothing is created in the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from tsearch import names
from tsearch.errors import TsearchError
from tsearch.records import TrialRecord, end_kind
from tsearch.tracking.fetch import metric_histories
from tsearch.tracking.store import all_experiment_ids, read_client


@dataclass
class SearchRun:
    """A search's parent run as listed: not a trial (its metrics are the search's answer)."""

    run_id: str
    name: str
    status: str
    best_fid: float  # search/best_fid (inf: none recorded yet)
    tags: dict[str, str]
    params: dict[str, str]  # as MLflow stores them: strings (parse_param reads one back)
    experiment_id: str
    artifact_uri: str
    metrics: dict[str, float] = field(default_factory=dict)  # each metric's last value


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


def _search_all(client, experiment_ids: list[str], query: str) -> list:
    """Every run matching ``query``, page by page (one search_runs call returns at most a page)."""
    runs, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def _search_run(run) -> SearchRun:
    metrics = run.data.metrics
    best = metrics.get(names.SEARCH_BEST_FID, metrics.get(names.FID, math.inf))
    return SearchRun(run_id=run.info.run_id, name=run.info.run_name or "",
                     status=run.info.status, best_fid=float(best), tags=dict(run.data.tags),
                     params=dict(run.data.params), experiment_id=run.info.experiment_id,
                     artifact_uri=run.info.artifact_uri, metrics=dict(metrics))


def _parsed(params: dict[str, str], prefix: str) -> dict[str, Any]:
    return {k: parse_param(v) for k, v in names.strip_prefix(params, prefix).items()}


def _record(run) -> TrialRecord:
    """A trial's child run as a record: params parsed back, tags, each metric's last value."""
    tags = dict(run.data.tags)
    return TrialRecord(
        trial_id=tags.get(names.TAG_TRIAL_ID) or run.info.run_name or "",
        run_id=run.info.run_id, status=run.info.status, phase=tags.get(names.TAG_PHASE),
        name=run.info.run_name or "", values=_parsed(run.data.params, names.PARAM_TRIAL),
        config=_parsed(run.data.params, names.PARAM_CONFIG), tags=tags,
        latest=dict(run.data.metrics), node_ip=tags.get(names.TAG_NODE_IP))


def list_searches(uri: str) -> list[SearchRun]:
    """Parent runs of every search in the store, newest first."""
    client = read_client(uri)
    ids = all_experiment_ids(client)
    if not ids:
        return []
    runs = client.search_runs(ids, f"tags.`{names.TAG_KIND}` = '{names.KIND_SEARCH}'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    return [_search_run(run) for run in runs]


def find_search(uri: str, ref: str | None) -> SearchRun:
    """A search by parent run id or name (the newest of that name); None: the newest search."""
    searches = list_searches(uri)
    if not searches:
        raise TsearchError(f"no searches in {names.mask_uri(uri)}; run `tsearch search CONFIG` "
                           "first")
    if ref is None:
        return searches[0]
    for row in searches:
        if ref in (row.run_id, row.name):
            return row
    known = ", ".join(sorted({r.name for r in searches})[:10])
    raise TsearchError(f"no search {ref!r} in {names.mask_uri(uri)}; known searches: {known}")


def _child_runs(uri: str, parent: SearchRun) -> list:
    return _search_all(read_client(uri), [parent.experiment_id],
                       f"tags.`{names.TAG_PARENT_RUN}` = '{parent.run_id}'")


def trial_runs(uri: str, parent: SearchRun) -> list[TrialRecord]:
    """A search's trials with their FID histories, best FID (over the run, not the last) first."""
    records = [_record(run) for run in _child_runs(uri, parent)]
    fids = metric_histories(uri, [r.run_id for r in records], names.FID)
    for record in records:
        record.fid = fids[record.run_id]
    return sorted(records, key=lambda r: r.best_fid)


def search_trials(uri: str, ref: str | None) -> tuple[SearchRun, list[TrialRecord]]:
    """A search's parent run and its trials' params and last metric values, in one listing.

    Cheap (no history or artifact is fetched), so a caller can check its options against the
    searched values before :func:`~tsearch.tracking.fetch.fetch_histories` spends a few calls
    per trial. Trials come sorted by trial id (creation order).
    """
    parent = find_search(uri, ref)
    records = [_record(run) for run in _child_runs(uri, parent)]
    return parent, sorted(records, key=lambda r: (r.trial_id, r.run_id))


@dataclass
class SearchCounts:
    """How far a search got: its phase, and its trials by phase and by how they ended."""

    phase: str  # search, or confirm once confirmation runs exist
    trials: dict[str, int] = field(default_factory=dict)  # by phase
    ended: dict[str, int] = field(default_factory=dict)  # by end_kind

    def add(self, phase: str, reason: str | None) -> None:
        """Count one trial of ``phase`` that ended for ``reason`` (None: still running)."""
        self.trials[phase] = self.trials.get(phase, 0) + 1
        kind = end_kind(reason)
        self.ended[kind] = self.ended.get(kind, 0) + 1
        if phase == names.PHASE_CONFIRM:
            self.phase = names.PHASE_CONFIRM


def search_counts(uri: str) -> dict[str, SearchCounts]:
    """Every search's :class:`SearchCounts`, by parent run id, from one listing of trial runs."""
    client = read_client(uri)
    runs = _search_all(client, all_experiment_ids(client),
                       f"tags.`{names.TAG_KIND}` = '{names.KIND_TRIAL}'")
    out: dict[str, SearchCounts] = {}
    for record in map(_record, runs):
        parent = record.tags.get(names.TAG_PARENT_RUN)
        if not parent:
            continue
        counts = out.setdefault(parent, SearchCounts(phase=names.PHASE_SEARCH))
        counts.add(record.phase or names.PHASE_SEARCH, record.end_reason)
    return out
