"""Test-only fault injection of ``index build``: how the tests kill and fail a build on purpose.

``$FACENET_INDEX_FAULTS`` (:data:`FAULTS_ENV`) is read by the driver (:func:`parse_faults`) and
handed to the stages' actors (:class:`StageFaults`). It is comma-separated ``key=value`` of:

- ``exit_before_commit=N`` / ``exit_after_commit=N``: the driver process exits with code
  :data:`FAULT_EXIT_CODE` once the N-th commit of the run is staged / recorded but not yet moved
  (:func:`exit_if_due`);
- ``kill_detect_worker=DIR[:N]`` / ``kill_embed_worker=DIR[:N]``: that actor's process exits on
  its N-th batch, once (``DIR/<key>.done`` marks it done, so the restarted actor carries on);
- ``fail_detect_path=SUBSTR`` / ``fail_embed_path=SUBSTR``: that stage raises on paths
  containing SUBSTR;
- ``fail_detect_init=1``: the detection actors cannot start (the job fails);
- ``delay_embed=SECONDS``: every embedding batch sleeps that long (a build that stays busy long
  enough for a test to kill a node in the middle of it).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

__all__ = ["FAULTS_ENV", "FAULT_EXIT_CODE", "StageFaults", "exit_if_due", "parse_faults"]

FAULTS_ENV = "FACENET_INDEX_FAULTS"
#: Exit code of a driver that an ``exit_*_commit`` fault stopped.
FAULT_EXIT_CODE = 75


def parse_faults() -> dict[str, str]:
    """The faults of :data:`FAULTS_ENV` as ``{key: value}`` (empty when unset)."""
    raw = os.environ.get(FAULTS_ENV, "").strip()
    if not raw:
        return {}
    faults = {}
    for item in raw.split(","):
        key, _, value = item.strip().partition("=")
        if key:
            faults[key] = value
    logger.warning("fault injection active (%s=%s): for tests only", FAULTS_ENV, raw)
    return faults


def exit_if_due(faults: dict[str, str], key: str, number: int) -> None:
    """Exit this process with :data:`FAULT_EXIT_CODE` when ``faults[key]`` is ``number``."""
    value = faults.get(key)
    if value and int(value) == number:
        logger.warning("injected fault %s=%s: exiting", key, value)
        logging.shutdown()
        os._exit(FAULT_EXIT_CODE)


class StageFaults:
    """The faults a stage's actor acts on (worker side)."""

    def __init__(self, faults: dict[str, str] | None):
        self.faults = dict(faults or {})
        self.calls = 0

    def fail_path(self, key: str, path: str) -> None:
        """Raise when ``faults[key]`` is a substring of ``path``."""
        needle = self.faults.get(key)
        if needle and needle in path:
            raise RuntimeError(f"injected {key} fault")

    def maybe_delay(self, key: str) -> None:
        """Sleep the given seconds per batch (keeps a build busy long enough to disturb it)."""
        seconds = self.faults.get(key)
        if seconds:
            import time

            time.sleep(float(seconds))

    def maybe_kill(self, key: str) -> None:
        """Kill this worker process once (a marker file makes the restarted worker carry on)."""
        self.calls += 1
        spec = self.faults.get(key)
        if not spec:
            return
        marker_dir, _, nth = spec.partition(":")
        if self.calls < int(nth or 1):
            return
        marker = os.path.join(marker_dir, f"{key}.done")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        logger.warning("injected fault %s: killing worker pid %d", key, os.getpid())
        os._exit(1)
