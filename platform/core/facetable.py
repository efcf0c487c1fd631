"""The Arrow schema of a table of faces, and conversion of pipeline results into it.

One row per face: source path, face index, box, landmarks, detection score, embedding
(``fixed_size_list<float32>[D]``) and model id. The index side extends this schema with
content hashes, image sizes, quality scores and timestamps.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from .pipeline import Face


def face_schema(embedding_size: int) -> pa.Schema:
    """Schema of the faces table for embeddings of length ``embedding_size``."""
    return pa.schema([
        pa.field("path", pa.string(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("box", pa.list_(pa.float32(), 4), nullable=False),          # x1, y1, x2, y2 px
        pa.field("landmarks", pa.list_(pa.float32(), 10), nullable=False),   # x1, y1, ... x5, y5 px
        pa.field("score", pa.float32(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), embedding_size), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
    ])


def fixed_size_list(values: np.ndarray, size: int) -> pa.FixedSizeListArray:
    """``(N, size)`` array -> Arrow ``fixed_size_list<float32>[size]`` without a Python loop."""
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, size)


def faces_to_table(paths: Sequence[str], faces: Iterable[Sequence[Face]], model_id: str,
                   embedding_size: int) -> pa.Table:
    """A faces table from per-image face lists (``paths[i]`` goes with ``faces[i]``)."""
    rows = [(path, face) for path, image_faces in zip(paths, faces) for face in image_faces]
    n = len(rows)
    boxes = np.array([f.box for _, f in rows], np.float32).reshape(n, 4)
    landmarks = np.array([f.landmarks for _, f in rows], np.float32).reshape(n, 10)
    embeddings = np.array([f.embedding for _, f in rows], np.float32).reshape(n, embedding_size)
    return pa.Table.from_arrays(
        [
            pa.array([p for p, _ in rows], pa.string()),
            pa.array([f.index for _, f in rows], pa.int32()),
            fixed_size_list(boxes, 4),
            fixed_size_list(landmarks, 10),
            pa.array([f.score for _, f in rows], pa.float32()),
            fixed_size_list(embeddings, embedding_size),
            pa.array([model_id] * n, pa.string()),
        ],
        schema=face_schema(embedding_size),
    )
