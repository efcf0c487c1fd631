"""Where an index directory keeps what, and its manifest.

    INDEX_DIR/
      manifest.json            versions, counts, model id, FAISS parameters (one section per owner)
      faces/part-*.parquet     the collection's faces (index build), files of bounded size
      failures/part-*.parquet  files that failed, with the stage and the reason
      gallery/                 known people: gallery faces table + FAISS index files (versioned)
      clusters/                people clustering of the collection's faces + contact sheets
      matches/                 bulk search results (index search)

INDEX_DIR may be a local path or any URI pyarrow's filesystems understand (``s3://...``,
``gs://...``). The manifest has one top-level section per writer (``"collection"``,
``"gallery"``, ``"clusters"``); :func:`update_manifest` replaces one section atomically
(write to a temporary file, then rename) so writers of different sections never lose each
other's work.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

_lock = threading.Lock()


@dataclass(frozen=True)
class IndexLayout:
    """Paths inside one index directory, on one pyarrow filesystem."""

    fs: pafs.FileSystem
    root: str  # path on ``fs`` (no scheme)

    @classmethod
    def open(cls, uri: "str | os.PathLike | IndexLayout") -> "IndexLayout":
        """Resolve a local path or a filesystem URI (``s3://bucket/index``); a layout is
        returned as it is."""
        if isinstance(uri, IndexLayout):
            return uri
        uri = os.fspath(uri)
        if "://" in uri:
            fs, path = pafs.FileSystem.from_uri(uri)
        else:
            fs, path = pafs.LocalFileSystem(), os.path.abspath(uri)
        return cls(fs, path.rstrip("/"))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def manifest(self) -> str:
        return self.path(MANIFEST_NAME)

    @property
    def faces_dir(self) -> str:
        return self.path("faces")

    @property
    def failures_dir(self) -> str:
        return self.path("failures")

    @property
    def gallery_dir(self) -> str:
        return self.path("gallery")

    @property
    def clusters_dir(self) -> str:
        return self.path("clusters")

    @property
    def matches_dir(self) -> str:
        return self.path("matches")

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def makedirs(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write to a temporary sibling, then rename over ``path`` (atomic on POSIX and in
        object stores, where a single PUT is atomic)."""
        parent = path.rsplit("/", 1)[0]
        self.makedirs(parent)
        tmp = f"{parent}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, path)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as src:
            return src.read()


def read_manifest(layout: IndexLayout) -> dict[str, Any]:
    """The manifest, or an empty one when the index has none yet."""
    if not layout.exists(layout.manifest):
        return {"format": MANIFEST_FORMAT}
    return json.loads(layout.read_bytes(layout.manifest))


def update_manifest(layout: IndexLayout, section: str, values: dict[str, Any]) -> dict[str, Any]:
    """Replace one section of the manifest atomically and return the whole manifest."""
    with _lock:
        manifest = read_manifest(layout)
        manifest["format"] = MANIFEST_FORMAT
        manifest[section] = {**values, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        layout.write_bytes_atomic(layout.manifest,
                                  (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        return manifest
