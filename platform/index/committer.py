"""The driver side of ``index build``: gathers the pipeline's output batches into whole files and
commits them (:meth:`~.collection.CollectionStore.commit`).

A file's faces may come in several batches, twice (a retried task) or with a failure; the
committer keeps a file only once all its faces are there, records each file once (with the paths
of the same content found in this run), and commits every ``commit_every_files`` files,
``max_rows_per_file`` faces or ``commit_every_seconds`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from facenet_platform.core.errors import ConfigError
from facenet_platform.core.facetable import faces_table

from .build_options import BuildOptions
from .collection import (FACES, FACES_EXTRA_FIELDS, FAILURES, FAILURES_SCHEMA, FILES,
                         FILES_SCHEMA, SCHEMA_VERSION, CollectionStore)
from .faults import exit_if_due
from .sources import SourceFile
from .status import (ROW_FACE, ROW_FAILED, ROW_NO_FACE, STAGE_READ, STATUS_FAILED, STATUS_INDEXED,
                     STATUS_NO_FACE, STATUS_REMOVED)

logger = logging.getLogger(__name__)

__all__ = ["FACE_COLUMNS", "Committer", "FileState"]

#: Columns of the Embed stage's output that make a faces row.
FACE_COLUMNS = ("path", "face_index", "box", "landmarks", "score", "embedding", "model_id",
                 "content_hash", "width", "height", "sharpness", "frame_time", "frame_index",
                 "decoder", "orientation", "rotation", "xmp_name")

# Defaults of the media columns when a batch lacks them (a still image from an older stage).
_MEDIA_DEFAULTS = {"frame_time": np.nan, "frame_index": -1, "decoder": "", "orientation": 0,
                   "rotation": 0,
                   "xmp_name": "", "n_frames": 1, "frame_number": 0}


def _column(batch: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name in batch:
        return np.asarray(batch[name])
    n = len(batch["path"])
    value = _MEDIA_DEFAULTS[name]
    return np.full(n, value, dtype=object if isinstance(value, str) else None)


@dataclass
class FileState:
    """What is known of one content hash: its ``files.status``, face count and image size."""

    status: str
    faces: int
    width: int | None
    height: int | None


class Committer:
    """Receives the pipeline's output batches, keeps what is finished, commits it.

    Args:
        store: the index's collection.
        run_id: this build's run id (written into every row).
        seq: the number of the next commit record.
        options: the build's options (commit cadence and Parquet part size).
        faults: test-only fault injection (:mod:`.faults`).
        known: content hash -> state of everything already indexed (updated on each commit).
        model_id, embedding_size: what the index holds already (``None`` for a new index).
    """

    def __init__(self, store: CollectionStore, run_id: str, seq: int, options: BuildOptions,
                 faults: dict[str, str], known: dict[str, FileState],
                 model_id: str | None, embedding_size: int | None,
                 shots: dict[str, str] | None = None):
        self.store = store
        self.shots = dict(shots or {})
        self.run_id = run_id
        self.seq = seq
        self.options = options
        self.faults = faults
        self.known = known
        self.model_id = model_id
        self.embedding_size = embedding_size
        self.aliases: dict[str, list[SourceFile]] = {}
        # content hash -> frames seen ({frame_number: faces in it}) and face rows by
        # (frame_number, face_index in the frame), for files whose rows span batches
        self.partial: dict[str, dict[str, Any]] = {}
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

    def add_known(self, source: SourceFile, content_hash: str, state: FileState) -> None:
        """``source`` has content that is already indexed: record the path only."""
        self.files.append(self._file_row(source.path, content_hash, source.size,
                                         source.mtime_ns, state))

    def add_removed(self, path: str, content_hash: str) -> None:
        """``path`` (last seen with ``content_hash``) no longer exists."""
        self.files.append(self._file_row(path, content_hash, 0, 0,
                                         FileState(STATUS_REMOVED, 0, None, None)))

    def add_read_failure(self, path: str, reason: str) -> None:
        """``path`` could not be read (no content hash)."""
        self.counts["failed_read"] += 1
        self.failures.append(self._failure_row(path, None, STAGE_READ, reason))

    def _file_row(self, path, content_hash, size, mtime_ns, state: FileState) -> dict:
        return {"path": path, "content_hash": content_hash, "size": int(size),
                "mtime_ns": int(mtime_ns), "status": state.status, "faces": int(state.faces),
                "image_width": state.width, "image_height": state.height,
                "shot_id": self.shots.get(path)}

    def _failure_row(self, path, content_hash, stage, reason) -> dict:
        return {"path": path, "content_hash": content_hash, "stage": stage, "reason": reason}

    def add_output(self, batch: dict[str, np.ndarray]) -> None:
        """One output batch of the Embed stage."""
        n = len(batch["path"])
        if n == 0:
            return
        self._check_model(batch)
        batch = dict(batch)
        for name in _MEDIA_DEFAULTS:
            batch[name] = _column(batch, name)
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
        if ROW_FAILED in statuses:
            k = next(int(i) for i in rows if status[i] == ROW_FAILED)
            stage, reason = str(batch["stage"][k]), str(batch["reason"][k])
            self.partial.pop(content_hash, None)
            self.counts[f"failed_{stage}"] += 1
            self.failures.append(self._failure_row(path, content_hash, stage, reason))
            state = FileState(STATUS_FAILED, 0, width or None, height or None)
            self._finish(content_hash, path, size, mtime, state)
            return
        n_frames = int(batch["n_frames"][first])
        if n_frames == 1 and content_hash not in self.partial and ROW_NO_FACE in statuses:
            self._finish_no_face(content_hash, path, size, mtime, width, height)
            return
        n_faces = int(batch["n_faces"][first])
        face_index = np.asarray(batch["face_index"])[rows]
        if n_frames == 1 and content_hash not in self.partial and len(rows) == n_faces \
                and len(np.unique(face_index)) == n_faces:
            # the usual case: a still image with all its faces in this batch
            take = rows[np.argsort(face_index, kind="stable")]
            self.faces.append({c: np.asarray(batch[c])[take] for c in FACE_COLUMNS})
            self._finish_faces(content_hash, path, size, mtime, width, height, n_faces)
            return
        # a video/animation (frames in any batches), or faces split across batches
        got = self.partial.setdefault(content_hash, {"frames": {}, "faces": {}})
        for i in rows:
            number = int(batch["frame_number"][i])
            got["frames"][number] = int(batch["n_faces"][i]) if status[i] == ROW_FACE else 0
            if status[i] == ROW_FACE:
                got["faces"][(number, int(batch["face_index"][i]))] = {
                    c: batch[c][i] for c in FACE_COLUMNS}
        if len(got["frames"]) < n_frames or len(got["faces"]) < sum(got["frames"].values()):
            return  # the rest of this file comes in another batch
        del self.partial[content_hash]
        keys = sorted(got["faces"])
        if not keys:
            self._finish_no_face(content_hash, path, size, mtime, width, height)
            return
        face_rows = [got["faces"][k] for k in keys]
        faces = {c: np.stack([np.asarray(r[c]) for r in face_rows]) for c in FACE_COLUMNS}
        faces["face_index"] = np.arange(len(keys), dtype=np.int32)  # 0..N-1 in frame order
        self.faces.append(faces)
        self._finish_faces(content_hash, path, size, mtime, width, height, len(keys))

    def _finish_no_face(self, content_hash, path, size, mtime, width, height) -> None:
        self.counts["no_face"] += 1
        self._finish(content_hash, path, size, mtime,
                     FileState(STATUS_NO_FACE, 0, width, height))

    def _finish_faces(self, content_hash, path, size, mtime, width, height, n_faces) -> None:
        self.n_ready_faces += n_faces
        self.counts["faces"] += n_faces
        self.counts["with_faces"] += 1
        self._finish(content_hash, path, size, mtime,
                     FileState(STATUS_INDEXED, n_faces, width, height))

    def _finish(self, content_hash: str, path: str, size: int, mtime: int, state: FileState) -> None:
        self.done.add(content_hash)
        self.files.append(self._file_row(path, content_hash, size, mtime, state))
        for alias in self.aliases.pop(content_hash, []):
            self.files.append(self._file_row(alias.path, content_hash, alias.size,
                                             alias.mtime_ns, state))

    # -- commits -----------------------------------------------------------------------------

    def maybe_commit(self, force: bool = False) -> None:
        """Commit what is finished when a commit is due (``force``: whenever anything is)."""
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
        cols = {c: np.concatenate([f[c] for f in self.faces]) for c in FACE_COLUMNS}
        order = np.lexsort((cols["face_index"], cols["path"].astype(str)))
        cols = {c: v[order] for c, v in cols.items()}
        n = len(order)
        dim = cols["embedding"].shape[1]
        (content_hash, width, height, sharpness, indexed_at, run_id, frame_time, frame_index,
         decoder, orientation, rotation, xmp_name) = FACES_EXTRA_FIELDS
        times = cols["frame_time"].astype(np.float64)
        indices = cols["frame_index"].astype(np.int64)
        decoders = cols["decoder"].astype(str)
        names = cols["xmp_name"].astype(str)
        table = faces_table(cols, dim, extra=[
            (content_hash, pa.array(cols["content_hash"].astype(str), pa.string())),
            (width, pa.array(cols["width"].astype(np.int32), pa.int32())),
            (height, pa.array(cols["height"].astype(np.int32), pa.int32())),
            (sharpness, pa.array(cols["sharpness"].astype(np.float32), pa.float32())),
            (indexed_at, pa.array(np.full(n, now_ms, np.int64), pa.int64()).cast(indexed_at.type)),
            (run_id, pa.array([self.run_id] * n, pa.string())),
            (frame_time, pa.array(times, pa.float64(), mask=np.isnan(times))),
            (frame_index, pa.array(indices.astype(np.int32), pa.int32(), mask=indices < 0)),
            (decoder, pa.array(decoders, pa.string(), mask=decoders == "")),
            (orientation, pa.array(cols["orientation"].astype(np.int16), pa.int16())),
            (rotation, pa.array(cols["rotation"].astype(np.int16), pa.int16())),
            (xmp_name, pa.array(names, pa.string(), mask=names == "")),
        ])
        step = self.options.max_rows_per_file
        return [table.slice(i, step) for i in range(0, n, step)]

    def commit(self) -> None:
        """Write what is finished as one commit (:meth:`CollectionStore.commit`)."""
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
            before_record=lambda _: exit_if_due(self.faults, "exit_before_commit", number),
            before_moves=lambda _: exit_if_due(self.faults, "exit_after_commit", number))
        logger.info("commit %d: %d files, %d faces, %d failures", self.seq, files.num_rows,
                    meta["counts"][FACES], failures.num_rows)
        self.commit_records.append(record)
        for row in self.files:
            self.known.setdefault(row["content_hash"], FileState(
                row["status"], row["faces"], row["image_width"], row["image_height"]))
        self.seq += 1
        self.commits += 1
        self.faces, self.files, self.failures = [], [], []
        self.n_ready_faces = 0
        self.last_commit = time.monotonic()

