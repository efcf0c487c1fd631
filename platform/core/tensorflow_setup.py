"""Start TensorFlow quietly, with the thread pools and GPU memory settings a process wants.

TensorFlow's C++ start-up lines (the oneDNN notice, CUDA stub and ``cuInit`` probes on machines
without a GPU) are written straight to file descriptor 2 before absl logging is initialised, so
``TF_CPP_MIN_LOG_LEVEL`` cannot hide them. In the CLI and in every Ray actor that runs the
embedding network they would be printed once per process; :func:`start_tensorflow` points fd 2 at
``/dev/null`` while TensorFlow imports and creates its devices (set ``FACENET_TF_VERBOSE=1`` to
keep them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

logger = logging.getLogger(__name__)

VERBOSE_ENV = "FACENET_TF_VERBOSE"


@contextlib.contextmanager
def _stderr_silenced(enabled: bool = True) -> Iterator[None]:
    """Point file descriptor 2 at /dev/null inside the block (Python's ``sys.stderr`` too)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def start_tensorflow(num_threads: int | None = None, *, quiet: bool | None = None) -> None:
    """Import TensorFlow, set its thread pools, enable GPU memory growth, create the devices.

    Args:
        num_threads: intra-op threads (inter-op: ``min(2, num_threads)``); None keeps
            TensorFlow's defaults (all cores).
        quiet: hide TensorFlow's C++ start-up lines; None: unless ``$FACENET_TF_VERBOSE`` is set.

    Thread settings only take effect before TensorFlow runs anything in this process; later
    calls keep the settings already in force (logged at debug level).
    """
    if quiet is None:
        quiet = not os.environ.get(VERBOSE_ENV)
    with _stderr_silenced(quiet):
        import tensorflow as tf

        try:
            if num_threads:
                tf.config.threading.set_intra_op_parallelism_threads(int(num_threads))
                tf.config.threading.set_inter_op_parallelism_threads(min(2, int(num_threads)))
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # already initialised in this process
            logger.debug("TensorFlow already initialised (%s); keeping its settings", exc)
        tf.config.list_logical_devices()
