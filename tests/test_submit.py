"""Cluster-mode plumbing that needs no cluster: environment defaults and `tsearch submit` checks.

The real job submission runs against a 3-node cluster in tests/test_cluster.py.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, SMOKE

from tsearch.errors import ConfigError, TsearchError
from tsearch.search.submit import dashboard_address, entrypoint, job_env
from tsearch.timesteps import load_config

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


SECRET_SERVER = "http://alice:s3cret@10.9.8.7:5000"


def _job_argv(command: str, env: dict[str, str]) -> list[str]:
    """The arguments `tsearch` receives when the job's shell runs ``command`` (Ray runs the
    entrypoint with shell=True, in the environment of the job's runtime_env)."""
    proc = subprocess.run(["sh", "-c", 'tsearch() { printf "%s\\n" "$@"; }; ' + command],
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                          check=True)
    return proc.stdout.splitlines()


def _sets(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


def test_entrypoint_is_a_search_of_the_uploaded_config_without_the_tracking_uri(monkeypatch):
    cfg = load_config(SMOKE, [f"tracking.uri={SECRET_SERVER}", "search.storage_path=/shared/ray"])
    command = entrypoint(cfg, SMOKE, ROOT, ["search.num_samples=2", "optim.lr=1e-3",
                                            f"tracking.uri={SECRET_SERVER}"])
    assert "s3cret" not in command and "10.9.8.7" not in command
    cmd = shlex.split(command)
    assert cmd[:3] == ["tsearch", "search", "experiments/smoke.yaml"]
    assert _sets(cmd) == ["search.num_samples=2", "optim.lr=1e-3",
                          "search.storage_path=/shared/ray"]
    # The job gets the URI from its environment, and its config resolves to the same one.
    assert job_env(cfg) == {"MLFLOW_TRACKING_URI": SECRET_SERVER}
    argv = _job_argv(command, job_env(cfg))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_SERVER)
    monkeypatch.delenv("TSEARCH_STORAGE_PATH", raising=False)
    job_cfg = load_config(ROOT / argv[1], _sets(argv))
    assert job_cfg.tracking.uri == SECRET_SERVER and job_cfg.search.storage_path == "/shared/ray"


def test_entrypoint_reads_the_uri_from_the_environment_over_the_files(tmp_path, monkeypatch):
    config = tmp_path / "exp.yaml"
    config.write_text(SMOKE.read_text().replace("tracking:\n", "tracking:\n  uri: "
                                                "http://from-the-file:5000\n", 1))
    cfg = load_config(config, [f"tracking.uri={SECRET_SERVER}", "search.storage_path=/s"])
    command = entrypoint(cfg, config, tmp_path, [f"tracking.uri={SECRET_SERVER}"])
    assert "s3cret" not in command and command.endswith('"tracking.uri=$MLFLOW_TRACKING_URI"')
    argv = _job_argv(command, job_env(cfg))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_SERVER)
    assert load_config(tmp_path / argv[1], _sets(argv)).tracking.uri == SECRET_SERVER
    # The file's own URI needs no help from the command line.
    same = load_config(config, ["search.storage_path=/s"])
    assert "tracking.uri" not in entrypoint(same, config, tmp_path, [])


class _Recorder:
    """Stands in for Ray's JobSubmissionClient: keeps what the job would be given."""

    def __init__(self) -> None:
        self.jobs: list[dict] = []

    def submit_job(self, **job) -> str:
        self.jobs.append(job)
        return job["submission_id"]


def test_submit_prints_no_credentials_and_puts_the_uri_in_the_jobs_environment(
        capfd, monkeypatch):
    from cli_harness import run_cli

    import tsearch.search.submit as submit_module

    recorder = _Recorder()
    monkeypatch.setattr(submit_module, "_client", lambda url: recorder)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # submit may set it: undone after
    monkeypatch.chdir(ROOT)
    result = run_cli(capfd, "submit", "experiments/smoke.yaml", "--address",
                     "http://bob:hunter2@127.0.0.1:8265", "--set",
                     f"tracking.uri={SECRET_SERVER}", "--set", "search.storage_path=/shared/ray")
    assert result.code == 0, result.err
    assert "s3cret" not in result.out + result.err and "hunter2" not in result.out + result.err
    assert "--tracking-uri http://alice:***@10.9.8.7:5000" in result.out
    assert "to http://bob:***@127.0.0.1:8265" in result.out
    (job,) = recorder.jobs
    assert "s3cret" not in job["entrypoint"] and job["entrypoint"] in result.out
    assert job["runtime_env"]["env_vars"] == {"MLFLOW_TRACKING_URI": SECRET_SERVER}


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
