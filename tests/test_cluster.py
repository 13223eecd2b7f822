"""A real 3-node Ray cluster (network namespaces) with an MLflow server: infra/local/cluster.sh.

Needs root for `ip netns`; CI runs as root. The cluster gets a name of its own, so a developer's
cluster (default name `tsc`) is left alone. Tests run in file order: the worker-loss drill kills a
node, so it comes after the tests that want all three, and the teardown check comes last.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SMOKE

SCRIPT = ROOT / "infra" / "local" / "cluster.sh"
SUBNET = "10.123.0"
WORKERS = {f"{SUBNET}.2": "w1", f"{SUBNET}.3": "w2"}

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

if os.geteuid() != 0:
    if os.environ.get("CI"):
        raise RuntimeError("the cluster tests need root (network namespaces); CI runs as root")
    pytestmark.append(pytest.mark.skip(reason="needs root for network namespaces"))


class Cluster:
    def __init__(self, name: str, state: Path) -> None:
        self.name, self.dir = name, state
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RAY_", "MLFLOW_", "TSEARCH_"))}
        self.env.update(TSC_NAME=name, TSC_DIR=str(state), TSC_SUBNET=SUBNET,
                        TSC_BIN=str(Path(sys.executable).parent))
        self.storage = state / "shared" / "ray"

    @property
    def namespaces(self) -> list[str]:
        return [f"{self.name}-{n}" for n in ("br", "head", "w1", "w2")]

    def script(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def run(self, *args: str, cwd: Path, timeout: float = 600, env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
        """A command in the head namespace with the cluster's environment."""
        return subprocess.run([str(SCRIPT), "exec", *args], cwd=cwd, env=env or self.env,
                              capture_output=True, text=True, timeout=timeout, **kw)

    def tsearch(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "tsearch.cli.main", *args, **kw)

    def mlflow_runs(self, search: str, cwd: Path) -> list[dict]:
        """Child runs of a search, read back from the MLflow server over HTTP."""
        code = (
            "import json, os\nfrom mlflow import MlflowClient\n"
            "c = MlflowClient(os.environ['MLFLOW_TRACKING_URI'])\n"
            "exps = [e.experiment_id for e in c.search_experiments()]\n"
            f"runs = c.search_runs(exps, \"tags.`tsearch.search` = '{search}'\")\n"
            "print(json.dumps([{'kind': r.data.tags.get('tsearch.kind'), "
            "'status': r.info.status, 'node_ip': r.data.tags.get('tsearch.node_ip'), "
            "'parent': r.data.tags.get('mlflow.parentRunId'), 'id': r.info.run_id, "
            "'artifact_uri': r.info.artifact_uri, 'fid': r.data.metrics.get('eval/fid')} "
            "for r in runs]))\n")
        proc = self.run(sys.executable, "-c", code, cwd=cwd, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def pids(self) -> set[int]:
        out: set[int] = set()
        for space in self.namespaces:
            proc = subprocess.run(["ip", "netns", "pids", space], capture_output=True, text=True)
            out |= {int(p) for p in proc.stdout.split()}
        return out


@pytest.fixture(scope="module")
def cluster():
    name = f"tt{os.getpid() % 100000}"
    c = Cluster(name, Path(f"/tmp/{name}"))
    up = c.script("up")
    if up.returncode != 0:
        c.script("down")
        pytest.fail(f"cluster.sh up failed:\n{up.stdout}\n{up.stderr}\n"
                    + "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                                for p in sorted((c.dir / "logs").glob("*.log"))))
    yield c
    c.script("down")  # idempotent: the teardown test has normally done it already
    shutil.rmtree(c.dir, ignore_errors=True)


def trials_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with (path / "summary" / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def search_args(name: str, *extra: str) -> list[str]:
    return ["search", str(SMOKE), "--set", f"search.name={name}", *extra]


def test_search_runs_across_nodes_and_logs_to_the_mlflow_server(cluster, tmp_path):
    proc = cluster.tsearch(*search_args("spread", "--set", "search.num_samples=4",
                                        "--set", "search.max_concurrent=3"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = trials_csv(cluster.storage / "spread")
    assert len(rows) == 4
    assert all(r["status"] == "TERMINATED" for r in rows)
    ips = {r["node_ip"] for r in rows}
    assert len(ips) >= 2, ips
    assert ips <= {f"{SUBNET}.{i}" for i in (1, 2, 3)}, ips
    # Nothing was written to a local store: the driver and every trial spoke to the server.
    assert not (tmp_path / "tsearch-runs" / "mlflow.db").exists()
    runs = cluster.mlflow_runs("spread", tmp_path)
    parent = [r for r in runs if r["kind"] == "search"]
    children = [r for r in runs if r["kind"] == "trial"]
    assert len(parent) == 1 and parent[0]["status"] == "FINISHED"
    assert len(children) == 4
    assert {r["id"] for r in children} == {r["mlflow_run_id"] for r in rows}
    for r in children:
        assert r["parent"] == parent[0]["id"]
        assert r["status"] == "FINISHED"
        assert r["fid"] is not None and r["fid"] > 0
        assert r["artifact_uri"].startswith("mlflow-artifacts:")  # proxied by the server
    assert {r["node_ip"] for r in children} == ips
    # The server stored what each trial uploaded over HTTP: its p(t) arrays.
    store = cluster.dir / "shared" / "mlflow-artifacts"
    for r in children:
        assert list(store.glob(f"*/{r['id']}/artifacts/timesteps/p_t_*.npy")), r["id"]


def test_driver_without_the_token_is_refused(cluster, tmp_path):
    env = {k: v for k, v in cluster.env.items()}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    code = ("import os, runpy, sys\n"
            "os.environ.pop('RAY_AUTH_TOKEN', None); os.environ.pop('RAY_AUTH_MODE', None)\n"
            "sys.argv = ['tsearch', *sys.argv[1:]]\n"
            "runpy.run_module('tsearch.cli.main', run_name='__main__')\n")
    start = time.monotonic()
    proc = cluster.run(sys.executable, "-c", code, *search_args("no-token"), cwd=tmp_path,
                       env=env, timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "RAY_AUTH_TOKEN" in last, last
    assert time.monotonic() - start < 120
    assert not (cluster.storage / "no-token" / "summary").exists()
    assert cluster.mlflow_runs("no-token", tmp_path) == []  # no parent run left behind


def test_submit_runs_the_search_as_a_ray_job(cluster, tmp_path):
    proc = cluster.tsearch("submit", str(SMOKE.relative_to(ROOT)), "--working-dir", str(ROOT),
                           "--set", "search.name=submitted", "--set", "search.num_samples=2",
                           "--wait", cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "ray job logs --follow" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].endswith("SUCCEEDED")
    rows = trials_csv(cluster.storage / "submitted")
    assert len(rows) == 2
    assert all(float(r["best_fid"]) > 0 for r in rows)
    children = [r for r in cluster.mlflow_runs("submitted", tmp_path) if r["kind"] == "trial"]
    assert len(children) == 2 and all(r["status"] == "FINISHED" for r in children)


def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return out


def test_losing_a_worker_node_resumes_its_trial_elsewhere(cluster, tmp_path):
    log = (tmp_path / "search.log").open("w")
    proc = subprocess.Popen(
        [str(SCRIPT), "exec", sys.executable, "-m", "tsearch.cli.main",
         *search_args("drill", "--set", "search.num_samples=2", "--set", "search.max_concurrent=2",
                      "--set", "search.asha.enabled=false", "--set", "search.max_failures=3",
                      "--set", "train.total_kimg=3.0", "--set", "search.points_to_evaluate=[]")],
        cwd=tmp_path, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        victim = None
        deadline = time.monotonic() + 300
        while victim is None and proc.poll() is None and time.monotonic() < deadline:
            for trial_dir in (cluster.storage / "drill").glob("run_trial_*"):
                results = _results(trial_dir)
                # Mid-way: a few evaluations (and checkpoints) done, most of the budget left.
                if len(results) >= 2 and results[-1]["node_ip"] in WORKERS:
                    victim = (trial_dir, results[-1]["node_ip"], results[-1]["kimg"])
                    break
            time.sleep(0.3)
        assert victim is not None, f"no trial reached a worker mid-way: {_tail(tmp_path)}"
        trial_dir, ip, kimg_at_kill = victim
        killed = cluster.script("kill-node", WORKERS[ip])
        assert killed.returncode == 0, killed.stderr
        assert proc.wait(timeout=600) == 0, _tail(tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    results = _results(trial_dir)
    kimgs = [r["kimg"] for r in results]
    assert kimgs == sorted(set(kimgs)), kimgs  # never restarted from zero, nothing repeated
    after = [r for r in results if r["node_ip"] != ip]
    assert after, "the trial never ran again after its node died"
    assert after[0]["kimg"] > kimg_at_kill  # resumed from the checkpoint of the last report
    assert results[-1]["kimg"] >= 3.0
    assert len({r["mlflow_run_id"] for r in results}) == 1  # one MLflow run, re-opened
    rows = trials_csv(cluster.storage / "drill")
    assert len(rows) == 2 and all(r["status"] == "TERMINATED" for r in rows)
    assert "resumed from" in (tmp_path / "search.log").read_text()


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "search.log").read_text()[-3000:]


def _running(pid: int) -> bool:
    """Alive and not a zombie (exited processes wait a moment for their parent to reap them)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def test_teardown_stops_everything_it_started(cluster):
    started = cluster.pids()
    assert started  # mlflow, ray head, the surviving worker
    down = cluster.script("down")
    assert down.returncode == 0, down.stderr
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not set(cluster.namespaces) & {line.split()[0] for line in listed.splitlines()}
    alive = [p for p in started if _running(p)]
    assert not alive, [Path(f"/proc/{p}/cmdline").read_bytes()[:100] for p in alive]
    # Results survive the cluster: storage and the MLflow database stay.
    assert (cluster.storage / "spread" / "summary" / "trials.csv").is_file()
    assert (cluster.dir / "mlflow.db").is_file()
