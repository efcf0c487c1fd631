"""The people of an index directory: versioned, one writer at a time, every change an event.

    INDEX_DIR/people/
      HEAD.json                        the current version's record (the atomic pointer)
      versions/<N>.json                the records of the last few versions (for GC and readers)
      tables/people-<N>.parquet        one row per person            (PEOPLE_SCHEMA)
      tables/faces-<N>.parquet         one row per face known to the people (FACES_SCHEMA)
      tables/rejections-<N>.parquet    (face, person) pairs: "not this person" (REJECTIONS_SCHEMA)
      tables/templates-<N>.parquet     per-person matching templates (templates_schema)
      tables/search-<N>.faiss          the k-NN index of people update over every face (and
                                       enrolled photo), extended run after run; search-face's
      tables/search-<N>.ids.parquet    its row keys: face id, or g<gallery id>
      events/<N>.json                  the decision that made version N (kind, args, summary)
      events/<N>.diff.parquet          what it changed, before and after (DIFF_SCHEMA; undo)
      LOCK                             held by the writer (locking.WriterLock)

**Versions.** Version ``N`` is made by event ``N``. A change (:meth:`PeopleStore.transaction`)
takes the lock, loads the current version, lets the caller change a copy, then writes the tables
that changed under new names (unchanged ones are shared with the previous version), the diff and
the event, the version record, and last ``HEAD.json`` -- written to a temporary file and renamed:
that rename is the commit point. A process killed before it leaves the previous version current
(the next writer deletes the leftovers); killed after, the new one. Readers read ``HEAD.json``
and then the files it names, which are never changed once written, so they never see half a
change. The files of the last :data:`KEEP_VERSIONS` versions are kept (a reader that loaded an
older HEAD retries once with the new one).

**Events** are never deleted: ``people history`` lists them and ``people undo`` applies an
event's diff backwards (itself a new event, ``kind = "undo"``). Undo refuses when a later event
changed the same things (undo that one first), so the log always replays.

**Ids.** Faces are :mod:`face ids <facenet_platform.index.face_ids>`; people are ``p<number>``,
handed out in order from the version record's ``next_person`` and never reused.

The store knows nothing of embeddings or clustering: :mod:`facenet_platform.index.people`
decides what changes (decisions, ``people update``) and hands the store a new state.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from facenet_platform.core.errors import ConfigError, DatasetError

from .face_ids import check_face_id, is_person_id, person_id, person_number
from .layout import IndexLayout
from .locking import IndexBusyError, WriterLock

logger = logging.getLogger(__name__)

__all__ = [
    "DIFF_SCHEMA", "Event", "FACES_SCHEMA", "FaceTable", "PEOPLE_SCHEMA", "PeopleBusyError",
    "PeopleError", "PeopleState", "PeopleStore", "Person", "REJECTIONS_SCHEMA", "Templates",
    "UndoConflictError", "UnknownFaceError", "UnknownPersonError", "check_person_name",
    "event_tags",
    "templates_schema",
]

PEOPLE_DIR = "people"
FORMAT = 1
#: Versions whose files are kept (the current one and the ones before it).
KEEP_VERSIONS = 3
#: Test-only fault injection: comma-separated ``key=value`` of ``exit_before_head=1`` /
#: ``exit_after_head=1`` (the writing process exits with code 75 once the new version's files
#: are written but HEAD still names the old one / right after HEAD names the new one) and
#: ``sleep_before_head=SECONDS`` / ``sleep_after_head=SECONDS`` (it sleeps there, so that a test
#: can kill it with SIGKILL at that point).
FAULTS_ENV = "FACENET_PEOPLE_FAULTS"
_FAULT_EXIT_CODE = 75
#: Events searched for a repeated ``request_id`` (see :meth:`PeopleStore.transaction`).
REPLAY_WINDOW = 200
#: Longest person name accepted (characters).
MAX_NAME_LENGTH = 200
#: Words that cannot be names: the identify decision for nobody, and ``move --to new``.
RESERVED_NAMES = frozenset({"unknown", "new"})

_TS = pa.timestamp("ms", tz="UTC")


# =============================================================================================
# errors
# =============================================================================================

class PeopleError(DatasetError):
    """A people decision that cannot be made as asked (nothing was changed)."""


class UnknownPersonError(PeopleError, KeyError):
    """No person with that id or name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownFaceError(PeopleError, KeyError):
    """No face with that id among the faces the people know."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UndoConflictError(PeopleError):
    """An event cannot be undone because later events changed the same faces or people."""


class PeopleBusyError(IndexBusyError):
    """Another process is changing the people of the same index."""


# =============================================================================================
# schemas
# =============================================================================================

PEOPLE_SCHEMA = pa.schema([
    pa.field("person_id", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=True),
    pa.field("hidden", pa.bool_(), nullable=False),
    pa.field("cover_face", pa.string(), nullable=True),      # face id
    pa.field("enrolled_as", pa.list_(pa.string()), nullable=False),  # gallery identities
    pa.field("created_at", _TS, nullable=False),
    pa.field("n_faces", pa.int64(), nullable=False),         # faces assigned (derived)
    pa.field("n_photos", pa.int64(), nullable=False),        # distinct photos (derived)
])

FACES_SCHEMA = pa.schema([
    pa.field("face_id", pa.string(), nullable=False),
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("face_index", pa.int32(), nullable=False),
    pa.field("person_id", pa.string(), nullable=True),       # null: nobody
    pa.field("pinned", pa.bool_(), nullable=False),          # a person said so (move)
    pa.field("quality", pa.float32(), nullable=False),       # core.quality, in [0, 1]
])

REJECTIONS_SCHEMA = pa.schema([
    pa.field("face_id", pa.string(), nullable=False),
    pa.field("person_id", pa.string(), nullable=False),
])


def templates_schema(embedding_size: int) -> pa.Schema:
    """Schema of ``tables/templates-<N>.parquet``: one row per template of a person."""
    return pa.schema([
        pa.field("person_id", pa.string(), nullable=False),
        pa.field("template", pa.list_(pa.float32(), embedding_size), nullable=False),
    ])


#: One row per changed entity of an event: a face (its person and pinned flag), a person (its
#: record as JSON, counts left out) or a rejection pair (``id`` = face, ``ref`` = person).
#: ``*_exists`` false: the entity was absent on that side. Face rows carry the face's static
#: columns (content hash, index, quality) so that an undo can put back a face that was dropped.
DIFF_SCHEMA = pa.schema([
    pa.field("entity", pa.string(), nullable=False),         # face | person | rejection
    pa.field("id", pa.string(), nullable=False),
    pa.field("ref", pa.string(), nullable=True),
    pa.field("before_exists", pa.bool_(), nullable=False),
    pa.field("after_exists", pa.bool_(), nullable=False),
    pa.field("before_person", pa.string(), nullable=True),
    pa.field("after_person", pa.string(), nullable=True),
    pa.field("before_pinned", pa.bool_(), nullable=True),
    pa.field("after_pinned", pa.bool_(), nullable=True),
    pa.field("before_record", pa.string(), nullable=True),
    pa.field("after_record", pa.string(), nullable=True),
    pa.field("content_hash", pa.string(), nullable=True),
    pa.field("face_index", pa.int32(), nullable=True),
    pa.field("quality", pa.float32(), nullable=True),
])


# =============================================================================================
# the state
# =============================================================================================

def check_person_name(name: str) -> str:
    """A person's name, stripped, or :class:`ConfigError` saying what is wrong with it.

    Refused: empty names, control characters (line breaks included), path separators, names
    longer than :data:`MAX_NAME_LENGTH`, the reserved words ``unknown`` and ``new``, and
    names spelled like a person id (``p17``) or a face id.
    """
    if not isinstance(name, str):
        raise ConfigError(f"a person's name must be a string, got {type(name).__name__}")
    stripped = name.strip()
    if not stripped:
        raise ConfigError("a person's name cannot be empty")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in stripped):
        raise ConfigError(f"the name {name!r} contains control characters")
    if "/" in stripped or "\\" in stripped:
        raise ConfigError(f"the name {name!r} contains a path separator (/ or \\)")
    if len(stripped) > MAX_NAME_LENGTH:
        raise ConfigError(f"the name is {len(stripped)} characters long; at most "
                          f"{MAX_NAME_LENGTH}")
    if stripped.casefold() in RESERVED_NAMES:
        raise ConfigError(f"{stripped!r} is reserved; pick another name")
    if is_person_id(stripped):
        raise ConfigError(f"{stripped!r} is spelled like a person id; pick another name")
    try:
        check_face_id(stripped)
    except ConfigError:
        pass
    else:
        raise ConfigError(f"{stripped!r} is spelled like a face id; pick another name")
    return stripped


@dataclass(frozen=True)
class Person:
    """One person: a stable id, an optional name, a hidden flag, a cover face.

    ``enrolled_as``: names of gallery identities (``index enroll``) whose photos are this
    person's. ``n_faces`` / ``n_photos`` are derived from the face table.
    """

    id: str
    name: str | None = None
    hidden: bool = False
    cover: str | None = None
    enrolled_as: tuple[str, ...] = ()
    created_at: str = ""
    n_faces: int = 0
    n_photos: int = 0

    def record(self) -> dict[str, Any]:
        """What decisions change (the diff's person record; the cover and the counts are
        derived from the faces and left out)."""
        return {"name": self.name, "hidden": self.hidden,
                "enrolled_as": list(self.enrolled_as), "created_at": self.created_at}

    @classmethod
    def from_record(cls, pid: str, record: Mapping[str, Any]) -> "Person":
        return cls(pid, record.get("name"), bool(record.get("hidden", False)), None,
                   tuple(record.get("enrolled_as") or ()), record.get("created_at", ""))

    @property
    def label(self) -> str:
        """``name (p17)`` or ``p17``."""
        return f"{self.name} ({self.id})" if self.name else self.id

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "hidden": self.hidden, "cover_face": self.cover,
                "enrolled_as": list(self.enrolled_as), "created_at": self.created_at,
                "faces": self.n_faces, "photos": self.n_photos}


@dataclass(frozen=True)
class FaceTable:
    """The faces the people know, sorted by face id; parallel ``(N,)`` arrays.

    ``person`` holds person ids or None; ``pinned`` marks faces a person placed (``move``):
    nothing automatic moves them.
    """

    face_id: np.ndarray       # (N,) object str, sorted
    content_hash: np.ndarray  # (N,) object str
    face_index: np.ndarray    # (N,) int32
    person: np.ndarray        # (N,) object str | None
    pinned: np.ndarray        # (N,) bool
    quality: np.ndarray       # (N,) float32

    @classmethod
    def empty(cls) -> "FaceTable":
        return cls(np.zeros(0, object), np.zeros(0, object), np.zeros(0, np.int32),
                   np.zeros(0, object), np.zeros(0, bool), np.zeros(0, np.float32))

    @classmethod
    def build(cls, face_id, content_hash, face_index, person, pinned, quality) -> "FaceTable":
        """A table from unsorted columns (sorted here by face id; ids must be unique)."""
        face_id = np.asarray(face_id, dtype=object)
        order = np.argsort(face_id.astype(str), kind="stable")
        table = cls(face_id[order], np.asarray(content_hash, dtype=object)[order],
                    np.asarray(face_index, np.int32)[order],
                    np.asarray(person, dtype=object)[order], np.asarray(pinned, bool)[order],
                    np.asarray(quality, np.float32)[order])
        if len(table) > 1 and np.any(table.face_id[1:] == table.face_id[:-1]):
            dup = table.face_id[1:][table.face_id[1:] == table.face_id[:-1]][0]
            raise DatasetError(f"face id {dup} appears twice in the people's face table")
        return table

    def __len__(self) -> int:
        return int(len(self.face_id))

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of face ids (:class:`UnknownFaceError` naming the first unknown one)."""
        ids = [check_face_id(i) for i in ids]
        if not ids:
            return np.zeros(0, np.int64)
        keys = self.face_id.astype(str)
        wanted = np.asarray(ids, dtype=str)
        pos = np.clip(np.searchsorted(keys, wanted), 0, max(len(keys) - 1, 0))
        found = (len(keys) > 0) & (keys[pos] == wanted) if len(keys) else np.zeros(len(ids), bool)
        if not np.all(found):
            missing = wanted[~found][0]
            raise UnknownFaceError(
                f"no face {missing} among the {len(self)} faces of the people; face ids are "
                f"printed by `people show` and `search-face` (run `people update` after "
                f"`index build` to add new faces)")
        return pos.astype(np.int64)

    def with_people(self, person: np.ndarray, pinned: np.ndarray | None = None) -> "FaceTable":
        return replace(self, person=np.asarray(person, dtype=object),
                       pinned=self.pinned if pinned is None else np.asarray(pinned, bool))

    def members(self, pid: str) -> np.ndarray:
        """Rows of the faces of person ``pid``."""
        return np.flatnonzero(self.person == pid)

    def to_table(self) -> pa.Table:
        return pa.Table.from_arrays([
            pa.array(self.face_id.tolist(), pa.string()),
            pa.array(self.content_hash.tolist(), pa.string()),
            pa.array(self.face_index, pa.int32()),
            pa.array(self.person.tolist(), pa.string()),
            pa.array(self.pinned, pa.bool_()),
            pa.array(self.quality, pa.float32()),
        ], schema=FACES_SCHEMA)

    @classmethod
    def from_table(cls, table: pa.Table) -> "FaceTable":
        col = lambda name: table.column(name).to_numpy(zero_copy_only=False)  # noqa: E731
        return cls(np.asarray(col("face_id"), dtype=object),
                   np.asarray(col("content_hash"), dtype=object),
                   np.asarray(col("face_index"), np.int32),
                   np.asarray(col("person_id"), dtype=object),
                   np.asarray(col("pinned"), bool), np.asarray(col("quality"), np.float32))


@dataclass(frozen=True)
class Templates:
    """Matching templates: ``person (T,)`` object ids and ``vectors (T, D)`` float32 unit rows
    (a person may have several)."""

    person: np.ndarray
    vectors: np.ndarray

    @classmethod
    def empty(cls, embedding_size: int = 0) -> "Templates":
        return cls(np.zeros(0, object), np.zeros((0, embedding_size), np.float32))

    def __len__(self) -> int:
        return int(len(self.person))

    def without(self, person_ids: set[str]) -> "Templates":
        keep = ~np.isin(self.person.astype(str), np.array(sorted(person_ids), dtype=str)) \
            if person_ids and len(self) else np.ones(len(self), bool)
        return Templates(self.person[keep], self.vectors[keep])

    def plus(self, other: "Templates") -> "Templates":
        """Both sets of templates, sorted by person id."""
        if len(other) == 0:
            return self.sorted()
        if len(self) == 0:
            return other.sorted()
        return Templates(np.concatenate([self.person, other.person]),
                         np.concatenate([self.vectors, other.vectors])).sorted()

    def sorted(self) -> "Templates":
        """The same templates ordered by person id (stable: a person's own order is kept)."""
        if len(self) < 2:
            return self
        order = np.argsort(self.person.astype(str), kind="stable")
        return Templates(self.person[order], self.vectors[order])


@dataclass
class PeopleState:
    """One version of the people: what :meth:`PeopleStore.load` returns and a transaction
    changes. Treat the arrays as immutable (replace them, never write into them)."""

    version: int
    people: dict[str, Person]
    faces: FaceTable
    rejections: set[tuple[str, str]]          # (face id, person id)
    templates: Templates
    next_person: int = 1
    settings: dict[str, Any] = field(default_factory=dict)
    search_index: dict[str, Any] | None = None  # {"file", "type", "params", "size"}
    written_at: str = ""

    @classmethod
    def empty(cls) -> "PeopleState":
        return cls(0, {}, FaceTable.empty(), set(), Templates.empty())

    def copy(self) -> "PeopleState":
        return PeopleState(self.version, dict(self.people), self.faces, set(self.rejections),
                           self.templates, self.next_person, dict(self.settings),
                           None if self.search_index is None else dict(self.search_index),
                           self.written_at)

    def new_person_id(self) -> str:
        """A fresh person id (never given out before)."""
        pid = person_id(self.next_person)
        self.next_person += 1
        return pid

    def person(self, ref: str) -> Person:
        """The person with id or name ``ref`` (names match ignoring case)."""
        if not isinstance(ref, str) or not ref.strip():
            raise UnknownPersonError("empty person id or name")
        if is_person_id(ref):
            if ref in self.people:
                return self.people[ref]
            raise UnknownPersonError(f"no person {ref} (there are {len(self.people)} people; "
                                     f"`people list` shows them)")
        if any(ord(c) < 32 for c in ref):
            raise UnknownPersonError(f"no person {ref!r}: an id or a name has no control "
                                     f"characters")
        key = ref.strip().casefold()
        for p in self.people.values():
            if p.name is not None and p.name.casefold() == key:
                return p
        raise UnknownPersonError(f"no person named or numbered {ref!r} (ids look like p17; "
                                 f"`people list` shows them)")

    def by_name(self, name: str) -> Person | None:
        key = name.casefold()
        return next((p for p in self.people.values()
                     if p.name is not None and p.name.casefold() == key), None)

    def rejected_of(self) -> dict[str, frozenset[str]]:
        """Face id -> the people it was rejected from."""
        out: dict[str, set[str]] = {}
        for f, p in self.rejections:
            out.setdefault(f, set()).add(p)
        return {f: frozenset(s) for f, s in out.items()}

    def counts(self) -> dict[str, int]:
        people = list(self.people.values())
        return {"people": len(people), "named": sum(p.name is not None for p in people),
                "hidden": sum(p.hidden for p in people), "faces": len(self.faces),
                "assigned": int(np.sum(self.faces.person != None)),  # noqa: E711
                "pinned": int(np.sum(self.faces.pinned)), "rejections": len(self.rejections),
                "templates": len(self.templates)}


# =============================================================================================
# events and diffs
# =============================================================================================

@dataclass(frozen=True)
class Event:
    """One change: ``id`` is also the version it made."""

    id: int
    kind: str
    time: str
    args: dict[str, Any]
    summary: str
    changes: dict[str, int]
    undoes: int | None = None
    host: str = ""
    pid: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "time": self.time, "args": self.args,
                "summary": self.summary, "changes": self.changes, "undoes": self.undoes,
                "host": self.host, "pid": self.pid}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Event":
        return cls(int(d["id"]), d["kind"], d.get("time", ""), dict(d.get("args") or {}),
                   d.get("summary", ""), dict(d.get("changes") or {}), d.get("undoes"),
                   d.get("host", ""), int(d.get("pid") or 0))


def _str_ids(values: np.ndarray) -> np.ndarray:
    return values.astype(str) if len(values) else np.zeros(0, str)


def diff_states(before: PeopleState, after: PeopleState) -> pa.Table:
    """What changed from ``before`` to ``after`` (:data:`DIFF_SCHEMA`), vectorised over faces."""
    cols: dict[str, list] = {f.name: [] for f in DIFF_SCHEMA}

    def add(**row):
        for name in cols:
            cols[name].append(row.get(name))

    parts = []
    a, b = before.faces, after.faces
    a_ids, b_ids = _str_ids(a.face_id), _str_ids(b.face_id)
    _, ia, ib = np.intersect1d(a_ids, b_ids, assume_unique=True, return_indices=True)
    changed = (a.person[ia] != b.person[ib]) | (a.pinned[ia] != b.pinned[ib])
    ia, ib = ia[changed], ib[changed]
    gone = np.flatnonzero(~np.isin(a_ids, b_ids, assume_unique=True))
    new = np.flatnonzero(~np.isin(b_ids, a_ids, assume_unique=True))
    n = len(ia) + len(gone) + len(new)
    if n:
        none_s = np.full(n, None, object)

        def cat(*xs):
            return np.concatenate([np.asarray(x, dtype=object) for x in xs])

        face_cols = {
            "entity": np.full(n, "face", object),
            "id": cat(b.face_id[ib], a.face_id[gone], b.face_id[new]),
            "ref": none_s,
            "before_exists": np.r_[np.ones(len(ia), bool), np.ones(len(gone), bool),
                                   np.zeros(len(new), bool)],
            "after_exists": np.r_[np.ones(len(ia), bool), np.zeros(len(gone), bool),
                                  np.ones(len(new), bool)],
            "before_person": cat(a.person[ia], a.person[gone], np.full(len(new), None, object)),
            "after_person": cat(b.person[ib], np.full(len(gone), None, object), b.person[new]),
            "before_pinned": cat(a.pinned[ia], a.pinned[gone], np.full(len(new), None, object)),
            "after_pinned": cat(b.pinned[ib], np.full(len(gone), None, object), b.pinned[new]),
            "before_record": none_s, "after_record": none_s,
            "content_hash": cat(b.content_hash[ib], a.content_hash[gone], b.content_hash[new]),
            "face_index": np.r_[b.face_index[ib], a.face_index[gone], b.face_index[new]],
            "quality": np.r_[b.quality[ib], a.quality[gone], b.quality[new]],
        }
        parts.append(pa.Table.from_arrays(
            [pa.array(face_cols[f.name].tolist() if face_cols[f.name].dtype == object
                      else face_cols[f.name], f.type) for f in DIFF_SCHEMA], schema=DIFF_SCHEMA))
    for pid in sorted(set(before.people) | set(after.people), key=_person_sort_key):
        old, new_p = before.people.get(pid), after.people.get(pid)
        old_r = None if old is None else old.record()
        new_r = None if new_p is None else new_p.record()
        if old_r != new_r:
            add(entity="person", id=pid, before_exists=old is not None,
                after_exists=new_p is not None,
                before_record=None if old_r is None else json.dumps(old_r, sort_keys=True),
                after_record=None if new_r is None else json.dumps(new_r, sort_keys=True))
    for f, p in sorted(before.rejections - after.rejections):
        add(entity="rejection", id=f, ref=p, before_exists=True, after_exists=False)
    for f, p in sorted(after.rejections - before.rejections):
        add(entity="rejection", id=f, ref=p, before_exists=False, after_exists=True)
    if cols["entity"]:
        parts.append(pa.Table.from_pydict(cols, schema=DIFF_SCHEMA))
    if not parts:
        return DIFF_SCHEMA.empty_table()
    return pa.concat_tables(parts)


def _person_sort_key(pid: str) -> tuple[int, str]:
    return (person_number(pid), pid) if is_person_id(pid) else (1 << 62, pid)


def diff_counts(diff: pa.Table) -> dict[str, int]:
    entities = diff.column("entity").to_pylist() if diff.num_rows else []
    return {k: entities.count(k) for k in ("face", "person", "rejection")}


def undo_diff(state: PeopleState, diff: pa.Table, event_id: int) -> tuple[PeopleState, set[str]]:
    """``state`` with the diff of event ``event_id`` applied backwards, and the people whose
    faces changed. Raises :class:`UndoConflictError` when ``state`` no longer holds what the
    event left (a later event changed it)."""
    out = state.copy()
    d = diff.to_pydict()
    rows = range(diff.num_rows)
    conflicts: list[str] = []
    touched: set[str] = set()
    faces = out.faces
    face_rows = [i for i in rows if d["entity"][i] == "face"]
    if face_rows:
        keys = _str_ids(faces.face_id)
        person, pinned = faces.person.copy(), faces.pinned.copy()
        drop: list[int] = []
        add: list[int] = []
        for i in face_rows:
            fid = d["id"][i]
            pos = int(np.searchsorted(keys, fid)) if len(keys) else 0
            present = pos < len(keys) and keys[pos] == fid
            if d["after_exists"][i]:
                if not present or person[pos] != d["after_person"][i] \
                        or bool(pinned[pos]) != bool(d["after_pinned"][i]):
                    conflicts.append(f"face {fid}")
                    continue
                touched.update(p for p in (person[pos], d["before_person"][i]) if p)
                if d["before_exists"][i]:
                    person[pos], pinned[pos] = d["before_person"][i], bool(d["before_pinned"][i])
                else:
                    drop.append(pos)
            else:
                if present:
                    conflicts.append(f"face {fid}")
                    continue
                touched.update(p for p in (d["before_person"][i],) if p)
                add.append(i)
        keep = np.ones(len(keys), bool)
        keep[drop] = False
        faces = FaceTable.build(
            np.r_[faces.face_id[keep], np.array([d["id"][i] for i in add], object)],
            np.r_[faces.content_hash[keep], np.array([d["content_hash"][i] for i in add], object)],
            np.r_[faces.face_index[keep], np.array([d["face_index"][i] for i in add], np.int32)],
            np.r_[person[keep], np.array([d["before_person"][i] for i in add], object)],
            np.r_[pinned[keep], np.array([bool(d["before_pinned"][i]) for i in add], bool)],
            np.r_[faces.quality[keep], np.array([d["quality"][i] for i in add], np.float32)])
        out.faces = faces
    for i in rows:
        entity = d["entity"][i]
        if entity == "person":
            pid = d["id"][i]
            current = out.people.get(pid)
            after = None if d["after_record"][i] is None else json.loads(d["after_record"][i])
            if (current is None) != (after is None) or (
                    current is not None and current.record() != after):
                conflicts.append(f"person {pid}")
                continue
            if d["before_record"][i] is None:
                out.people.pop(pid, None)
            else:
                out.people[pid] = Person.from_record(pid, json.loads(d["before_record"][i]))
            touched.add(pid)
        elif entity == "rejection":
            pair = (d["id"][i], d["ref"][i])
            if (pair in out.rejections) != bool(d["after_exists"][i]):
                conflicts.append(f"rejection of face {pair[0]} from {pair[1]}")
                continue
            if d["before_exists"][i]:
                out.rejections.add(pair)
            else:
                out.rejections.discard(pair)
    if conflicts:
        shown = ", ".join(conflicts[:5]) + (f" and {len(conflicts) - 5} more"
                                            if len(conflicts) > 5 else "")
        raise UndoConflictError(
            f"event {event_id} cannot be undone: later events changed {shown}; undo those "
            f"first (`people history` lists them)")
    return out, touched


# =============================================================================================
# the store
# =============================================================================================

def _parse_faults() -> dict[str, str]:
    raw = os.environ.get(FAULTS_ENV, "").strip()
    faults = {}
    for item in raw.split(",") if raw else ():
        key, _, value = item.strip().partition("=")
        if key:
            faults[key] = value
    if faults:
        logger.warning("fault injection active (%s=%s): for tests only", FAULTS_ENV, raw)
    return faults


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_EVENT_TAGS: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "people_event_tags", default={})


@contextmanager
def event_tags(**tags: Any) -> Iterator[None]:
    """Add ``tags`` to the ``args`` of every event committed inside the block (in this thread
    or task). The Serve writer records each request's idempotency key this way, so that a
    decision retried after a crash is found in the log instead of being applied twice."""
    token = _EVENT_TAGS.set({**_EVENT_TAGS.get(), **tags})
    try:
        yield
    finally:
        _EVENT_TAGS.reset(token)


class PeopleStore:
    """The people of one index directory (see the module doc).

    Args:
        index_dir: local path, pyarrow filesystem URI, or an :class:`IndexLayout`.
    """

    def __init__(self, index_dir: str | os.PathLike | IndexLayout):
        self.layout = index_dir if isinstance(index_dir, IndexLayout) else IndexLayout.open(index_dir)
        self.fs = self.layout.fs
        self.dir = self.layout.path(PEOPLE_DIR)
        self.head_path = f"{self.dir}/HEAD.json"
        self.lock = WriterLock(self.layout, f"{self.dir}/LOCK", "people change", PeopleBusyError)

    def _path(self, rel: str) -> str:
        return f"{self.dir}/{rel}"

    # -- reading -----------------------------------------------------------------------------

    def head(self) -> dict[str, Any] | None:
        """The current version's record, or None when no change was ever made."""
        try:
            with self.fs.open_input_stream(self.head_path) as src:
                data = src.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if self.fs.get_file_info(self.head_path).type == pafs.FileType.NotFound:
                return None
            raise DatasetError(f"{self.head_path}: unreadable ({exc})") from exc
        try:
            record = json.loads(data)
        except ValueError as exc:  # written by rename: a torn one means outside tampering
            raise DatasetError(f"{self.head_path}: damaged ({exc}); restore it from "
                               f"{self.dir}/versions/") from exc
        if int(record.get("format", FORMAT)) > FORMAT:
            raise DatasetError(f"{self.head_path} has format {record.get('format')}; this "
                               f"version of facenet-platform reads format {FORMAT}")
        return record

    def version(self) -> int:
        """The current version number (0: no people yet). Cheap: one small read."""
        head = self.head()
        return int(head["version"]) if head else 0

    def exists(self) -> bool:
        return self.head() is not None

    def load(self, *, templates: bool = True) -> PeopleState:
        """The current version (an empty state when there is none)."""
        for attempt in range(3):
            head = self.head()
            if head is None:
                return PeopleState.empty()
            try:
                return self._load(head, templates=templates)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                logger.info("people version %s was replaced while loading; loading again",
                            head.get("version"))
        raise AssertionError("unreachable")

    def _read_table(self, rel: str) -> pa.Table:
        path = self._path(rel)
        try:
            return pq.read_table(path, filesystem=self.fs)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as exc:
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                raise FileNotFoundError(path) from exc
            raise DatasetError(f"{path}: unreadable people table ({exc})") from exc

    def _load(self, head: dict[str, Any], *, templates: bool) -> PeopleState:
        tables = head["tables"]
        people_t = self._read_table(tables["people"]).to_pydict()
        people = {}
        for i, pid in enumerate(people_t["person_id"]):
            created = people_t["created_at"][i]
            people[pid] = Person(
                pid, people_t["name"][i], bool(people_t["hidden"][i]), people_t["cover_face"][i],
                tuple(people_t["enrolled_as"][i] or ()),
                created.strftime("%Y-%m-%dT%H:%M:%SZ") if created is not None else "",
                int(people_t["n_faces"][i]), int(people_t["n_photos"][i]))
        faces = FaceTable.from_table(self._read_table(tables["faces"]))
        rej = self._read_table(tables["rejections"]).to_pydict()
        rejections = set(zip(rej["face_id"], rej["person_id"]))
        size = int(head.get("settings", {}).get("embedding_size") or 0)
        tpl = Templates.empty(size)
        if templates and tables.get("templates"):
            t = self._read_table(tables["templates"])
            if t.num_rows:
                size = t.schema.field("template").type.list_size
                col = t.column("template").combine_chunks()
                tpl = Templates(np.asarray(t.column("person_id").to_pylist(), dtype=object),
                                np.asarray(col.flatten().to_numpy(zero_copy_only=False),
                                           np.float32).reshape(-1, size))
        return PeopleState(int(head["version"]), people, faces, rejections, tpl,
                           int(head.get("next_person", 1)), dict(head.get("settings") or {}),
                           head.get("search_index"), head.get("written_at", ""))

    def search_index_path(self, state: PeopleState) -> str | None:
        """Absolute path (on ``self.fs``) of the version's FAISS index over every face."""
        if not state.search_index:
            return None
        return self._path(state.search_index["file"])

    def history(self, limit: int | None = None) -> list[Event]:
        """Events of the current history, oldest first (the last ``limit`` only if given)."""
        current = self.version()
        events_dir = self._path("events")
        if current == 0 or self.fs.get_file_info(events_dir).type == pafs.FileType.NotFound:
            return []
        ids = []
        for info in self.fs.get_file_info(pafs.FileSelector(events_dir)):
            base = info.base_name
            if base.endswith(".json") and base[:-5].isdigit() and int(base[:-5]) <= current:
                ids.append(int(base[:-5]))
        ids.sort()
        if limit is not None:
            ids = ids[-limit:] if limit > 0 else []
        return [self.event(i) for i in ids]

    def event(self, event_id: int) -> Event:
        """One event of the current history (:class:`PeopleError` if there is none such)."""
        if not isinstance(event_id, int) or event_id < 1 or event_id > self.version():
            raise PeopleError(f"no event {event_id} (the history has events 1 to "
                              f"{self.version()})")
        try:
            return Event.from_dict(json.loads(self.layout.read_bytes(
                self._path(f"events/{event_id:08d}.json"))))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"event {event_id} of {self.dir} is unreadable ({exc})") from exc

    def event_diff(self, event_id: int) -> pa.Table:
        self.event(event_id)
        return self._read_table(f"events/{event_id:08d}.diff.parquet")

    def undone(self) -> dict[int, int]:
        """Event id -> the id of the undo event that undid it (and not redone since)."""
        out: dict[int, int] = {}
        for e in self.history():
            if e.undoes is None:
                continue
            out[e.undoes] = e.id
            # undoing an undo (a redo) puts the event that undo had undone back in force
            for target, by in list(out.items()):
                if by == e.undoes:
                    del out[target]
        return out

    # -- writing -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self, kind: str, args: Mapping[str, Any] | None = None, *,
                    request_id: str | None = None) -> Iterator["Transaction"]:
        """Change the people: ``with store.transaction("name", {...}) as tx: tx.state...``.

        The block gets the current version in ``tx.state`` (a copy: change it freely) and sets
        ``tx.summary``; leaving the block normally writes the new version (unless
        ``tx.state`` equals what was loaded, or ``tx.cancel()`` was called); an exception
        writes nothing. One transaction at a time per index (:class:`PeopleBusyError`).

        ``request_id``: a caller's id for this change (a Serve request retried after a writer
        died). It is recorded in the event's args; when one of the last
        :data:`REPLAY_WINDOW` events already carries it, ``tx.replayed`` is that event and the
        block must change nothing (it is cancelled): a retried decision is applied once.
        """
        owner = f"{kind}-{os.getpid()}-{time.monotonic_ns()}"
        self.lock.acquire(owner, kind=kind)
        try:
            self._clean_leftovers()
            before = self.load()
            args = dict(args or {})
            if request_id is not None:
                args["request_id"] = str(request_id)
            tx = Transaction(self, kind, args, before)
            if request_id is not None:
                tx.replayed = next((e for e in reversed(self.history(REPLAY_WINDOW))
                                    if e.args.get("request_id") == str(request_id)), None)
                if tx.replayed is not None:
                    tx.cancel()
            yield tx
            if not tx.cancelled:
                tx.event = self._commit(tx)
            elif tx.replayed is not None:
                tx.event = tx.replayed
        finally:
            self.lock.release(owner)

    def _clean_leftovers(self) -> None:
        """Delete files of versions above the current one (writers killed before HEAD)."""
        current = self.version()
        for sub in ("tables", "versions", "events"):
            path = self._path(sub)
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                continue
            for info in self.fs.get_file_info(pafs.FileSelector(path)):
                number = _file_version(info.base_name)
                stale_tmp = info.base_name.startswith(".") and info.base_name.endswith(".tmp")
                if stale_tmp or (number is not None and number > current):
                    logger.info("deleting %s, left by an interrupted people change", info.path)
                    self.fs.delete_file(info.path)

    def _commit(self, tx: "Transaction") -> Event | None:
        before, after = tx.before, tx.state
        diff = diff_states(before, after)
        changes = diff_counts(diff)
        tables_changed = {
            "people": (changes["person"] > 0 or tx.counts_changed
                       or before.version == 0),
            "faces": changes["face"] > 0 or before.version == 0,
            "rejections": changes["rejection"] > 0 or before.version == 0,
            "templates": tx.templates_changed or before.version == 0,
        }
        if diff.num_rows == 0 and not any(tables_changed[k] for k in ("people", "templates")) \
                and tx.search_index_file is None and after.settings == before.settings:
            logger.info("people %s: nothing changed; no new version", tx.kind)
            return None
        faults = _parse_faults()
        version = before.version + 1
        head = self.head() or {}
        tables = dict(head.get("tables") or {})
        self.fs.create_dir(self._path("tables"), recursive=True)
        self.fs.create_dir(self._path("events"), recursive=True)
        self.fs.create_dir(self._path("versions"), recursive=True)
        embedding_size = int(after.settings.get("embedding_size") or after.templates.vectors.shape[1])
        writers = {
            "people": lambda: _people_table(after),
            "faces": lambda: after.faces.to_table(),
            "rejections": lambda: pa.Table.from_pydict(
                {"face_id": [f for f, _ in sorted(after.rejections)],
                 "person_id": [p for _, p in sorted(after.rejections)]}, schema=REJECTIONS_SCHEMA),
            "templates": lambda: _templates_table(after.templates, embedding_size),
        }
        for name, make in writers.items():
            if tables_changed[name] or name not in tables:
                rel = f"tables/{name}-{version:08d}.parquet"
                pq.write_table(make(), self._path(rel), filesystem=self.fs, compression="zstd")
                tables[name] = rel
        search_index = after.search_index
        if tx.search_index_file is not None:
            search_index = dict(tx.search_index_file)
        pq.write_table(diff, self._path(f"events/{version:08d}.diff.parquet"),
                       filesystem=self.fs, compression="zstd")
        event = Event(version, tx.kind, _now(), {**tx.args, **_EVENT_TAGS.get()}, tx.summary,
                      changes, tx.undoes, socket.gethostname(), os.getpid())
        self.layout.write_bytes_atomic(self._path(f"events/{version:08d}.json"),
                                       (json.dumps(event.to_dict(), indent=1) + "\n").encode())
        after.version = version
        after.written_at = event.time
        after.search_index = search_index
        record = {
            "format": FORMAT,
            "version": version,
            "event": version,
            "written_at": event.time,
            "tables": tables,
            "search_index": search_index,
            "next_person": after.next_person,
            "settings": after.settings,
            "counts": after.counts(),
        }
        payload = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()
        self.layout.write_bytes_atomic(self._path(f"versions/{version:08d}.json"), payload)
        self._fault(faults, "before_head")
        self.layout.write_bytes_atomic(self.head_path, payload)  # the commit point
        self._fault(faults, "after_head")
        try:
            self._collect_garbage(version)
        except OSError as exc:  # the version is committed; old files only cost space
            logger.warning("could not delete old people files: %s", exc)
        logger.info("people v%d: %s (%s)", version, tx.summary or tx.kind, changes)
        return event

    def _fault(self, faults: dict[str, str], point: str) -> None:
        if faults.get(f"sleep_{point}"):
            logger.warning("injected fault sleep_%s=%s", point, faults[f"sleep_{point}"])
            time.sleep(float(faults[f"sleep_{point}"]))
        if faults.get(f"exit_{point}"):
            logger.warning("injected fault exit_%s: exiting", point)
            logging.shutdown()
            os._exit(_FAULT_EXIT_CODE)

    def _collect_garbage(self, current: int) -> None:
        """Delete version records older than the kept ones, and table files no kept version
        names (events are kept forever)."""
        versions_dir = self._path("versions")
        records = []
        for info in self.fs.get_file_info(pafs.FileSelector(versions_dir)):
            number = _file_version(info.base_name)
            if number is not None and info.base_name.endswith(".json"):
                records.append((number, info.path))
        records.sort()
        keep = [r for r in records if r[0] > current - KEEP_VERSIONS]
        referenced: set[str] = set()
        for _, path in keep:
            try:
                rec = json.loads(self.layout.read_bytes(path))
            except (OSError, ValueError):
                return  # cannot tell what is referenced: delete nothing
            referenced.update(rec.get("tables", {}).values())
            if rec.get("search_index"):
                referenced.update(v for k, v in rec["search_index"].items()
                                  if k in ("file", "ids") and v)
        for number, path in records:
            if number <= current - KEEP_VERSIONS:
                self.fs.delete_file(path)
        for info in self.fs.get_file_info(pafs.FileSelector(self._path("tables"))):
            number = _file_version(info.base_name)
            rel = f"tables/{info.base_name}"
            if number is not None and number <= current and rel not in referenced:
                self.fs.delete_file(info.path)


def _file_version(base: str) -> int | None:
    """The version number in ``people-00000012.parquet`` / ``00000012.json`` /
    ``00000012.diff.parquet`` / ``search-00000012.faiss``, else None."""
    stem = base.split(".", 1)[0]
    digits = stem.rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() and len(digits) == 8 else None


def _people_table(state: PeopleState) -> pa.Table:
    people = sorted(state.people.values(), key=lambda p: _person_sort_key(p.id))
    created = [np.datetime64(p.created_at.rstrip("Z")) if p.created_at else np.datetime64(0, "s")
               for p in people]
    return pa.Table.from_arrays([
        pa.array([p.id for p in people], pa.string()),
        pa.array([p.name for p in people], pa.string()),
        pa.array([p.hidden for p in people], pa.bool_()),
        pa.array([p.cover for p in people], pa.string()),
        pa.array([list(p.enrolled_as) for p in people], pa.list_(pa.string())),
        pa.array(np.array(created, "datetime64[ms]"), _TS),
        pa.array([p.n_faces for p in people], pa.int64()),
        pa.array([p.n_photos for p in people], pa.int64()),
    ], schema=PEOPLE_SCHEMA)


def _templates_table(templates: Templates, embedding_size: int) -> pa.Table:
    from facenet_platform.core.facetable import fixed_size_list

    size = templates.vectors.shape[1] if len(templates) else max(embedding_size, 1)
    return pa.Table.from_arrays([
        pa.array(templates.person.tolist(), pa.string()),
        fixed_size_list(templates.vectors.reshape(len(templates), size), size),
    ], schema=templates_schema(size))


class Transaction:
    """One change in progress (see :meth:`PeopleStore.transaction`).

    Attributes:
        before: the version loaded (do not change it).
        state: the copy to change.
        summary: one line for ``people history`` (set it).
        templates_changed: set when ``state.templates`` was replaced.
        counts_changed: set when people's derived counts or covers changed.
        search_index_file: ``{"file", "type", "params", "size"}`` of a FAISS index written with
            :meth:`write_search_index` for this version.
        undoes: the event this one undoes.
        event: the written event once the block is left (None: nothing changed).
    """

    def __init__(self, store: PeopleStore, kind: str, args: dict[str, Any], before: PeopleState):
        self.store = store
        self.kind = kind
        self.args = args
        self.before = before
        self.state = before.copy()
        self.summary = ""
        self.templates_changed = False
        self.counts_changed = False
        self.search_index_file: dict[str, Any] | None = None
        self.undoes: int | None = None
        self.event: Event | None = None
        self.cancelled = False
        self.replayed: Event | None = None

    @property
    def next_version(self) -> int:
        return self.before.version + 1

    def cancel(self) -> None:
        """Leave the block without writing anything."""
        self.cancelled = True

    def changed(self) -> bool:
        """Whether ``state`` differs from what was loaded in anything that is stored."""
        a, b = self.before, self.state
        if diff_states(a, b).num_rows or a.settings != b.settings or self.search_index_file:
            return True
        ta, tb = a.templates.sorted(), b.templates.sorted()
        if len(ta) != len(tb) or not np.array_equal(ta.person.astype(str), tb.person.astype(str)) \
                or not np.allclose(ta.vectors, tb.vectors, atol=1e-5):
            return True
        return any(a.people[p].to_dict() != b.people[p].to_dict() for p in a.people)

    def write_search_index(self, data_writer, index_type: str, params: dict[str, Any],
                           size: int) -> None:
        """Write this version's FAISS index over the faces: ``data_writer(path, fs)`` writes the
        file at ``path`` (absolute on ``fs``)."""
        rel = f"tables/search-{self.next_version:08d}.faiss"
        self.store.fs.create_dir(self.store._path("tables"), recursive=True)
        data_writer(self.store._path(rel), self.store.fs)
        self.search_index_file = {"file": rel, "type": index_type, "params": params,
                                  "size": int(size)}
