"""The :class:`~tsearch.tracker.Tracker` protocol on an MLflow tracking store.

MLflow is imported inside functions only, so importing this module (and ``tsearch.tracking``)
works without MLflow installed. Each tracker owns an ``MlflowClient`` instead of the fluent global
run, so a driver's parent run and trial runs can coexist in one process.

Concurrency on a SQLite store (several Ray trials, one file):

- MLflow creates the schema of a fresh SQLite file on first use without a lock, so two processes
  starting together race ("table experiments already exists"). Store initialisation and the
  experiment get-or-create therefore run under an exclusive ``flock`` on ``<db>.lock`` next to the
  database, and a driver calls :func:`ensure_experiment` before launching trials anyway.
- If creating the experiment fails because another process created it first (any store, e.g. a
  server), the existing experiment is fetched.
- SQLite serialises writers; writes that hit "database is locked" are retried with back-off, and
  metrics are written in batches (``log_batch``), never one call per value.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from tsearch.errors import ConfigError, TsearchError
from tsearch.names import (
    ARTIFACT_FAILURE,
    EXPERIMENT_KIND,
    TAG_EXPERIMENT_KIND,
    TAG_FAILURE_REASON,
    TAG_PARENT_RUN,
    mask_uri,
)
from tsearch.tracker import (
    MAX_TAG_VALUE_LENGTH,
    FinishOnExit,
    check_status,
    dumps_json,
    flatten_params,
)

# MLflow prints two "View run" URL lines at every end_run against a server; with dozens of trials
# they drown tsearch's own progress lines (the URLs are in `tsearch runs` and the summary).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

if TYPE_CHECKING:
    from mlflow import MlflowClient

# MLflow's per-request limits (mlflow/utils/validation.py).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
# Buffered metric values that trigger a write; a few evaluations' worth, so SQLite sees few writes.
FLUSH_THRESHOLD = 200
PROBE_TIMEOUT_S = 5.0

# The kinds MLflow's UI guesses ("..._inferred", "no_inferred_type"): not anyone's choice.
_INFERRED = ("_inferred", "no_inferred_type")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_T = TypeVar("_T")


def _sqlite_path(uri: str) -> str | None:
    """The file path of a ``sqlite:///PATH`` URI (query dropped); None for in-memory/non-sqlite."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else path


def resolve_tracking_uri(uri: str, base_dir: Path | None = None) -> str:
    """Make a tracking URI usable from any process: relative SQLite paths become absolute.

    Ray trials run in other working directories, so ``sqlite:///tsearch-runs/mlflow.db`` is
    resolved against ``base_dir`` (default: the current directory) and the database's directory
    is created. File-store URIs are refused with a fix, as MLflow 3 refuses them too.
    """
    uri = uri.strip()
    path = _sqlite_path(uri)
    if path is not None:
        query = uri[len("sqlite:///") + len(path) :]
        file = Path(path).expanduser()
        if not file.is_absolute():
            file = Path(base_dir or Path.cwd()) / file
        file = file.resolve()
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TsearchError(
                f"cannot create the MLflow store directory {file.parent} ({err.strerror}); "
                "pass --set tracking.uri=sqlite:///WRITABLE/PATH/mlflow.db"
            ) from None
        return f"sqlite:///{file.as_posix()}{query}"
    is_file_store = uri.startswith("file:") or not _SCHEME.match(uri)
    if is_file_store and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise ConfigError(
            f"tracking.uri={uri!r} is an MLflow file store, which MLflow 3 refuses; use "
            "--set tracking.uri=sqlite:///PATH/mlflow.db or http://HOST:5000"
        )
    return uri


def resolve_artifact_root(
    artifact_root: str | None, tracking_uri: str, base_dir: Path | None = None
) -> str | None:
    """The artifact location to give a new experiment, or None for the server's default.

    Without ``artifact_root``, a SQLite store keeps artifacts in ``artifacts/`` beside the
    database. A local path becomes an absolute ``file://`` URI. With an http(s) tracking server a
    *relative* local path (like the config default) is dropped, so the server's own artifact
    store is used: each remote trial writing to its own disk would scatter the artifacts.
    """
    if not artifact_root:
        # MLflow's default is ./mlruns under whichever process creates the experiment.
        db = _sqlite_path(tracking_uri)
        return (Path(db).resolve().parent / "artifacts").as_uri() if db else None
    if _SCHEME.match(artifact_root) and not re.match(r"^[A-Za-z]:[\\/]", artifact_root):
        return artifact_root
    path = Path(artifact_root).expanduser()
    if not path.is_absolute():
        if tracking_uri.startswith(("http://", "https://")):
            return None
        path = Path(base_dir or Path.cwd()) / path
    return path.resolve().as_uri()


def check_tracking_store(uri: str) -> None:
    """Fail in seconds with a one-line fix when the store cannot be used.

    MLflow's own HTTP client retries for minutes; this probe makes one request with a short
    timeout. SQLite stores are checked for a writable directory and file.
    """
    path = _sqlite_path(uri)
    if path is not None:
        file = Path(path)
        bad = not os.access(file.parent, os.W_OK | os.X_OK) or (
            file.exists() and not os.access(file, os.R_OK | os.W_OK)
        )
        if bad:
            raise TsearchError(
                f"MLflow store {uri} is not writable; fix its permissions or pass "
                "--set tracking.uri=sqlite:///WRITABLE/PATH/mlflow.db"
            )
        return
    if uri.startswith(("http://", "https://")):
        # urllib cannot open a URL with user:password@ in it; the probe needs no credentials.
        scheme, _, rest = uri.partition("://")
        netloc, slash, path = rest.partition("/")
        url = f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}".rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            return  # something answered (auth, proxy, no /health): let MLflow report details
        except (urllib.error.URLError, OSError, ValueError) as err:
            why = getattr(err, "reason", err)
            raise TsearchError(
                f"MLflow tracking server at {mask_uri(uri)} is unreachable ({why}); start it "
                "(mlflow server ...) or pass --set tracking.uri=..."
            ) from None


def _is_transient_sqlite_error(err: BaseException) -> bool:
    text = str(err).lower()
    return (
        "database is locked" in text
        or "duplicate column" in text
        or ("already exists" in text and ("table" in text or "index" in text))
    )


def _retry(fn: Callable[[], _T], attempts: int = 6, first_delay_s: float = 0.2) -> _T:
    """Call ``fn``, retrying SQLite lock/schema-race errors with exponential back-off."""
    delay = first_delay_s
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:
            if attempt == attempts - 1 or not _is_transient_sqlite_error(err):
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Exclusive inter-process lock for schema creation on a SQLite store; no-op elsewhere."""
    path = _sqlite_path(uri)
    try:
        import fcntl
    except ImportError:  # Windows: rely on the retries
        fcntl = None  # type: ignore[assignment]
    if path is None or fcntl is None:
        yield
        return
    with open(f"{path}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _import_mlflow() -> Any:
    """Import MLflow with a fix in the error when it is missing (it is an optional backend)."""
    try:
        import mlflow
        import mlflow.entities
        import mlflow.exceptions
    except ImportError as err:
        raise TsearchError(
            f"MLflow is not importable ({err}); pip install mlflow, or pass "
            "--set tracking.backend=none"
        ) from None
    # Schema-creation chatter ("Creating initial MLflow database tables...") is not news, and
    # a failing store logs each error with its traceback before raising it: the exception
    # reaches the caller anyway (a run then warns once in one line and goes on).
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    return mlflow


def _client(uri: str) -> MlflowClient:
    """A client for ``uri``; building it creates the schema of a fresh SQLite file, so it runs
    under the store lock (the store object is then cached per process and URI by MLflow)."""
    mlflow = _import_mlflow()
    with _store_lock(uri):
        return _retry(lambda: mlflow.MlflowClient(tracking_uri=uri))


def _get_or_create_experiment(
    client: MlflowClient, uri: str, name: str, artifact_location: str | None
) -> str:
    from mlflow.exceptions import MlflowException

    with _store_lock(uri):
        experiment = _retry(lambda: client.get_experiment_by_name(name))
        if experiment is None:
            try:
                return _retry(lambda: client.create_experiment(
                    name, artifact_location, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}))
            except MlflowException as err:
                # Another process created it between our lookup and create: use theirs.
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise TsearchError(
                        f"cannot create MLflow experiment {name!r} in {mask_uri(uri)} "
                        f"({str(err).splitlines()[0]}); pass --set tracking.experiment=OTHER"
                    ) from None
    if experiment.lifecycle_stage == "deleted":
        raise TsearchError(
            f"MLflow experiment {name!r} in {mask_uri(uri)} is deleted; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
            "or pass --set tracking.experiment=OTHER"
        )
    _mark_training_experiment(client, experiment)
    return experiment.experiment_id


def _mark_training_experiment(client: MlflowClient, experiment: Any) -> None:
    """Tag an experiment made by an older tsearch (or by hand) as one of training runs, so
    MLflow's UI opens on its runs; a kind someone chose in the UI is left as it is."""
    kind = experiment.tags.get(TAG_EXPERIMENT_KIND, "")
    if kind == EXPERIMENT_KIND or (kind and not kind.endswith(_INFERRED)):
        return
    _retry(lambda: client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND,
                                             EXPERIMENT_KIND))


def ensure_experiment(
    uri: str, name: str, artifact_root: str | None = None, base_dir: Path | None = None
) -> str:
    """Get or create experiment ``name`` and return its id.

    A search driver calls this before launching trials, so trials only ever read the schema
    and the experiment of a fresh SQLite file instead of racing to create them.
    """
    uri = resolve_tracking_uri(uri, base_dir)
    check_tracking_store(uri)
    location = resolve_artifact_root(artifact_root, uri, base_dir)
    return _get_or_create_experiment(_client(uri), uri, name, location)


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MlflowTracker(FinishOnExit):
    """One MLflow run: created in ``experiment`` (a child when ``parent_run_id`` is given), or
    re-opened by ``run_id`` to resume after a crash, appending to what it already logged.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "tsearch",
        artifact_root: str | None = None,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
        base_dir: Path | None = None,
    ) -> None:
        mlflow = _import_mlflow()
        self._Metric = mlflow.entities.Metric
        self._Param = mlflow.entities.Param
        self._RunTag = mlflow.entities.RunTag
        self.tracking_uri = resolve_tracking_uri(tracking_uri, base_dir)
        check_tracking_store(self.tracking_uri)
        self.client = _client(self.tracking_uri)
        self._buffer: list[Any] = []
        self._finished = False
        run_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            self._get_run(parent_run_id, "parent run")
            run_tags[TAG_PARENT_RUN] = parent_run_id

        if run_id:
            run = self._get_run(run_id, "run to resume")
            if run.info.lifecycle_stage == "deleted":
                raise TsearchError(
                    f"MLflow run {run_id} is deleted; restore it (mlflow runs restore) "
                    "or start a new run"
                )
            self.run_id: str | None = run.info.run_id
            self.experiment_id = run.info.experiment_id
            _retry(lambda: self.client.update_run(run_id, status="RUNNING"))
            if run_tags:
                self.set_tags(run_tags)
        else:
            location = resolve_artifact_root(artifact_root, self.tracking_uri, base_dir)
            self.experiment_id = _get_or_create_experiment(
                self.client, self.tracking_uri, experiment, location
            )
            try:
                run = _retry(
                    lambda: self.client.create_run(
                        self.experiment_id, tags=run_tags, run_name=run_name
                    )
                )
            except mlflow.exceptions.MlflowException as err:
                raise TsearchError(
                    f"cannot create an MLflow run in {mask_uri(self.tracking_uri)} "
                    f"({str(err).splitlines()[0]}); check the tracking store"
                ) from None
            self.run_id = run.info.run_id

    def _get_run(self, run_id: str, what: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            raise TsearchError(
                f"{what} {run_id} not found in {mask_uri(self.tracking_uri)}; check the run id and "
                "tracking.uri"
            ) from None

    @property
    def artifact_uri(self) -> str:
        """Where this run's artifacts live (for messages and ``tsearch runs show``)."""
        return self.client.get_run(self.run_id).info.artifact_uri

    def _log_batch(self, **entities: list[Any]) -> None:
        _retry(lambda: self.client.log_batch(self.run_id, synchronous=True, **entities))

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = flatten_params(params)
        # Re-logging an identical param (a resumed run) is fine; a changed one is refused, as
        # MLflow would, because nothing already logged is ever overwritten.
        existing = self.client.get_run(self.run_id).data.params
        for key, value in flat.items():
            if key in existing and existing[key] != value:
                raise TsearchError(
                    f"run {self.run_id} already has param {key}={existing[key][:80]!r}, not "
                    f"{value[:80]!r}; resume with the run's own config or start a new run"
                )
        new = [self._Param(k, v) for k, v in flat.items() if k not in existing]
        for chunk in _chunks(new, MAX_PARAMS_TAGS_PER_BATCH):
            self._log_batch(params=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        step = int(step)
        self._buffer.extend(self._Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self._buffer) >= FLUSH_THRESHOLD:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk = self._buffer[:MAX_METRICS_PER_BATCH]
            self._log_batch(metrics=chunk)
            del self._buffer[: len(chunk)]

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.log_text(dumps_json(obj), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        _retry(lambda: self.client.log_text(self.run_id, str(text), artifact_file))

    def log_array(self, array: np.ndarray, artifact_file: str) -> None:
        directory, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="tsearch-array-") as tmp:
            local = Path(tmp) / name
            with open(local, "wb") as handle:  # np.save(path) would append ".npy" to any name
                np.save(handle, np.asarray(array), allow_pickle=False)
            self.log_artifact(local, directory or None)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        local = Path(local_path)
        if local.is_dir():
            self.client.log_artifacts(self.run_id, str(local), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(local), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        run_tags = [self._RunTag(k, str(v)[:MAX_TAG_VALUE_LENGTH]) for k, v in tags.items()]
        for chunk in _chunks(run_tags, MAX_PARAMS_TAGS_PER_BATCH):
            self._log_batch(tags=chunk)

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        check_status(status)
        if self._finished:
            return
        self._finished = True
        try:
            self.flush()
            if reason:
                self.set_tags({TAG_FAILURE_REASON: reason})
                self.log_text(reason if reason.endswith("\n") else reason + "\n", ARTIFACT_FAILURE)
        finally:
            _retry(lambda: self.client.set_terminated(self.run_id, status))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        except Exception as err:  # never hide the exception that ended the run
            if exc is None:
                raise
            warnings.warn(f"could not record the failed run in MLflow: {err}", stacklevel=2)
