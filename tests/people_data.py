"""Synthetic collections for the people tests: planted identities written through the real
collection commit path (``CollectionStore.commit``), so every reader sees a genuine index.

Embeddings are shaped like FaceNet's: a unit centre per identity and faces at a squared L2
distance of about 0.3-0.5 from it; unrelated identities sit near 2.0 from each other.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from facenet_platform.core.facetable import fixed_size_list
from facenet_platform.index.collection import (
    FACES, FILES, CollectionStore, FILES_SCHEMA, faces_table_schema, new_run_id,
)
from facenet_platform.index.face_ids import face_id
from facenet_platform.index.layout import IndexLayout

D = 512
MODEL = "facenet-20180408-102900"
#: Five landmarks of a frontal face inside a 100 x 120 box at (50, 40).
FRONTAL = np.array([85, 85, 115, 85, 100, 105, 88, 125, 112, 125], np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class Photo:
    """One synthetic photo: its path, bytes' hash and faces (identity, embedding, quality)."""

    path: str
    content_hash: str
    identities: list[str]
    embeddings: np.ndarray
    good: list[bool]

    def face_ids(self) -> list[str]:
        return [face_id(self.content_hash, i) for i in range(len(self.identities))]


@dataclass
class World:
    """Planted identities and the photos made of them."""

    seed: int = 0
    centres: dict[str, np.ndarray] = field(default_factory=dict)
    photos: list[Photo] = field(default_factory=list)
    _rng: np.random.Generator | None = None

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        return self._rng

    def centre(self, identity: str) -> np.ndarray:
        if identity not in self.centres:
            self.centres[identity] = unit(self.rng.normal(size=D))
        return self.centres[identity]

    def face(self, identity: str, spread: float = 0.45) -> np.ndarray:
        """A face of ``identity``: squared L2 ~ spread from its centre."""
        return unit(self.centre(identity) + np.sqrt(spread / 2) * unit(self.rng.normal(size=D)))

    def photo(self, path: str, identities: list[str], good: list[bool] | None = None) -> Photo:
        digest = hashlib.sha256(f"{path}-{len(self.photos)}-{self.seed}".encode()).hexdigest()
        photo = Photo(path, digest, list(identities),
                      np.stack([self.face(i) for i in identities]),
                      list(good) if good is not None else [True] * len(identities))
        self.photos.append(photo)
        return photo

    def faces_of(self, identity: str) -> list[str]:
        return [fid for p in self.photos for fid, who in zip(p.face_ids(), p.identities)
                if who == identity]


def commit_photos(index_dir, photos: list[Photo], *, removed: list[Photo] = ()) -> None:
    """Commit ``photos`` (and ``removed`` rows for deleted ones) as one build commit."""
    layout = IndexLayout.open(index_dir)
    layout.makedirs(layout.root)
    store = CollectionStore(layout)
    run_id = new_run_id()
    now = int(time.time() * 1000)
    rows = [(p, i) for p in photos for i in range(len(p.identities))]
    n = len(rows)
    schema = faces_table_schema(D)
    boxes = np.array([[50, 40, 150, 160] if p.good[i] else [50, 40, 58, 49]
                      for p, i in rows], np.float32).reshape(n, 4)
    landmarks = np.array([FRONTAL if p.good[i] else FRONTAL * 0 + [51, 42, 56, 42, 53, 45, 51,
                                                                    47, 56, 47]
                          for p, i in rows], np.float32).reshape(n, 10)
    faces = pa.Table.from_arrays([
        pa.array([p.path for p, _ in rows], pa.string()),
        pa.array([i for _, i in rows], pa.int32()),
        fixed_size_list(boxes, 4),
        fixed_size_list(landmarks, 10),
        pa.array([0.9995 if p.good[i] else 0.82 for p, i in rows], pa.float32()),
        fixed_size_list(np.array([p.embeddings[i] for p, i in rows], np.float32).reshape(n, D), D),
        pa.array([MODEL] * n, pa.string()),
        pa.array([p.content_hash for p, _ in rows], pa.string()),
        pa.array([640] * n, pa.int32()),
        pa.array([480] * n, pa.int32()),
        pa.array([250.0 if p.good[i] else 5.0 for p, i in rows], pa.float32()),
        pa.array(np.full(n, now, np.int64), pa.int64()).cast(schema.field("indexed_at").type),
        pa.array([run_id] * n, pa.string()),
        # the media columns (issue 13): still photos, no decoder details, no XMP name
        *(pa.nulls(n, f.type) for f in list(schema)[13:]),
    ], schema=schema)
    file_rows = [{"path": p.path, "content_hash": p.content_hash, "size": 1000, "mtime_ns": 1,
                  "status": "indexed", "faces": len(p.identities), "image_width": 640,
                  "image_height": 480, "indexed_at": now, "run_id": run_id} for p in photos]
    file_rows += [{"path": p.path, "content_hash": p.content_hash, "size": 1000, "mtime_ns": 1,
                   "status": "removed", "faces": 0, "image_width": None, "image_height": None,
                   "indexed_at": now, "run_id": run_id} for p in removed]
    files = pa.Table.from_pylist(
        [{**r, "indexed_at": pa.scalar(r["indexed_at"], pa.int64()).cast(
            FILES_SCHEMA.field("indexed_at").type).as_py()} for r in file_rows],
        schema=FILES_SCHEMA)
    seq = store.next_seq()
    store.commit(seq, run_id, {FACES: [faces] if n else [], FILES: [files]},
                 {"model_id": MODEL, "embedding_size": D})
