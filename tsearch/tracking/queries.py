"""Reading searches back from MLflow: `tsearch runs`, `tsearch export`, and closing trial runs.

Reading never creates anything: a store that is not there is reported (one line), not made. Only
:func:`close_trial_run` and :func:`add_artifacts`, which the search driver calls, open the store
for writing.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tsearch import labels, names
from tsearch.errors import ConfigError, TsearchError
from tsearch.tracker import MAX_TAG_VALUE_LENGTH
from tsearch.tracking.mlflow_tracker import (
    _client,
    _import_mlflow,
    _retry,
    _sqlite_path,
    check_tracking_store,
    resolve_tracking_uri,
)

_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")
# Every SQLite database file starts with these 16 bytes (https://www.sqlite.org/fileformat.html).
SQLITE_HEADER = b"SQLite format 3\x00"


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
    metrics: dict[str, float] = field(default_factory=dict)  # each metric's last value


def _rows(runs) -> list[RunRow]:
    out = []
    for r in runs:
        metrics = r.data.metrics
        best = metrics.get(names.SEARCH_BEST_FID, metrics.get(names.FID, math.inf))
        out.append(RunRow(run_id=r.info.run_id, name=r.info.run_name or "",
                          status=r.info.status, start_time=r.info.start_time or 0,
                          best_fid=float(best), tags=dict(r.data.tags),
                          params=dict(r.data.params), experiment_id=r.info.experiment_id,
                          artifact_uri=r.info.artifact_uri, metrics=dict(metrics)))
    return out


def _with_option(option: str, value: str) -> str:
    return f"{option}{'' if option.endswith('=') else ' '}{value}"


def check_sqlite_store(uri: str, *, must_exist: bool = False,
                       option: str = "--tracking-uri") -> None:
    """Refuse, in one line and before MLflow opens it, an SQLite store URI that cannot work.

    MLflow given a directory or a file of other bytes retries and logs for minutes (100+ lines);
    this reads 16 bytes. A missing or empty file is fine for a writer (MLflow creates the
    schema) but, with ``must_exist``, is refused, as is an SQLite file without MLflow's tables:
    opening either would create a store, which a read-only command must never do. ``option``
    names the setting in the fix (``--tracking-uri`` or ``--set tracking.uri=``). Other URIs
    (http, databricks, ...) pass unchecked. Raises :class:`~tsearch.errors.ConfigError` (exit 2).
    """
    path = _sqlite_path(uri.strip())
    if path is None:
        return
    file = Path(path).expanduser()
    other = _with_option(option, "sqlite:///PATH/mlflow.db")
    if file.is_dir():
        raise ConfigError(f"MLflow store {path} is a directory, not an SQLite file: give the "
                          f"database file, e.g. {_with_option(option, f'sqlite:///{path}/mlflow.db')}")
    if not file.exists():
        if must_exist:
            raise ConfigError(f"no MLflow store at {path}: run a search first, or pass "
                              f"{_with_option(option, 'URI')}")
        return
    if not file.is_file():
        raise ConfigError(f"MLflow store {path} is not a regular file; pass {other}")
    try:
        with open(file, "rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except OSError as err:
        raise ConfigError(f"cannot read MLflow store {path} ({err.strerror}); fix its "
                          f"permissions or pass {other}") from None
    if not head:
        if must_exist:
            raise ConfigError(f"MLflow store {path} is an empty file: run a search first, or "
                              f"pass {_with_option(option, 'URI')}")
        return
    if head != SQLITE_HEADER:
        raise ConfigError(f"{path} is not an SQLite database (it does not start with the "
                          f"SQLite header): pass {other} or an http:// server")
    if must_exist and not _has_mlflow_tables(file):
        raise ConfigError(f"{path} is an SQLite database but not an MLflow store (no "
                          f"experiments and runs tables); pass {other}")


def _has_mlflow_tables(file: Path) -> bool:
    """Whether an SQLite file holds MLflow's tables, read without the chance of a write."""
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return False
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return {"experiments", "runs"} <= {name for (name,) in rows}


def resolve_read_uri(uri: str) -> str:
    """A tracking URI for reading an existing store: checked, absolute, and nothing created.

    :func:`~tsearch.tracking.resolve_tracking_uri` makes the directory of a SQLite store (a
    search is about to write there); reading must not, so a missing store is one line instead.
    """
    uri = uri.strip()
    path = _sqlite_path(uri)
    if path is None:
        uri = resolve_tracking_uri(uri)  # refuses file stores; creates nothing for servers
        # The probe is unauthenticated (and urllib cannot parse user:password@): no credentials
        # in it, so none in its message either.
        check_tracking_store(_USERINFO.sub(r"\1", uri))
        return uri
    check_sqlite_store(uri, must_exist=True)
    query = uri[len("sqlite:///") + len(path):]
    return f"sqlite:///{Path(path).expanduser().resolve().as_posix()}{query}"


def _client_for(uri: str):
    """A client that reads ``uri``; unlike the writers' client, it takes no lock file."""
    uri = resolve_read_uri(uri)
    mlflow = _import_mlflow()
    return mlflow.MlflowClient(tracking_uri=uri)


def _all_experiment_ids(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


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
        raise TsearchError(f"no searches in {names.mask_uri(uri)}; run `tsearch search CONFIG` "
                           "first")
    if ref is None:
        return searches[0]
    for row in searches:
        if ref in (row.run_id, row.name):
            return row
    known = ", ".join(sorted({r.name for r in searches})[:10])
    raise TsearchError(f"no search {ref!r} in {names.mask_uri(uri)}; known searches: {known}")


def trial_runs(uri: str, parent: RunRow) -> list[RunRow]:
    """Child runs of a search, best FID first (metric eval/fid: the last logged value)."""
    client = _client_for(uri)
    rows = _rows(_search_all(client, [parent.experiment_id],
                             f"tags.`{names.TAG_PARENT_RUN}` = '{parent.run_id}'"))
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


def has_artifact(uri: str, run_id: str, artifact: str) -> bool:
    """Whether run ``run_id`` holds the file ``artifact``: a listing, nothing downloaded or made.

    Lets a reader choose between artifacts (``tsearch export best``: the confirmed winner, else
    the raw best) without treating a failed download as "absent".
    """
    from mlflow.exceptions import MlflowException

    client = _client_for(uri)
    folder = artifact.rpartition("/")[0] or None
    try:
        listed = client.list_artifacts(run_id, folder)
    except (MlflowException, OSError) as exc:
        raise TsearchError(f"cannot list the artifacts of run {run_id} "
                           f"({type(exc).__name__}); check the tracking store") from None
    return any(entry.path == artifact and not entry.is_dir for entry in listed)


def close_trial_run(uri: str, trial_id: str, status: str, note: str,
                    end_reason: str | None = None, parent_run_id: str | None = None) -> None:
    """End a trial's child run that Tune ended from outside (e.g. an ASHA stop); record why.

    ``end_reason`` is set whatever the run's status: a stopped trial may have closed its run
    itself, as FINISHED like a completed one. A FAILED trial keeps the failure reason its run
    recorded. ``parent_run_id`` narrows the trial id to one search (ids are random, not unique).
    """
    from mlflow.entities import RunTag

    client = _client(uri)
    ids = _all_experiment_ids(client)
    query = f"tags.`{names.TAG_TRIAL_ID}` = '{trial_id}'"
    if parent_run_id:
        query += f" and tags.`{names.TAG_PARENT_RUN}` = '{parent_run_id}'"
    for run in client.search_runs(ids, query, max_results=10):
        tags = {}
        if end_reason is not None:
            failure = run.data.tags.get(names.TAG_FAILURE_REASON)
            reason = names.failed_with(failure) if status == "FAILED" and failure else end_reason
            tags[names.TAG_END_REASON] = reason[:MAX_TAG_VALUE_LENGTH]
        if run.info.status == "RUNNING":
            tags[names.TAG_ENDED_BY] = note
        run_id = run.info.run_id
        if tags:
            _retry(partial(client.log_batch, run_id, synchronous=True,
                           tags=[RunTag(k, v) for k, v in tags.items()]))
        if run.info.status == "RUNNING":
            _retry(partial(client.set_terminated, run_id, status))


def end_reason(row: RunRow) -> str | None:
    """Why a trial run ended (None: it has not).

    Its ``tsearch.end_reason`` tag, else (a store from before the tag, a driver that died) what
    its status, failure reason and training progress against its budget say.
    """
    tagged = row.tags.get(names.TAG_END_REASON)
    if tagged:
        return tagged
    why = row.tags.get(names.TAG_FAILURE_REASON)
    if row.status == "FAILED":
        return names.failed_with(why or "no reason recorded")
    if row.status == "KILLED":
        return "killed" + (f": {why}" if why else "")
    if row.status != "FINISHED":
        return None
    kimg = row.metrics.get(names.PROGRESS_KIMG)
    total = parse_param(row.params.get(f"{names.PARAM_CONFIG}.train.total_kimg", ""))
    if kimg is not None and isinstance(total, int | float) and kimg < total - 1e-9:
        return names.stopped_at(kimg, asha=False)
    return names.END_FINISHED


def end_kind(reason: str | None) -> str:
    """An end reason's kind: finished, stopped, failed, killed, or running (None)."""
    return "running" if reason is None else reason.split(":")[0].split()[0]


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


@dataclass
class TrialView:
    """One trial as `tsearch runs show` prints it, and with ``--json`` gives it to scripts."""

    run_id: str
    name: str
    trial_id: str
    phase: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED or KILLED
    end_reason: str | None  # finished, stopped ..., failed: ...; None while it runs
    kimg: float | None  # training reached (progress/kimg)
    best_fid: float | None
    last_fid: float | None
    probe_forwards: float | None  # compute spent on the sampler's probes, in forward passes
    train_forwards: float | None
    values: dict[str, Any]  # the searched values (trial.* params), full keys
    label: str  # the values as run names spell them (tsearch.labels)
    eval_share: float | None = None  # of the trial's wall time, at its last evaluation
    overhead_share: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def trial_views(rows: list[RunRow]) -> list[TrialView]:
    """A search's trial runs (:func:`trial_runs`) as `tsearch runs show` lists them: search
    phase before confirmation, best FID first."""
    values = {r.run_id: {k: parse_param(v) for k, v in
                         names.strip_prefix(r.params, names.PARAM_TRIAL).items()} for r in rows}
    keys = list(dict.fromkeys(k for v in values.values() for k in v))
    out = []
    for r in rows:
        m, mine = r.metrics, values[r.run_id]
        sampler = r.params.get(f"{names.PARAM_CONFIG}.{labels.SAMPLER_KEY}",
                               labels.DEFAULT_SAMPLER)
        out.append(TrialView(
            run_id=r.run_id, name=r.name, trial_id=r.tags.get(names.TAG_TRIAL_ID, r.name),
            phase=r.tags.get(names.TAG_PHASE, names.PHASE_SEARCH), status=r.status,
            end_reason=end_reason(r), kimg=_finite(m.get(names.PROGRESS_KIMG)),
            best_fid=_finite(r.best_fid), last_fid=_finite(m.get(names.FID)),
            probe_forwards=_finite(m.get(names.PROBE_FORWARDS)),
            train_forwards=_finite(m.get(names.TRAIN_FORWARDS)), values=mine,
            # Bundle labels (method) are the searched keys that are not config fields.
            label=labels.trial_name(mine, [k for k in mine if "." not in k], sampler, keys),
            eval_share=_finite(m.get(names.PERF_EVAL_SHARE)),
            overhead_share=_finite(m.get(names.PERF_OVERHEAD_SHARE))))
    order = (names.PHASE_SEARCH, names.PHASE_CONFIRM)
    return sorted(out, key=lambda t: (order.index(t.phase) if t.phase in order else len(order),
                                      t.best_fid if t.best_fid is not None else math.inf))


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
    client = _client_for(uri)
    runs = _search_all(client, _all_experiment_ids(client),
                       f"tags.`{names.TAG_KIND}` = '{names.KIND_TRIAL}'")
    out: dict[str, SearchCounts] = {}
    for row in _rows(runs):
        parent = row.tags.get(names.TAG_PARENT_RUN)
        if not parent:
            continue
        counts = out.setdefault(parent, SearchCounts(phase=names.PHASE_SEARCH))
        counts.add(row.tags.get(names.TAG_PHASE, names.PHASE_SEARCH), end_reason(row))
    return out


def artifact_names(uri: str, run_id: str, folder: str) -> set[str]:
    """Names of the files in ``folder`` of run ``run_id`` (a listing, nothing downloaded)."""
    return {entry.path.rpartition("/")[2] for entry in _client(uri).list_artifacts(run_id, folder)
            if not entry.is_dir}


def add_artifacts(uri: str, run_id: str, files: list[Path], folder: str) -> None:
    """Log ``files`` into ``folder`` of run ``run_id``, ended or not (the search driver adds the
    plots of trials Tune stopped before they drew them)."""
    client = _client(uri)
    for path in files:
        client.log_artifact(run_id, str(path), folder)


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
    the sampler's p(t) at each evaluation as ``(images_seen, array[T])``, sorted. ``latest`` comes
    with the run listing (:func:`search_trials`), the rest with :func:`fetch_histories`.
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
    latest: dict[str, float] = field(default_factory=dict)  # each metric's last value, as listed
    phase: str | None = None  # names.TAG_PHASE (search or confirm); None in older stores


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


def search_trials(uri: str, ref: str | None) -> tuple[RunRow, list[TrialRecord]]:
    """A search's parent run and its trials' params and last metric values, in one listing.

    Cheap (no history or artifact is fetched), so a caller can check its options against the
    searched values before :func:`fetch_histories` spends a few calls per trial. Trials come
    sorted by trial id (creation order).
    """
    client = _client_for(uri)
    parent = find_search(uri, ref)
    runs = _search_all(client, [parent.experiment_id],
                       f"tags.`{names.TAG_PARENT_RUN}` = '{parent.run_id}'")
    records = [TrialRecord(
        run_id=run.info.run_id,
        trial_id=run.data.tags.get(names.TAG_TRIAL_ID) or run.info.run_name or "",
        status=run.info.status,
        values={k: parse_param(v)
                for k, v in names.strip_prefix(run.data.params, names.PARAM_TRIAL).items()},
        config={k: parse_param(v)
                for k, v in names.strip_prefix(run.data.params, names.PARAM_CONFIG).items()},
        latest=dict(run.data.metrics),
        phase=run.data.tags.get(names.TAG_PHASE),
    ) for run in runs]
    return parent, sorted(records, key=lambda r: (r.trial_id, r.run_id))


def fetch_histories(uri: str, records: list[TrialRecord],
                    progress: Callable[[int, int], None] | None = None) -> None:
    """Fill each record's FID/compute histories and p(t) snapshots, in place.

    One ``get_metric_history`` per metric and one download of ``timesteps/`` per run;
    ``progress(done, total)`` is called after each run.
    """
    client = _client_for(uri)
    with _no_download_bars():
        for i, record in enumerate(records):
            histories = {key: _history(client, record.run_id, key) for key in REPORT_METRICS}
            record.fid = histories[names.FID]
            record.probe_forwards = histories[names.PROBE_FORWARDS]
            record.train_forwards = histories[names.TRAIN_FORWARDS]
            record.p_t = _timestep_snapshots(client, record.run_id)
            if progress is not None:
                progress(i + 1, len(records))


def search_records(
    uri: str, ref: str | None, progress: Callable[[int, int], None] | None = None
) -> tuple[RunRow, list[TrialRecord]]:
    """A search's parent run and every trial's params, FID/compute histories and p(t) snapshots.

    :func:`search_trials` then :func:`fetch_histories`; ``progress(done, total)`` is called once
    the search is found (done = 0) and after each run.
    """
    parent, records = search_trials(uri, ref)
    if progress is not None:
        progress(0, len(records))
    fetch_histories(uri, records, progress)
    return parent, records


def metric_histories(uri: str, run_ids: list[str], key: str) -> dict[str, list[tuple[int, float]]]:
    """Each run's history of metric ``key`` as ``(step, value)`` pairs sorted by step.

    One ``get_metric_history`` per run and nothing downloaded: for a caller that needs one
    curve per trial (``--warm-start``), not the p(t) snapshots :func:`fetch_histories` brings.
    """
    client = _client_for(uri)
    return {run_id: _history(client, run_id, key) for run_id in run_ids}
