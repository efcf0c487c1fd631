"""XMP face names and the people: names read from photos seed named people, and named people's
faces go back to the photos as ``.xmp`` sidecars.

* :func:`seed_xmp_names` (run by ``people update`` after it assigned the new faces): the faces
  whose matched XMP region carries a name (``faces.xmp_name``, read by ``index build``) join
  the person of that name, pinned there like a user's move, in one ``xmp_seed`` event. When
  no person has the name yet, the unnamed visible person holding most of those faces takes it
  (so the rest of that person's faces -- video frames, a RAW, photos without tags -- come
  along), else a new person is made. Each (face, name) pair is seeded once: the pairs already
  considered are kept in the people's settings (``xmp_seeded``), so a later user decision --
  a move elsewhere, a rejection, an undo of the seed -- is never overridden; a face a user
  pinned or rejected from that person is never seeded.
* :func:`export_xmp` (``people export-xmp``): each named, visible person's faces are written
  as MWG regions into ``<photo>.xmp`` next to every live copy of the photo
  (:func:`facenet_platform.core.media.xmp.write_sidecar`; the photo itself is never opened for
  writing). Video and animation frames, photos under a URI and photos gone from disk are
  skipped with their reason; a malformed existing sidecar is left alone and reported.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facenet_platform.core.errors import ConfigError, XmpError

from .people_data import CollectionFaces, _fixed, _select, live_paths, read_collection
from .people_store import PeopleStore, Person, check_person_name

logger = logging.getLogger(__name__)

__all__ = ["ExportSummary", "SEED_EVENT", "export_xmp", "seed_xmp_names"]

#: Event kind of a seed.
SEED_EVENT = "xmp_seed"
#: Settings key of the (face id, name) pairs already considered for seeding.
_SEEDED = "xmp_seeded"


def _store(index_dir) -> PeopleStore:
    return index_dir if isinstance(index_dir, PeopleStore) else PeopleStore(index_dir)


def seed_xmp_names(index_dir, faces: CollectionFaces | None = None) -> dict[str, int] | None:
    """Give the faces with an XMP name to the person of that name (see the module doc).

    Args:
        index_dir: the index (path, URI, IndexLayout or PeopleStore).
        faces: the collection's faces when the caller read them already.

    Returns:
        ``{name: faces seeded}`` when an event was written, else None (nothing new to seed).

    Raises:
        PeopleBusyError: another people change is running.
    """
    from .people import _finish, _now

    store = _store(index_dir)
    faces = faces if faces is not None else read_collection(store.layout)
    names = faces.xmp_name if faces.xmp_name is not None else np.zeros(0, object)
    tagged = [i for i, n in enumerate(names.tolist()) if n]
    if not tagged:
        return None
    with store.transaction(SEED_EVENT, {"faces": len(tagged)}) as tx:
        state = tx.state
        seeded = {tuple(pair) for pair in state.settings.get(_SEEDED, [])}
        known = set(state.faces.face_id.tolist())
        by_name: dict[str, list[str]] = {}
        considered = set()
        for i in tagged:
            fid, raw = str(faces.face_id[i]), str(names[i])
            if (fid, raw) in seeded or fid not in known:
                continue
            considered.add((fid, raw))
            try:
                name = check_person_name(raw)
            except ConfigError as exc:
                logger.warning("XMP name %r of face %s cannot be a person's name: %s", raw, fid,
                               exc)
                continue
            by_name.setdefault(name, []).append(fid)
        if not considered:
            tx.cancel()
            return None
        rejected = state.rejections
        person = state.faces.person.copy()
        pinned = state.faces.pinned.copy()
        touched: set[str] = set()
        done: dict[str, int] = {}
        for name in sorted(by_name):
            ids = by_name[name]
            rows = state.faces.rows(ids)
            free = [(f, r) for f, r in zip(ids, rows.tolist()) if not pinned[r]]
            if not free:
                continue  # a user put them somewhere: that decision wins
            target = state.by_name(name)
            if target is None:
                holders = Counter(person[r] for _, r in free if person[r] is not None)
                pick = next((state.people[p] for p, _ in holders.most_common()
                             if state.people[p].name is None and not state.people[p].hidden),
                            None)
                if pick is not None:
                    target = Person(pick.id, name, False, pick.cover, pick.enrolled_as,
                                    pick.created_at, pick.n_faces, pick.n_photos)
                else:
                    target = Person(state.new_person_id(), name, created_at=_now())
                state.people[target.id] = target
            if target.hidden:
                logger.info("XMP name %r: %s is hidden; its faces are not seeded", name,
                            target.id)
                continue
            moved = 0
            for f, r in free:
                if (f, target.id) in rejected:
                    continue  # "not this person" wins over the tag
                if person[r] is not None:
                    touched.add(person[r])
                person[r], pinned[r] = target.id, True
                moved += 1
            if moved:
                touched.add(target.id)
                done[name] = moved
        state.settings[_SEEDED] = sorted([list(p) for p in seeded | considered])
        state.faces = state.faces.with_people(person, pinned)
        _finish(tx, touched, faces_changed=True)
        tx.summary = ("XMP names seeded " + ", ".join(f"{n!r} ({k} faces)"
                                                      for n, k in done.items())
                      if done else "XMP names considered; nothing to seed")
    return done if tx.event is not None else None


@dataclass
class ExportSummary:
    """What ``people export-xmp`` did."""

    people: int = 0                  # named, visible people exported
    faces: int = 0                   # named faces written
    sidecars: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)   # reason -> faces
    errors: dict[str, str] = field(default_factory=dict)    # sidecar -> why it was not written

    def to_dict(self) -> dict[str, Any]:
        return {"people": self.people, "faces": self.faces, "photos": len(self.sidecars),
                "sidecars": self.sidecars, "skipped": self.skipped, "errors": self.errors}

    def text(self) -> str:
        lines = [f"{self.faces} named faces of {self.people} people written to "
                 f"{len(self.sidecars)} sidecars"]
        lines += [f"skipped {n} faces: {why}" for why, n in sorted(self.skipped.items())]
        lines += [f"not written: {path}: {why}" for path, why in sorted(self.errors.items())]
        return "\n".join(lines)


def export_xmp(index_dir) -> ExportSummary:
    """Write the named, visible people's faces as ``.xmp`` sidecars (see the module doc).

    Returns:
        Counts, the sidecars written, faces skipped by reason and sidecars refused.
    """
    from facenet_platform.core.media.xmp import NamedFace, write_sidecar

    store = _store(index_dir)
    state = store.load(templates=False)
    named = {p.id: p.name for p in state.people.values() if p.name is not None and not p.hidden}
    out = ExportSummary(people=len(named))
    faces = state.faces
    rows = [r for r, p in enumerate(faces.person.tolist()) if p in named]
    if not rows:
        return out
    hashes = [str(faces.content_hash[r]) for r in rows]
    indexes = [int(faces.face_index[r]) for r in rows]
    table = _select(store.layout, hashes, indexes, ["box", "image_width", "image_height",
                                                     "orientation", "rotation", "frame_time"])
    cols = table.to_pydict()
    boxes = _fixed(table.column("box"), 4) if table.num_rows else np.zeros((0, 4), np.float32)
    where = {(h, i): k for k, (h, i) in enumerate(zip(cols["content_hash"], cols["face_index"]))}
    paths = live_paths(store.layout)
    per_photo: dict[str, list[NamedFace]] = {}
    geometry: dict[str, tuple[int, int, int, int]] = {}

    def skip(reason: str) -> None:
        out.skipped[reason] = out.skipped.get(reason, 0) + 1

    for r, h, i in zip(rows, hashes, indexes):
        k = where.get((h, i))
        live = paths.get(h)
        if k is None or not live:
            skip("photo no longer in the collection")
            continue
        if cols.get("frame_time") and cols["frame_time"][k] is not None:
            skip("face of a video or animation frame (no sidecar regions for frames)")
            continue
        for path in live:
            if "://" in path:
                skip("photo is not a local file (a URI)")
                continue
            if not os.path.exists(path):
                skip("photo missing on disk")
                continue
            per_photo.setdefault(path, []).append(
                NamedFace(named[faces.person[r]], tuple(float(v) for v in boxes[k])))
            geometry[path] = (int(cols["image_width"][k]), int(cols["image_height"][k]),
                              int((cols.get("orientation") or [0] * (k + 1))[k] or 0),
                              int((cols.get("rotation") or [0] * (k + 1))[k] or 0))
    for path in sorted(per_photo):
        width, height, orientation, rotation = geometry[path]
        try:
            out.sidecars.append(write_sidecar(path, per_photo[path], width=width, height=height,
                                              orientation=orientation, rotation=rotation))
            out.faces += len(per_photo[path])
        except (XmpError, OSError) as exc:
            out.errors[path + ".xmp"] = str(exc)
            logger.warning("export-xmp: %s: %s", path, exc)
    return out
