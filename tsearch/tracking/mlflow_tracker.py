"""The :class:`~tsearch.tracker.Tracker` protocol on an MLflow run: :class:`MlflowTracker`.

Each tracker owns an ``MlflowClient`` instead of the fluent global run, so a driver's parent run
and trial runs can coexist in one process. Metrics are buffered and written in batches
(``log_batch``), never one call per value; the store is opened and checked by
:mod:`tsearch.tracking.store` (MLflow is imported there, lazily).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from tsearch.errors import TsearchError
from tsearch.names import ARTIFACT_FAILURE, TAG_FAILURE_REASON, TAG_PARENT_RUN, mask_uri
from tsearch.tracker import (
    MAX_TAG_VALUE_LENGTH,
    FinishOnExit,
    check_status,
    dumps_json,
    flatten_params,
)
from tsearch.tracking.store import (
    check_tracking_store,
    get_or_create_experiment,
    import_mlflow,
    resolve_artifact_root,
    resolve_tracking_uri,
    retry,
    write_client,
)

# MLflow's per-request limits (mlflow/utils/validation.py).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
# Buffered metric values that trigger a write; a few evaluations' worth, so SQLite sees few writes.
FLUSH_THRESHOLD = 200
_T = TypeVar("_T")


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
        *,
        artifact_root: str | None = None,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
        base_dir: Path | None = None,
    ) -> None:
        mlflow = import_mlflow()
        self._Metric = mlflow.entities.Metric
        self._Param = mlflow.entities.Param
        self._RunTag = mlflow.entities.RunTag
        self.tracking_uri = resolve_tracking_uri(tracking_uri, base_dir)
        check_tracking_store(self.tracking_uri)
        self.client = write_client(self.tracking_uri)
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
            retry(lambda: self.client.update_run(run_id, status="RUNNING"))
            if run_tags:
                self.set_tags(run_tags)
        else:
            location = resolve_artifact_root(artifact_root, self.tracking_uri, base_dir)
            self.experiment_id = get_or_create_experiment(
                self.client, self.tracking_uri, experiment, location
            )
            try:
                run = retry(
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
        retry(lambda: self.client.log_batch(self.run_id, synchronous=True, **entities))

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
        retry(lambda: self.client.log_text(self.run_id, str(text), artifact_file))

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
            retry(lambda: self.client.set_terminated(self.run_id, status))

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
