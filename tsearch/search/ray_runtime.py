"""Starting or joining Ray, failing fast with one clear line when it cannot be reached."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from tsearch.errors import TsearchError
from tsearch.log import get_logger

log = get_logger(__name__)


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_ray_address(address: str | None) -> None:
    """Fail in seconds, before anything starts, when a cluster address does not answer."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address.startswith(("ray://", "auto", "local")):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not _reachable(host, int(port)):
        raise TsearchError(
            f"Ray cluster at {address!r} is unreachable; start it (ray start --head) or "
            "check --address / RAY_ADDRESS (HOST:PORT of the head's GCS, default port 6379)")


def init_ray(address: str | None, num_cpus: int | None = None) -> Path | None:
    """Local Ray on loopback (no address) or an existing cluster (``--address`` / RAY_ADDRESS).

    A local single-node Ray binds 127.0.0.1 only: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes
    Ray use the loopback address for its node, and it must be set before ray is imported.
    Returns the session directory of a local Ray this call started (its owner should
    :func:`end_session` it), None when Ray was running already or is a cluster.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
            import ray._private.ray_constants as rc

            rc.ENABLE_RAY_CLUSTER = False  # already imported: switch the constant it read
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        # Ray's default for a new local cluster, said explicitly: Ray then does not print a
        # warning line about it before our own output. Only before Ray is imported: Ray reads
        # it at import, and a driver that read "unset" is refused by a cluster started with it.
        if "ray" not in sys.modules:
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Tiny trials checkpoint every few seconds by design; Tune warns about each snapshot.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    if ray.is_initialized():
        return None
    check_ray_address(address)
    if address is not None:
        prepare_token_auth()
    try:
        if address is None:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=True, configure_logging=True, logging_level="warning")
        else:
            ray.init(address=address, log_to_driver=True, logging_level="warning")
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, AuthenticationError...
        text = str(exc).strip()
        if "authentication token" in text.lower() or "Unauthenticated" in text:
            raise TsearchError(
                f"Ray cluster at {address} refused this driver: it needs the cluster's token. "
                "Set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH to a file holding it); on the head, "
                "`ray get-auth-token` prints it") from None
        first = text.splitlines()[0] if text else type(exc).__name__
        if address is not None and not _has_token():
            raise TsearchError(
                f"could not connect to Ray at {address} ({first[:120]}) and this driver has no "
                "cluster token: if the cluster uses token authentication (Ray's default), set "
                "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH; `ray get-auth-token` on the head prints "
                "it") from None
        raise TsearchError(f"could not connect to Ray at {address or 'local'}: {first[:200]}; "
                           "check --address and the cluster token (RAY_AUTH_TOKEN)") from None
    if address is not None:
        return None
    return _session_dir()  # None (nothing to clean up) for a Ray without this private API


def _session_dir() -> Path | None:
    """This process's Ray session folder, or None when Ray hides it."""
    import ray

    try:
        return Path(ray._private.worker._global_node.get_session_dir_path())
    except AttributeError:
        return None


def ray_temp_root() -> Path | None:
    """The folder holding this machine's Ray session folders (where a killed driver's staged
    Tune state survives), or None when Ray is not running here or hides it."""
    session = _session_dir()
    return None if session is None else session.parent


def end_session(session_dir: Path, keep_logs: bool = False) -> None:
    """Stop the local Ray this process started and delete its session directory.

    A session directory holds Ray's logs, sockets and spilled objects (hundreds of MB after a
    search); nothing of a search's results lives there. After a failure it is kept for its
    logs and its path is printed.
    """
    import shutil

    import ray

    if ray.is_initialized():
        ray.shutdown()
    if keep_logs:
        log.info(f"Ray's logs of this search: {session_dir / 'logs'} (delete {session_dir} when "
                 "done)")
        return
    latest = session_dir.parent / "session_latest"
    if latest.is_symlink() and latest.resolve() == session_dir.resolve():
        latest.unlink(missing_ok=True)
    shutil.rmtree(session_dir, ignore_errors=True)


def prepare_token_auth() -> None:
    """A token is given (env, token file): use it, don't guess. Ray only does so for local Ray."""
    if _has_token() and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"


def _has_token() -> bool:
    """A cluster token is available the ways Ray looks for one (env, token file, ~/.ray)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).expanduser().is_file() if path else (
        Path.home() / ".ray" / "auth_token").is_file()


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
