"""Where the collection's faces and photos are: face id / photo id -> source file, box, size.

The service never shows a path on its disk: a photo is named by its **photo id** (the first 16
hex digits of its content hash, the prefix of its faces' ids) and a face by its face id
(:mod:`facenet_platform.index.face_ids`). :class:`PhotoCatalog` maps both back to what a
thumbnail needs, from the index's live faces table (faces of deleted files are gone).

No Ray import here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from facenet_platform.core.errors import ConfigError

logger = logging.getLogger(__name__)

PHOTO_ID_CHARS = 16
_PHOTO_ID = re.compile(r"[0-9a-f]{16}")
_COLUMNS = ["path", "face_index", "box", "content_hash", "image_width", "image_height"]


class PhotoIdError(ConfigError):
    """A photo id that is not spelled as one."""


def photo_id(content_hash: str) -> str:
    """The photo id of the photo whose bytes have sha256 ``content_hash``."""
    return content_hash[:PHOTO_ID_CHARS]


def check_photo_id(text: str) -> str:
    """``text`` (lower-cased) when it is spelled as a photo id, else :class:`PhotoIdError`."""
    if isinstance(text, str) and _PHOTO_ID.fullmatch(text.lower()):
        return text.lower()
    shown = repr(text)[:60]
    if isinstance(text, str) and any(c in text for c in "/\\") or ".." in str(text):
        raise PhotoIdError(f"photo id {shown} contains path characters; expected 16 hex digits "
                           "such as 3f9a0c12d4e5b6a7")
    raise PhotoIdError(f"{shown} is not a photo id (expected 16 hex digits such as "
                       "3f9a0c12d4e5b6a7)")


@dataclass(frozen=True)
class FaceRecord:
    """One face: its photo and where on it."""

    face_id: str
    photo_id: str
    content_hash: str
    path: str                   # source file: for reading only, never sent to a client
    box: tuple[float, float, float, float]
    width: int                  # photo as displayed, px
    height: int


@dataclass(frozen=True)
class PhotoRecord:
    photo_id: str
    content_hash: str
    path: str                   # never sent to a client
    width: int
    height: int
    faces: int


def collection_version(layout) -> tuple:
    """What changes when ``index build`` commits: ``(last commit seq, commits)`` of the
    collection's commit log (one directory listing)."""
    from facenet_platform.index.collection import CollectionStore

    commits = CollectionStore(layout).commits()
    return (commits[-1]["seq"], len(commits)) if commits else (0, 0)


class PhotoCatalog:
    """Face ids and photo ids of an index's live collection, sorted for binary search."""

    def __init__(self, face_ids: np.ndarray, rows: dict[str, np.ndarray], version: tuple = ()):
        face_ids = np.asarray(face_ids, dtype=str)  # fixed-width: binary search without copies
        order = np.argsort(face_ids, kind="stable")
        self.face_ids = face_ids[order]
        self._rows = {k: v[order] for k, v in rows.items()}
        self.version = version
        hashes = self._rows["content_hash"]
        photo_ids = np.asarray([photo_id(h) for h in hashes], dtype=object)
        # one row per photo: the first face row of each photo id
        self._photo_ids, first = np.unique(photo_ids.astype(str), return_index=True) \
            if len(photo_ids) else (np.zeros(0, str), np.zeros(0, np.int64))
        counts = np.bincount(np.searchsorted(self._photo_ids, photo_ids.astype(str)),
                             minlength=len(self._photo_ids)) if len(photo_ids) else np.zeros(0)
        self._photo_first = first
        self._photo_counts = counts

    @classmethod
    def empty(cls) -> "PhotoCatalog":
        """No collection yet: the version :func:`collection_version` gives an empty index."""
        return cls(np.zeros(0, object), {c: np.zeros(0, object) for c in _COLUMNS[:-2]} | {
            "box": np.zeros((0, 4), np.float32), "image_width": np.zeros(0, np.int32),
            "image_height": np.zeros(0, np.int32)}, (0, 0))

    @classmethod
    def load(cls, index_dir) -> "PhotoCatalog":
        """The live faces of ``index_dir`` (empty when it has no collection yet)."""
        from facenet_platform.index.collection import read_faces
        from facenet_platform.index.face_ids import face_ids
        from facenet_platform.index.layout import IndexLayout

        layout = index_dir if isinstance(index_dir, IndexLayout) else IndexLayout.open(index_dir)
        version = collection_version(layout)
        if version == (0, 0):
            return cls.empty()
        table = read_faces(layout, columns=_COLUMNS)
        rows = {
            "path": table.column("path").to_numpy(zero_copy_only=False).astype(object),
            "face_index": table.column("face_index").to_numpy().astype(np.int64),
            "content_hash": table.column("content_hash").to_numpy(zero_copy_only=False)
            .astype(object),
            "box": np.asarray(table.column("box").combine_chunks().flatten(), np.float32)
            .reshape(-1, 4),
            "image_width": table.column("image_width").to_numpy().astype(np.int32),
            "image_height": table.column("image_height").to_numpy().astype(np.int32),
        }
        ids = face_ids(rows["content_hash"], rows["face_index"])
        # The same bytes under two paths are one photo (same faces): keep one row per face id.
        _, unique = np.unique(ids.astype(str), return_index=True)
        unique = np.sort(unique)
        catalog = cls(ids[unique], {k: v[unique] for k, v in rows.items()}, version)
        logger.info("photo catalog: %d faces in %d photos", len(catalog), catalog.n_photos)
        return catalog

    def __len__(self) -> int:
        return int(len(self.face_ids))

    @property
    def n_photos(self) -> int:
        return int(len(self._photo_ids))

    def _record(self, i: int) -> FaceRecord:
        r = self._rows
        return FaceRecord(str(self.face_ids[i]), photo_id(str(r["content_hash"][i])),
                          str(r["content_hash"][i]), str(r["path"][i]),
                          tuple(float(v) for v in r["box"][i]), int(r["image_width"][i]),
                          int(r["image_height"][i]))

    def face(self, fid: str) -> Optional[FaceRecord]:
        """The face with id ``fid`` (already checked), or None."""
        i = int(np.searchsorted(self.face_ids, fid))
        if i < len(self.face_ids) and self.face_ids[i] == fid:
            return self._record(i)
        return None

    def photo(self, pid: str) -> Optional[PhotoRecord]:
        """The photo with id ``pid`` (already checked), or None."""
        i = int(np.searchsorted(self._photo_ids, pid))
        if i < len(self._photo_ids) and self._photo_ids[i] == pid:
            face = self._record(int(self._photo_first[i]))
            return PhotoRecord(pid, face.content_hash, face.path, face.width, face.height,
                               int(self._photo_counts[i]))
        return None

    def content_hashes(self) -> set[str]:
        """Content hashes of the live photos."""
        return set(self._rows["content_hash"].tolist())

    def faces_of_photo(self, pid: str) -> list[FaceRecord]:
        """Every face of photo ``pid``, by face index."""
        lo = int(np.searchsorted(self.face_ids, pid + "-"))
        out = []
        for i in range(lo, len(self.face_ids)):
            if not str(self.face_ids[i]).startswith(pid + "-"):
                break
            out.append(self._record(i))
        return sorted(out, key=lambda f: int(f.face_id.rsplit("-", 1)[1]))


def read_source(path: str) -> bytes:
    """The bytes of a source photo (a local path or a pyarrow filesystem URI)."""
    from facenet_platform.index.sources import filesystem_for, is_uri

    if is_uri(path):
        fs, inner = filesystem_for(path)
        with fs.open_input_stream(inner) as handle:
            return handle.read()
    with open(path, "rb") as handle:
        return handle.read()
