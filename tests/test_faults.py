"""Faults a real user meets, on the real CLI, Ray and MLflow store: nothing is lost or redone.

- the MLflow store is deleted while ``tsearch train`` runs: training finishes, metrics.jsonl
  keeps every record, one warning line;
- the search driver is SIGKILLed right after a trial trained to its end, then ``--resume``d:
  that trial is not trained again, nothing is duplicated or shrunk;
- after that (real) search, each trial holds at most ``search.num_to_keep`` checkpoints and no
  Ray session directory is left in the temp directory;
- a Tune state file cut short (a kill while Ray copied it into the storage) is put back from the
  killed driver's staging copy, or, with none, the resume stops in one line instead of starting
  the search over.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import SMOKE

pytestmark = pytest.mark.slow


def _env(tmp: Path) -> dict[str, str]:
    # A private temp directory (short: Ray's socket paths are limited to 107 bytes), so the test
    # sees exactly the Ray session folders its own searches leave.
    return {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tsearch.cli.main", *args]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_store_deleted_mid_run_training_finishes_with_every_record(tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    args = ["train", str(SMOKE), "--set", f"tracking.uri=sqlite:///{db}",
            "--set", f"train.out_dir={tmp_path}/runs", "--set", f"eval.cache_dir={tmp_path}/c",
            "--set", "train.total_kimg=0.384", "--set", "eval.every_kimg=0.064",
            "--set", "train.log_every_kimg=0.032", "--set", "eval.num_images=100"]
    proc = subprocess.Popen(_cli(*args), cwd=tmp_path, env=_env(tmp_path), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = []

    def first_evaluation() -> bool:
        metrics[:] = list((tmp_path / "runs").glob("*/metrics.jsonl"))
        return bool(metrics) and "eval/fid" in metrics[0].read_text()

    _wait_for(first_evaluation, proc, 240, "the first evaluation")
    for path in db.parent.glob("mlflow.db*"):
        path.unlink()
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    assert proc.returncode == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "tracking" in warnings[0], err
    records = _records(metrics[0])
    # 12 interval records + 6 evaluations + 6 perf/* records (one per evaluation), none lost
    assert len(records) == 24, records
    assert sum("eval/fid" in r for r in records) == 6
    assert sum("perf/eval_share" in r for r in records) == 6


def _trial_dirs(exp: Path) -> list[Path]:
    return sorted((p for p in exp.glob("run_trial_*") if p.is_dir()),
                  key=lambda p: int(p.name.split("_")[3]))


def _fid_steps(db: Path, run_id: str) -> list[int]:
    with sqlite3.connect(db) as con:
        rows = con.execute("select step from metrics where run_uuid=? and key='eval/fid' "
                           "order by step", (run_id,)).fetchall()
    return [r[0] for r in rows]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A two-trial search killed right after its first trial's last report, then resumed."""
    work = tmp_path_factory.mktemp("killed")
    tmp = Path(tempfile.mkdtemp(prefix="tsf", dir="/tmp"))
    args = [str(SMOKE), "--set", f"search.storage_path={work}/ray",
            "--set", f"tracking.uri=sqlite:///{work}/mlflow.db",
            "--set", f"eval.cache_dir={work}/cache", "--set", "search.name=killed",
            "--set", "search.max_concurrent=1", "--set", "search.num_samples=2",
            "--set", "search.asha.enabled=false", "--set", "search.num_to_keep=2",
            "--set", "train.total_kimg=0.4", "--set", "eval.every_kimg=0.1",
            "--set", "eval.num_images=100",
            "--set", "search.points_to_evaluate=[{timesteps.sampler.name: uniform, optim.lr: "
            "0.002}, {timesteps.sampler.name: uniform, optim.lr: 0.001}]"]
    exp = work / "ray" / "killed"
    proc = subprocess.Popen(_cli("search", *args), cwd=work, env=_env(tmp), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)

    def first_trial_reported_its_end() -> bool:
        trials = _trial_dirs(exp) if exp.is_dir() else []
        last = trials[0] / "checkpoint_000003" if trials else None
        return bool(last and (last / "tsearch-trial.json").is_file()
                    and list(last.glob("ckpt-*.pt")))

    try:
        _wait_for(first_trial_reported_its_end, proc, 400, "the first trial's last report")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.communicate()
        subprocess.run(["pkill", "-9", "-f", str(tmp)], check=False)
    first = _trial_dirs(exp)[0]
    before = (first / "run" / "metrics.jsonl").read_text().splitlines()
    sessions_before = set((tmp / "ray").glob("session_2*"))
    resumed = subprocess.run(_cli("search", *args, "--resume"), cwd=work, env=_env(tmp),
                             text=True, capture_output=True, timeout=600)
    yield {"work": work, "exp": exp, "tmp": tmp, "first": first, "before": before,
           "resumed": resumed, "sessions_before": sessions_before, "args": args}
    subprocess.run(["pkill", "-9", "-f", str(tmp)], check=False)
    shutil.rmtree(tmp, ignore_errors=True)


def test_resume_after_a_kill_never_reruns_a_finished_trial(killed_and_resumed):
    k = killed_and_resumed
    resumed = k["resumed"]
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr and " ERROR " not in resumed.stderr, resumed.stderr
    first = k["first"]
    trial_id = first.name.split("_")[2]
    after = (first / "run" / "metrics.jsonl").read_text().splitlines()
    assert after[:len(k["before"])] == k["before"] and len(after) >= len(k["before"])
    records = [json.loads(line) for line in after]
    keys = [(r["images_seen"], tuple(sorted(r))) for r in records]
    assert len(keys) == len(set(keys))  # nothing written twice
    evaluated = [r["images_seen"] for r in records if "eval/fid" in r]
    assert len(evaluated) == 4
    run_id = json.loads((first / "run" / "run.json").read_text())["run_id"]
    assert _fid_steps(k["work"] / "mlflow.db", run_id) == evaluated  # one FID per evaluation
    # It said so, and did not train again.
    assert f"[run_trial_{trial_id}] already trained to the end" in resumed.stderr
    assert f"[run_trial_{trial_id}] resumed from" not in resumed.stderr
    # The second trial ran in the resumed search; both are in the summary, one MLflow run each.
    rows = list(csv.DictReader((k["exp"] / "summary" / "trials.csv").open()))
    assert len(rows) == 2 and all(r["status"] == "TERMINATED" for r in rows), rows
    with sqlite3.connect(k["work"] / "mlflow.db") as con:
        ids = con.execute("select value from tags where key='tsearch.trial_id'").fetchall()
    assert sorted(i for (i,) in ids) == sorted(r["trial_id"] for r in rows)


def test_search_keeps_num_to_keep_checkpoints_and_no_ray_session(killed_and_resumed):
    k = killed_and_resumed
    assert k["resumed"].returncode == 0, k["resumed"].stderr
    trials = _trial_dirs(k["exp"])
    assert len(trials) == 2
    for trial in trials:
        pts = list(trial.rglob("*.pt"))
        assert 1 <= len(pts) <= 2, pts  # search.num_to_keep = 2 of 4 evaluations
        assert all(p.parent.name.startswith("checkpoint_") for p in pts)
    assert not list(k["work"].rglob("ckpt-*.pt.tmp"))
    # The resumed search started a local Ray and removed its session folder when it ended.
    assert set((k["tmp"] / "ray").glob("session_2*")) <= k["sessions_before"]
    with sqlite3.connect(k["work"] / "mlflow.db") as con:
        disk = con.execute("select value from metrics where key='disk/trial_mb'").fetchall()
    assert disk and all(0 < v < 50 for (v,) in disk)


def test_resume_puts_back_a_state_file_cut_short_or_stops(killed_and_resumed):
    """Last in this module: it cuts the fixture's state files (and mends them)."""
    k = killed_and_resumed
    assert k["resumed"].returncode == 0, k["resumed"].stderr
    exp, work, tmp = k["exp"], k["work"], k["tmp"]
    states = sorted(exp.glob("searcher-state-*.pkl"))
    assert len(states) == 2  # the killed driver's, then the resumed one's (newest, loaded first)
    killed_state, newest = states
    trials = sorted(p.name for p in _trial_dirs(exp))

    def resume():
        return subprocess.run(_cli("search", *k["args"], "--resume"), cwd=work, env=_env(tmp),
                              text=True, capture_output=True, timeout=600)

    # The resumed driver's staging folder went with its session: nothing to put back. Ray alone
    # would log "Failed to restore the run state" and start the search over.
    whole = newest.read_bytes()
    newest.write_bytes(whole[: len(whole) // 2])
    stopped = resume()
    assert stopped.returncode != 0
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot resume") and newest.name in last, stopped.stderr
    assert "--warm-start killed" in last and "Traceback" not in stopped.stderr
    assert sorted(p.name for p in _trial_dirs(exp)) == trials  # no trial started over
    newest.write_bytes(whole)

    # The killed driver's session folder outlived the kill, with its own intact staging copy.
    staged = list((tmp / "ray").glob(f"session_*/artifacts/*/killed/driver_artifacts/"
                                      f"{killed_state.name}"))
    assert len(staged) == 1
    killed_state.write_bytes(b"")
    mended = resume()
    assert mended.returncode == 0, mended.stderr
    assert f"Ray's copy of {killed_state.name} was cut short" in mended.stderr, mended.stderr
    assert killed_state.read_bytes() == staged[0].read_bytes()
    assert sorted(p.name for p in _trial_dirs(exp)) == trials
    rows = list(csv.DictReader((exp / "summary" / "trials.csv").open()))
    assert len(rows) == 2 and all(r["status"] == "TERMINATED" for r in rows), rows
