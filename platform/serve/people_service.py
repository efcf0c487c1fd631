"""The people of an index as the Serve application reads and changes them (no Ray here).

* :class:`PeopleView` -- one version of the people with the photo catalog: paginated lists,
  one person with their faces (best first, with quality and box) and photos, photos of people
  together, the event history, search by face. Everything it answers names photos and faces by
  id; no path on the server's disk ever leaves it.
* :class:`DecisionLog` / :func:`apply_decision` -- the writer side: one decision
  (name, merge, move, reject, hide, unhide, undo) through :mod:`facenet_platform.index.people`,
  recorded with the request's idempotency key, so that a request retried after the writer died
  is answered from the event log instead of being applied twice.
* :func:`failure_of` -- the HTTP status and code of every people error.

The :class:`~facenet_platform.serve.deployments.PeopleReader` and the gallery writer wrap these.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from facenet_platform.core.errors import ConfigError, DatasetError
from facenet_platform.index.face_ids import FaceIdError
from facenet_platform.index.people_store import (
    Event,
    PeopleBusyError,
    PeopleError,
    PeopleState,
    PeopleStore,
    Person,
    UndoConflictError,
    UnknownFaceError,
    UnknownPersonError,
)

from .catalog import PhotoCatalog, photo_id

logger = logging.getLogger(__name__)

#: Filters of the people list (``visible``: not hidden).
FILTERS = ("visible", "named", "unnamed", "hidden", "all")
#: Decisions the writer applies, and what each takes.
DECISIONS = ("name", "merge", "move", "reject", "hide", "unhide", "undo")
#: How an idempotency key may be spelled (a client's retry key; 8 to 100 characters).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{8,100}")


@dataclass(frozen=True)
class Answer:
    """A failed read or decision: HTTP status, error code, message (crosses Ray handles)."""

    status: int
    code: str
    message: str


#: people exception -> (status, code); first match wins (subclasses first).
PEOPLE_ERRORS: tuple[tuple[type[BaseException], int, str], ...] = (
    (UnknownPersonError, 404, "unknown_person"),
    (UnknownFaceError, 404, "unknown_face"),
    (UndoConflictError, 409, "undo_conflict"),
    (PeopleBusyError, 409, "busy"),
    (FaceIdError, 400, "invalid_id"),
    (PeopleError, 409, "conflict"),
    (ConfigError, 400, "bad_request"),
)


def redact(message: str, *paths: str) -> str:
    """``message`` without the server's ``paths`` (the index directory): a client never
    learns where the service keeps its data. CLI hints such as ``--index DIR`` keep working
    as hints."""
    for path in sorted({p for p in paths if p}, key=len, reverse=True):
        message = message.replace(path, "INDEX_DIR")
    return message


def failure_of(exc: BaseException, *paths: str) -> Optional[tuple[int, str, str]]:
    """``(status, code, message)`` of a people error, or None when it is not one; ``paths``
    are removed from the message (see :func:`redact`)."""
    for cls, status, code in PEOPLE_ERRORS:
        if isinstance(exc, cls):
            message = str(exc)
            if isinstance(exc, KeyError) and message.startswith("'"):
                message = message.strip("'")
            return status, code, redact(message, *paths)
    if isinstance(exc, DatasetError):
        return dataset_failure(exc, *paths)
    return None


def check_request_id(text: Optional[str]) -> Optional[str]:
    """An ``Idempotency-Key`` header value, checked (None when absent)."""
    if text is None or text == "":
        return None
    if not _REQUEST_ID.fullmatch(text):
        raise ConfigError("Idempotency-Key: 8 to 100 characters among letters, digits and . _ : -")
    return text


def person_json(p: Person) -> dict[str, Any]:
    """The JSON of a person in lists."""
    return {"id": p.id, "name": p.name, "hidden": p.hidden, "cover": p.cover,
            "faces": p.n_faces, "photos": p.n_photos}


def event_json(e: Event, undone_by: Optional[int] = None) -> dict[str, Any]:
    """The JSON of an event (its request id included, never a host path)."""
    out = {"id": e.id, "kind": e.kind, "time": e.time, "summary": e.summary,
           "args": dict(e.args), "changes": dict(e.changes), "undoes": e.undoes}
    if undone_by is not None:
        out["undone_by"] = undone_by
    return out


class PeopleView:
    """One version of the people and the photo catalog, indexed for fast reads.

    Lists are sorted once per filter (by faces, descending, then id) and kept; each person's
    face rows are grouped once. A 10k-person page costs a slice.
    """

    def __init__(self, store: PeopleStore, state: PeopleState, catalog: PhotoCatalog):
        self.store = store
        self.state = state
        self.catalog = catalog
        self.version = state.version
        self._lists: dict[str, list[Person]] = {}
        self._rows: Optional[dict[str, np.ndarray]] = None
        self._searcher = None
        self._live: Optional[dict[str, list[str]]] = None
        self._shots: Optional[dict[str, str]] = None

    def _shot_of(self, content_hash: str) -> str:
        """The photo key of a content hash: its shot id (a RAW and its JPEG are one photo) or
        its photo id (a video is one photo whatever the number of frames)."""
        if self._shots is None:
            from facenet_platform.index.people_data import photo_keys

            self._shots = photo_keys(self.store.layout)
        shot = self._shots.get(content_hash)
        return f"shot:{shot}" if shot else photo_id(content_hash)

    @classmethod
    def load(cls, store: PeopleStore, catalog: PhotoCatalog) -> "PeopleView":
        return cls(store, store.load(templates=False), catalog)

    # -- lists -------------------------------------------------------------------------------

    def _sorted(self, which: str) -> list[Person]:
        if which not in self._lists:
            keep = {
                "visible": lambda p: not p.hidden,
                "named": lambda p: not p.hidden and p.name is not None,
                "unnamed": lambda p: not p.hidden and p.name is None,
                "hidden": lambda p: p.hidden,
                "all": lambda p: True,
            }[which]
            people = [p for p in self.state.people.values() if keep(p)]
            people.sort(key=lambda p: (-p.n_faces, int(p.id[1:])))
            self._lists[which] = people
        return self._lists[which]

    def list_people(self, which: str = "visible", *, min_faces: int = 0, offset: int = 0,
                    limit: int = 50, query: Optional[str] = None) -> dict[str, Any]:
        """A page of people by decreasing faces. ``query``: names containing it (any case)."""
        if which not in FILTERS:
            raise ConfigError(f"filter: one of {', '.join(FILTERS)}, got {which!r}")
        people = self._sorted(which)
        if min_faces > 0:
            # sorted by faces: the ones with enough faces are a prefix
            lo, hi = 0, len(people)
            while lo < hi:
                mid = (lo + hi) // 2
                if people[mid].n_faces >= min_faces:
                    lo = mid + 1
                else:
                    hi = mid
            people = people[:lo]
        if query:
            key = query.casefold()
            people = [p for p in people if p.name is not None and key in p.name.casefold()]
        page = people[offset:offset + limit]
        return {"people": [person_json(p) for p in page], "total": len(people),
                "offset": offset, "limit": limit, "filter": which,
                "people_version": self.version}

    # -- one person --------------------------------------------------------------------------

    def _person_rows(self) -> dict[str, np.ndarray]:
        if self._rows is None:
            faces = self.state.faces
            has = np.fromiter((p is not None for p in faces.person), bool, len(faces))
            rows: dict[str, np.ndarray] = {}
            if has.any():
                order = np.flatnonzero(has)
                keys = faces.person[order].astype(str)
                sort = np.argsort(keys, kind="stable")
                keys, order = keys[sort], order[sort]
                uniq, starts = np.unique(keys, return_index=True)
                ends = np.r_[starts[1:], len(keys)]
                rows = {str(u): order[s:e] for u, s, e in zip(uniq, starts, ends)}
            self._rows = rows
        return self._rows

    def _live_rows(self, pid: str) -> np.ndarray:
        """Rows of ``pid``'s faces whose photo is still in the collection, best quality first."""
        faces = self.state.faces
        rows = self._person_rows().get(pid, np.zeros(0, np.int64))
        rows = rows[np.argsort(-faces.quality[rows], kind="stable")]
        live = np.fromiter((self.catalog.face(str(faces.face_id[r])) is not None for r in rows),
                           bool, len(rows))
        return rows[live]

    def face_json(self, row: int) -> dict[str, Any]:
        faces = self.state.faces
        fid = str(faces.face_id[row])
        record = self.catalog.face(fid)
        return {"face_id": fid, "photo_id": photo_id(str(faces.content_hash[row])),
                "box": [round(v, 1) for v in record.box] if record else None,
                "quality": round(float(faces.quality[row]), 4),
                "pinned": bool(faces.pinned[row]), "person": faces.person[row]}

    def person(self, ref: str, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """One person: summary, a page of faces (best first) and the photo count."""
        p = self.state.person(ref)
        rows = self._live_rows(p.id)
        rejected = sum(1 for _, pid in self.state.rejections if pid == p.id)
        return {**person_json(p), "enrolled_as": list(p.enrolled_as),
                "created_at": p.created_at, "rejected_faces": rejected,
                "face_page": {"faces": [self.face_json(int(r)) for r in rows[offset:offset + limit]],
                              "total": int(len(rows)), "offset": offset, "limit": limit},
                "people_version": self.version}

    def photos(self, ref: str, with_refs: Sequence[str] = (), *, offset: int = 0,
               limit: int = 50) -> dict[str, Any]:
        """Photos showing ``ref`` and every one of ``with_refs`` (live photos only), by id."""
        people = [self.state.person(r) for r in [ref, *with_refs]]
        ids = [p.id for p in people]
        if len(set(ids)) != len(ids):
            raise ConfigError("a person is named twice in with=")
        faces = self.state.faces
        per_person = []
        for p in people:
            by_photo: dict[str, list[int]] = {}
            for r in self._person_rows().get(p.id, ()):
                by_photo.setdefault(self._shot_of(str(faces.content_hash[r])), []).append(int(r))
            per_person.append(by_photo)
        common = set(per_person[0])
        for by_photo in per_person[1:]:
            common &= set(by_photo)
        shown: dict[str, tuple[str, str, list[str]]] = {}
        for key in common:
            rows = [r for r in per_person[0][key]
                    if self.catalog.photo(photo_id(str(faces.content_hash[r]))) is not None]
            if not rows:
                continue
            # the photo's thumbnail: the best face of the first person (a video's best frame)
            best = max(rows, key=lambda r: (float(faces.quality[r]), str(faces.face_id[r])))
            ids_of = sorted({photo_id(str(faces.content_hash[r]))
                             for b in per_person for r in b[key]})
            shown[key] = (photo_id(str(faces.content_hash[best])), str(faces.face_id[best]),
                          [i for i in ids_of if self.catalog.photo(i) is not None])
        live = sorted(shown, key=lambda k: shown[k][0])
        out = []
        for key in live[offset:offset + limit]:
            pid, best_face, all_ids = shown[key]
            record = self.catalog.photo(pid)
            out.append({"photo_id": pid, "width": record.width, "height": record.height,
                        "photo_ids": all_ids, "best_face": best_face,
                        "faces": {p.id: sorted(str(faces.face_id[r]) for r in b[key])
                                  for p, b in zip(people, per_person)}})
        return {"photos": out, "total": len(live), "offset": offset, "limit": limit,
                "people": ids, "people_version": self.version}

    # -- history and search ------------------------------------------------------------------

    def history(self, limit: int = 50) -> dict[str, Any]:
        undone = self.store.undone()
        events = self.store.history(limit=limit)
        return {"events": [event_json(e, undone.get(e.id)) for e in reversed(events)],
                "people_version": self.version}

    def search_face(self, embedding: np.ndarray, top_k: int,
                    threshold: Optional[float]) -> list[dict[str, Any]]:
        """The collection's photos containing the face nearest ``embedding`` (one hit per
        photo, nearest first)."""
        from facenet_platform.index.people_read import FaceSearcher

        if self._searcher is None:
            self._searcher = FaceSearcher(self.store, self.state)
        if self._live is None:  # content hash -> a placeholder "path": live photos only
            self._live = {h: [""] for h in self.catalog.content_hashes()}
        hits = self._searcher.search(np.asarray(embedding, np.float32)[None], top_k, threshold,
                                     paths=self._live)[0]
        out = []
        for h in hits:
            record = self.catalog.face(h.face_id)
            out.append({"photo_id": photo_id(h.content_hash), "face_id": h.face_id,
                        "distance": round(float(h.distance), 6), "person": h.person,
                        "name": h.name,
                        "box": [round(v, 1) for v in record.box] if record else None,
                        "width": record.width if record else None,
                        "height": record.height if record else None})
        return out


# ------------------------------------------------------------------------------------- writer


class DecisionLog:
    """Idempotency keys of the events in the log -> event id (read once, then kept up to
    date by the writer)."""

    def __init__(self, store: PeopleStore):
        self.store = store
        self._by_request: Optional[dict[str, int]] = None
        self._version = -1

    def find(self, request_id: str) -> Optional[Event]:
        """The event committed for ``request_id``, if any (the log re-read when another
        writer, or a previous life of this one, committed since)."""
        version = self.store.version()
        if self._by_request is None or version != self._version:
            self._by_request = {}
            for e in self.store.history():
                rid = e.args.get("request_id")
                if rid:
                    self._by_request[str(rid)] = e.id
            self._version = version
        event_id = self._by_request.get(request_id)
        return self.store.event(event_id) if event_id is not None else None

    def record(self, request_id: str, event: Optional[Event]) -> None:
        if event is not None and self._by_request is not None:
            self._by_request[request_id] = event.id
            self._version = event.id


def apply_decision(store: PeopleStore, kind: str, params: dict[str, Any]) -> Optional[Event]:
    """Apply one decision through :mod:`facenet_platform.index.people` (raises its errors)."""
    from facenet_platform.index import people

    if kind == "name":
        return people.name_person(store, params["person"], params["name"])
    if kind == "merge":
        return people.merge_people(store, [params["person"], *params["others"]])
    if kind == "move":
        return people.move_faces(store, params["faces"], params["to"])
    if kind == "reject":
        return people.reject_faces(store, params["faces"])
    if kind in ("hide", "unhide"):
        return people.set_hidden(store, params["person"], kind == "hide")
    if kind == "undo":
        return people.undo(store, params.get("event"))
    raise ConfigError(f"unknown decision {kind!r}; one of {', '.join(DECISIONS)}")


def dataset_failure(exc: DatasetError, *paths: str) -> tuple[int, str, str]:
    """A people store that cannot answer (no search index yet, damaged files)."""
    return 409, "not_ready", redact(str(exc).splitlines()[0], *paths)
