"""``index build``: index every face of a photo collection into Parquet, with Ray Data.

    summary = build_index(["photos/", "@more.txt"], "my-index")

What a build does:

1. **List** the SOURCEs (:mod:`.sources`): folders (recursive), globs, list files, files.
2. **Recover** the index (finish or drop what an interrupted build left, see :mod:`.collection`)
   and load its ``files`` log: path -> (size, mtime, content hash, status).
3. **Skip what is known.** A file whose (path, size, mtime) is in the log is not even read
   (``rehash=True`` reads it anyway). The others are read and hashed (sha256) by Ray tasks; a
   file whose content hash is already indexed (a copy, a touched file) is recorded under its new
   path without being processed again, and files with the same content in one run are
   processed once.
4. **Process the new content** as one streaming Ray Data job::

       from_arrow(new files) -> map_batches(read_decode)            tasks
                             -> map_batches(DetectAlign, ActorPool)  MTCNN + crop + sharpness
                             -> map_batches(Embed, ActorPool)        FaceNet, big batches, GPU
                             -> iter_batches() on the driver -> commits

   A file that fails (read, decode, detect, embed) is recorded with its stage and reason and
   never fails the job; a file without faces is recorded as such, so neither is processed again.
5. **Commit** finished files every ``commit_every_files`` files or ``commit_every_seconds``
   seconds, atomically (staging + commit record + rename, :meth:`CollectionStore.commit`), so a
   build killed at any point and started again ends with the same faces as a clean build: no
   face lost, none twice (faces are keyed by ``(content_hash, face_index)``).
6. **Prune.** A path of the files log that a folder or glob SOURCE covers but did not list any
   more (the file was deleted or renamed) gets a ``removed`` row; a path whose bytes changed
   gets its new content. Readers then show only the faces of live content
   (:func:`~.collection.live_content`), so a re-run on the same SOURCE equals a fresh build of
   what is there now. Faces are never rewritten: the same content coming back is live again at
   no cost.
7. Update the ``collection`` section of ``manifest.json`` and return a :class:`BuildSummary`.

Ray: an initialised Ray is used as is; otherwise ``ray.init(address)`` with ``address`` from
the options or ``$RAY_ADDRESS`` (checked for reachability first, so a wrong address fails in
seconds with a clear message), else a local Ray is started. On a cluster the workers must be
able to import ``facenet_platform`` (install it on the nodes or pass a runtime env) and read the
SOURCE paths; the driver writes the index, so a local INDEX_DIR is written on this machine.

Pool sizes, batch sizes and CPUs/GPUs per actor default to a plan derived from
``ray.cluster_resources()`` (:func:`plan_resources`): on 2 CPUs, one detection and one
embedding actor of 0.75 CPU each and decode tasks of 0.25 CPU, so both cores stay busy; with
GPUs, one embedding actor per GPU with batches of 256 crops and the CPUs for detection.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facenet_platform.core.errors import ConfigError, FaceNetPlatformError
from facenet_platform.core.facetable import fixed_size_list
from facenet_platform.core.model_spec import ModelSpec

from .collection import (FACES, FAILURES, FAILURES_SCHEMA, FILES, FILES_SCHEMA, SCHEMA_VERSION,
                         STATUS_FAILED, STATUS_INDEXED, STATUS_NO_FACE, STATUS_REMOVED,
                         CollectionStore, faces_table_schema, latest_per_path, live_content,
                         new_run_id)
from .layout import IndexLayout, read_manifest, update_manifest
from .sources import SourceFile, is_uri, list_sources

logger = logging.getLogger(__name__)

__all__ = ["BuildJobError", "BuildOptions", "BuildSummary", "RayConnectionError", "ResourcePlan", "build_index",
           "ensure_ray", "plan_resources", "FAULTS_ENV"]

#: Test-only fault injection, read by :func:`build_index` in the driver and handed to the
#: stages: comma-separated ``key=value`` of
#: ``exit_before_commit=N`` / ``exit_after_commit=N`` (the driver process exits with code 75
#: once the N-th commit of the run is staged / recorded but not yet moved),
#: ``kill_detect_worker=DIR[:N]`` / ``kill_embed_worker=DIR[:N]`` (that actor's process exits
#: on its N-th batch, once: ``DIR/<key>.done`` marks it done, so the restarted actor carries on),
#: ``fail_detect_path=SUBSTR`` / ``fail_embed_path=SUBSTR`` (that stage raises on paths
#: containing SUBSTR), ``fail_detect_init=1`` (the detection actors cannot start: the job fails),
#: ``delay_embed=SECONDS`` (every embedding batch sleeps that long: a build that stays busy long
#: enough for a test to kill a node in the middle of it).
FAULTS_ENV = "FACENET_INDEX_FAULTS"
_FAULT_EXIT_CODE = 75


class RayConnectionError(FaceNetPlatformError, ConnectionError):
    """The Ray cluster named by ``--address`` / ``RAY_ADDRESS`` cannot be reached."""


class BuildJobError(FaceNetPlatformError):
    """The Ray Data job itself failed (not one file: e.g. a stage could not load its model).
    What was committed before stays; running the build again resumes from there."""


_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit|Interrupt)): (.+)$")


def _job_error_text(exc: BaseException) -> str:
    """One line saying what killed a Ray job: the innermost error, even when Ray only kept it
    as text (an actor's creation error arrives as the traceback inside ActorDiedError)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in chain):
        chain.append(current)
        current = (getattr(current, "cause", None) if isinstance(
            getattr(current, "cause", None), BaseException) else None) \
            or current.__cause__ or current.__context__
    ours = [e for e in chain if isinstance(e, FaceNetPlatformError)]
    if ours:
        return str(ours[-1])
    best = None
    for error in chain:
        for line in str(error).splitlines():
            match = _ERROR_LINE.match(line)
            if match and match.group(1) not in ("SystemException", "RayTaskError"):
                candidate = f"{match.group(1)}: {match.group(2).strip()}"
                if best is None or "facenet_platform" in line:
                    best = candidate
    if best:
        return best
    inner = chain[-1]
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    return f"{type(inner).__name__}: {lines[-1]}" if lines else type(inner).__name__


# --------------------------------------------------------------------------------------------
# options, plan, summary


@dataclass
class BuildOptions:
    """Options of :func:`build_index` (``None`` means: from the resource plan).

    Attributes:
        address: Ray cluster address (``host:port``, ``ray://host:port``, ``auto``); default
            ``$RAY_ADDRESS``, else a local Ray.
        num_cpus: CPUs of the local Ray this call starts (ignored with ``address``).
        detect_actors, embed_actors: actor pool sizes.
        detect_cpus, embed_cpus: logical CPUs per actor (also their thread counts, rounded).
        embed_gpus: GPUs per embedding actor (0 for CPU; default 1 when the cluster has GPUs).
        decode_cpus: logical CPUs per read+decode task.
        read_batch_size: files per read+decode batch; detect_batch_size: images per detection
            batch; embed_batch_size: face crops per embedding batch (64 on CPU, 256 on GPU).
        model: a trained model path (checkpoint folder, ``.keras``, SavedModel, ``.tflite``);
            its spec sets the crop of every actor (default: the pretrained 20180408-102900).
        backend: embedding numerics (``facenet_platform.core.backends``: keras-fp32,
            keras-bf16, onnx-fp32, onnx-int8); recorded in the manifest.
        min_face_size: smallest face, pixels (MTCNN).
        max_pixels: decompression-bomb limit per image (default ``$FACENET_MAX_PIXELS`` or 40 MP).
        commit_every_files, commit_every_seconds: how often finished files are committed
            (what a killed build can lose and redo).
        max_rows_per_file: faces per Parquet part file at most.
        rehash: read and hash every file, even those whose (path, size, mtime) is known.
        retry_failed: process again files whose content failed before.
        progress: Ray Data progress bars.
        log_to_driver: stream the Ray workers' logs to this process (when starting Ray).
    """

    address: str | None = None
    num_cpus: int | None = None
    detect_actors: int | None = None
    embed_actors: int | None = None
    detect_cpus: float | None = None
    embed_cpus: float | None = None
    embed_gpus: float | None = None
    decode_cpus: float | None = None
    read_batch_size: int = 8
    detect_batch_size: int = 16
    embed_batch_size: int | None = None
    model: str | None = None
    backend: str | None = None
    min_face_size: int = 20
    max_pixels: int | None = None
    commit_every_files: int = 1000
    commit_every_seconds: float = 60.0
    max_rows_per_file: int = 20_000
    rehash: bool = False
    retry_failed: bool = False
    progress: bool = True
    log_to_driver: bool = True

    def validate(self) -> None:
        for name in ("detect_actors", "embed_actors", "num_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        for name in ("read_batch_size", "detect_batch_size", "commit_every_files",
                     "max_rows_per_file", "min_face_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_batch_size is not None and self.embed_batch_size < 1:
            raise ConfigError(f"embed_batch_size must be >= 1, got {self.embed_batch_size}")
        for name in ("detect_cpus", "embed_cpus", "decode_cpus", "embed_gpus"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if self.commit_every_seconds <= 0:
            raise ConfigError(f"commit_every_seconds must be > 0, got {self.commit_every_seconds}")


@dataclass(frozen=True)
class ResourcePlan:
    """Pool sizes and per-actor resources of one build."""

    detect_actors: int
    detect_cpus: float
    detect_threads: int
    embed_actors: int
    embed_cpus: float
    embed_gpus: float
    embed_threads: int
    embed_batch_size: int
    model_batch_size: int
    decode_cpus: float
    cluster_cpus: float
    cluster_gpus: float


#: Fraction of the CPUs left after read+decode that the CPU plan gives to detection actors.
DETECT_SHARE = 2 / 3


def plan_resources(options: BuildOptions, cluster: dict[str, float]) -> ResourcePlan:
    """Defaults for what ``options`` leaves open, from ``ray.cluster_resources()``.

    CPU only: keep ``max(0.5, 10 %)`` of the CPUs for read+decode tasks and give
    :data:`DETECT_SHARE` of the rest to detection, the remainder to embedding (measured per core:
    MTCNN 16-18 ms per photo, bf16 embedding 8.4 ms per face, about 1.2 faces per photo); on
    fewer than 4 CPUs one actor of each with fractional CPUs, so nothing waits for a CPU the
    actors reserved. GPUs: one embedding actor per GPU (batch 256), detection on the
    CPUs (the MTCNN backend is CPU-only).
    """
    cpus = float(cluster.get("CPU", 1.0)) or 1.0
    gpus = float(cluster.get("GPU", 0.0))
    embed_gpus = options.embed_gpus if options.embed_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if embed_gpus > 0 and gpus <= 0:
        raise ConfigError(f"embed_gpus={embed_gpus} but the Ray cluster has no GPU")
    reserve = max(0.5, 0.1 * cpus)
    avail = max(cpus - reserve, 0.5)
    if embed_gpus > 0:
        embed_actors = options.embed_actors or max(1, int(gpus // embed_gpus))
        embed_cpus = options.embed_cpus if options.embed_cpus is not None else min(1.0, avail / 4)
        left = max(avail - embed_actors * embed_cpus, 0.5)
        detect_actors = options.detect_actors or max(1, int(left))
        detect_cpus = options.detect_cpus if options.detect_cpus is not None else \
            min(1.0, left / detect_actors)
        embed_batch = options.embed_batch_size or 256
        model_batch = embed_batch
    else:
        detect_actors = options.detect_actors or max(1, int(avail * DETECT_SHARE))
        embed_actors = options.embed_actors or max(1, int(avail - detect_actors))
        per_actor = min(1.0, avail / (detect_actors + embed_actors))
        detect_cpus = options.detect_cpus if options.detect_cpus is not None else per_actor
        embed_cpus = options.embed_cpus if options.embed_cpus is not None else per_actor
        embed_batch = options.embed_batch_size or 64
        # FaceEmbedder pads every forward pass to its batch size: keep it small on CPU.
        model_batch = min(embed_batch, 32)
    decode_cpus = options.decode_cpus if options.decode_cpus is not None else 0.25
    return ResourcePlan(
        detect_actors=detect_actors, detect_cpus=round(detect_cpus, 3),
        detect_threads=max(1, round(detect_cpus)),
        embed_actors=embed_actors, embed_cpus=round(embed_cpus, 3), embed_gpus=embed_gpus,
        embed_threads=max(1, round(embed_cpus)), embed_batch_size=embed_batch,
        model_batch_size=model_batch, decode_cpus=decode_cpus,
        cluster_cpus=cpus, cluster_gpus=gpus,
    )


@dataclass
class BuildSummary:
    """What one :func:`build_index` call did.

    ``files_seen`` = ``files_new`` + ``files_skipped_known`` + ``files_duplicate`` + read
    failures (files that could not even be hashed). ``files_removed``: indexed paths under a
    SOURCE folder or glob that are gone (their faces are no longer shown); ``total_faces`` and
    ``total_files`` count what is live after this call. ``failures`` counts files of this run that
    failed at any stage (they are recorded; the build still succeeds). ``images_per_second`` is
    ``files_new / seconds`` (whole call, Ray start-up included); ``pipeline_seconds`` times the
    Ray Data job alone, ``first_result_seconds`` until its first output batch (actor start-up:
    model loading dominates it), which finished ``first_result_files`` files.
    """

    files_seen: int = 0
    files_new: int = 0
    files_skipped_known: int = 0
    faces: int = 0
    failures: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    files_duplicate: int = 0
    files_ignored: int = 0
    files_no_face: int = 0
    files_with_faces: int = 0
    failures_by_stage: dict[str, int] = field(default_factory=dict)
    pipeline_seconds: float = 0.0
    first_result_seconds: float = 0.0
    first_result_files: int = 0
    commits: int = 0
    run_id: str = ""
    index_dir: str = ""
    model_id: str = ""
    total_faces: int = 0
    total_files: int = 0
    files_removed: int = 0
    plan: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["pipeline_seconds"] = round(self.pipeline_seconds, 3)
        out["first_result_seconds"] = round(self.first_result_seconds, 3)
        out["images_per_second"] = round(self.images_per_second, 3)
        return out

    def format(self) -> str:
        """The human summary the CLI prints."""
        stages = ", ".join(f"{k} {v}" for k, v in sorted(self.failures_by_stage.items()))
        pipeline_rate = self.files_new / self.pipeline_seconds if self.pipeline_seconds else 0.0
        lines = [
            f"files:    {self.files_seen} seen: {self.files_new} new, "
            f"{self.files_skipped_known} already indexed, {self.files_duplicate} duplicate "
            f"content" + (f", {self.files_ignored} non-image files ignored"
                          if self.files_ignored else "")
            + (f", {self.files_removed} gone since the last build (removed)"
               if self.files_removed else ""),
            f"faces:    {self.faces} added from {self.files_with_faces} files "
            f"({self.files_no_face} without a face); index now holds {self.total_faces} faces, "
            f"{self.total_files} files",
            f"failures: {self.failures}"
            + (f" ({stages}), see {self.index_dir.rstrip('/')}/failures" if self.failures else ""),
            f"time:     {self.seconds:.1f} s, {self.images_per_second:.2f} images/s"
            + (f" (pipeline {self.pipeline_seconds:.1f} s, {pipeline_rate:.2f} images/s)"
               if self.pipeline_seconds else ""),
            f"index:    {self.index_dir} (run {self.run_id}, {self.commits} commit(s), "
            f"model {self.model_id})",
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Ray


def _split_address(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (instead of ``ray.init`` retrying for minutes) when ``address`` is closed."""
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


def _resolve_address(options: BuildOptions) -> str | None:
    return options.address or os.environ.get("RAY_ADDRESS") or None


def ensure_ray(options: BuildOptions) -> None:
    """Use the initialised Ray, or connect to / start one (see the module docstring)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # inherited by local workers
    address = _resolve_address(options)
    kwargs: dict[str, Any] = {"log_to_driver": options.log_to_driver,
                              "logging_level": logging.WARNING}
    if address:
        check_reachable(address)
        kwargs["address"] = address
        if options.num_cpus:
            logger.warning("num_cpus=%s ignored: connecting to the cluster at %s",
                           options.num_cpus, address)
    else:
        kwargs["include_dashboard"] = False
        if options.num_cpus:
            kwargs["num_cpus"] = options.num_cpus
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise RayConnectionError(f"cannot connect to Ray at {address or 'a local cluster'}: "
                                 f"{' '.join(str(exc).split())}") from None


def _parse_faults() -> dict[str, str]:
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


# --------------------------------------------------------------------------------------------
# the driver-side committer


_FACE_COLUMNS = ("path", "face_index", "box", "landmarks", "score", "embedding", "model_id",
                 "content_hash", "width", "height", "sharpness")


@dataclass
class _FileState:
    status: str
    faces: int
    width: int | None
    height: int | None


class _Committer:
    """Receives the pipeline's output batches, keeps what is finished, commits it."""

    def __init__(self, store: CollectionStore, run_id: str, seq: int, options: BuildOptions,
                 faults: dict[str, str], known: dict[str, _FileState],
                 model_id: str | None, embedding_size: int | None):
        self.store = store
        self.run_id = run_id
        self.seq = seq
        self.options = options
        self.faults = faults
        self.known = known
        self.model_id = model_id
        self.embedding_size = embedding_size
        self.aliases: dict[str, list[SourceFile]] = {}
        self.partial: dict[str, dict[int, dict[str, Any]]] = {}
        self.done: set[str] = set()
        self.faces: list[dict[str, np.ndarray]] = []
        self.files: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.n_ready_faces = 0
        self.last_commit = time.monotonic()
        self.commits = 0
        self.counts = Counter()  # faces, no_face, failed_<stage>
        self.commit_records: list[dict] = []

    # -- inputs ------------------------------------------------------------------------------

    def add_alias(self, content_hash: str, source: SourceFile) -> None:
        """``source`` has the same content as a file being processed in this run."""
        self.aliases.setdefault(content_hash, []).append(source)

    def add_known(self, source: SourceFile, content_hash: str, state: _FileState) -> None:
        """``source`` has content that is already indexed: record the path only."""
        self.files.append(self._file_row(source.path, content_hash, source.size,
                                         source.mtime_ns, state))

    def add_removed(self, path: str, content_hash: str) -> None:
        """``path`` (last seen with ``content_hash``) no longer exists."""
        self.files.append(self._file_row(path, content_hash, 0, 0,
                                         _FileState(STATUS_REMOVED, 0, None, None)))

    def add_read_failure(self, path: str, reason: str) -> None:
        self.counts["failed_read"] += 1
        self.failures.append(self._failure_row(path, None, "read", reason))

    def _file_row(self, path, content_hash, size, mtime_ns, state: _FileState) -> dict:
        return {"path": path, "content_hash": content_hash, "size": int(size),
                "mtime_ns": int(mtime_ns), "status": state.status, "faces": int(state.faces),
                "image_width": state.width, "image_height": state.height}

    def _failure_row(self, path, content_hash, stage, reason) -> dict:
        return {"path": path, "content_hash": content_hash, "stage": stage, "reason": reason}

    def add_output(self, batch: dict[str, np.ndarray]) -> None:
        """One output batch of the Embed stage."""
        n = len(batch["path"])
        if n == 0:
            return
        self._check_model(batch)
        hashes = np.asarray(batch["content_hash"]).astype(str)
        status = np.asarray(batch["status"]).astype(str)
        order = np.argsort(hashes, kind="stable")
        sorted_h = hashes[order]
        starts = np.flatnonzero(np.r_[True, sorted_h[1:] != sorted_h[:-1]])
        ends = np.r_[starts[1:], n]
        for start, end in zip(starts, ends):
            rows = order[start:end]
            self._add_file(sorted_h[start], rows, batch, status)
        self.maybe_commit()

    def _check_model(self, batch: dict[str, np.ndarray]) -> None:
        model_id = str(batch["model_id"][0])
        dim = int(np.asarray(batch["embedding"]).shape[1])
        if self.model_id is None:
            self.model_id = model_id
        elif self.model_id != model_id:
            raise ConfigError(
                f"{self.store.layout.root} holds embeddings of model {self.model_id}, this build "
                f"computes {model_id}: build into a new INDEX_DIR (embeddings of different "
                "models cannot be compared)")
        if self.embedding_size is None:
            self.embedding_size = dim
        elif self.embedding_size != dim:
            raise ConfigError(f"{self.store.layout.root} holds {self.embedding_size}-d "
                              f"embeddings, this build computes {dim}-d ones")

    def _add_file(self, content_hash: str, rows: np.ndarray, batch: dict, status: np.ndarray) -> None:
        if content_hash == "":  # could not be read in the second pass (one row per file)
            for i in rows:
                self.add_read_failure(str(batch["path"][i]), str(batch["reason"][i]))
            return
        first = int(rows[0])
        path = str(batch["path"][first])
        if content_hash in self.done:
            return  # a retried task delivered it twice: already taken
        size, mtime = int(batch["size"][first]), int(batch["mtime_ns"][first])
        width, height = int(batch["width"][first]), int(batch["height"][first])
        prior = self.known.get(content_hash)
        if prior is not None:  # changed between the two passes into known content
            self.done.add(content_hash)
            self.files.append(self._file_row(path, content_hash, size, mtime, prior))
            return
        statuses = set(status[rows].tolist())
        if "failed" in statuses:
            k = next(int(i) for i in rows if status[i] == "failed")
            stage, reason = str(batch["stage"][k]), str(batch["reason"][k])
            self.partial.pop(content_hash, None)
            self.counts[f"failed_{stage}"] += 1
            self.failures.append(self._failure_row(path, content_hash, stage, reason))
            state = _FileState(STATUS_FAILED, 0, width or None, height or None)
            self._finish(content_hash, path, size, mtime, state)
            return
        if "no_face" in statuses:
            self.counts["no_face"] += 1
            self._finish(content_hash, path, size, mtime,
                         _FileState(STATUS_NO_FACE, 0, width, height))
            return
        n_faces = int(batch["n_faces"][first])
        face_index = np.asarray(batch["face_index"])[rows]
        if content_hash not in self.partial and len(rows) == n_faces \
                and len(np.unique(face_index)) == n_faces:
            # the usual case: all the file's faces in this batch
            take = rows[np.argsort(face_index, kind="stable")]
            self.faces.append({c: np.asarray(batch[c])[take] for c in _FACE_COLUMNS})
        else:
            got = self.partial.setdefault(content_hash, {})
            for i in rows:
                got[int(batch["face_index"][i])] = {c: batch[c][i] for c in _FACE_COLUMNS}
            if len(got) < n_faces:
                return  # the rest of this file's faces come in another batch
            del self.partial[content_hash]
            face_rows = [got[j] for j in range(n_faces)]
            self.faces.append({c: np.stack([np.asarray(r[c]) for r in face_rows])
                               for c in _FACE_COLUMNS})
        self.n_ready_faces += n_faces
        self.counts["faces"] += n_faces
        self.counts["with_faces"] += 1
        self._finish(content_hash, path, size, mtime,
                     _FileState(STATUS_INDEXED, n_faces, width, height))

    def _finish(self, content_hash: str, path: str, size: int, mtime: int, state: _FileState) -> None:
        self.done.add(content_hash)
        self.files.append(self._file_row(path, content_hash, size, mtime, state))
        for alias in self.aliases.pop(content_hash, []):
            self.files.append(self._file_row(alias.path, content_hash, alias.size,
                                             alias.mtime_ns, state))

    # -- commits -----------------------------------------------------------------------------

    def maybe_commit(self, force: bool = False) -> None:
        pending = len(self.files) + len(self.failures)
        if not pending:
            return
        due = (force or len(self.files) >= self.options.commit_every_files
               or self.n_ready_faces >= self.options.max_rows_per_file
               or time.monotonic() - self.last_commit >= self.options.commit_every_seconds)
        if due:
            self.commit()

    def _faces_tables(self, now_ms: int) -> list[pa.Table]:
        if not self.faces:
            return []
        cols = {c: np.concatenate([f[c] for f in self.faces]) for c in _FACE_COLUMNS}
        order = np.lexsort((cols["face_index"], cols["path"].astype(str)))
        cols = {c: v[order] for c, v in cols.items()}
        n = len(order)
        dim = cols["embedding"].shape[1]
        schema = faces_table_schema(dim)
        table = pa.Table.from_arrays([
            pa.array(cols["path"].astype(str), pa.string()),
            pa.array(cols["face_index"].astype(np.int32), pa.int32()),
            fixed_size_list(cols["box"], 4),
            fixed_size_list(cols["landmarks"], 10),
            pa.array(cols["score"].astype(np.float32), pa.float32()),
            fixed_size_list(cols["embedding"], dim),
            pa.array(cols["model_id"].astype(str), pa.string()),
            pa.array(cols["content_hash"].astype(str), pa.string()),
            pa.array(cols["width"].astype(np.int32), pa.int32()),
            pa.array(cols["height"].astype(np.int32), pa.int32()),
            pa.array(cols["sharpness"].astype(np.float32), pa.float32()),
            pa.array(np.full(n, now_ms, np.int64), pa.int64()).cast(schema.field("indexed_at").type),
            pa.array([self.run_id] * n, pa.string()),
        ], schema=schema)
        step = self.options.max_rows_per_file
        return [table.slice(i, step) for i in range(0, n, step)]

    def commit(self) -> None:
        now_ms = int(time.time() * 1000)
        ts = pa.scalar(now_ms, pa.timestamp("ms", tz="UTC"))
        faces = self._faces_tables(now_ms)
        files = pa.Table.from_pylist(
            [{**r, "indexed_at": ts.as_py(), "run_id": self.run_id}
             for r in sorted(self.files, key=lambda r: r["path"])],
            schema=FILES_SCHEMA)
        failures = pa.Table.from_pylist(
            [{**r, "failed_at": ts.as_py(), "run_id": self.run_id} for r in self.failures],
            schema=FAILURES_SCHEMA)
        meta = {"counts": {FACES: sum(t.num_rows for t in faces), FILES: files.num_rows,
                           FAILURES: failures.num_rows},
                "model_id": self.model_id, "embedding_size": self.embedding_size,
                "schema_version": SCHEMA_VERSION}
        number = self.commits + 1
        record = self.store.commit(
            self.seq, self.run_id, {FACES: faces, FILES: [files], FAILURES: [failures]}, meta,
            before_record=lambda _: self._fault("exit_before_commit", number),
            before_moves=lambda _: self._fault("exit_after_commit", number))
        logger.info("commit %d: %d files, %d faces, %d failures", self.seq, files.num_rows,
                    meta["counts"][FACES], failures.num_rows)
        self.commit_records.append(record)
        for row in self.files:
            self.known.setdefault(row["content_hash"], _FileState(
                row["status"], row["faces"], row["image_width"], row["image_height"]))
        self.seq += 1
        self.commits += 1
        self.faces, self.files, self.failures = [], [], []
        self.n_ready_faces = 0
        self.last_commit = time.monotonic()

    def _fault(self, key: str, number: int) -> None:
        value = self.faults.get(key)
        if value and int(value) == number:
            logger.warning("injected fault %s=%s: exiting", key, value)
            logging.shutdown()
            os._exit(_FAULT_EXIT_CODE)


# --------------------------------------------------------------------------------------------
# the build


def _known_states(files_log: pa.Table, retry_failed: bool
                  ) -> tuple[dict[str, tuple[int, int, str]], dict[str, _FileState]]:
    """(path -> (size, mtime_ns, hash) of its last row, hash -> state) from the files log."""
    latest = latest_per_path(files_log)
    by_path: dict[str, tuple[int, int, str]] = {}
    by_hash: dict[str, _FileState] = {}
    cols = latest.to_pydict() if latest.num_rows else {}
    for i in range(latest.num_rows):
        if cols["status"][i] == STATUS_REMOVED:
            continue  # a deleted path: if it comes back it is hashed again
        h = cols["content_hash"][i]
        by_path[cols["path"][i]] = (cols["size"][i], cols["mtime_ns"][i], h)
    # Every content ever processed (all rows, not only the latest per path): the state of a
    # hash is that of its last processing (its faces stay stored after its paths are removed).
    allcols = files_log.select(["content_hash", "status", "faces", "image_width",
                                "image_height"]).to_pydict() if files_log.num_rows else {}
    for i in range(files_log.num_rows):
        if allcols["status"][i] == STATUS_REMOVED:
            continue
        state = _FileState(allcols["status"][i], allcols["faces"][i], allcols["image_width"][i],
                           allcols["image_height"][i])
        by_hash[allcols["content_hash"][i]] = state
    if retry_failed:
        by_hash = {h: s for h, s in by_hash.items() if s.status != STATUS_FAILED}
    return by_path, by_hash


def _blocks(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    return [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)]


def _hash_pass(files: list[SourceFile], options: BuildOptions) -> dict[str, tuple[str, str]]:
    """path -> (content_hash, error) for ``files``, read and hashed by Ray tasks."""
    import ray

    from .stages import hash_files

    table = pa.table({"path": pa.array([f.path for f in files], pa.string())})
    per_block = max(32, math.ceil(len(files) / 2000))
    ds = ray.data.from_arrow(_blocks(table, per_block))
    ds = ds.map_batches(hash_files, batch_size=per_block, num_cpus=0.25, batch_format="numpy")
    out: dict[str, tuple[str, str]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for path, h, err in zip(batch["path"], batch["content_hash"], batch["error"]):
            out[str(path)] = (str(h), str(err))
    return out


def _pipeline(work: list[SourceFile], options: BuildOptions, plan: ResourcePlan,
              faults: dict[str, str], spec: ModelSpec):
    import ray

    from .stages import DetectAlign, Embed, read_decode

    table = pa.table({
        "path": pa.array([f.path for f in work], pa.string()),
        "size": pa.array([f.size for f in work], pa.int64()),
        "mtime_ns": pa.array([f.mtime_ns for f in work], pa.int64()),
    })
    per_block = max(options.read_batch_size * 2, math.ceil(len(work) / 4000))
    ds = ray.data.from_arrow(_blocks(table, per_block))
    ds = ds.map_batches(read_decode, batch_size=options.read_batch_size, batch_format="numpy",
                        num_cpus=plan.decode_cpus, fn_kwargs={"max_pixels": options.max_pixels})
    ds = ds.map_batches(
        DetectAlign, batch_size=options.detect_batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.detect_actors),
        num_cpus=plan.detect_cpus,
        fn_constructor_kwargs={"spec": spec.to_metadata(),
                               "min_face_size": options.min_face_size,
                               "num_threads": plan.detect_threads, "faults": faults})
    embed_args: dict[str, Any] = {"num_cpus": plan.embed_cpus}
    if plan.embed_gpus:
        embed_args["num_gpus"] = plan.embed_gpus
    ds = ds.map_batches(
        Embed, batch_size=plan.embed_batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.embed_actors),
        fn_constructor_kwargs={"spec": spec.to_metadata(), "batch_size": plan.model_batch_size,
                               "backend": options.backend,
                               "num_threads": plan.embed_threads, "faults": faults},
        **embed_args)
    return ds


def build_index(sources: Sequence[str] | Iterable[str] | str, index_dir: str | os.PathLike, *,
                options: BuildOptions | None = None) -> BuildSummary:
    """Index every face of ``sources`` into ``index_dir``, incrementally (see the module doc).

    Args:
        sources: SOURCE arguments (folders, globs, image files, ``@list`` files; local or URIs).
        index_dir: the index directory (local path or URI); created if missing.
        options: :class:`BuildOptions`.

    Returns:
        :class:`BuildSummary` of this call.

    Raises:
        DatasetError: a SOURCE does not exist.
        RayConnectionError: the Ray cluster cannot be reached.
        IndexBusyError: another build is writing to ``index_dir``.
        ConfigError: bad options, or the index holds another model's embeddings.
        BuildJobError: the Ray Data job failed as a whole (what was committed stays).
    """
    from facenet_platform.core.factory import resolve_spec

    options = options or BuildOptions()
    options.validate()
    start = time.monotonic()
    spec = resolve_spec(options.model)  # the model's crop and contract, for every actor
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    address = _resolve_address(options)
    if address:
        import ray

        if not ray.is_initialized():
            check_reachable(address)  # fail fast, even when there turns out to be nothing to do
    layout = IndexLayout.open(index_dir)
    index_uri = os.fspath(index_dir)
    listing = list_sources(list(sources), exclude=None if is_uri(index_uri) else layout.root)
    layout.makedirs(layout.root)
    store = CollectionStore(layout)
    run_id = new_run_id()
    faults = _parse_faults()
    summary = BuildSummary(files_seen=len(listing.files), files_ignored=listing.ignored,
                           run_id=run_id, index_dir=index_uri)

    store.acquire_lock(run_id)
    try:
        commits = store.recover()
        section = read_manifest(layout).get("collection", {})
        model_id = section.get("model_id") or next(
            (r.get("model_id") for r in reversed(commits) if r.get("model_id")), None)
        embedding_size = section.get("embedding_size") or next(
            (r.get("embedding_size") for r in reversed(commits) if r.get("embedding_size")), None)
        if model_id not in (None, spec.model_id):
            raise ConfigError(
                f"{index_uri} holds embeddings of model {model_id}; this build would use "
                f"{spec.model_id}: pass the same --model, or build into a new INDEX_DIR")
        _check_recorded_spec(section, spec, index_uri)
        files_log = store.read(FILES, commits=commits)
        by_path, known = _known_states(files_log, options.retry_failed)
        logged_read_failures = _logged_read_failures(store, commits)
        committer = _Committer(store, run_id, store.next_seq(commits), options, faults, known,
                               model_id, embedding_size)

        # 1. skip by (path, size, mtime); hash the rest
        to_hash: list[SourceFile] = []
        hashed: dict[str, str] = {}
        for f in listing.files:
            cached = None if options.rehash else by_path.get(f.path)
            if cached and cached[0] == f.size and cached[1] == f.mtime_ns and cached[2] in known:
                summary.files_skipped_known += 1
            elif cached and cached[0] == f.size and cached[1] == f.mtime_ns and not options.rehash:
                hashed[f.path] = cached[2]  # retry_failed: content known to have failed
            else:
                to_hash.append(f)
        if to_hash:
            ensure_ray(options)
            t = time.monotonic()
            results = _hash_pass(to_hash, options)
            logger.info("hashed %d files in %.1f s", len(to_hash), time.monotonic() - t)
        else:
            results = {}

        # 2. classify: read failure, known content, duplicate in this run, new content
        work: list[SourceFile] = []
        new_hashes: set[str] = set()
        for f in listing.files:
            if f.path in hashed:
                content_hash, error = hashed[f.path], ""
            elif f.path in results:
                content_hash, error = results[f.path]
            else:
                continue  # skipped by the stat cache
            if error:
                if (f.path, "read", error) in logged_read_failures:
                    committer.counts["failed_read"] += 1
                else:
                    committer.add_read_failure(f.path, error)
            elif content_hash in known:
                summary.files_skipped_known += 1
                committer.add_known(f, content_hash, known[content_hash])
            elif content_hash in new_hashes:
                summary.files_duplicate += 1
                committer.add_alias(content_hash, f)
            else:
                new_hashes.add(content_hash)
                work.append(f)
        summary.files_new = len(work)
        listed = {f.path for f in listing.files}
        for path, (_, _, content_hash) in by_path.items():
            if path not in listed and listing.covers(path):
                committer.add_removed(path, content_hash)
                summary.files_removed += 1
        if summary.files_removed:
            logger.info("%d indexed file(s) are gone from the SOURCE folders/globs: marked removed",
                        summary.files_removed)

        # 3. the Ray Data job
        plan = None
        if work:
            ensure_ray(options)
            import ray

            plan = plan_resources(options, ray.cluster_resources())
            summary.plan = asdict(plan)
            logger.info("%d new files; plan %s", len(work), plan)
            ray.data.DataContext.get_current().enable_progress_bars = options.progress
            ds = _pipeline(work, options, plan, faults, spec)
            t = time.monotonic()
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy",
                                             prefetch_batches=1):
                    first = not summary.first_result_seconds
                    if first:
                        summary.first_result_seconds = time.monotonic() - t
                    committer.add_output(batch)
                    if first:
                        summary.first_result_files = len(committer.done)
            except FaceNetPlatformError:
                raise
            except Exception as exc:  # Ray wraps what killed the job; say it in one line
                try:  # keep what is finished
                    committer.maybe_commit(force=True)
                except Exception:  # noqa: BLE001 - the job's error is the one to report
                    logger.exception("could not commit the finished files")
                text = _job_error_text(exc)
                raise BuildJobError(
                    f"the Ray Data job failed ({text}); {committer.commits} commit(s) of this "
                    "run are kept: run the build again to resume") from exc
            summary.pipeline_seconds = time.monotonic() - t
            if committer.partial:
                logger.warning("%d file(s) came back incomplete and were not committed; the next "
                               "build processes them again", len(committer.partial))
        committer.maybe_commit(force=True)
        store.drop_staging(run_id)

        # 4. summary + manifest
        counts = committer.counts
        summary.faces = counts["faces"]
        summary.files_no_face = counts["no_face"]
        summary.files_with_faces = counts["with_faces"]
        by_stage = {k[len("failed_"):]: v for k, v in counts.items() if k.startswith("failed_")}
        summary.failures = sum(by_stage.values())
        summary.failures_by_stage = by_stage
        summary.commits = committer.commits
        summary.model_id = committer.model_id or model_id or spec.model_id
        all_commits = commits + committer.commit_records
        if all_commits:
            live = live_content(store.read(FILES, commits=all_commits))
            hashes = store.read(FACES, columns=["content_hash"], commits=all_commits)
            summary.total_faces = int(pc.sum(pc.is_in(
                hashes.column("content_hash"),
                value_set=pa.array(list(live.paths), pa.string()))).as_py() or 0)
            summary.total_files = sum(len(paths) for paths in live.paths.values())
        summary.seconds = time.monotonic() - start
        summary.images_per_second = summary.files_new / summary.seconds if summary.seconds else 0.0
        if work:
            from facenet_platform.core.backends import DEFAULT_BACKEND

            backend = options.backend or DEFAULT_BACKEND
        else:
            backend = section.get("backend")
        _update_manifest(layout, summary, all_commits, committer, listing_sources=list(sources),
                         backend=backend, spec=spec)
        return summary
    finally:
        store.release_lock(run_id)


def _logged_read_failures(store: CollectionStore, commits: list[dict]) -> set[tuple[str, str, str]]:
    failures = store.read(FAILURES, columns=["path", "content_hash", "stage", "reason"],
                          commits=commits)
    if failures.num_rows == 0:
        return set()
    cols = failures.to_pydict()
    return {(p, s, r) for p, h, s, r in zip(cols["path"], cols["content_hash"], cols["stage"],
                                            cols["reason"]) if h is None}


def _check_recorded_spec(section: dict[str, Any], spec: ModelSpec, index_uri: str) -> None:
    """ConfigError when the index recorded a model spec whose crop or input contract differs
    from the build's (same model id, other settings: the embeddings would not compare)."""
    if not section.get("model"):
        return  # an index from before the spec was recorded
    recorded = ModelSpec.from_metadata(section["model"], where=f"{index_uri} manifest")
    differ = spec.differences(recorded)
    if differ:
        detail = ", ".join(f"{k}: index {b!r}, now {a!r}" for k, (a, b) in differ.items())
        raise ConfigError(f"{index_uri} was built with other model settings ({detail}): build "
                          "with the same model, or into a new INDEX_DIR")


def _update_manifest(layout: IndexLayout, summary: BuildSummary, commits: list[dict],
                     committer: _Committer, listing_sources: list, backend: str | None,
                     spec: ModelSpec) -> None:
    totals = Counter()
    for record in commits:
        totals.update(record.get("counts", {}))
    update_manifest(layout, "collection", {
        "schema_version": SCHEMA_VERSION,
        "model_id": summary.model_id or None,
        "embedding_size": committer.embedding_size,
        "model": spec.to_metadata(),
        "backend": backend,
        "version": commits[-1]["seq"] if commits else 0,
        "commits": len(commits),
        "faces": summary.total_faces,
        "files": summary.total_files,
        "failures": totals.get(FAILURES, 0),
        "face_key": ["content_hash", "face_index"],
        "tables": {"faces": "faces", "files": "files", "failures": "failures"},
        "last_run": {**summary.to_dict(), "sources": [os.fspath(s) for s in listing_sources]},
    })
