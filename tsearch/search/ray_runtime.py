"""Starting or joining Ray, failing fast with one clear line when it cannot be reached."""

from __future__ import annotations

import os
import socket
import sys

from tsearch.errors import TsearchError


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


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Local Ray on loopback (no address) or an existing cluster (``--address`` / RAY_ADDRESS).

    A local single-node Ray binds 127.0.0.1 only: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes
    Ray use the loopback address for its node, and it must be set before ray is imported.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
            import ray._private.ray_constants as rc

            rc.ENABLE_RAY_CLUSTER = False  # already imported: switch the constant it read
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    import ray

    if ray.is_initialized():
        return
    check_ray_address(address)
    try:
        if address is None:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=True, configure_logging=True, logging_level="warning")
        else:
            ray.init(address=address, log_to_driver=True, logging_level="warning")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TsearchError(f"could not connect to Ray at {address or 'local'}: {first[:200]}; "
                           "check --address and the cluster token (RAY_AUTH_TOKEN)") from None


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
