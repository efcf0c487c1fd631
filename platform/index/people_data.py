"""What the people read from the rest of the index: the collection's faces (with their quality),
embeddings of chosen faces, the enrolled gallery's photos, and where a photo lives now.

Quality is the collection's ``quality`` column when the faces table has one, else computed here
from the stored detection score, box, landmarks and sharpness with
:func:`facenet_platform.core.quality.face_quality` (the same function, so the same values).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from facenet_platform.core.errors import DatasetError

from . import faiss_index as fx
from .collection import FACES, FILES, CollectionStore, live_content, live_faces
from .face_ids import face_ids
from .layout import IndexLayout, read_manifest

logger = logging.getLogger(__name__)

__all__ = ["CollectionFaces", "embeddings_of", "enrolled_faces", "live_paths", "photo_keys",
           "read_collection", "face_details"]

_COLUMNS = ("content_hash", "face_index", "path", "box", "landmarks", "score", "sharpness",
            "embedding", "model_id")


def _fixed(column, size: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, size), np.float32)
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, size)


@dataclass(frozen=True)
class CollectionFaces:
    """The collection's live faces, one entry per face, sorted by face id."""

    face_id: np.ndarray       # (N,) object
    content_hash: np.ndarray  # (N,) object
    face_index: np.ndarray    # (N,) int32
    path: np.ndarray          # (N,) object: a live path of the photo
    box: np.ndarray           # (N, 4) float32 px
    quality: np.ndarray       # (N,) float32 in [0, 1]
    embedding: np.ndarray     # (N, D) float32 unit rows
    model_id: str | None
    #: (N,) object: name of the XMP face region matched to the face ("" when none)
    xmp_name: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.face_id))

    @property
    def embedding_size(self) -> int:
        return int(self.embedding.shape[1])


def _quality(table: pa.Table) -> np.ndarray:
    from facenet_platform.core.quality import face_quality

    if "quality" in table.column_names:
        return np.asarray(table.column("quality").to_numpy(zero_copy_only=False), np.float32)
    n = table.num_rows
    if n == 0:
        return np.zeros(0, np.float32)
    sharp = (np.asarray(table.column("sharpness").to_numpy(zero_copy_only=False), np.float32)
             if "sharpness" in table.column_names else None)
    return face_quality(np.asarray(table.column("score").to_numpy(zero_copy_only=False)),
                        _fixed(table.column("box"), 4), _fixed(table.column("landmarks"), 10),
                        sharp)


def read_collection(layout: IndexLayout) -> CollectionFaces:
    """Every live face of the collection with its embedding and quality.

    Raises:
        DatasetError: no faces indexed yet, or faces of more than one model.
    """
    store = CollectionStore(layout)
    commits = store.commits()
    if not commits:
        raise DatasetError(f"{layout.root} has no indexed faces: run `facenet-platform index "
                           f"build PHOTOS --out {layout.root}` first")
    faces = store.read(FACES, commits=commits)
    wanted = [c for c in (*_COLUMNS, "quality", "xmp_name") if c in faces.column_names]
    faces = live_faces(faces.select(wanted), live_content(store.read(FILES, commits=commits)))
    models = set(faces.column("model_id").unique().to_pylist()) if faces.num_rows else set()
    if len(models) > 1:
        raise DatasetError(f"{layout.root} mixes embeddings of models {sorted(models)}; rebuild "
                           f"the index with one model")
    size = faces.schema.field("embedding").type.list_size
    ids = face_ids(np.asarray(faces.column("content_hash").to_pylist(), dtype=object),
                   faces.column("face_index").to_numpy())
    order = np.argsort(ids.astype(str), kind="stable") if len(ids) else np.zeros(0, np.int64)
    quality = _quality(faces)
    emb = _fixed(faces.column("embedding"), size)
    emb = fx.as_unit_rows(emb) if len(emb) else emb
    out = CollectionFaces(
        face_id=ids[order],
        content_hash=np.asarray(faces.column("content_hash").to_pylist(), dtype=object)[order],
        face_index=faces.column("face_index").to_numpy().astype(np.int32)[order],
        path=np.asarray(faces.column("path").to_pylist(), dtype=object)[order],
        box=_fixed(faces.column("box"), 4)[order],
        quality=quality[order],
        embedding=emb[order],
        model_id=models.pop() if models else None,
        xmp_name=(np.asarray([n or "" for n in faces.column("xmp_name").to_pylist()],
                             dtype=object)[order] if "xmp_name" in faces.column_names
                  else np.full(len(ids), "", object)),
    )
    if len(out) > 1 and np.any(out.face_id[1:] == out.face_id[:-1]):
        raise DatasetError(f"{layout.root}: two faces share a face id; rebuild the index")
    return out


def _faces_dataset(layout: IndexLayout):
    import pyarrow.dataset as pads

    paths = CollectionStore(layout).part_paths(FACES)
    if not paths:
        return None
    return pads.dataset(paths, filesystem=layout.fs, format="parquet")


def _select(layout: IndexLayout, content_hashes, face_indexes, columns: list[str]) -> pa.Table:
    """Rows of the stored faces table for these (hash, index) keys (any order, deduplicated;
    streamed through a filter on the hashes, so memory stays bounded by the answer)."""
    import pyarrow.dataset as pads

    dataset = _faces_dataset(layout)
    hashes = sorted(set(content_hashes))
    if dataset is None or not hashes:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    cols = list(dict.fromkeys(["content_hash", "face_index", *columns]))
    cols = [c for c in cols if c in dataset.schema.names]
    table = dataset.to_table(columns=cols, filter=pads.field("content_hash").isin(hashes))
    wanted = set(zip(content_hashes, (int(i) for i in face_indexes)))
    keys = list(zip(table.column("content_hash").to_pylist(),
                    table.column("face_index").to_pylist()))
    keep, seen = [], set()
    for row, key in enumerate(keys):
        if key in wanted and key not in seen:
            seen.add(key)
            keep.append(row)
    return table.take(pa.array(keep, pa.int64()))


def embeddings_of(layout: IndexLayout, content_hashes, face_indexes) -> np.ndarray:
    """``(N, D)`` unit embeddings of the faces ``(content_hashes[i], face_indexes[i])``, in
    that order (DatasetError when one is not in the collection)."""
    content_hashes = list(content_hashes)
    face_indexes = [int(i) for i in face_indexes]
    table = _select(layout, content_hashes, face_indexes, ["embedding"])
    if len(content_hashes) == 0:
        return np.zeros((0, 0), np.float32)
    size = table.schema.field("embedding").type.list_size
    emb = _fixed(table.column("embedding"), size)
    where = {key: i for i, key in enumerate(zip(table.column("content_hash").to_pylist(),
                                                 table.column("face_index").to_pylist()))}
    try:
        order = [where[(h, i)] for h, i in zip(content_hashes, face_indexes)]
    except KeyError as exc:
        raise DatasetError(f"face {exc.args[0]} is not in the collection of {layout.root} any "
                           f"more; run `people update`") from None
    return fx.as_unit_rows(emb[order]) if order else np.zeros((0, size), np.float32)


def face_details(layout: IndexLayout, content_hashes, face_indexes) -> dict[tuple[str, int], dict]:
    """``{(hash, index): {"path", "box"}}`` of stored faces (paths as stored: see
    :func:`live_paths` for where the photo is now)."""
    table = _select(layout, list(content_hashes), [int(i) for i in face_indexes],
                    ["path", "box"])
    if table.num_rows == 0:
        return {}
    boxes = _fixed(table.column("box"), 4)
    return {(h, i): {"path": p, "box": boxes[k].tolist()} for k, (h, i, p) in enumerate(zip(
        table.column("content_hash").to_pylist(), table.column("face_index").to_pylist(),
        table.column("path").to_pylist()))}


def live_paths(layout: IndexLayout) -> dict[str, list[str]]:
    """Content hash -> the live paths with that content (sorted)."""
    store = CollectionStore(layout)
    return live_content(store.read(FILES)).paths


def photo_keys(layout: IndexLayout) -> dict[str, str]:
    """Content hash -> shot id of the live files that belong to a shot (a RAW and its JPEG,
    :mod:`facenet_platform.core.media.pairing`); a photo's key in people views is its shot id
    when it has one, else its content hash (a video is one content hash: one photo)."""
    from .collection import latest_per_path

    store = CollectionStore(layout)
    files = store.read(FILES)
    if files.num_rows == 0 or "shot_id" not in files.column_names:
        return {}
    latest = latest_per_path(files)
    cols = latest.select(["content_hash", "shot_id", "status"]).to_pydict()
    from .collection import STATUS_REMOVED

    return {h: s for h, s, st in zip(cols["content_hash"], cols["shot_id"], cols["status"])
            if s and st != STATUS_REMOVED}


@dataclass(frozen=True)
class EnrolledFaces:
    """The gallery's photos (``index enroll``): one row per enrolled face."""

    ids: np.ndarray          # (M,) int64 gallery face ids (stable, never reused)
    names: np.ndarray        # (M,) object identity names
    embeddings: np.ndarray   # (M, D) float32 unit rows
    model_id: str | None
    version: int

    def __len__(self) -> int:
        return int(len(self.ids))

    @property
    def identities(self) -> list[str]:
        """Identity names, sorted."""
        return sorted(set(self.names.tolist()))

    def keys(self) -> np.ndarray:
        """Row keys of the enrolled faces among the people's rows: ``g<gallery id>``."""
        return np.array([f"g{int(i)}" for i in self.ids], dtype=object)

    def of(self, name: str) -> np.ndarray:
        """``(n, D)`` embeddings of identity ``name``."""
        return self.embeddings[self.names == name]


def enrolled_faces(layout: IndexLayout, gallery=None) -> EnrolledFaces:
    """Every enrolled face (empty when the index has no gallery); ``gallery``: the
    :class:`~facenet_platform.index.gallery.Gallery` when the caller loaded it already."""
    if gallery is None:
        if not read_manifest(layout).get("gallery"):
            return EnrolledFaces(np.zeros(0, np.int64), np.zeros(0, object),
                                 np.zeros((0, 0), np.float32), None, 0)
        from .gallery import Gallery

        gallery = Gallery.load(layout, mmap=False)
    ids, names, embeddings = gallery.enrolled_faces()
    return EnrolledFaces(ids, names.astype(object), fx.as_unit_rows(embeddings)
                         if len(embeddings) else embeddings, gallery.model_id, gallery.version)
