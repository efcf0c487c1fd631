"""One writer at a time: a lock file beside the data it guards.

A :class:`WriterLock` is a small JSON file (``{"owner", "host", "pid", "started_at", "what"}``)
created with ``O_CREAT | O_EXCL`` on the local filesystem, so two processes can never both take
it. A lock whose holder is gone (same host, dead pid) is stale and taken over; a live holder
makes :meth:`WriterLock.acquire` raise :class:`IndexBusyError` (or the subclass the caller
names) saying who holds it and since when. The index build (``_collection/LOCK``) and the
people store (``people/LOCK``) both use it.

On filesystems other than the local one the lock is advisory (written, not checked
atomically): object stores have no exclusive create that pyarrow exposes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

import pyarrow.fs as pafs

from facenet_platform.core.errors import FaceNetPlatformError

from .layout import IndexLayout

logger = logging.getLogger(__name__)

__all__ = ["IndexBusyError", "WriterLock", "holder_alive"]


class IndexBusyError(FaceNetPlatformError):
    """Another process is writing the same part of the same index directory."""


class WriterLock:
    """The lock file ``path`` of one writer role in an index directory.

    Args:
        layout: the index directory.
        path: the lock file (absolute on ``layout.fs``).
        what: what the holder is doing, for messages (``"index build"``, ``"people change"``).
        busy_error: the :class:`IndexBusyError` subclass to raise when it is held.
    """

    def __init__(self, layout: IndexLayout, path: str, what: str,
                 busy_error: type[IndexBusyError] = IndexBusyError):
        self.layout = layout
        self.path = path
        self.what = what
        self.busy_error = busy_error

    def acquire(self, owner: str, **details: Any) -> None:
        """Take the lock for ``owner`` (a run or transaction id); ``details`` are recorded.

        Raises:
            IndexBusyError: (``busy_error``) a live process holds it.
        """
        fs = self.layout.fs
        fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        me = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "what": self.what, **details}
        payload = json.dumps(me).encode()
        if not isinstance(fs, pafs.LocalFileSystem):
            holder = self.holder()
            if holder is not None and holder_alive(holder):
                raise self._busy(holder)
            self.layout.write_bytes_atomic(self.path, payload)
            return
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    # being written right now (created, not yet filled) or torn: a moment later
                    # it is readable; a torn one is as good as stale
                    time.sleep(0.05)
                    holder = self.holder()
                if holder is not None and holder_alive(holder):
                    raise self._busy(holder) from None
                logger.warning("taking over the lock %s of an interrupted %s (%s)", self.path,
                               self.what, holder)
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
            return
        raise self.busy_error(f"could not take the lock {self.path}")

    def _busy(self, holder: dict) -> IndexBusyError:
        return self.busy_error(
            f"{self.layout.root} is being written by another {holder.get('what') or self.what} "
            f"(pid {holder.get('pid')} on {holder.get('host')}, since "
            f"{holder.get('started_at')}, {holder.get('owner') or holder.get('run_id')}); "
            f"wait for it or stop it. If none is running, delete {self.path}")

    def holder(self) -> dict | None:
        """The holder's record, or None when the lock is free (or unreadable)."""
        try:
            with self.layout.fs.open_input_stream(self.path) as src:
                return json.loads(src.read())
        except (OSError, ValueError):
            return None

    def release(self, owner: str) -> None:
        """Delete the lock if ``owner`` holds it."""
        holder = self.holder()
        if holder is not None and (holder.get("owner") or holder.get("run_id")) == owner:
            try:
                self.layout.fs.delete_file(self.path)
            except FileNotFoundError:
                pass


def holder_alive(holder: dict) -> bool:
    """Whether the process recorded in a lock may still run (other hosts: assumed alive)."""
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell: assume it runs
    try:
        pid = int(holder["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    # Our own pid: a writer of this process that ended without releasing (they always do, in a
    # finally), so the lock is stale.
    return pid != os.getpid()
