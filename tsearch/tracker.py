"""The experiment-tracking contract: a leaf both ``tsearch.train`` and ``tsearch.tracking`` import.

The trainer talks to a :class:`Tracker` only, so it runs (and its tests run) with MLflow absent
and never imports ``tsearch.tracking``: :class:`NullTracker` does nothing durable but keeps what
was logged in memory for inspection. ``tsearch.tracking.mlflow_tracker`` implements the same
protocol on an MLflow store.

Conventions every implementation follows:

- metric ``step`` is an int: the number of training images seen (``round(kimg * 1000)``), so runs
  with different batch sizes share an x axis;
- metric keys are slash-namespaced (``train/loss``, ``eval/fid``, ``sampler/entropy``);
- non-finite metric values are logged as they are, so a divergence is visible in the run;
- params are flattened to dotted keys and stringified (:func:`flatten_params`);
- ``finish`` is idempotent; a run used as a context manager ends FAILED when an exception escapes,
  with the exception's one-line message as the failure reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tsearch.names import ARTIFACT_FAILURE, TAG_FAILURE_REASON

# MLflow's limits (mlflow/utils/validation.py); copied so this module never imports mlflow.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


@runtime_checkable
class Tracker(Protocol):
    """Where a run's params, metrics, artifacts and final status go."""

    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params once; keys flattened with dots, values stringified and truncated."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metric values at ``step`` (training images seen); NaN/inf are kept."""

    def flush(self) -> None:
        """Write buffered metrics now (e.g. before a checkpoint, so a crash loses nothing)."""

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Store ``obj`` as a JSON artifact (numpy values and paths converted)."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as an artifact."""

    def log_array(self, array: np.ndarray, artifact_file: str) -> None:
        """Store ``array`` as a ``.npy`` artifact, loadable with ``np.load``."""

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local file (or directory) into the run's artifacts under ``artifact_path``."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags (mutable metadata, unlike params)."""

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """End the run as FINISHED, FAILED or KILLED; ``reason`` is kept as tag and failure.txt."""

    def __enter__(self) -> Tracker: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


_PARAM_NAME_BAD = re.compile(r"[^\w\-. :/]")  # what mlflow/utils/validation.py refuses


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings to ``{"a.b.c": "value"}``: MLflow params are flat strings.

    Values are ``str()``-ed and truncated to MLflow's 6000-character limit so that one long value
    (a list of channels, a path) cannot make the whole batch fail. Characters MLflow refuses in
    names (e.g. the ``+`` of a bundle named ``uniform+p2``) become ``_``.
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{_PARAM_NAME_BAD.sub('_', str(key))}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_VALUE_LENGTH]
    return flat


def exception_reason(exc: BaseException) -> str:
    """One line naming an exception: ``TsearchError`` text as is, else ``Type: first line``."""
    from tsearch.errors import TsearchError

    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if isinstance(exc, TsearchError) and first:
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def status_for_exception(exc_type: type[BaseException]) -> str:
    """KILLED for an interrupt (Ctrl-C, SIGTERM-as-SystemExit), FAILED for everything else."""
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt | SystemExit) else "FAILED"


def check_status(status: str) -> str:
    """Validate a terminal run status (a wrong value is a caller bug, hence ValueError)."""
    if status not in RUN_STATUSES:
        raise ValueError(f"run status must be one of {RUN_STATUSES}, got {status!r}")
    return status


def to_jsonable(obj: Any) -> Any:
    """``json.dumps`` default hook: numpy/torch scalars and arrays, paths, sets, pydantic models."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in a JSON artifact")


def dumps_json(obj: Any) -> str:
    """JSON text of ``obj`` as stored in artifacts (NaN kept as ``NaN``, as Python reads it)."""
    return json.dumps(obj, indent=2, default=to_jsonable) + "\n"


class FinishOnExit:
    """A tracker used as a context manager ends FINISHED, or as the escaping exception says."""

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        raise NotImplementedError

    def __enter__(self) -> FinishOnExit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or exc_type is None:
            self.finish("FINISHED")
        else:
            self.finish(status_for_exception(exc_type), exception_reason(exc))


class NullTracker(FinishOnExit):
    """A tracker that writes nothing, for runs without MLflow and for tests.

    Everything logged stays in memory: ``history[key]`` is a list of ``(step, value)``,
    ``params``/``tags`` are flat string dicts, ``artifacts`` maps an artifact path to the logged
    object (dict, text, array copy, or the local path given to ``log_artifact``).
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: dict[str, Any] = {}
        self.status: str = "RUNNING"
        self.reason: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(flatten_params(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.history.setdefault(key, []).append((int(step), float(value)))

    def flush(self) -> None:
        pass

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.artifacts[artifact_file] = json.loads(dumps_json(obj))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.artifacts[artifact_file] = str(text)

    def log_array(self, array: np.ndarray, artifact_file: str) -> None:
        self.artifacts[artifact_file] = np.array(array, copy=True)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        name = Path(local_path).name
        self.artifacts[f"{artifact_path}/{name}" if artifact_path else name] = Path(local_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        check_status(status)
        if self.status != "RUNNING":
            return
        if reason:
            self.tags[TAG_FAILURE_REASON] = reason[:MAX_TAG_VALUE_LENGTH]
            self.artifacts[ARTIFACT_FAILURE] = reason
        self.status, self.reason = status, reason


class ResilientTracker(FinishOnExit):
    """A tracker whose backend failing costs one warning line, not the run.

    The run directory's metrics.jsonl keeps every record whatever the tracker does, so training
    goes on when the store disappears, locks up or refuses a write. After the first failure the
    backend is not called again: a dead store would fail (and may hang for seconds) on every
    call. A :class:`~tsearch.errors.TsearchError` (e.g. resuming a run with a changed param) is a
    user mistake, not a backend failure, and still ends the run.
    """

    def __init__(self, inner: Tracker, warn: Callable[[str], None]) -> None:
        self.inner = inner
        self.warn = warn
        self.failure: str | None = None  # why the backend was given up, if it was

    @property
    def run_id(self) -> str | None:
        return self.inner.run_id

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        from tsearch.errors import TsearchError

        if self.failure is not None:
            return
        try:
            getattr(self.inner, method)(*args, **kwargs)
        except TsearchError:
            raise
        except Exception as exc:
            self.failure = _telling_line(exc)[:200]
            run = f" run {self.inner.run_id}" if self.inner.run_id else ""
            self.warn(f"warning: experiment tracking{run} failed ({self.failure}); training "
                      "goes on, recording to its run directory (metrics.jsonl) only")

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._call("log_params", params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._call("log_metrics", metrics, step)

    def flush(self) -> None:
        self._call("flush")

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self._call("log_dict", obj, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", text, artifact_file)

    def log_array(self, array: np.ndarray, artifact_file: str) -> None:
        self._call("log_array", array, artifact_file)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", local_path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._call("set_tags", tags)

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        self._call("finish", status, reason)


def _telling_line(exc: BaseException) -> str:
    """The line of a (SQLAlchemy-wrapped) store error that says what happened."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    telling = [x for x in lines if not x.startswith("(raised as a result")]
    return f"{type(exc).__name__}: {telling[0]}" if telling else exception_reason(exc)


def resilient(tracker: Tracker, warn: Callable[[str], None]) -> ResilientTracker:
    """``tracker`` in a :class:`ResilientTracker`; an already wrapped one is returned as is."""
    return tracker if isinstance(tracker, ResilientTracker) else ResilientTracker(tracker, warn)
