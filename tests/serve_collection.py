"""A small indexed collection written through the collection store, for Serve tests that need
faces and photos without running ``index build`` (the rows are what a build would commit)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import pyarrow as pa


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_serve(index_dir: Path, *, name: str, env: dict[str, str],
                  **app_options: Any) -> Iterator[str]:
    """A fresh local Ray (4 CPUs) with the Serve app over ``index_dir`` on a free port; yields
    its base URL and shuts Serve and Ray down after. ``env``: the ingress' environment (API
    keys); ``app_options``: :func:`facenet_platform.serve.app.app_args` options."""
    import ray
    from ray import serve

    from facenet_platform.serve.app import app_args, build_app

    port = free_port()
    if ray.is_initialized():
        ray.shutdown()
    # Workers inherit this process' environment (FACENET_PLATFORM_CACHE: converted weights).
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = app_args(str(index_dir), ingress={"env": env}, **app_options)
        serve.run(build_app(args), name=name, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


_DEFAULT_KEY: Any = object()


@dataclass
class ServiceClient:
    """A running Serve app: its base URL, one HTTP session, and the API key every request sends
    unless it passes ``key=`` (None: no key)."""

    url: str
    session: Any  # requests.Session
    default_key: ClassVar[str | None] = None

    def request(self, method: str, path: str, *, key: str | None = _DEFAULT_KEY, **kwargs):
        headers = dict(kwargs.pop("headers", {}))
        key = self.default_key if key is _DEFAULT_KEY else key
        if key is not None:
            headers.setdefault("X-API-Key", key)
        return self.session.request(method, self.url + path, headers=headers, timeout=120,
                                    **kwargs)

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs):
        return self.request("POST", path, **kwargs)


def jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_collection(index_dir: Path, photos: Sequence[tuple[Path, Sequence[Any]]],
                     embedding_size: int = 512, seed: int = 0) -> dict[str, str]:
    """Commit a faces and files table for ``photos`` (each an existing image file and its
    faces, highest score first) and the manifest's collection section.

    A face is a box ``(x1, y1, x2, y2)`` (random embedding) or a face object of ``/v1/embed``
    (``box``, ``landmarks``, ``score``, ``embedding``): what ``index build`` would store.

    Returns:
        ``{face id: source path}`` of every face written.
    """
    from PIL import Image

    from facenet_platform.index.collection import (
        FILES_SCHEMA, CollectionStore, faces_table_schema, new_run_id)
    from facenet_platform.index.face_ids import face_id
    from facenet_platform.index.layout import IndexLayout, update_manifest

    layout = IndexLayout.open(index_dir)
    store = CollectionStore(layout)
    rng = np.random.default_rng(seed)
    now = pa.scalar(0, pa.timestamp("ms", tz="UTC"))
    run_id = new_run_id()
    face_rows, file_rows, out = [], [], {}
    for path, boxes in photos:
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        for i, face in enumerate(boxes):
            if isinstance(face, dict):
                x1, y1, x2, y2 = (float(v) for v in face["box"])
                landmarks = [float(v) for xy in face["landmarks"] for v in xy]
                score = float(face["score"])
                emb = np.asarray(face["embedding"], np.float32)
            else:
                x1, y1, x2, y2 = (float(v) for v in face)
                landmarks, score = [x1, y1] * 5, 0.99
                emb = rng.normal(size=embedding_size).astype(np.float32)
            face_rows.append({
                "path": str(path), "face_index": i, "box": [x1, y1, x2, y2],
                "landmarks": landmarks, "score": score, "embedding": emb / np.linalg.norm(emb),
                "model_id": "facenet-20180408-102900", "content_hash": digest,
                "image_width": width, "image_height": height, "sharpness": 100.0,
                "indexed_at": now.as_py(), "run_id": run_id})
            out[face_id(digest, i)] = str(path)
        file_rows.append({"path": str(path), "content_hash": digest, "size": len(data),
                          "mtime_ns": 0, "status": "indexed", "faces": len(boxes),
                          "image_width": width, "image_height": height,
                          "indexed_at": now.as_py(), "run_id": run_id})
    faces = pa.Table.from_pylist(face_rows, schema=faces_table_schema(embedding_size))
    files = pa.Table.from_pylist(file_rows, schema=FILES_SCHEMA)
    seq = store.next_seq()
    store.commit(seq, run_id, {"faces": [faces], "files": [files]},
                 {"embedding_size": embedding_size})
    update_manifest(layout, "collection", {"version": seq, "faces": len(face_rows),
                                           "files": len(file_rows), "embedding_size":
                                           embedding_size})
    return out
