"""An MLflow store made ready to use: its URI resolved and checked, a client on it, an experiment.

Writers (a run, a search driver) and readers (`tsearch runs`, `report`, `export`) open a store
here. MLflow is imported inside functions only, so importing this module works without MLflow
installed. Concurrency on a SQLite store (several Ray trials, one file):

- MLflow creates the schema of a fresh SQLite file on first use without a lock, so two processes
  starting together race ("table experiments already exists"). Store initialisation and the
  experiment get-or-create therefore run under an exclusive ``flock`` on ``<db>.lock`` next to the
  database, and a driver calls :func:`ensure_experiment` before launching trials anyway.
- If creating the experiment fails because another process created it first (any store, e.g. a
  server), the existing experiment is fetched.
- SQLite serialises writers; writes that hit "database is locked" are retried with back-off.

Reading never creates anything: a store that is not there is reported (one line), not made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tsearch.errors import ConfigError, TsearchError
from tsearch.names import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, mask_uri

# MLflow prints two "View run" URL lines at every end_run against a server; with dozens of trials
# they drown tsearch's own progress lines (the URLs are in `tsearch runs` and the summary).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

if TYPE_CHECKING:
    from mlflow import MlflowClient

PROBE_TIMEOUT_S = 5.0
# Every SQLite database file starts with these 16 bytes (https://www.sqlite.org/fileformat.html).
SQLITE_HEADER = b"SQLite format 3\x00"

# The kinds MLflow's UI guesses ("..._inferred", "no_inferred_type"): not anyone's choice.
_INFERRED = ("_inferred", "no_inferred_type")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_T = TypeVar("_T")


def sqlite_path(uri: str) -> str | None:
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
    path = sqlite_path(uri)
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
        db = sqlite_path(tracking_uri)
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
    path = sqlite_path(uri)
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
        url = mask_uri(uri, strip=True).rstrip("/") + "/health"
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


def retry(fn: Callable[[], _T], attempts: int = 6, first_delay_s: float = 0.2) -> _T:
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
    path = sqlite_path(uri)
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


def import_mlflow() -> Any:
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


def write_client(uri: str) -> MlflowClient:
    """A client for ``uri``; building it creates the schema of a fresh SQLite file, so it runs
    under the store lock (the store object is then cached per process and URI by MLflow)."""
    mlflow = import_mlflow()
    with _store_lock(uri):
        return retry(lambda: mlflow.MlflowClient(tracking_uri=uri))


def get_or_create_experiment(
    client: MlflowClient, uri: str, name: str, artifact_location: str | None
) -> str:
    from mlflow.exceptions import MlflowException

    with _store_lock(uri):
        experiment = retry(lambda: client.get_experiment_by_name(name))
        if experiment is None:
            try:
                return retry(lambda: client.create_experiment(
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
    retry(lambda: client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND,
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
    return get_or_create_experiment(write_client(uri), uri, name, location)


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
    path = sqlite_path(uri.strip())
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
    path = sqlite_path(uri)
    if path is None:
        uri = resolve_tracking_uri(uri)  # refuses file stores; creates nothing for servers
        # The probe is unauthenticated (and urllib cannot parse user:password@): no credentials
        # in it, so none in its message either.
        check_tracking_store(mask_uri(uri, strip=True))
        return uri
    check_sqlite_store(uri, must_exist=True)
    query = uri[len("sqlite:///") + len(path):]
    return f"sqlite:///{Path(path).expanduser().resolve().as_posix()}{query}"


def read_client(uri: str) -> MlflowClient:
    """A client that reads ``uri``; unlike the writers' client, it takes no lock file."""
    uri = resolve_read_uri(uri)
    mlflow = import_mlflow()
    return mlflow.MlflowClient(tracking_uri=uri)


def all_experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]
