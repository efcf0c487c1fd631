"""People decisions and ``people update``: every change to the people of an index goes here.

Each function is one transaction of :class:`~facenet_platform.index.people_store.PeopleStore`:
it checks its input (a bad one raises and changes nothing), takes the store's lock, changes a
copy of the current version, brings the derived data up to date (face and photo counts, covers,
the matching templates of the people whose faces changed) and writes the new version with its
event. The CLI (``people ...``) and the Serve writer call these same functions.

Decisions (what a person says; each takes an optional ``request_id`` so that a retried request
is applied once, see :meth:`PeopleStore.transaction`):

* :func:`name_person` -- a name another person has is refused (merge them instead);
* :func:`merge_people` -- the first person absorbs the others (faces, rejections, gallery links);
* :func:`move_faces` -- faces go to a person (or a new one) and are pinned there;
* :func:`reject_faces` -- "not this person": the face leaves and never goes back to that person;
* :func:`set_hidden` -- hidden people keep their faces but are never answered by identify;
* :func:`undo` -- an event's diff applied backwards (itself an event).

:func:`update_people` (``people update``, run by ``index build``) gives the collection's new
faces to people with :func:`~facenet_platform.index.people_engine.update_assignments` (assign to
the nearest person's template or cluster into new people; never undoing a decision), turns the
gallery's enrolled identities into named people, and writes the templates that ``identify``
matches against.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np

from facenet_platform.core.errors import ConfigError

from .face_ids import check_face_id
from .layout import IndexLayout
from .people_data import (
    CollectionFaces, EnrolledFaces, embeddings_of, enrolled_faces, photo_keys, read_collection,
)
from .people_engine import PeopleOptions, person_templates, update_assignments
from .people_store import (
    Event, FaceTable, PeopleError, PeopleState, PeopleStore, Person, Templates, Transaction,
    check_person_name, undo_diff,
)

logger = logging.getLogger(__name__)

__all__ = ["UpdateSummary", "merge_people", "move_faces", "name_person", "options_of",
           "reject_faces", "set_hidden", "undo", "update_people"]

#: ``move --to new``: the faces start a new person.
NEW_PERSON = "new"
#: Option names of PeopleOptions a run records in the people's settings (all of them).
_OPTION_FIELDS = tuple(f.name for f in fields(PeopleOptions))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def options_of(settings: dict[str, Any], **overrides: Any) -> PeopleOptions:
    """The PeopleOptions recorded in a version's settings, with ``overrides`` (None: keep)."""
    values = {k: settings[k] for k in _OPTION_FIELDS if k in settings}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PeopleOptions(**values)


def _record_options(settings: dict[str, Any], options: PeopleOptions) -> None:
    settings.update({k: getattr(options, k) for k in _OPTION_FIELDS})


def _store(index_dir) -> PeopleStore:
    return index_dir if isinstance(index_dir, PeopleStore) else PeopleStore(index_dir)


# =============================================================================================
# derived data: counts, covers, templates
# =============================================================================================

def refresh_people(state: PeopleState, pids: set[str] | None = None,
                   shots: dict[str, str] | None = None) -> None:
    """Face and photo counts and covers of ``pids`` (None: everyone); drops people left
    without faces who have no name and no enrolled photos.

    A photo is counted by its key: its shot id when it has one (``shots``, content hash ->
    shot id: a RAW and its JPEG are one photo), else its content hash (a video is one photo
    however many of its frames show the person)."""
    faces = state.faces
    shots = shots or {}
    options = options_of(state.settings)
    if pids is None:
        pids = set(state.people)
        has = np.fromiter((p is not None for p in faces.person), bool, len(faces))
        rows_by = {}
        if has.any():
            order = np.flatnonzero(has)
            keys = faces.person[order].astype(str)
            sort = np.argsort(keys, kind="stable")
            keys, order = keys[sort], order[sort]
            uniq, starts = np.unique(keys, return_index=True)
            ends = np.r_[starts[1:], len(keys)]
            rows_by = {str(u): order[s:e] for u, s, e in zip(uniq, starts, ends)}
    else:
        rows_by = {pid: faces.members(pid) for pid in pids}
    for pid in pids:
        person = state.people.get(pid)
        if person is None:
            continue
        rows = rows_by.get(pid, np.zeros(0, np.int64))
        if len(rows) == 0 and person.name is None and not person.enrolled_as:
            del state.people[pid]
            continue
        good = rows[faces.quality[rows] >= options.min_quality]
        cover = person.cover
        if cover is None or cover not in set(faces.face_id[good].tolist()):
            # the best face above the quality floor (low-quality faces are never covers)
            cover = str(faces.face_id[good[np.argmax(faces.quality[good])]]) if len(good) else None
        state.people[pid] = Person(person.id, person.name, person.hidden, cover,
                                   person.enrolled_as, person.created_at, int(len(rows)),
                                   int(len({shots.get(h, h) for h in
                                            faces.content_hash[rows].tolist()})))


def _templates_for(layout: IndexLayout, state: PeopleState, pids: set[str],
                   enrolled=None) -> Templates:
    """Templates of the people ``pids`` from their faces now (embeddings read for those faces
    only) and their enrolled photos."""
    options = options_of(state.settings)
    pids = {p for p in pids if p in state.people}
    if not pids:
        return Templates.empty(state.templates.vectors.shape[1])
    faces = state.faces
    rows = np.flatnonzero(np.isin(faces.person.astype(str), np.array(sorted(pids), dtype=str)))
    rows = rows[np.fromiter((faces.person[r] is not None for r in rows), bool, len(rows))]
    vectors, quality, owner = [], [], []
    if len(rows):
        vectors.append(embeddings_of(layout, faces.content_hash[rows], faces.face_index[rows]))
        quality.append(faces.quality[rows])
        owner.append(faces.person[rows])
    names = {n: p for p in pids for n in state.people[p].enrolled_as}
    if names:
        enrolled = enrolled if enrolled is not None else enrolled_faces(layout)
        for name, pid in names.items():
            emb = enrolled.of(name) if len(enrolled) else None
            if emb is not None and len(emb):
                vectors.append(emb)
                quality.append(np.ones(len(emb), np.float32))
                owner.append(np.full(len(emb), pid, object))
    if not vectors:
        return Templates.empty(state.templates.vectors.shape[1])
    ids, templates, own = person_templates(np.concatenate(vectors), np.concatenate(quality),
                                           np.concatenate(owner), options)
    return Templates(np.asarray(ids, dtype=object)[own], templates).sorted()


def _finish(tx: Transaction, touched: set[str], *, faces_changed: bool) -> None:
    """Counts and covers of ``touched`` people; their templates when their faces changed."""
    state = tx.state
    touched = {p for p in touched if p}
    refresh_people(state, touched, photo_keys(tx.store.layout) if touched else None)
    tx.counts_changed = True
    if faces_changed and touched:
        fresh = _templates_for(tx.store.layout, state, touched)
        state.templates = state.templates.without(touched).plus(fresh)
        tx.templates_changed = True
    gone = {p for p in touched if p not in state.people}
    if gone and len(state.templates):
        state.templates = state.templates.without(gone)
        tx.templates_changed = True


# =============================================================================================
# decisions
# =============================================================================================

def _face_ids(faces: Sequence[str]) -> list[str]:
    if not faces:
        raise ConfigError("name at least one face id")
    ids = [check_face_id(f) for f in faces]
    return list(dict.fromkeys(ids))


def name_person(index_dir, person: str, name: str, *, request_id: str | None = None
                ) -> Event | None:
    """Give ``person`` (id or current name) the name ``name``.

    Raises:
        ConfigError: an empty name, control characters, path separators, a reserved word.
        PeopleError: another person has that name (merge them instead).
        UnknownPersonError: no such person.
    """
    name = check_person_name(name)
    store = _store(index_dir)
    with store.transaction("name", {"person": person, "name": name},
                           request_id=request_id) as tx:
        if tx.replayed is not None:
            return tx.replayed
        target = tx.state.person(person)
        other = tx.state.by_name(name)
        if other is not None and other.id != target.id:
            raise PeopleError(
                f"{other.id} is already called {other.name!r}; if they are the same person "
                f"as {target.id}, merge them: `facenet-platform people merge {other.id} "
                f"{target.id} --index {store.layout.root}`")
        if target.name == name:
            tx.cancel()
            return None
        tx.state.people[target.id] = Person(target.id, name, target.hidden, target.cover,
                                            target.enrolled_as, target.created_at,
                                            target.n_faces, target.n_photos)
        tx.summary = (f"named {target.id} {name!r}" if target.name is None
                      else f"renamed {target.id} from {target.name!r} to {name!r}")
    return tx.event


def merge_people(index_dir, people: Sequence[str], *, request_id: str | None = None) -> Event:
    """Merge ``people[1:]`` into ``people[0]`` (ids or names).

    The result keeps the first person's id, name and hidden flag (or, when the first has no
    name, the one name among the others); faces, rejections and gallery links move to it.
    A face rejected from one of them that is in another leaves the merged person.

    Raises:
        PeopleError: fewer than two people, a person named twice, or the others carry
            different names while the first has none (name the first one first).
        UnknownPersonError: no such person.
    """
    if len(people) < 2:
        raise PeopleError("merge needs at least two people: the one to keep, then the others")
    store = _store(index_dir)
    with store.transaction("merge", {"people": list(people)},
                           request_id=request_id) as tx:
        if tx.replayed is not None:
            return tx.replayed
        state = tx.state
        chosen = [state.person(p) for p in people]
        ids = [p.id for p in chosen]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise PeopleError(f"{dup} is named twice; a person cannot be merged with itself")
        target, others = chosen[0], chosen[1:]
        name = target.name
        if name is None:
            names = sorted({p.name for p in others if p.name is not None})
            if len(names) > 1:
                raise PeopleError(f"{', '.join(repr(n) for n in names)} would all become "
                                  f"{target.id}, which has no name; name {target.id} first "
                                  f"(`people name {target.id} NAME`) or keep a named one first")
            name = names[0] if names else None
        other_ids = {p.id for p in others}
        person = state.faces.person.copy()
        moved = np.isin(person.astype(str), np.array(sorted(other_ids), dtype=str))
        moved &= np.fromiter((p is not None for p in person), bool, len(person))
        person[moved] = target.id
        members = set(state.faces.face_id[person == target.id].tolist())
        rejections = set()
        left = []
        for f, p in state.rejections:
            if p in other_ids or p == target.id:
                rejections.add((f, target.id))
                if f in members:
                    left.append(f)
            else:
                rejections.add((f, p))
        pinned = state.faces.pinned.copy()
        if left:
            rows = state.faces.rows(left)
            person[rows] = None
            pinned[rows] = False
        state.faces = state.faces.with_people(person, pinned)
        state.rejections = rejections
        enrolled = tuple(dict.fromkeys([*target.enrolled_as,
                                        *(n for p in others for n in p.enrolled_as)]))
        state.people[target.id] = Person(target.id, name, target.hidden, target.cover, enrolled,
                                         target.created_at)
        for p in others:
            del state.people[p.id]
        _finish(tx, {target.id, *other_ids}, faces_changed=True)
        tx.summary = (f"merged {', '.join(p.label for p in others)} into "
                      f"{state.people[target.id].label}: {int(moved.sum())} faces moved"
                      + (f", {len(left)} rejected faces left it" if left else ""))
    return tx.event


def move_faces(index_dir, faces: Sequence[str], to: str, *, request_id: str | None = None
               ) -> Event | None:
    """Put ``faces`` in person ``to`` (id or name, or ``"new"`` for a new person) and pin them
    there; a rejection of those faces for that person is lifted (the newer decision wins).

    Raises:
        FaceIdError: a face id is misspelled.
        UnknownFaceError / UnknownPersonError: unknown ids.
        PeopleError: the person is hidden (unhide it first).
    """
    ids = _face_ids(faces)
    store = _store(index_dir)
    with store.transaction("move", {"faces": ids, "to": to},
                           request_id=request_id) as tx:
        if tx.replayed is not None:
            return tx.replayed
        state = tx.state
        rows = state.faces.rows(ids)
        if to == NEW_PERSON:
            target = Person(state.new_person_id(), created_at=_now())
            state.people[target.id] = target
        else:
            target = state.person(to)
            if target.hidden:
                raise PeopleError(f"{target.label} is hidden; unhide it first "
                                  f"(`people unhide {target.id}`) or move the faces elsewhere")
        before = state.faces.person[rows]
        if np.all(before == target.id) and np.all(state.faces.pinned[rows]):
            tx.cancel()
            return None
        person = state.faces.person.copy()
        pinned = state.faces.pinned.copy()
        person[rows] = target.id
        pinned[rows] = True
        state.faces = state.faces.with_people(person, pinned)
        state.rejections = {(f, p) for f, p in state.rejections
                            if not (p == target.id and f in set(ids))}
        _finish(tx, {target.id, *(p for p in before if p)}, faces_changed=True)
        tx.summary = f"moved {len(ids)} face(s) to {state.people[target.id].label} (pinned)"
    return tx.event


def reject_faces(index_dir, faces: Sequence[str], *, request_id: str | None = None) -> Event:
    """"Not this person": each face leaves its person and never goes back to it.

    Raises:
        FaceIdError / UnknownFaceError: bad or unknown ids.
        PeopleError: a face belongs to nobody (nothing to reject it from).
    """
    ids = _face_ids(faces)
    store = _store(index_dir)
    with store.transaction("reject", {"faces": ids},
                           request_id=request_id) as tx:
        if tx.replayed is not None:
            return tx.replayed
        state = tx.state
        rows = state.faces.rows(ids)
        owners = state.faces.person[rows]
        nobody = [f for f, p in zip(ids, owners) if p is None]
        if nobody:
            raise PeopleError(f"face {nobody[0]} belongs to nobody; there is no person to "
                              f"reject it from")
        person = state.faces.person.copy()
        pinned = state.faces.pinned.copy()
        person[rows] = None
        pinned[rows] = False
        state.faces = state.faces.with_people(person, pinned)
        state.rejections |= set(zip(ids, owners.tolist()))
        labels = [state.people[p].label for p in sorted(set(owners.tolist()))]
        _finish(tx, set(owners.tolist()), faces_changed=True)
        tx.summary = f"rejected {len(ids)} face(s) from {', '.join(labels)}"
    return tx.event


def set_hidden(index_dir, person: str, hidden: bool, *, request_id: str | None = None
               ) -> Event | None:
    """Hide (``hidden=True``) or show a person; None when it already was so."""
    store = _store(index_dir)
    kind = "hide" if hidden else "unhide"
    with store.transaction(kind, {"person": person},
                           request_id=request_id) as tx:
        if tx.replayed is not None:
            return tx.replayed
        target = tx.state.person(person)
        if target.hidden == hidden:
            tx.cancel()
            return None
        tx.state.people[target.id] = Person(target.id, target.name, hidden, target.cover,
                                            target.enrolled_as, target.created_at,
                                            target.n_faces, target.n_photos)
        tx.summary = f"{'hid' if hidden else 'unhid'} {target.label}"
    return tx.event


def undo(index_dir, event_id: int | None = None, *, request_id: str | None = None) -> Event:
    """Undo event ``event_id`` (default: the latest event not undone that is not an undo).

    Undoing an undo redoes its event. Raises :class:`UndoConflictError` when later events
    changed the same faces or people (undo those first) and :class:`PeopleError` when there is
    nothing to undo.
    """
    store = _store(index_dir)
    if event_id is not None and (not isinstance(event_id, int) or event_id < 1):
        raise PeopleError(f"event ids are numbers from 1, got {event_id!r}")
    with store.transaction("undo", {"event": event_id},
                           request_id=request_id) as tx:
        if tx.replayed is not None:
            return tx.replayed
        if event_id is None:
            undone = store.undone()
            candidates = [e for e in store.history()
                          if e.kind not in ("undo", "update") and e.id not in undone]
            if not candidates:
                raise PeopleError("no decision to undo (`people undo EVENT` undoes a given "
                                  "event, `people update` runs included)")
            target = candidates[-1]
        else:
            target = store.event(event_id)
            if event_id in store.undone():
                raise PeopleError(f"event {event_id} ({target.kind}) is already undone (by "
                                  f"event {store.undone()[event_id]}); undo that one to redo it")
        diff = store.event_diff(target.id)
        state, touched = undo_diff(tx.state, diff, target.id)
        tx.state = state
        tx.args = {**tx.args, "event": target.id}
        tx.undoes = target.id
        faces_changed = bool(diff.num_rows) and "face" in set(diff.column("entity").to_pylist())
        rejections = "rejection" in set(diff.column("entity").to_pylist()) if diff.num_rows else False
        _finish(tx, touched, faces_changed=faces_changed or rejections)
        if target.kind == "update" and faces_changed:
            tx.search_index_file = None  # the search index of the version before is re-used
            tx.state.search_index = _previous_search_index(store, target.id)
        tx.summary = f"undid event {target.id} ({target.kind}: {target.summary})"
    return tx.event


def _previous_search_index(store: PeopleStore, event_id: int) -> dict[str, Any] | None:
    """The search index in force before event ``event_id`` (None when it is gone)."""
    import json

    path = store._path(f"versions/{event_id - 1:08d}.json")
    try:
        record = json.loads(store.layout.read_bytes(path))
    except (OSError, ValueError):
        return None
    index = record.get("search_index")
    if index and store.layout.exists(store._path(index["file"])):
        return index
    return None


# =============================================================================================
# people update
# =============================================================================================

@dataclass
class UpdateSummary:
    """What ``people update`` did."""

    version: int
    mode: str                  # incremental | recluster
    faces: int                 # live faces of the collection
    new_faces: int             # faces the people had not seen
    joined: int                # faces given to people that existed before
    new_people: int
    new_people_faces: int      # faces in the new people
    unassigned: int            # faces that belong to nobody
    low_quality: int           # faces under the quality floor
    people: int
    named: int
    hidden: int
    enrolled_linked: int       # gallery identities that became (or found) their person
    options: dict[str, Any] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)  # faces per person, largest first
    seconds: float = 0.0
    search_index: str = ""
    metrics: dict[str, Any] | None = None
    xmp_seeded: dict[str, int] = field(default_factory=dict)  # XMP name -> faces seeded

    def to_dict(self) -> dict[str, Any]:
        from .people_clusters import size_histogram

        out = asdict(self)
        out["largest"] = self.sizes[:10]
        out["size_histogram"] = size_histogram(self.sizes)
        out.pop("sizes")
        out["seconds"] = round(self.seconds, 3)
        if self.metrics is None:
            out.pop("metrics")
        return out

    def line(self) -> str:
        """One line (``index build`` prints it after its own summary)."""
        return (f"v{self.version}: {self.new_faces} new faces: {self.joined} joined people, "
                f"{self.new_people_faces} formed {self.new_people} new people; "
                f"{self.unassigned} of {self.faces} faces belong to nobody; {self.people} "
                f"people ({self.named} named)")

    def text(self) -> str:
        from .people_clusters import size_histogram

        lines = [
            f"people v{self.version} ({self.mode}): {self.faces} faces, {self.new_faces} new: "
            f"{self.joined} joined existing people, {self.new_people_faces} formed "
            f"{self.new_people} new people; {self.unassigned} belong to nobody "
            f"({self.low_quality} under the quality floor {self.options.get('min_quality')})",
            f"people:   {self.people} ({self.named} named, {self.hidden} hidden"
            + (f", {self.enrolled_linked} from the enrolled gallery" if self.enrolled_linked
               else "") + f"); {self.seconds:.1f} s",
        ]
        if self.xmp_seeded:
            lines.append("xmp:      " + ", ".join(f"{n!r} {k} faces"
                                                  for n, k in self.xmp_seeded.items()))
        if self.metrics is not None:
            hist = ", ".join(f"{k}: {v}" for k, v in size_histogram(self.sizes).items())
            lines.append(f"sizes:    {hist or 'none'}; largest {self.sizes[:10]}")
            for key in ("pairwise", "bcubed"):
                if key in self.metrics:
                    lines.append(f"{key + ':':9} " + ", ".join(
                        f"{k} {v:.4f}" for k, v in self.metrics[key].items()
                        if k in ("precision", "recall", "f1", "f")))
        return "\n".join(lines)


def _link_enrolled(state: PeopleState, enrolled: EnrolledFaces, options: PeopleOptions) -> int:
    """Give each enrolled identity a person; returns how many links were made.

    In order: the person already linked to it; else the person with its name; else the unnamed,
    visible person whose template is nearest the identity's photos (within
    ``options.assign_distance``: the decision ``identify`` would make), which then takes the
    name -- so enrolling a few photos names people found earlier; else a new named person.
    """
    from .people_engine import identify_against_templates

    linked = {n for p in state.people.values() for n in p.enrolled_as}
    made = 0
    for name in enrolled.identities:
        if name in linked:
            continue
        try:
            clean = check_person_name(name)
        except ConfigError:
            clean = None
            logger.warning("enrolled identity %r cannot be a person's name; its person stays "
                           "unnamed", name)
        existing = state.by_name(clean) if clean else None
        if existing is None:
            free = {p.id for p in state.people.values()
                    if p.name is None and not p.hidden and not p.enrolled_as}
            tpl = state.templates
            keep = np.isin(tpl.person.astype(str), np.array(sorted(free), dtype=str)) \
                if len(tpl) and free else np.zeros(len(tpl), bool)
            if keep.any():
                emb = enrolled.of(name)
                ids, centre, _ = person_templates(emb, np.ones(len(emb), np.float32),
                                                  np.full(len(emb), name, object), options)
                owners, codes = np.unique(tpl.person[keep].astype(str), return_inverse=True)
                match = identify_against_templates(centre, owners.astype(object),
                                                   tpl.vectors[keep], codes.astype(np.int64),
                                                   options.assign_distance)
                if len(ids) and match.person[0] is not None:
                    existing = state.people[str(match.person[0])]
                    logger.info("enrolled identity %r names %s (distance %.3f)", name,
                                existing.id, float(match.distance[0]))
        if existing is not None:
            state.people[existing.id] = Person(
                existing.id, existing.name if existing.name is not None else clean,
                existing.hidden, existing.cover, (*existing.enrolled_as, name),
                existing.created_at, existing.n_faces, existing.n_photos)
        else:
            pid = state.new_person_id()
            state.people[pid] = Person(pid, clean, False, None, (name,), _now())
        linked.add(name)
        made += 1
    return made


@dataclass
class _Rows:
    """The rows the engine sees: the collection's live faces and the enrolled photos, in an
    order that stays put between runs (earlier rows first) so that the k-NN index of the last
    run can be extended instead of rebuilt."""

    keys: np.ndarray          # (R,) object: face id, or g<gallery id> for an enrolled photo
    face_row: np.ndarray      # (R,) int64: row in CollectionFaces, -1 for enrolled photos
    enrolled_row: np.ndarray  # (R,) int64: row in EnrolledFaces, -1 for collection faces
    knn: Any                  # people_knn.KnnIndex holding a prefix of the rows
    reused: int               # rows of the last run's index kept


def _rows(store: PeopleStore, state: PeopleState, faces: CollectionFaces,
          enrolled: EnrolledFaces, options: PeopleOptions) -> _Rows:
    from . import people_knn as pk

    keys = np.concatenate([faces.face_id, enrolled.keys()]) if len(enrolled) else faces.face_id
    face_row = np.r_[np.arange(len(faces)), np.full(len(enrolled), -1)].astype(np.int64)
    enrolled_row = np.r_[np.full(len(faces), -1), np.arange(len(enrolled))].astype(np.int64)
    approximate = options.use_approximate(len(keys))
    kind = "hnsw" if approximate else "flat"
    previous = _load_knn(store, state, kind)
    if previous is not None:
        knn, old_keys = previous
        where = {k: i for i, k in enumerate(keys.tolist())}
        if all(k in where for k in old_keys.tolist()) and len(old_keys) == len(knn):
            first = np.array([where[k] for k in old_keys.tolist()], np.int64)
            rest = np.setdiff1d(np.arange(len(keys)), first, assume_unique=True)
            order = np.r_[first, rest[np.argsort(keys[rest].astype(str), kind="stable")]]
            return _Rows(keys[order], face_row[order], enrolled_row[order], knn, len(first))
        logger.info("people update: faces left the collection since the last run; the k-NN "
                    "index is built again")
    dim = faces.embedding_size if len(faces) else enrolled.embeddings.shape[1]
    return _Rows(keys, face_row, enrolled_row, pk.KnnIndex.empty(dim, approximate), 0)


def _load_knn(store: PeopleStore, state: PeopleState, kind: str):
    """The last run's k-NN index and its row keys, or None (none, another kind, unreadable)."""
    import pyarrow.parquet as pq

    from . import people_knn as pk

    record = state.search_index
    if not record or record.get("type") != kind or not record.get("ids"):
        return None
    try:
        data = store.layout.read_bytes(store._path(record["file"]))
        keys = pq.read_table(store._path(record["ids"]), filesystem=store.fs).column("key")
    except (OSError, KeyError) as exc:
        logger.warning("people update: the last k-NN index is unreadable (%s); building it "
                       "again", exc)
        return None
    knn = pk.KnnIndex.from_bytes(np.frombuffer(data, np.uint8), kind)
    return knn, np.asarray(keys.to_pylist(), dtype=object)


def _save_knn(tx: Transaction, rows: _Rows) -> str:
    """This version's k-NN index (also ``search-face``'s index) and its row keys."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    previous = tx.before.search_index
    if previous and rows.reused == len(rows.keys) == int(previous.get("size", -1)):
        return f"kept ({rows.knn.kind} over {len(rows.keys)} rows)"
    data = rows.knn.to_bytes()

    def write(path: str, fs) -> None:
        tx.store.layout.write_bytes_atomic(path, np.asarray(data).tobytes())
        pq.write_table(pa.table({"key": pa.array(rows.keys.tolist(), pa.string())}),
                       path.rsplit(".", 1)[0] + ".ids.parquet", filesystem=fs)

    tx.write_search_index(write, rows.knn.kind, {}, len(rows.keys))
    tx.search_index_file["ids"] = tx.search_index_file["file"].rsplit(".", 1)[0] + ".ids.parquet"
    return (f"{rows.knn.kind} over {len(rows.keys)} rows"
            + (f" ({rows.reused} reused)" if rows.reused else ""))


def update_people(index_dir, *, recluster: bool = False, min_quality: float | None = None,
                  options: dict[str, Any] | None = None, truth: str | None = None,
                  faces: CollectionFaces | None = None) -> UpdateSummary:
    """Give the collection's new faces to people (see the module doc) and write a version.

    Args:
        index_dir: the index directory (path, URI or IndexLayout).
        recluster: decide every face that is not pinned again; names, merges, moves and
            rejections are kept (``update_assignments(recluster=True)``).
        min_quality: the quality floor (default: the last run's, else PeopleOptions').
        options: other PeopleOptions fields to change (kept for later runs).
        truth: ``"folder"``: score the clustering against the photos' parent folder names
            (pairwise and BCubed precision/recall, as ``index cluster`` reported).
        faces: the collection's faces when the caller read them already.

    Raises:
        DatasetError: no faces indexed.
        ConfigError: bad options, or the faces come from another model than the people's.
        PeopleBusyError: another people change is running.
    """
    t0 = time.perf_counter()
    store = _store(index_dir)
    layout = store.layout
    faces = faces if faces is not None else read_collection(layout)
    enrolled = enrolled_faces(layout)
    if enrolled.model_id is not None and faces.model_id is not None and \
            enrolled.model_id != faces.model_id:
        raise ConfigError(f"the gallery of {layout.root} holds embeddings of "
                          f"{enrolled.model_id} but the collection of {faces.model_id}; enroll "
                          f"again with the collection's model")
    args = {"recluster": recluster, "min_quality": min_quality, **(options or {})}
    with store.transaction("update", args) as tx:
        state = tx.state
        if state.settings.get("model_id") not in (None, faces.model_id):
            raise ConfigError(f"the people of {layout.root} were made from embeddings of "
                              f"{state.settings['model_id']}, the collection now holds "
                              f"{faces.model_id}; remove {store.dir} to start over")
        opts = options_of(state.settings, min_quality=min_quality, **(options or {}))
        n = len(faces)
        linked = _link_enrolled(state, enrolled, opts)
        rows = _rows(store, state, faces, enrolled, opts)
        fr, er = rows.face_row, rows.enrolled_row
        is_face = fr >= 0

        # what the people know of each row: person, pinned, rejections, new or not
        old = state.faces
        old_keys = old.face_id.astype(str) if len(old) else np.zeros(0, str)
        keys = faces.face_id.astype(str) if n else np.zeros(0, str)
        pos = np.clip(np.searchsorted(old_keys, keys), 0, max(len(old_keys) - 1, 0))
        known = (old_keys[pos] == keys) if len(old_keys) else np.zeros(n, bool)
        person = np.full(n, None, object)
        pinned = np.zeros(n, bool)
        person[known] = old.person[pos[known]]
        pinned[known] = old.pinned[pos[known]]
        owner_of = {name: p.id for p in state.people.values() for name in p.enrolled_as}
        x = np.empty((len(rows.keys), faces.embedding_size if n else
                      enrolled.embeddings.shape[1]), np.float32)
        x[is_face] = faces.embedding[fr[is_face]]
        if len(enrolled):
            x[~is_face] = enrolled.embeddings[er[~is_face]]
        q = np.ones(len(rows.keys), np.float32)
        q[is_face] = faces.quality[fr[is_face]]
        p_in = np.full(len(rows.keys), None, object)
        p_in[is_face] = person[fr[is_face]]
        p_in[~is_face] = [owner_of[name] for name in enrolled.names[er[~is_face]]]
        pin_in = np.ones(len(rows.keys), bool)
        pin_in[is_face] = pinned[fr[is_face]]
        new = np.ones(len(rows.keys), bool)
        new[is_face] = ~known[fr[is_face]]
        new[~is_face] = np.arange(len(rows.keys))[~is_face] >= rows.reused
        rejected_of = state.rejected_of()
        rejected = {int(r): rejected_of[k] for r, k in enumerate(rows.keys.tolist())
                    if k in rejected_of}

        p_out = update_assignments(x, q, p_in, pin_in, rejected, opts, state.new_person_id,
                                   recluster=recluster, new=new, knn_index=rows.knn)
        _check_decisions_kept(p_in, pin_in, p_out, rejected)
        new_person = np.full(n, None, object)
        new_person[fr[is_face]] = p_out[is_face]

        # the new face table: the live faces, and the pinned faces of photos gone meanwhile
        # (a decision is kept in case the photo comes back)
        gone = ~np.isin(old_keys, keys) & old.pinned if len(old_keys) else np.zeros(0, bool)
        state.faces = FaceTable.build(
            np.r_[faces.face_id, old.face_id[gone]], np.r_[faces.content_hash, old.content_hash[gone]],
            np.r_[faces.face_index, old.face_index[gone]], np.r_[new_person, old.person[gone]],
            np.r_[pinned, old.pinned[gone]], np.r_[faces.quality, old.quality[gone]])
        before_people = set(state.people)
        now = _now()
        for pid in set(new_person.tolist()) - {None} - before_people:
            state.people[pid] = Person(pid, created_at=now)
        refresh_people(state, shots=photo_keys(layout))
        tx.counts_changed = True

        ids, templates, own = person_templates(x, q, p_out, opts)
        owner = np.asarray(ids, dtype=object)[own]
        keep = np.isin(owner.astype(str), np.array(sorted(state.people), dtype=str))
        state.templates = Templates(owner[keep], templates[keep]).sorted()
        tx.templates_changed = True

        _record_options(state.settings, opts)
        state.settings.update({"model_id": faces.model_id, "embedding_size": faces.embedding_size})
        searched = _save_knn(tx, rows)

        had = np.fromiter((p is not None for p in person), bool, n)
        now_has = np.fromiter((p is not None for p in new_person), bool, n)
        created = np.isin(new_person.astype(str), np.array(sorted(
            set(state.people) - before_people), dtype=str)) & now_has
        people = list(state.people.values())
        summary = UpdateSummary(
            version=tx.next_version, mode="recluster" if recluster else "incremental",
            faces=n, new_faces=int((~known).sum()),
            joined=int(np.sum(now_has & ~had & ~created)),
            new_people=len(set(state.people) - before_people),
            new_people_faces=int(created.sum()), unassigned=int(np.sum(~now_has)),
            low_quality=int(np.sum(faces.quality < opts.min_quality)),
            people=len(people), named=sum(p.name is not None for p in people),
            hidden=sum(p.hidden for p in people), enrolled_linked=linked,
            options={k: getattr(opts, k) for k in _OPTION_FIELDS},
            sizes=sorted((p.n_faces for p in people), reverse=True), search_index=searched)
        if truth is not None:
            summary.metrics = clustering_metrics(faces, new_person, truth)
        if not tx.changed():
            tx.cancel()
        tx.summary = (f"{summary.mode}: {summary.new_faces} new faces, {summary.joined} joined "
                      f"people, {summary.new_people} new people, {summary.unassigned} to nobody")
    from .people_xmp import seed_xmp_names

    seeded = seed_xmp_names(store, faces)
    if seeded:
        summary.xmp_seeded = seeded
        summary.named = sum(p.name is not None for p in store.load(templates=False)
                            .people.values())
    summary.seconds = time.perf_counter() - t0
    if tx.event is None or seeded is not None:
        summary.version = store.version()
    return summary


def _check_decisions_kept(p_in: np.ndarray, pin_in: np.ndarray, p_out: np.ndarray,
                          rejected: dict[int, frozenset[str]]) -> None:
    """The engine's promises, checked before anything is written."""
    moved = np.flatnonzero(pin_in & (p_in != p_out))
    if len(moved):
        raise PeopleError(f"internal error: people update moved {len(moved)} pinned face(s); "
                          f"nothing was written")
    broken = [r for r, banned in rejected.items() if p_out[r] in banned]
    if broken:
        raise PeopleError(f"internal error: people update put {len(broken)} face(s) back with "
                          f"a person they were rejected from; nothing was written")


def clustering_metrics(faces: CollectionFaces, person: np.ndarray, truth: str) -> dict[str, Any]:
    """Pairwise and BCubed scores of the people against labels from ``truth`` (``"folder"``:
    each photo's parent folder name), faces of nobody counted as singletons."""
    import os

    from .people_clusters import bcubed_scores, pairwise_scores

    if truth != "folder":
        raise ConfigError(f"unknown truth {truth!r}; use 'folder'")
    labels = np.array([os.path.basename(os.path.dirname(str(p))) for p in faces.path], object)
    codes = np.full(len(person), -1, np.int64)
    has = np.fromiter((p is not None for p in person), bool, len(person))
    if has.any():
        _, codes[has] = np.unique(person[has].astype(str), return_inverse=True)
    return {"truth": truth, "pairwise": pairwise_scores(labels.astype(str), codes),
            "bcubed": bcubed_scores(labels.astype(str), codes)}
