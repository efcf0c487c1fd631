"""Connecting to Ray, the one way every command does it (index build, index search, train, serve).

    connect_ray(resolve_address(options.address), num_cpus=options.num_cpus)

- An initialised Ray is used as is (a test, a notebook or a Ray job already connected).
- An address (``host:port``, ``ray://host:port``, ``auto``) is first checked for reachability
  (:func:`check_reachable`), so that a wrong address fails in seconds with a clear
  :class:`RayConnectionError` instead of ``ray.init`` retrying for minutes.
- No address starts a local Ray (``address="local"`` forces a new one even when a cluster started
  with ``ray start`` runs on this machine).

This module imports Ray only inside its functions: importing it costs nothing, so ``core`` and the
command-line parser stay free of Ray.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from facenet_platform.core.errors import FaceNetPlatformError

logger = logging.getLogger(__name__)

__all__ = ["RayConnectionError", "check_ray_address", "check_reachable", "connect_ray",
           "resolve_address"]


class RayConnectionError(FaceNetPlatformError, ConnectionError):
    """The Ray cluster named by ``--address`` / ``RAY_ADDRESS`` cannot be reached."""


def resolve_address(address: str | None) -> str | None:
    """The Ray address to use: ``address`` if given, else ``$RAY_ADDRESS``, else ``None``
    (a local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def _split_address(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (instead of ``ray.init`` retrying for minutes) when ``address`` is closed.

    Args:
        address: ``host:port`` or ``ray://host:port``; ``auto`` and ``local`` are not checked.
        timeout: seconds to wait for the TCP connection.

    Raises:
        RayConnectionError: ``address`` is malformed or nothing listens there.
    """
    if address in ("auto", "local"):
        return
    target = _split_address(address)
    if target is None:
        raise RayConnectionError(
            f"Ray address {address!r} is not host:port or ray://host:port (or 'auto')")
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RayConnectionError(
            f"cannot reach the Ray cluster at {address} ({reason}): check --address or "
            "RAY_ADDRESS, start a cluster with `ray start --head`, or leave both unset to run on "
            "a local Ray") from None


def check_ray_address(address: str | None) -> None:
    """:func:`check_reachable` for ``address`` unless it is ``None`` or Ray is initialised
    already (then nothing will connect): lets a command fail fast before any other work."""
    if not address:
        return
    import ray

    if not ray.is_initialized():
        check_reachable(address)


def connect_ray(address: str | None, *, num_cpus: int | None = None, log_to_driver: bool = True,
                logging_level: int | None = None) -> bool:
    """Use the initialised Ray, or connect to ``address``, or start a local Ray.

    Args:
        address: the cluster (``host:port``, ``ray://host:port``, ``auto``); ``None`` starts a
            local Ray unless one started with ``ray start`` runs on this machine (then Ray joins
            it); ``"local"`` always starts a new local Ray. Resolve ``$RAY_ADDRESS`` first with
            :func:`resolve_address` where it applies.
        num_cpus: logical CPUs of a local Ray this call starts (ignored, with a warning, when
            connecting to a cluster).
        log_to_driver: stream the workers' logs to this process.
        logging_level: level of Ray's own logger on this process (default: Ray's).

    Returns:
        True when this call connected or started Ray, False when Ray was initialised already.

    Raises:
        RayConnectionError: the cluster cannot be reached.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # inherited by local workers
    kwargs: dict[str, Any] = {"log_to_driver": log_to_driver}
    if logging_level is not None:
        kwargs["logging_level"] = logging_level
    if address and address != "local":
        check_reachable(address)
        kwargs["address"] = address
        if num_cpus:
            logger.warning("num_cpus=%s ignored: connecting to the cluster at %s", num_cpus,
                           address)
    else:
        if address:
            kwargs["address"] = address
        kwargs["include_dashboard"] = False
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise RayConnectionError(f"cannot connect to Ray at {address or 'a local cluster'}: "
                                 f"{' '.join(str(exc).split())}") from None
    return True
