"""The collection half of an index directory: table schemas, the commit log, readers.

``index build`` writes three tables, each a folder of Parquet files of bounded size::

    INDEX_DIR/
      faces/part-<seq>-<run>-<k>.parquet     one row per face     (FACES: faces_table_schema)
      files/part-<seq>-<run>.parquet         one row per file processed, faces or not (FILES_SCHEMA)
      failures/part-<seq>-<run>.parquet      one row per failed file (FAILURES_SCHEMA)
      _collection/commits/<seq>.json         the commit log: which part files are visible
      _collection/staging/<run>/...          part files being written (never read)
      _collection/LOCK                       held by the build that is running

**Commits.** A build buffers finished files and commits them every so often (every N files or
S seconds). A commit (1) writes its part files into ``_collection/staging/<run>/``, (2) writes
the commit record ``_collection/commits/<seq>.json`` atomically (temporary file + rename) -- this
is the commit point -- then (3) moves the staged files to their final folders. A process killed
before (2) leaves only staging files, which the next build deletes; killed after (2), the next
build (or any reader, meanwhile) finishes the moves from the record. So ``faces/`` never holds a
row whose file is not also recorded as processed in ``files/``, and a file is processed again only
if its commit never happened: no face is lost or written twice.

**Readers** go through the commit log (:func:`read_faces`, :func:`read_files`,
:func:`read_failures`, :func:`committed_paths`), which also sees a commit whose moves were
interrupted. Reading ``faces/*.parquet`` directly (pandas, DuckDB, ``ray.data.read_parquet``)
is also safe: only committed files are ever moved there.

**Row identity.** A face is identified by ``(content_hash, face_index)``: the sha256 of the
file's bytes and the face's rank by detection score. A video or animated image has its faces
numbered 0..N-1 over its sampled frames in time order; each row says its ``frame_time`` (s) and
``frame_index`` (null for photos), so ``(content_hash, frame_time)`` names the frame. ``files`` is an append-only log: the last
row of a path (in commit order) is its current state. ``failures`` is a log of failure events.

**Deleted and changed files.** When a file that a build's SOURCE covers is gone, the build
appends a ``removed`` row for its path; when a path's bytes change, its new row names the new
content hash. Faces stay in their part files (deletion is logical), and the readers here show
only *live* faces: those whose content hash is the current content of at least one path that is
not removed (:func:`live_content`), with ``path`` naming a live path of that content. Read
``faces/*.parquet`` directly and you also see the faces of deleted or replaced files: join with
the live rows of ``files`` (``read_files()``) to drop them.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from facenet_platform.core.errors import ConfigError
from facenet_platform.core.facetable import face_schema

from .layout import IndexLayout
from .locking import IndexBusyError, WriterLock
from .status import STATUS_FAILED, STATUS_INDEXED, STATUS_NO_FACE, STATUS_REMOVED

logger = logging.getLogger(__name__)

__all__ = [
    "CollectionStore",
    "FACES",
    "FAILURES",
    "FAILURES_SCHEMA",
    "FILES",
    "FILES_SCHEMA",
    "IndexBusyError",
    "SCHEMA_VERSION",
    "STATUS_FAILED",
    "STATUS_INDEXED",
    "STATUS_NO_FACE",
    "STATUS_REMOVED",
    "committed_paths",
    "drop_dead_faces",
    "live_content",
    "faces_table_schema",
    "read_failures",
    "read_faces",
    "read_files",
]

#: Version of the collection tables' layout and schemas (manifest ``collection.schema_version``).
SCHEMA_VERSION = 1

FACES = "faces"
FILES = "files"
FAILURES = "failures"
TABLES = (FACES, FILES, FAILURES)

# ``files.status`` values (STATUS_*) come from :mod:`.status`, the build's one vocabulary.

_TS = pa.timestamp("ms", tz="UTC")

#: Columns the collection adds to :func:`facenet_platform.core.facetable.face_schema`.
FACES_EXTRA_FIELDS: tuple[pa.Field, ...] = (
    pa.field("content_hash", pa.string(), nullable=False),   # sha256 hex of the file's bytes
    pa.field("image_width", pa.int32(), nullable=False),     # px, as displayed (after EXIF rotation)
    pa.field("image_height", pa.int32(), nullable=False),
    # Variance of the Laplacian of the grey aligned crop (160 px): higher is sharper; under ~30
    # the crop is usually blurred or tiny upscaled.
    pa.field("sharpness", pa.float32(), nullable=False),
    pa.field("indexed_at", _TS, nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    # Media (issue 13); null in parts written before them. A face is still keyed by
    # (content_hash, face_index): a video's faces are numbered 0..N-1 over its sampled frames.
    pa.field("frame_time", pa.float64(), nullable=True),     # s into a video/animation; null: still
    pa.field("frame_index", pa.int32(), nullable=True),      # frame number in the stream; null: still
    pa.field("decoder", pa.string(), nullable=True),         # pillow | pillow-heif | rawpy-preview | rawpy-half | pyav | pillow-frames
    pa.field("orientation", pa.int16(), nullable=True),      # EXIF orientation the file declared (0: none)
    pa.field("rotation", pa.int16(), nullable=True),         # degrees clockwise the sideways retry turned the photo
    pa.field("xmp_name", pa.string(), nullable=True),        # name of the matched XMP face region
)

FILES_SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("size", pa.int64(), nullable=False),            # bytes, as listed
    pa.field("mtime_ns", pa.int64(), nullable=False),        # as listed; (path, size, mtime) cache key
    pa.field("status", pa.string(), nullable=False),         # indexed | no_face | failed | removed
    pa.field("faces", pa.int32(), nullable=False),
    pa.field("image_width", pa.int32(), nullable=True),      # null when the file did not decode
    pa.field("image_height", pa.int32(), nullable=True),
    pa.field("indexed_at", _TS, nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    # RAW + render of the same shot share it (core/media/pairing.py); null otherwise
    pa.field("shot_id", pa.string(), nullable=True),
])

FAILURES_SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),
    pa.field("content_hash", pa.string(), nullable=True),    # null when the bytes could not be read
    pa.field("stage", pa.string(), nullable=False),          # read | decode | detect | embed
    pa.field("reason", pa.string(), nullable=False),
    pa.field("failed_at", _TS, nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
])


def faces_table_schema(embedding_size: int) -> pa.Schema:
    """The collection's faces table: :func:`face_schema` (same names and types) + the extra
    columns of :data:`FACES_EXTRA_FIELDS`."""
    return pa.schema(list(face_schema(embedding_size)) + list(FACES_EXTRA_FIELDS))


def _schema_for(table: str, embedding_size: int | None) -> pa.Schema:
    if table == FACES:
        if embedding_size is None:
            raise ValueError("the faces schema needs the embedding size")
        return faces_table_schema(embedding_size)
    return FILES_SCHEMA if table == FILES else FAILURES_SCHEMA


@dataclass(frozen=True)
class _Part:
    table: str
    staged: str  # relative to the index root
    final: str
    rows: int


class CollectionStore:
    """Reads and commits the collection tables of one index directory."""

    def __init__(self, layout: IndexLayout):
        self.layout = layout
        self.fs = layout.fs
        self.meta_dir = layout.path("_collection")
        self.commits_dir = layout.path("_collection", "commits")
        self.staging_dir = layout.path("_collection", "staging")
        self.lock_path = layout.path("_collection", "LOCK")
        self._lock = WriterLock(layout, self.lock_path, "index build")

    # -- commit log --------------------------------------------------------------------------

    def commits(self) -> list[dict[str, Any]]:
        """Every commit record, in commit order."""
        info = self.fs.get_file_info(self.commits_dir)
        if info.type == pafs.FileType.NotFound:
            return []
        records = []
        for entry in self.fs.get_file_info(pafs.FileSelector(self.commits_dir)):
            if entry.type != pafs.FileType.File or not entry.base_name.endswith(".json") \
                    or entry.base_name.startswith("."):
                continue
            try:
                records.append(json.loads(self.layout.read_bytes(entry.path)))
            except (ValueError, OSError) as exc:
                # Records are written by rename, so a torn one means outside tampering.
                raise ConfigError(f"{entry.path}: unreadable commit record ({exc}); the index "
                                  "is damaged, rebuild it into a new INDEX_DIR") from None
        records.sort(key=lambda r: r["seq"])
        return records

    def next_seq(self, commits: Sequence[dict] | None = None) -> int:
        commits = self.commits() if commits is None else commits
        return (commits[-1]["seq"] + 1) if commits else 1

    def _abs(self, rel: str) -> str:
        return self.layout.path(rel)

    def _exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self._abs(rel)).type == pafs.FileType.File

    def recover(self) -> list[dict[str, Any]]:
        """Finish the moves of committed records and delete uncommitted staging files.

        Call with the lock held (only one writer). Returns the commit records.
        """
        commits = self.commits()
        moved = 0
        for record in commits:
            for part in record["parts"]:
                if self._exists(part["final"]):
                    continue
                if not self._exists(part["staged"]):
                    raise ConfigError(
                        f"{self.layout.root}: commit {record['seq']} lists {part['final']}, which "
                        "is missing; the index is damaged, rebuild it into a new INDEX_DIR")
                self._move(part["staged"], part["final"])
                moved += 1
        if moved:
            logger.info("recovery: finished %d interrupted move(s) of committed parts", moved)
        if self.fs.get_file_info(self.staging_dir).type != pafs.FileType.NotFound:
            leftovers = [e for e in self.fs.get_file_info(
                pafs.FileSelector(self.staging_dir, recursive=True)) if e.type == pafs.FileType.File]
            if leftovers:
                logger.info("recovery: deleting %d uncommitted staging file(s) of interrupted "
                            "builds", len(leftovers))
            self.fs.delete_dir(self.staging_dir)
        if self.fs.get_file_info(self.commits_dir).type != pafs.FileType.NotFound:
            for entry in self.fs.get_file_info(pafs.FileSelector(self.commits_dir)):
                if entry.base_name.startswith(".") and entry.base_name.endswith(".tmp"):
                    self.fs.delete_file(entry.path)
        return commits

    def drop_staging(self, run_id: str) -> None:
        """Delete the (emptied) staging folder of a finished run."""
        path = f"{self.staging_dir}/{run_id}"
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            self.fs.delete_dir(path)
        if self.fs.get_file_info(self.staging_dir).type == pafs.FileType.Directory and not \
                self.fs.get_file_info(pafs.FileSelector(self.staging_dir)):
            self.fs.delete_dir(self.staging_dir)

    def _move(self, staged: str, final: str) -> None:
        dst = self._abs(final)
        self.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        self.fs.move(self._abs(staged), dst)

    def commit(self, seq: int, run_id: str, tables: dict[str, list[pa.Table]],
               meta: dict[str, Any], *, before_record=None, before_moves=None) -> dict[str, Any]:
        """Write ``tables`` (table name -> part tables) as commit ``seq``; return the record.

        ``before_record`` and ``before_moves`` (fault injection in tests) are called once the
        parts are staged, and between the commit point and the moves.
        """
        stage_dir = f"_collection/staging/{run_id}"
        parts: list[_Part] = []
        short = run_id.rsplit("-", 1)[-1]
        for table in TABLES:
            chunks = [t for t in tables.get(table, []) if t.num_rows]
            for k, chunk in enumerate(chunks):
                name = f"part-{seq:08d}-{short}-{k}.parquet"
                part = _Part(table, f"{stage_dir}/{table}-{name}", f"{table}/{name}", chunk.num_rows)
                self.fs.create_dir(self._abs(stage_dir), recursive=True)
                pq.write_table(chunk, self._abs(part.staged), filesystem=self.fs,
                               compression="zstd")
                parts.append(part)
        record = {
            "seq": seq,
            "run_id": run_id,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "parts": [part.__dict__ for part in parts],
            **meta,
        }
        if before_record is not None:
            before_record(record)
        self.layout.write_bytes_atomic(f"{self.commits_dir}/{seq:08d}.json",
                                       (json.dumps(record, indent=1) + "\n").encode())
        if before_moves is not None:
            before_moves(record)
        for part in parts:
            self._move(part.staged, part.final)
        return record

    # -- readers -----------------------------------------------------------------------------

    def part_paths(self, table: str, commits: Sequence[dict] | None = None) -> list[str]:
        """Absolute paths (on ``self.fs``) of the committed part files of ``table``, in commit
        order; a part whose move was interrupted is read from staging."""
        commits = self.commits() if commits is None else commits
        out = []
        for record in commits:
            for part in record["parts"]:
                if part["table"] != table:
                    continue
                rel = part["final"] if self._exists(part["final"]) else part["staged"]
                out.append(self._abs(rel))
        return out

    def read(self, table: str, columns: Sequence[str] | None = None,
             commits: Sequence[dict] | None = None) -> pa.Table:
        """A committed table (``faces``, ``files`` or ``failures``) in commit order; columns
        added since older parts were written read as nulls there."""
        commits = self.commits() if commits is None else commits
        table_name = table
        paths = self.part_paths(table, commits)
        if not paths:
            size = next((r.get("embedding_size") for r in reversed(commits)
                         if r.get("embedding_size")), None) or 512
            schema = _schema_for(table, size)
            if columns is not None:
                schema = pa.schema([schema.field(c) for c in columns])
            return schema.empty_table()
        parts = []
        for p in paths:
            wanted = list(columns) if columns else None
            if wanted is not None:  # parts written before a column existed lack it
                present = set(pq.read_schema(p, filesystem=self.fs).names)
                wanted = [c for c in wanted if c in present]
            parts.append(pq.read_table(p, filesystem=self.fs, columns=wanted))
        table = pa.concat_tables(parts, promote_options="default")
        if columns is not None:
            size = next((r.get("embedding_size") for r in reversed(commits)
                         if r.get("embedding_size")), None) or 512
            schema = _schema_for(table_name, size)
            for c in columns:
                if c not in table.column_names:
                    table = table.append_column(schema.field(c), pa.nulls(table.num_rows,
                                                                          schema.field(c).type))
            table = table.select(list(columns))
        return table

    # -- single-writer lock ------------------------------------------------------------------

    def acquire_lock(self, run_id: str) -> None:
        """Take the build lock (:class:`~facenet_platform.index.locking.WriterLock`); a lock
        left by a dead process on this host is taken over.

        On filesystems other than the local one the lock is advisory (written, not checked
        atomically): do not run two builds into one remote index at once.
        """
        self._lock.acquire(run_id, run_id=run_id)

    def release_lock(self, run_id: str) -> None:
        self._lock.release(run_id)


def _store(index_dir: str | os.PathLike | IndexLayout) -> CollectionStore:
    layout = index_dir if isinstance(index_dir, IndexLayout) else IndexLayout.open(index_dir)
    return CollectionStore(layout)


@dataclass(frozen=True)
class LiveContent:
    """Which content hashes of the files log are current, and under which paths."""

    #: content hash -> the live paths whose current content it is (sorted)
    paths: dict[str, list[str]]
    #: hashes that were indexed at some point but are no path's current content any more
    dead: frozenset[str]
    #: live hashes that some no-longer-live path once had -> their live paths: the only faces
    #: whose stored ``path`` may need replacing (usually none)
    moved: dict[str, list[str]]

    def is_live(self, content_hash: str) -> bool:
        return content_hash in self.paths


def live_content(files_log: pa.Table) -> LiveContent:
    """The live content of a ``files`` log (all rows, in commit order)."""
    latest = latest_per_path(files_log)
    paths: dict[str, list[str]] = {}
    if latest.num_rows:
        cols = latest.select(["path", "content_hash", "status"]).to_pydict()
        for path, h, status in zip(cols["path"], cols["content_hash"], cols["status"]):
            if status != STATUS_REMOVED:
                paths.setdefault(h, []).append(path)
    paths = {h: sorted(p) for h, p in paths.items()}
    moved: dict[str, list[str]] = {}
    ever: set[str] = set()
    if files_log.num_rows:
        cols = files_log.select(["path", "content_hash"]).to_pydict()
        for p, h in zip(cols["path"], cols["content_hash"]):
            ever.add(h)
            if h in paths and p not in paths[h]:
                moved[h] = paths[h]
    return LiveContent(paths, frozenset(ever - set(paths)), moved)


def _keep_and_relink(hashes, stored_paths, dead: frozenset[str] | set[str],
                     moved: dict[str, list[str]]):
    """``(keep mask or None, paths or None)`` for faces with these content hashes: which rows
    are live, and their paths with moved content pointed at a live path (only those rows are
    looked at one by one). None: nothing to drop / nothing to change."""
    import numpy as np

    hashes = np.asarray(hashes).astype(str)
    keep = ~np.isin(hashes, np.array(sorted(dead), dtype=str)) if dead else None
    if not moved or stored_paths is None:
        return keep, None
    paths = np.asarray(stored_paths, dtype=object).copy()
    rows = np.flatnonzero(np.isin(hashes, np.array(sorted(moved), dtype=str)))
    for i in rows:
        if paths[i] not in moved[hashes[i]]:
            paths[i] = moved[hashes[i]][0]
    return keep, paths


def drop_dead_faces(batch: dict[str, Any], dead: frozenset[str] | set[str],
                    moved: dict[str, list[str]]) -> dict[str, Any]:
    """A numpy batch of faces (Ray Data ``map_batches``) without dead content, with ``path``
    set to a live path where the stored one is gone (see :class:`LiveContent`)."""
    import numpy as np

    keep, paths = _keep_and_relink(batch["content_hash"], batch.get("path"), dead, moved)
    out = dict(batch)
    if paths is not None:
        out["path"] = paths
    return out if keep is None else {k: np.asarray(v)[keep] for k, v in out.items()}


def live_faces(faces: pa.Table, live: LiveContent) -> pa.Table:
    """``faces`` without the faces of dead content, ``path`` set to a live path of the content
    where the stored one is no longer live (needs the ``content_hash`` column)."""
    if faces.num_rows == 0 or "content_hash" not in faces.column_names:
        return faces
    if not live.dead and not live.moved:
        return faces
    stored = (faces.column("path").to_numpy(zero_copy_only=False)
              if "path" in faces.column_names and live.moved else None)
    keep, paths = _keep_and_relink(faces.column("content_hash").to_numpy(zero_copy_only=False),
                                   stored, live.dead, live.moved)
    if paths is not None:
        field = faces.schema.field("path")
        faces = faces.set_column(faces.column_names.index("path"), field,
                                 pa.array(paths.tolist(), field.type))
    return faces if keep is None else faces.filter(pa.array(keep))


def read_faces(index_dir: str | os.PathLike | IndexLayout,
               columns: Sequence[str] | None = None, *, include_removed: bool = False) -> pa.Table:
    """The collection's live faces (schema :func:`faces_table_schema`), one row per face.

    ``include_removed``: also the faces of deleted or replaced files (as stored)."""
    store = _store(index_dir)
    if include_removed:
        return store.read(FACES, columns)
    wanted = list(columns) if columns is not None else None
    read_cols = wanted if wanted is None or "content_hash" in wanted else [*wanted, "content_hash"]
    faces = live_faces(store.read(FACES, read_cols), live_content(store.read(FILES)))
    return faces if wanted is None or "content_hash" in wanted else faces.drop(["content_hash"])


def read_files(index_dir: str | os.PathLike | IndexLayout, *, latest: bool = True) -> pa.Table:
    """Processed files (:data:`FILES_SCHEMA`); with ``latest``, one row per path (its last,
    which is a ``removed`` row for a deleted file)."""
    table = _store(index_dir).read(FILES)
    return latest_per_path(table) if latest else table


def read_failures(index_dir: str | os.PathLike | IndexLayout) -> pa.Table:
    """Failure events (:data:`FAILURES_SCHEMA`), oldest first."""
    return _store(index_dir).read(FAILURES)


def committed_paths(index_dir: str | os.PathLike | IndexLayout, table: str = FACES) -> list[str]:
    """Paths of the committed part files of a table, in commit order (e.g. for
    ``ray.data.read_parquet(paths, filesystem=IndexLayout.open(index_dir).fs)``)."""
    return _store(index_dir).part_paths(table)


def latest_per_path(files: pa.Table) -> pa.Table:
    """The last row of each path of a ``files`` table (rows are in commit order)."""
    if files.num_rows == 0:
        return files
    paths = files.column("path").to_pylist()
    last: dict[str, int] = {}
    for i, p in enumerate(paths):
        last[p] = i
    return files.take(pa.array(sorted(last.values()), pa.int64()))


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def table_from_rows(rows: Iterable[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema)
