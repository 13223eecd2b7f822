"""Tracking on a real MLflow SQLite store in tmp_path (no mocks), and the MLflow-free parts."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tsearch.config import TrackingConfig
from tsearch.errors import ConfigError, TsearchError
from tsearch.names import TAG_FAILURE_REASON as FAILURE_REASON_TAG
from tsearch.plots import plot_fid_curve
from tsearch.tracker import flatten_params
from tsearch.tracking import (
    MlflowTracker,
    NullTracker,
    Tracker,
    build_tracker,
    ensure_experiment,
    resolve_tracking_uri,
)
from tsearch.train.history import TimestepHistory

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the single-process tests: creating a fresh schema takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _steps(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# --- MLflow-free parts ---------------------------------------------------------------------


def test_flatten_params_dots_stringifies_and_truncates() -> None:
    flat = flatten_params(
        {
            "model": {"channels": [32, 64], "ema": {"decay": 0.999}},
            "x": None,
            "long": "a" * 7000,
            "empty": {},
        }
    )
    assert flat == {
        "model.channels": "[32, 64]",
        "model.ema.decay": "0.999",
        "x": "None",
        "long": "a" * 6000,
        "empty": "{}",
    }


def test_flatten_params_replaces_characters_mlflow_refuses(tmp_path) -> None:
    flat = flatten_params({"bundle": {"uniform+p2": {"timesteps.sampler.name": "uniform+x"}}})
    assert flat == {"bundle.uniform_p2.timesteps.sampler.name": "uniform+x"}
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    run = client.create_run(client.create_experiment("e"))
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flat.items()])
    assert client.get_run(run.info.run_id).data.params == flat


def test_null_tracker_keeps_history_and_fails_with_reason() -> None:
    tracker = NullTracker()
    assert isinstance(tracker, Tracker)
    with pytest.raises(ValueError), tracker:
        tracker.log_params({"a": {"b": 1}})
        tracker.log_metrics({"train/loss": 0.5, "eval/fid": float("nan")}, step=1000)
        tracker.log_metrics({"train/loss": 0.25}, step=2000)
        tracker.log_array(np.arange(3), "p_t.npy")
        raise ValueError("loss exploded\ntraceback-ish detail")
    assert tracker.history["train/loss"] == [(1000, 0.5), (2000, 0.25)]
    assert math.isnan(tracker.history["eval/fid"][0][1])
    assert tracker.params == {"a.b": "1"}
    assert tracker.status == "FAILED"
    assert tracker.tags[FAILURE_REASON_TAG] == "ValueError: loss exploded"
    np.testing.assert_array_equal(tracker.artifacts["p_t.npy"], [0, 1, 2])
    tracker.finish("FINISHED")  # idempotent: the first terminal status wins
    assert tracker.status == "FAILED"
    with pytest.raises(ValueError, match="run status"):
        tracker.finish("DONE")


def test_timestep_history_stacks_snapshots_and_round_trips() -> None:
    history = TimestepHistory()
    assert history.matrix.shape == (0, 0)
    for i in range(3):
        history.append(i * 2.5, np.full(10, 0.1) + i * 0.0)
    assert history.matrix.shape == (3, 10)
    np.testing.assert_allclose(history.kimgs, [0.0, 2.5, 5.0])
    with pytest.raises(ValueError, match="timesteps"):
        history.append(7.5, np.full(11, 1 / 11))
    copy = TimestepHistory()
    copy.load_state_dict(history.state_dict())
    np.testing.assert_array_equal(copy.matrix, history.matrix)
    np.testing.assert_array_equal(copy.kimgs, history.kimgs)


def test_resolve_tracking_uri(tmp_path: Path) -> None:
    resolved = resolve_tracking_uri("sqlite:///runs/sub/mlflow.db", base_dir=tmp_path)
    assert resolved == f"sqlite:///{tmp_path.resolve()}/runs/sub/mlflow.db"
    assert (tmp_path / "runs" / "sub").is_dir()
    absolute = f"sqlite:///{tmp_path.resolve()}/x.db"
    assert resolve_tracking_uri(absolute) == absolute
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    with pytest.raises(ConfigError, match="sqlite:///"):
        resolve_tracking_uri("./mlruns")


def test_build_tracker_none_backend() -> None:
    assert isinstance(build_tracker(TrackingConfig(backend="none")), NullTracker)


def test_base_imports_with_mlflow_blocked() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["mlflow"] = None  # any "import mlflow" now raises ImportError
        import tsearch.tracker
        from tsearch.tracking import NullTracker, build_tracker
        from tsearch.tracker import NullTracker as Same
        from tsearch.config import TrackingConfig
        from tsearch.errors import TsearchError
        tracker = build_tracker(TrackingConfig(backend="none"))
        tracker.log_metrics({"a": 1.0}, step=1000)
        assert tracker.history == {"a": [(1000, 1.0)]}, tracker.history
        assert not [m for m in sys.modules if m.startswith("mlflow.")]
        try:
            build_tracker(TrackingConfig(uri="sqlite:////tmp/never-created/m.db"))
        except TsearchError as err:
            assert "MLflow is not importable" in str(err), err
        else:
            raise AssertionError("MlflowTracker built without mlflow")
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --- real MLflow store ---------------------------------------------------------------------


def test_mlflow_run_logs_params_metrics_artifacts(uri: str, tmp_path: Path) -> None:
    tracker = MlflowTracker(
        uri, experiment="exp", artifact_root=str(tmp_path / "artifacts"), run_name="r1"
    )
    client = _client(uri)
    run_id = tracker.run_id
    assert run_id is not None
    tracker.log_params({"model": {"arch": "unet", "channels": [32, 64]}, "lr": 1e-3})
    tracker.log_params({"lr": 1e-3})  # identical re-log is allowed

    keys = ["train/loss", "train/loss_q0", "train/loss_q1", "train/loss_q2", "train/loss_q3"]
    n_steps = 100  # 5 keys x 100 steps = 500 values
    for i in range(n_steps):
        value = float("nan") if i == 7 else 1.0 / (i + 1)
        tracker.log_metrics({k: value for k in keys}, step=(i + 1) * 256)
        if i == 20:  # 105 values buffered: below the flush threshold, nothing written yet
            assert client.get_metric_history(run_id, "train/loss") == []

    payload = {"fid": np.float32(12.5), "kimgs": np.arange(3), "path": tmp_path, "nested": {"a": 1}}
    tracker.log_dict(payload, "eval/summary.json")
    probs = np.random.default_rng(0).dirichlet(np.ones(50), size=4)
    tracker.log_array(probs, "timesteps/p_t.npy")
    png = plot_fid_curve({"r1": ([1, 2, 3], [300.0, 80.0, 20.0])}, tmp_path / "fid.png")
    tracker.log_artifact(png, "plots")
    tracker.set_tags({"tsearch.sampler": "uniform"})
    tracker.finish()
    tracker.finish()  # idempotent

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "r1"
    assert run.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())
    assert run.data.params == {"model.arch": "unet", "model.channels": "[32, 64]", "lr": "0.001"}
    assert run.data.tags["tsearch.sampler"] == "uniform"
    for key in keys:
        history = _steps(client, run_id, key)
        assert [s for s, _ in history] == [(i + 1) * 256 for i in range(n_steps)]
        assert math.isnan(history[7][1])
        assert history[-1][1] == pytest.approx(1.0 / n_steps)

    dst = tmp_path / "download"
    summary_file = client.download_artifacts(run_id, "eval/summary.json", dst)
    summary = json.loads(Path(summary_file).read_text())
    assert summary == {"fid": 12.5, "kimgs": [0, 1, 2], "path": str(tmp_path), "nested": {"a": 1}}
    loaded = np.load(client.download_artifacts(run_id, "timesteps/p_t.npy", dst))
    np.testing.assert_array_equal(loaded, probs)
    assert [f.path for f in client.list_artifacts(run_id, "plots")] == ["plots/fid.png"]


def test_context_manager_exception_ends_failed(uri: str, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with MlflowTracker(uri, "exp", artifact_root=str(tmp_path / "a")) as tracker:
            tracker.log_metrics({"train/loss": float("inf")}, step=512)
            raise RuntimeError("loss is inf at kimg 0.5\nsecond line is dropped")
    client = _client(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILURE_REASON_TAG] == "RuntimeError: loss is inf at kimg 0.5"
    text = Path(client.download_artifacts(tracker.run_id, "failure.txt", tmp_path / "d"))
    assert text.read_text().strip() == "RuntimeError: loss is inf at kimg 0.5"
    assert [m.step for m in client.get_metric_history(tracker.run_id, "train/loss")] == [512]


def test_child_run_and_resume_appends(uri: str, tmp_path: Path) -> None:
    root = str(tmp_path / "a")
    parent = MlflowTracker(uri, "search", artifact_root=root, run_name="search")
    child = MlflowTracker(
        uri, "search", artifact_root=root, run_name="trial-0", parent_run_id=parent.run_id
    )
    child.log_params({"sampler": {"name": "uniform"}})
    for kimg in (1, 2, 3):
        child.log_metrics({"eval/fid": 100.0 / kimg}, step=kimg * 1000)
    child.flush()  # a checkpoint; then the process "crashes" without finish()

    resumed = MlflowTracker(uri, "search", artifact_root=root, run_id=child.run_id)
    assert resumed.run_id == child.run_id
    resumed.log_params({"sampler": {"name": "uniform"}})
    with pytest.raises(TsearchError, match="already has param sampler.name='uniform'"):
        resumed.log_params({"sampler": {"name": "importance"}})
    for kimg in (4, 5):
        resumed.log_metrics({"eval/fid": 100.0 / kimg}, step=kimg * 1000)
    resumed.finish()
    parent.finish()

    client = _client(uri)
    run = client.get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.info.status == "FINISHED"
    steps = [s for s, _ in _steps(client, child.run_id, "eval/fid")]
    assert steps == [1000, 2000, 3000, 4000, 5000]
    runs = client.search_runs([parent.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["search", "trial-0"]
    with pytest.raises(TsearchError, match="not found"):
        MlflowTracker(uri, "search", run_id="0" * 32)
    with pytest.raises(TsearchError, match="parent run"):
        MlflowTracker(uri, "search", parent_run_id="f" * 32)


_WORKER = """
import sys, time
from pathlib import Path
ready, go, uri = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
from tsearch.tracking import MlflowTracker  # imports nothing of mlflow yet
import mlflow  # pay the import before the barrier so both start the store together
ready.touch()
while not go.exists():
    time.sleep(0.01)
with MlflowTracker(uri, "race", artifact_root=sys.argv[4]) as tracker:
    tracker.log_metrics({"train/loss": 1.0}, step=1000)
print(tracker.run_id)
"""


@pytest.mark.slow
@pytest.mark.parametrize("ensure_first", [True, False], ids=["ensure_first", "fresh_file"])
def test_two_processes_share_a_fresh_sqlite_store(tmp_path: Path, ensure_first: bool) -> None:
    """The driver's ensure_experiment is the documented recipe; the store lock (flock on
    <db>.lock around schema creation and get-or-create) makes even a cold start safe."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    root = str(tmp_path / "artifacts")
    if ensure_first:
        experiment_id = ensure_experiment(uri, "race", root)
        assert ensure_experiment(uri, "race", root) == experiment_id
    go = tmp_path / "go"
    procs, readies = [], []
    for i in range(2):
        ready = tmp_path / f"ready{i}"
        readies.append(ready)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(ready), str(go), uri, root],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in readies) and time.monotonic() < deadline:
        time.sleep(0.02)
    go.touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    run_ids = {out.strip() for out, _ in outputs}
    assert len(run_ids) == 2

    client = _client(uri)
    experiment = client.get_experiment_by_name("race")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_id for r in runs} == run_ids
    assert all(r.info.status == "FINISHED" for r in runs)


def test_unreachable_server_fails_fast_with_one_line() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(TsearchError) as info:
        MlflowTracker(uri, "exp")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert f"MLflow tracking server at {uri} is unreachable" in message
    assert "--set tracking.uri=" in message
    with pytest.raises(TsearchError, match="unreachable"):
        ensure_experiment(uri, "exp")


def test_build_tracker_resolves_relative_sqlite(tmp_path: Path) -> None:
    cfg = TrackingConfig(uri="sqlite:///runs/mlflow.db", artifact_root="runs/art", experiment="e")
    tracker = build_tracker(cfg, run_name="from-config", base_dir=tmp_path)
    assert isinstance(tracker, MlflowTracker)
    tracker.finish()
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    run = _client(f"sqlite:///{tmp_path}/runs/mlflow.db").get_run(tracker.run_id)
    assert run.info.run_name == "from-config"
    assert run.info.artifact_uri.startswith((tmp_path / "runs" / "art").resolve().as_uri())


def test_unreachable_server_with_credentials_is_probed_and_named_without_them():
    """urllib cannot open user:pw@ URLs; the probe drops them and the message masks them."""
    from tsearch.errors import TsearchError
    from tsearch.tracking.store import check_tracking_store

    with pytest.raises(TsearchError) as info:
        check_tracking_store("http://alice:s3cret@127.0.0.1:1")
    text = str(info.value)
    assert "s3cret" not in text and "alice:***@127.0.0.1:1" in text
    assert "Connection refused" in text  # the probe reached the port: not a parse failure
