"""Reading the people: lists, one person's faces and photos, photos of people together,
contact sheets, and the collection's photos that contain a given face (``search-face``).

Everything here reads one version of the people (:meth:`PeopleStore.load`) and the collection
tables; nothing is written except the files a caller asks for (a contact sheet, a Parquet file).
Photos are named by their content hash and shown under a live path (a file that is still there;
a photo copied to several places has several).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from facenet_platform.core.errors import ConfigError, DatasetError

from . import faiss_index as fx
from .layout import IndexLayout
from .people_data import face_details, live_paths, photo_keys
from .people_store import PeopleState, PeopleStore, Person

logger = logging.getLogger(__name__)

__all__ = ["FaceSearcher", "PHOTOS_SCHEMA", "face_rows", "list_people", "person_photos",
           "write_contact_sheet", "write_photos_parquet"]

#: HNSW search breadth of ``search-face``.
SEARCH_EF = 128
#: Filters of ``people list``.
FILTERS = ("visible", "named", "unnamed", "hidden", "all")

PHOTOS_SCHEMA = pa.schema([
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),            # a live path of the photo
    pa.field("paths", pa.list_(pa.string()), nullable=False),  # every live path
    pa.field("people", pa.list_(pa.string()), nullable=False),  # person ids asked for, in order
    pa.field("faces", pa.list_(pa.string()), nullable=False),   # their face ids in the photo
    pa.field("shot_id", pa.string(), nullable=True),  # a RAW + JPEG shot: one photo
    pa.field("best_face", pa.string(), nullable=False),  # the thumbnail (a video's best frame)
])


def list_people(state: PeopleState, which: str = "visible", min_faces: int = 0) -> list[Person]:
    """People by decreasing number of faces (then id).

    Args:
        which: ``visible`` (not hidden), ``named``, ``unnamed`` (both not hidden), ``hidden``,
            or ``all``.
        min_faces: only people with at least this many faces.
    """
    if which not in FILTERS:
        raise ConfigError(f"unknown filter {which!r}; one of {', '.join(FILTERS)}")
    if min_faces < 0:
        raise ConfigError(f"--min-faces must be >= 0, got {min_faces}")
    keep = {
        "visible": lambda p: not p.hidden,
        "named": lambda p: not p.hidden and p.name is not None,
        "unnamed": lambda p: not p.hidden and p.name is None,
        "hidden": lambda p: p.hidden,
        "all": lambda p: True,
    }[which]
    people = [p for p in state.people.values() if keep(p) and p.n_faces >= min_faces]
    return sorted(people, key=lambda p: (-p.n_faces, int(p.id[1:]) if p.id[1:].isdigit() else 0))


def face_rows(layout: IndexLayout, state: PeopleState, person: Person,
              paths: dict[str, list[str]] | None = None,
              shots: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One dict per face of ``person``, best quality first: face id, photo (its shot id when
    it has one, else its content hash), path, box, quality, pinned."""
    shots = photo_keys(layout) if shots is None else shots
    faces = state.faces
    rows = faces.members(person.id)
    rows = rows[np.argsort(-faces.quality[rows], kind="stable")]
    paths = live_paths(layout) if paths is None else paths
    details = face_details(layout, faces.content_hash[rows], faces.face_index[rows])
    out = []
    for r in rows:
        key = (faces.content_hash[r], int(faces.face_index[r]))
        live = paths.get(faces.content_hash[r], [])
        detail = details.get(key, {})
        out.append({"face_id": faces.face_id[r], "content_hash": faces.content_hash[r],
                    "photo": shots.get(faces.content_hash[r], faces.content_hash[r]),
                    "face_index": int(faces.face_index[r]),
                    "path": live[0] if live else detail.get("path"),
                    "box": [round(float(v), 1) for v in detail.get("box", [])],
                    "quality": round(float(faces.quality[r]), 4),
                    "pinned": bool(faces.pinned[r])})
    return out


def person_photos(layout: IndexLayout, state: PeopleState, people: Sequence[Person],
                  paths: dict[str, list[str]] | None = None,
                  shots: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The photos showing every one of ``people`` (live photos only), sorted by path.

    A photo is its shot id when it has one (a RAW and its JPEG: one photo, ``shots`` from
    :func:`~facenet_platform.index.people_data.photo_keys`), else its content hash (a video:
    one photo however many frames show the person). Its thumbnail is the best-quality face of
    the first person in it (for a video, the best frame).

    Returns:
        One dict per photo: ``content_hash`` (the file of the best face), ``path`` (a live path
        of that file), ``paths`` (every live path of the photo's files), ``shot_id`` (or None),
        ``best_face`` (face id of the thumbnail), ``people`` (ids) and ``faces`` (per person,
        the face ids of that person in the photo).
    """
    if not people:
        raise ConfigError("name at least one person")
    faces = state.faces
    shots = photo_keys(layout) if shots is None else shots
    per_person = []
    for p in people:
        rows = faces.members(p.id)
        by_photo: dict[str, list[int]] = {}
        for r in rows:
            h = faces.content_hash[r]
            by_photo.setdefault(shots.get(h, h), []).append(int(r))
        per_person.append(by_photo)
    common = set(per_person[0])
    for by_photo in per_person[1:]:
        common &= set(by_photo)
    paths = live_paths(layout) if paths is None else paths
    out = []
    for key in common:
        rows = [r for by_photo in per_person for r in by_photo[key]]
        hashes = sorted({faces.content_hash[r] for r in rows})
        live = sorted(p for h in hashes for p in paths.get(h, []))
        if not live:
            continue  # a photo gone from the collection (its pinned faces are remembered)
        first = [r for r in per_person[0][key] if faces.content_hash[r] in paths] \
            or per_person[0][key]
        best = max(first, key=lambda r: (float(faces.quality[r]), faces.face_id[r]))
        h = faces.content_hash[best]
        shown = paths.get(h) or live
        out.append({"content_hash": h, "path": shown[0], "paths": live,
                    "shot_id": shots.get(h),
                    "best_face": faces.face_id[best],
                    "people": [p.id for p in people],
                    "faces": {p.id: sorted(faces.face_id[r] for r in by_photo[key])
                              for p, by_photo in zip(people, per_person)}})
    return sorted(out, key=lambda d: d["path"])


def write_photos_parquet(photos: list[dict[str, Any]], output: str | os.PathLike) -> str:
    """``photos`` (from :func:`person_photos`) as a Parquet file (:data:`PHOTOS_SCHEMA`),
    written to a temporary name and renamed; returns the path written."""
    import pyarrow.parquet as pq

    layout_out = IndexLayout.open(os.path.dirname(os.path.abspath(os.fspath(output)))
                                  if "://" not in os.fspath(output) else
                                  os.fspath(output).rsplit("/", 1)[0])
    name = os.fspath(output).rsplit("/", 1)[-1]
    table = pa.Table.from_pylist([
        {"content_hash": d["content_hash"], "path": d["path"], "paths": d["paths"],
         "people": d["people"], "faces": [f for p in d["people"] for f in d["faces"][p]],
         "shot_id": d.get("shot_id"), "best_face": d["best_face"]}
        for d in photos], schema=PHOTOS_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    layout_out.write_bytes_atomic(layout_out.path(name), sink.getvalue().to_pybytes())
    return os.fspath(output)


def write_contact_sheet(layout: IndexLayout, state: PeopleState, person: Person,
                        output: str | os.PathLike, max_thumbnails: int = 36,
                        rows: list[dict[str, Any]] | None = None) -> int:
    """A PNG of ``person``'s best faces (at most ``max_thumbnails``); returns the faces shown."""
    from PIL import Image

    from facenet_platform.core.errors import ImageError

    from .people_clusters import THUMBNAIL_SIZE, _read_source, contact_sheet, face_thumbnail

    if max_thumbnails < 1:
        raise ConfigError(f"--max-thumbnails must be >= 1, got {max_thumbnails}")
    rows = face_rows(layout, state, person) if rows is None else rows
    chosen = rows[:max_thumbnails]
    cache: dict[str, np.ndarray | None] = {}
    thumbs = []
    for row in chosen:
        path = row["path"]
        if path not in cache:
            try:
                cache[path] = _read_source(path) if path else None
            except (ImageError, OSError) as exc:
                logger.warning("contact sheet of %s: %s", person.id, exc)
                cache[path] = None
        image = cache[path]
        thumbs.append(face_thumbnail(image, row["box"]) if image is not None and row["box"]
                      else Image.new("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), (128, 128, 128)))
    title = f"{person.label}: {person.n_faces} faces" + (
        f" (best {len(chosen)} shown)" if len(chosen) < len(rows) else "")
    buffer = io.BytesIO()
    contact_sheet(thumbs, title).save(buffer, format="PNG", optimize=True)
    out = os.fspath(output)
    target = IndexLayout.open(out.rsplit("/", 1)[0] if "://" in out
                              else os.path.dirname(os.path.abspath(out)))
    target.write_bytes_atomic(target.path(out.rsplit("/", 1)[-1]), buffer.getvalue())
    return len(chosen)


# =============================================================================================
# search-face
# =============================================================================================

@dataclass(frozen=True)
class FaceHit:
    """A collection face near a query: its id, squared L2 distance, person and photo."""

    face_id: str
    distance: float
    person: str | None
    name: str | None
    content_hash: str
    path: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"face_id": self.face_id, "distance": round(float(self.distance), 6),
                "person": self.person, "name": self.name, "content_hash": self.content_hash,
                "path": self.path}


class FaceSearcher:
    """The FAISS index over every face of one people version (memory-mapped when local).

    Raises:
        DatasetError: the people have no search index yet (run ``people update``).
    """

    def __init__(self, index_dir, state: PeopleState | None = None):
        import pyarrow.parquet as pq

        self.store = index_dir if isinstance(index_dir, PeopleStore) else PeopleStore(index_dir)
        self.layout = self.store.layout
        self.state = state if state is not None else self.store.load(templates=False)
        record = self.state.search_index
        if not record:
            raise DatasetError(f"{self.layout.root} has no face search index yet: run "
                               f"`facenet-platform people update --index {self.layout.root}`")
        path = self.store._path(record["file"])
        import pyarrow.fs as pafs

        if isinstance(self.layout.fs, pafs.LocalFileSystem):
            self.index = fx.read_index_file(path, record["type"], mmap=True)
        else:
            self.index = fx.deserialize_index(self.layout.read_bytes(path))
        if record["type"] == "hnsw":
            import faiss

            faiss.downcast_index(self.index).hnsw.efSearch = SEARCH_EF
        # row -> face id; rows of enrolled gallery photos (keys g<id>) are not collection faces
        self.keys = np.asarray(pq.read_table(self.store._path(record["ids"]),
                                             filesystem=self.layout.fs)
                               .column("key").to_pylist(), dtype=object)
        self.index_type = record["type"]

    def search(self, embeddings: np.ndarray, top_k: int = 10, threshold: float | None = None,
               paths: dict[str, list[str]] | None = None) -> list[list[FaceHit]]:
        """Per query, the nearest collection faces within ``threshold`` (squared L2; default
        the people's ``assign_distance``), one per photo, at most ``top_k`` photos."""
        if top_k < 1:
            raise ConfigError(f"--top-k must be >= 1, got {top_k}")
        from .people import options_of

        threshold = options_of(self.state.settings).assign_distance if threshold is None \
            else float(threshold)
        if not 0.0 <= threshold <= 4.0:
            raise ConfigError(f"threshold must be a squared L2 distance in [0, 4], got {threshold}")
        queries = fx.as_unit_rows(embeddings)
        n = len(self.keys)
        if len(queries) == 0 or n == 0:
            return [[] for _ in range(len(queries))]
        k = int(min(n, max(4 * top_k, 16)))
        scores, ids = self.index.search(queries, k)
        distances = fx.to_squared_l2(scores)
        faces = self.state.faces
        keys = faces.face_id.astype(str)
        paths = live_paths(self.layout) if paths is None else paths
        out = []
        for row in range(len(queries)):
            hits, seen = [], set()
            for j, d in zip(ids[row], distances[row]):
                if j < 0 or d > threshold:
                    continue
                fid = str(self.keys[j])
                if fid.startswith("g"):
                    continue
                pos = int(np.searchsorted(keys, fid))
                if pos >= len(keys) or keys[pos] != fid:
                    continue
                h = faces.content_hash[pos]
                if h in seen or h not in paths:
                    continue
                seen.add(h)
                pid = faces.person[pos]
                person = self.state.people.get(pid) if pid else None
                if person is not None and person.hidden:
                    name = None
                else:
                    name = person.name if person is not None else None
                hits.append(FaceHit(fid, float(d), pid, name, h, paths[h][0]))
                if len(hits) == top_k:
                    break
            out.append(hits)
        return out
