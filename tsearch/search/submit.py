"""Submit a search to a Ray cluster as a Ray Job (``tsearch submit``).

The job runs ``tsearch search`` on the head node with the working directory uploaded, so the
submitting machine can go away. Everything the job needs is resolved here first: the config is
validated locally (a bad key fails before anything is uploaded) and the storage path is written
into the entrypoint, since the job does not see this shell's environment. The tracking URI may
hold credentials (``http://user:password@host``), so it never enters the command line that Ray
shows, logs and prints: it travels in the job's ``runtime_env`` as ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tsearch import names
from tsearch.config import Config
from tsearch.errors import ConfigError, TsearchError

# Never uploaded: environments, results and caches (Ray also skips what .gitignore lists).
EXCLUDES = [".venv/", ".git/", "tsearch-runs/", "__pycache__/", "*.pt", "*.ckpt", ".ruff_cache/",
            ".pytest_cache/", ".hypothesis/"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class Submission:
    job_id: str
    address: str
    entrypoint: str


def dashboard_address(address: str | None) -> str:
    """The Ray Jobs API address: --address, else RAY_API_SERVER_ADDRESS (as `ray job` does)."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or ""
    if not address:
        raise TsearchError("give the cluster's job server: --address http://HEAD:8265 "
                           "(or set RAY_API_SERVER_ADDRESS)")
    if not address.startswith(("http://", "https://")):
        raise TsearchError(f"--address {address!r} is not the Ray Jobs API: give the head's "
                           "dashboard URL, e.g. http://HEAD:8265 (not the GCS port 6379)")
    return address.rstrip("/")


TRACKING_ENV = "MLFLOW_TRACKING_URI"  # tsearch (like MLflow) fills tracking.uri from it


def entrypoint(cfg: Config, config: Path, working_dir: Path, overrides: list[str]) -> str:
    """The ``tsearch search`` command the job runs, relative to the uploaded working dir.

    ``tracking.uri`` overrides are left out (the job's environment carries the URI). Only when
    the config file sets another URI, which would win over the environment, does the command
    read it back from the environment: ``$MLFLOW_TRACKING_URI``, expanded by the job's shell.
    """
    try:
        rel = config.resolve().relative_to(working_dir.resolve())
    except ValueError:
        raise TsearchError(f"config {str(config)!r} is outside the working directory "
                           f"{str(working_dir)!r} that is uploaded: move it there or pass "
                           "--working-dir") from None
    uri, storage = cfg.tracking.uri, cfg.search.storage_path
    if not uri.startswith(("http://", "https://", "databricks")):
        raise ConfigError(f"config error: tracking.uri = {names.mask_uri(uri)!r}: a submitted "
                          "search runs on the cluster, which cannot write this machine's files; "
                          "use an MLflow server (--set tracking.uri=http://HOST:5000 or "
                          "MLFLOW_TRACKING_URI)")
    if "://" not in storage and not Path(storage).is_absolute():
        raise ConfigError(f"config error: search.storage_path = {storage!r}: relative paths land "
                          "in the job's temporary working directory; give a shared absolute "
                          "path or a bucket URI (--set search.storage_path=/shared/ray or "
                          "TSEARCH_STORAGE_PATH)")
    kept = [o for o in overrides if o.partition("=")[0].strip() != "tracking.uri"]
    command = shlex.join(["tsearch", "search", rel.as_posix(),
                          *(a for o in kept for a in ("--set", o)),
                          "--set", f"search.storage_path={storage}"])
    if _file_tracking_uri(config) not in (None, uri):
        command += f' --set "tracking.uri=${TRACKING_ENV}"'
    return command


def _file_tracking_uri(config: Path) -> str | None:
    """The ``tracking.uri`` the config file itself sets (it wins over the environment)."""
    from tsearch.config import read_yaml

    section = read_yaml(config).get("tracking")
    uri = section.get("uri") if isinstance(section, dict) else None
    return str(uri).strip() if uri is not None else None


def job_env(cfg: Config) -> dict[str, str]:
    """The environment the job gets through its ``runtime_env`` (not its command line)."""
    return {TRACKING_ENV: cfg.tracking.uri}


def submit(cfg: Config, config: Path, overrides: list[str], *, address: str | None,
           working_dir: Path, name: str) -> Submission:
    """Upload ``working_dir`` and start the search as a Ray Job; return at once."""
    from tsearch.search.ray_runtime import prepare_token_auth

    url = dashboard_address(address)
    command = entrypoint(cfg, config, working_dir, overrides)
    prepare_token_auth()
    client = _client(url)
    job_id = f"tsearch-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        client.submit_job(
            entrypoint=command, submission_id=job_id,
            runtime_env={"working_dir": str(working_dir.resolve()), "excludes": EXCLUDES,
                         "env_vars": job_env(cfg)},
            metadata={names.TAG_SEARCH: name}, entrypoint_num_cpus=0,
        )
    except Exception as exc:
        shown = names.mask_uri(url)
        raise TsearchError(f"Ray job server at {shown} refused the job: "
                           f"{_first_line(exc).replace(url, shown)}") from None
    return Submission(job_id=job_id, address=url, entrypoint=command)


def follow(sub: Submission, poll: float = 2.0, out=None) -> str:
    """Stream the job's log until it ends; return its final status."""
    out = out or sys.stdout
    client = _client(sub.address)
    shown = 0
    while True:
        status = str(client.get_job_status(sub.job_id).value)
        logs = client.get_job_logs(sub.job_id)
        if len(logs) > shown:
            out.write(logs[shown:])
            out.flush()
            shown = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll)


def _client(url: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url)
    except Exception as exc:
        shown = names.mask_uri(url)
        text = _first_line(exc).replace(url, shown)
        # Status codes as whole words: a port like 53403 in the URL is not an HTTP 403.
        if "auth" in text.lower() or re.search(r"(?<![\d:])40[13](?!\d)", text):
            raise TsearchError(f"Ray job server at {shown} refused this client: it needs the "
                               "cluster's token in RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)"
                               ) from None
        raise TsearchError(f"Ray job server at {shown} is unreachable ({text}); check --address "
                           "(the head's dashboard, default port 8265)") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
