"""What a run listing leaves out, fetched on demand: metric histories, p(t) snapshots, artifacts.

A few calls per run, so callers list first (:mod:`tsearch.tracking.queries`), check what they
can, then fetch. Reading only: nothing is created in the store.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tsearch import names
from tsearch.errors import TsearchError
from tsearch.records import TrialRecord
from tsearch.tracking.store import read_client


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
def _no_download_bars() -> Iterator[None]:
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


def fetch_histories(uri: str, records: list[TrialRecord],
                    progress: Callable[[int, int], None] | None = None) -> None:
    """Fill each record's FID/compute histories and p(t) snapshots, in place.

    One ``get_metric_history`` per metric and one download of ``timesteps/`` per run;
    ``progress(done, total)`` is called after each run.
    """
    client = read_client(uri)
    with _no_download_bars():
        for i, record in enumerate(records):
            record.fid = _history(client, record.run_id, names.FID)
            record.probe_forwards = _history(client, record.run_id, names.PROBE_FORWARDS)
            record.train_forwards = _history(client, record.run_id, names.TRAIN_FORWARDS)
            record.p_t = _timestep_snapshots(client, record.run_id)
            if progress is not None:
                progress(i + 1, len(records))


def metric_histories(uri: str, run_ids: list[str], key: str) -> dict[str, list[tuple[int, float]]]:
    """Each run's history of metric ``key`` as ``(step, value)`` pairs sorted by step.

    One ``get_metric_history`` per run and nothing downloaded: for a caller that needs one
    curve per trial (``--warm-start``, `tsearch runs show`), not the p(t) snapshots
    :func:`fetch_histories` brings.
    """
    client = read_client(uri)
    return {run_id: _history(client, run_id, key) for run_id in run_ids}


def download(uri: str, run_id: str, artifact: str, dst: str | Path) -> Path:
    client = read_client(uri)
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

    client = read_client(uri)
    folder = artifact.rpartition("/")[0] or None
    try:
        listed = client.list_artifacts(run_id, folder)
    except (MlflowException, OSError) as exc:
        raise TsearchError(f"cannot list the artifacts of run {run_id} "
                           f"({type(exc).__name__}); check the tracking store") from None
    return any(entry.path == artifact and not entry.is_dir for entry in listed)
