"""The Arrow schema of a table of faces, and conversion of pipeline results into it.

One row per face: source path, face index, box, landmarks, detection score, embedding
(``fixed_size_list<float32>[D]``) and model id. The index side extends this schema with
content hashes, image sizes, quality scores and timestamps.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

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


def faces_table(columns: Mapping[str, Any], embedding_size: int,
                extra: Sequence[tuple[pa.Field, pa.Array]] = ()) -> pa.Table:
    """A faces table from column arrays (the one place a faces table is assembled).

    Args:
        columns: the :func:`face_schema` columns for N faces: ``path`` (N,) str,
            ``face_index`` (N,) int, ``box`` (N, 4) px, ``landmarks`` (N, 10) px, ``score`` (N,),
            ``embedding`` (N, D) with D = ``embedding_size``, ``model_id`` (N,) str.
        embedding_size: D.
        extra: ``(field, array)`` pairs appended after those columns (the index's extra
            columns), each array of length N and of its field's type.

    Returns:
        A table of schema ``face_schema(D)`` followed by the extra fields.
    """
    n = len(columns["path"])
    arrays = [
        pa.array(np.asarray(columns["path"]).astype(str), pa.string()),
        pa.array(np.asarray(columns["face_index"]).astype(np.int32), pa.int32()),
        fixed_size_list(np.asarray(columns["box"], np.float32).reshape(n, 4), 4),
        fixed_size_list(np.asarray(columns["landmarks"], np.float32).reshape(n, 10), 10),
        pa.array(np.asarray(columns["score"]).astype(np.float32), pa.float32()),
        fixed_size_list(np.asarray(columns["embedding"], np.float32).reshape(n, embedding_size),
                        embedding_size),
        pa.array(np.asarray(columns["model_id"]).astype(str), pa.string()),
    ]
    schema = face_schema(embedding_size)
    if extra:
        schema = pa.schema(list(schema) + [f for f, _ in extra])
        arrays += [a for _, a in extra]
    return pa.Table.from_arrays(arrays, schema=schema)


def faces_to_table(paths: Sequence[str], faces: Iterable[Sequence[Face]], model_id: str,
                   embedding_size: int) -> pa.Table:
    """A faces table from per-image face lists (``paths[i]`` goes with ``faces[i]``)."""
    rows = [(path, face) for path, image_faces in zip(paths, faces) for face in image_faces]
    n = len(rows)
    return faces_table({
        "path": np.array([p for p, _ in rows], dtype=object),
        "face_index": np.array([f.index for _, f in rows], np.int32),
        "box": np.array([f.box for _, f in rows], np.float32).reshape(n, 4),
        "landmarks": np.array([f.landmarks for _, f in rows], np.float32).reshape(n, 10),
        "score": np.array([f.score for _, f in rows], np.float32),
        "embedding": np.array([f.embedding for _, f in rows], np.float32).reshape(
            n, embedding_size),
        "model_id": np.array([model_id] * n, dtype=object),
    }, embedding_size)
