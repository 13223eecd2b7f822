"""Cluster-mode plumbing that needs no cluster: environment defaults and `tsearch submit` checks.

The real job submission runs against a 3-node cluster in tests/test_cluster.py.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tsearch.config import load_config
from tsearch.errors import ConfigError, TsearchError
from tsearch.search.submit import dashboard_address, entrypoint

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"
SERVER = "http://10.9.8.7:5000"


def test_environment_fills_tracking_uri_and_storage_unless_set(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)
    monkeypatch.setenv("TSEARCH_STORAGE_PATH", "/shared/ray")
    cfg = load_config(SMOKE)
    assert cfg.tracking.uri == SERVER and cfg.search.storage_path == "/shared/ray"
    # The file and --set still win over the environment.
    explicit = tmp_path / "c.yaml"
    explicit.write_text("tracking: {uri: 'sqlite:///x.db'}\nsearch: {storage_path: /elsewhere}\n")
    cfg = load_config(explicit, ["search.storage_path=/mine"])
    assert cfg.tracking.uri == "sqlite:///x.db" and cfg.search.storage_path == "/mine"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("TSEARCH_STORAGE_PATH")
    cfg = load_config(SMOKE)
    assert cfg.tracking.uri.startswith("sqlite:") and cfg.search.storage_path == "tsearch-runs/ray"


def test_entrypoint_is_a_search_of_the_uploaded_config_with_resolved_targets():
    cfg = load_config(SMOKE, [f"tracking.uri={SERVER}", "search.storage_path=/shared/ray"])
    cmd = shlex.split(entrypoint(cfg, SMOKE, ROOT, ["search.num_samples=2", "optim.lr=1e-3"]))
    assert cmd[:3] == ["tsearch", "search", "experiments/smoke.yaml"]
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert sets == ["search.num_samples=2", "optim.lr=1e-3", f"tracking.uri={SERVER}",
                    "search.storage_path=/shared/ray"]


@pytest.mark.parametrize("overrides,needle", [
    (["search.storage_path=/shared/ray"], "cannot write this machine's files"),  # sqlite
    ([f"tracking.uri={SERVER}"], "relative paths land in the job's temporary"),
])
def test_entrypoint_refuses_what_the_cluster_cannot_use(overrides, needle):
    cfg = load_config(SMOKE, overrides)
    with pytest.raises(ConfigError, match=needle):
        entrypoint(cfg, SMOKE, ROOT, [])


def test_entrypoint_refuses_a_config_outside_the_working_dir(tmp_path):
    cfg = load_config(SMOKE, [f"tracking.uri={SERVER}", "search.storage_path=/s"])
    with pytest.raises(TsearchError, match="outside the working directory"):
        entrypoint(cfg, SMOKE, tmp_path, [])


def test_dashboard_address_wants_the_jobs_api(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    with pytest.raises(TsearchError, match="--address http://HEAD:8265"):
        dashboard_address(None)
    with pytest.raises(TsearchError, match="not the GCS port"):
        dashboard_address("10.0.0.1:6379")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://h:8265/")
    assert dashboard_address(None) == "http://h:8265"


def _free_port(suffix: str = "") -> int:
    """A port nobody listens on, ending in ``suffix`` (a port like 53403 once read as HTTP 403)."""
    candidates = [int(f"{p}{suffix}") for p in range(10, 65) if int(f"{p}{suffix}") < 65536] \
        if suffix else [0]
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    pytest.skip(f"no free port ending in {suffix}")


@pytest.mark.parametrize("suffix", ["", "403", "401"])
def test_submit_to_an_unreachable_job_server_is_one_line(tmp_path, suffix):
    port = _free_port(suffix)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "tsearch.cli.main", "submit", "experiments/smoke.yaml",
         "--address", f"http://127.0.0.1:{port}", "--set", f"tracking.uri={SERVER}",
         "--set", "search.storage_path=/shared/ray"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and f":{port}" in lines[0], lines
