"""``index search``: every face of a faces table against the gallery, as a Ray Data job.

    read_parquet(faces) -> map_batches(GallerySearcher, ActorPool) -> driver -> matches.parquet

:class:`GallerySearcher` loads the people as a gallery once per actor
(:class:`facenet_platform.index.people_gallery.PeopleGallery`: visible people's templates and
enrolled identities not yet linked to a person) and returns the ``top_k`` nearest people of each
face. The driver streams the results into one Parquet file (written to a temporary name, then
renamed), one row per (face, rank):

=============  ======================================================================
path           str: the image the face is in
content_hash   str: sha256 of the image ("" when the input table has no such column)
face_index     int32: the face within the image
rank           int16: 0 = nearest person
name           str: the person's name ("" for a person without a name)
distance       float32: squared L2 distance to the person's nearest template
is_match       bool: a named person within the threshold (the people's assign distance unless
               ``SearchOptions.threshold`` / ``--threshold`` is given; in the file's metadata),
               for a face at or above the quality floor -- identify's decision
person_id      str: the person's id (null for an enrolled identity no person is linked to)
quality        float32: the face's quality (NaN when the table has no detection columns)
=============  ======================================================================

The faces table is the collection of ``INDEX_DIR`` by default (what ``index build`` wrote), or
any Parquet file or folder with ``path``, ``face_index``, ``embedding`` and ``model_id`` columns
(e.g. the output of ``facenet-platform embed``).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from facenet_platform.core.errors import ConfigError, DatasetError

from .collection import FACES, FILES, CollectionStore, drop_dead_faces, live_content
from .layout import IndexLayout

logger = logging.getLogger(__name__)

__all__ = ["GallerySearcher", "MATCHES_SCHEMA", "SearchOptions", "SearchSummary", "search_index"]

MATCHES_SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("face_index", pa.int32(), nullable=False),
    pa.field("rank", pa.int16(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("distance", pa.float32(), nullable=False),
    pa.field("is_match", pa.bool_(), nullable=False),
    pa.field("person_id", pa.string(), nullable=True),
    pa.field("quality", pa.float32(), nullable=True),
])

_NEEDED = ("path", "face_index", "embedding", "model_id")


@dataclass
class SearchOptions:
    """Options of :func:`search_index` (``actors=None``: half the cluster's CPUs, 1..4).

    ``threshold``: squared L2 distance for ``is_match``; ``None`` uses the gallery's
    identification threshold (:attr:`~facenet_platform.index.gallery.Gallery.identify_threshold`).
    """

    top_k: int = 5
    threshold: float | None = None
    actors: int | None = None
    actor_cpus: float = 1.0
    batch_size: int = 1024
    address: str | None = None
    num_cpus: int | None = None
    progress: bool = True
    log_to_driver: bool = True


@dataclass
class SearchSummary:
    faces: int = 0
    matched: int = 0          # faces whose nearest identity is within the threshold
    rows: int = 0
    output: str = ""
    threshold: float = 0.0
    identities: int = 0
    seconds: float = 0.0
    faces_per_second: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["faces_per_second"] = round(self.faces_per_second, 3)
        return out

    def format(self) -> str:
        return (f"searched {self.faces} faces against {self.identities} identities: "
                f"{self.matched} within the threshold {self.threshold:g}\n"
                f"matches:  {self.rows} rows -> {self.output}\n"
                f"time:     {self.seconds:.1f} s, {self.faces_per_second:.1f} faces/s")


class GallerySearcher:
    """Ray Data actor: a batch of faces -> their top-k gallery identities (long format)."""

    def __init__(self, index_dir: str, top_k: int = 5, num_threads: int | None = 1,
                 threshold: float | None = None):
        if num_threads:
            try:
                import faiss

                faiss.omp_set_num_threads(int(num_threads))
            except ImportError:  # pragma: no cover - faiss-cpu is a dependency
                pass
        from .people_gallery import PeopleGallery

        self.gallery = PeopleGallery.load(index_dir)
        self.top_k = int(top_k)
        self.threshold = (self.gallery.identify_threshold if threshold is None
                          else float(threshold))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb = batch["embedding"]
        emb = np.stack(emb) if emb.dtype == object else np.asarray(emb)
        results = self.gallery.search(np.asarray(emb, np.float32), self.top_k)
        threshold = self.threshold
        quality = _batch_quality(batch)
        src, rank, names, dist, persons = [], [], [], [], []
        for i, matches in enumerate(results):
            for r, match in enumerate(matches):
                src.append(i), rank.append(r), names.append(match.name)
                dist.append(match.distance), persons.append(match.person)
        src_idx = np.asarray(src, np.int64)
        q = quality[src_idx] if quality is not None else np.full(len(src_idx), np.nan, np.float32)
        good = ~(q < self.gallery.min_quality)  # unknown quality (NaN) is not refused
        hashes = batch.get("content_hash")
        n = len(src_idx)
        return {
            "path": np.asarray(batch["path"], dtype=object)[src_idx],
            "content_hash": (np.asarray(hashes, dtype=object)[src_idx] if hashes is not None
                             else np.array([""] * n, dtype=object)),
            "face_index": np.asarray(batch["face_index"], np.int32)[src_idx],
            "rank": np.asarray(rank, np.int16),
            "name": np.asarray(names, dtype=object),
            "distance": np.asarray(dist, np.float32),
            # a named person within the threshold, for a face above the quality floor
            "is_match": (np.asarray(dist, np.float32) <= threshold)
            & (np.asarray(names, dtype=object) != "") & good,
            "person_id": np.asarray(persons, dtype=object),
            "quality": q.astype(np.float32),
        }


def _batch_quality(batch: dict[str, np.ndarray]) -> np.ndarray | None:
    """``(N,) float32`` quality of a batch of stored faces (its ``quality`` column, or computed
    from score, box, landmarks and sharpness), or None when the table has neither."""
    if "quality" in batch:
        return np.asarray(batch["quality"], np.float32)
    if not all(c in batch for c in ("score", "box", "landmarks")):
        return None
    from facenet_platform.core.quality import face_quality

    def rows(values, size):
        values = np.stack(values) if np.asarray(values).dtype == object else np.asarray(values)
        return np.asarray(values, np.float32).reshape(-1, size)

    sharp = np.asarray(batch["sharpness"], np.float32) if "sharpness" in batch else None
    return face_quality(np.asarray(batch["score"], np.float32), rows(batch["box"], 4),
                        rows(batch["landmarks"], 10), sharp)


def _faces_source(layout: IndexLayout, faces: str | None) -> tuple[list[str], pafs.FileSystem, pa.Schema]:
    if faces is None:
        paths = CollectionStore(layout).part_paths(FACES)
        if not paths:
            raise DatasetError(f"{layout.root} has no indexed faces: run `facenet-platform index "
                               f"build PHOTOS --out {layout.root}` first, or pass --faces")
        return paths, layout.fs, pq.read_schema(paths[0], filesystem=layout.fs)
    faces = os.fspath(faces)
    if "://" in faces:
        fs, root = pafs.FileSystem.from_uri(faces)
    else:
        fs, root = pafs.LocalFileSystem(), os.path.abspath(faces)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DatasetError(f"{faces}: no such file or directory")
    if info.type == pafs.FileType.Directory:
        paths = sorted(e.path for e in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                       if e.type == pafs.FileType.File and e.path.endswith(".parquet")
                       and not any(p.startswith((".", "_")) for p in
                                   e.path[len(root):].strip("/").split("/")))
        if not paths:
            raise DatasetError(f"{faces}: no .parquet file in this folder")
    else:
        paths = [root]
    try:
        schema = pq.read_schema(paths[0], filesystem=fs)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{paths[0]}: not a readable Parquet file ({exc})") from None
    return paths, fs, schema


def _model_ids(paths: list[str], fs: pafs.FileSystem) -> tuple[set[str], int]:
    """The model ids of the faces and how many faces there are."""
    import pyarrow.dataset as pads

    table = pads.dataset(paths, filesystem=fs, format="parquet").to_table(columns=["model_id"])
    return set(table.column("model_id").unique().to_pylist()), table.num_rows


def _dead_faces(paths: list[str], fs: pafs.FileSystem, dead: frozenset[str]) -> int:
    """How many stored faces belong to content that is no longer live."""
    import pyarrow.dataset as pads

    if not dead:
        return 0
    import pyarrow.compute as pc

    table = pads.dataset(paths, filesystem=fs, format="parquet").to_table(columns=["content_hash"])
    return int(pc.sum(pc.is_in(table.column("content_hash"),
                               value_set=pa.array(sorted(dead), pa.string()))).as_py() or 0)


def _check_collection_spec(layout: IndexLayout, gallery) -> None:
    """ConfigError when the collection's model spec (crop, standardization) is not the one the
    gallery was enrolled with: same model id, other settings, incomparable embeddings."""
    from facenet_platform.core.model_spec import ModelSpec

    from .gallery import GalleryError
    from .layout import read_manifest

    recorded = (read_manifest(layout).get("collection") or {}).get("model")
    if not recorded:
        return  # a collection from before the spec was recorded
    spec = ModelSpec.from_metadata(recorded, where=f"{layout.manifest} collection.model")
    try:
        gallery.check_model(spec)
    except GalleryError as exc:
        raise ConfigError(f"the collection's faces cannot be searched against the gallery: "
                          f"{exc}") from None


def search_index(index_dir: str | os.PathLike, *, faces: str | os.PathLike | None = None,
                 output: str | os.PathLike | None = None,
                 options: SearchOptions | None = None) -> SearchSummary:
    """Search every face of ``faces`` (default: the collection) against the gallery.

    Raises:
        GalleryError: the index has no gallery.
        DatasetError: no faces to search, or a faces table without the needed columns.
        ConfigError: the faces and the gallery come from different models.
    """
    from facenet_platform.ray_connection import check_ray_address, connect_ray, resolve_address

    from .gallery import check_threshold
    from .people_gallery import PeopleGallery

    options = options or SearchOptions()
    if options.top_k < 1 or options.batch_size < 1:
        raise ConfigError("top_k and batch_size must be >= 1")
    if options.threshold is not None:
        check_threshold(options.threshold)
    start = time.monotonic()
    layout = IndexLayout.open(index_dir)
    gallery = PeopleGallery.load(index_dir)  # fails fast without people or a gallery
    threshold = (gallery.identify_threshold if options.threshold is None
                 else float(options.threshold))
    paths, fs, schema = _faces_source(layout, None if faces is None else os.fspath(faces))
    missing = [c for c in _NEEDED if c not in schema.names]
    if missing:
        raise DatasetError(f"{paths[0]}: not a faces table (missing columns {missing})")
    models, n_faces = _model_ids(paths, fs)
    if models - {gallery.model_id}:
        raise ConfigError(f"the faces come from model(s) {sorted(models)} but the gallery from "
                          f"{gallery.model_id}: embeddings of different models cannot be compared")
    if faces is None:
        _check_collection_spec(layout, gallery)

    if output is None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out_fs, out_path = layout.fs, layout.path("matches", f"matches-{stamp}.parquet")
        shown = f"{os.fspath(index_dir).rstrip('/')}/matches/matches-{stamp}.parquet"
    else:
        shown = os.fspath(output)
        if "://" in shown:
            out_fs, out_path = pafs.FileSystem.from_uri(shown)
        else:
            out_fs, out_path = pafs.LocalFileSystem(), os.path.abspath(shown)

    import ray

    address = resolve_address(options.address)
    check_ray_address(address)
    connect_ray(address, num_cpus=options.num_cpus, log_to_driver=options.log_to_driver,
                logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = options.progress
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    actors = options.actors or min(4, max(1, int(cpus // 2)))
    actor_cpus = min(options.actor_cpus, max(0.25, (cpus - 0.25) / actors))
    columns = [c for c in ("path", "content_hash", "face_index", "embedding", "score", "box",
                           "landmarks", "sharpness", "quality") if c in schema.names]
    ds = ray.data.read_parquet(paths, filesystem=fs).select_columns(columns)
    if faces is None:  # the collection: only the faces of files that are still there
        live = live_content(CollectionStore(layout).read(FILES))
        if live.dead or live.moved:
            n_faces -= _dead_faces(paths, fs, live.dead)
            ds = ds.map_batches(drop_dead_faces, batch_format="numpy",
                                fn_kwargs={"dead": live.dead, "moved": live.moved})
    ds = ds.map_batches(GallerySearcher, batch_size=options.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=actor_cpus,
                        fn_constructor_kwargs={"index_dir": os.fspath(index_dir),
                                               "top_k": options.top_k,
                                               "num_threads": max(1, round(actor_cpus)),
                                               "threshold": threshold})

    summary = SearchSummary(faces=n_faces, output=shown, threshold=threshold,
                            identities=len(gallery.identities()))
    out_fs.create_dir(out_path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{out_path.rsplit('/', 1)[0]}/.{out_path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
    schema_out = MATCHES_SCHEMA.with_metadata({"threshold": str(threshold),
                                               "model_id": gallery.model_id,
                                               "top_k": str(options.top_k)})
    try:
        with out_fs.open_output_stream(tmp) as stream, \
                pq.ParquetWriter(stream, schema_out, compression="zstd") as writer:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                n = len(batch["path"])
                if n == 0:
                    continue
                table = pa.Table.from_arrays([
                    pa.array(batch["path"].astype(str), pa.string()),
                    pa.array(batch["content_hash"].astype(str), pa.string()),
                    pa.array(batch["face_index"], pa.int32()),
                    pa.array(batch["rank"], pa.int16()),
                    pa.array(batch["name"].astype(str), pa.string()),
                    pa.array(batch["distance"], pa.float32()),
                    pa.array(batch["is_match"], pa.bool_()),
                    # ids, or None (Ray Data may hand an all-None column back as NaNs)
                    pa.array([p if isinstance(p, str) else None for p in batch["person_id"]],
                             pa.string()),
                    pa.array(np.asarray(batch["quality"], np.float32), pa.float32()),
                ], schema=schema_out)
                writer.write_table(table)
                summary.rows += n
                first = np.asarray(batch["rank"]) == 0
                summary.matched += int(np.asarray(batch["is_match"])[first].sum())
        out_fs.move(tmp, out_path)
    except BaseException:
        try:
            out_fs.delete_file(tmp)
        except OSError:
            pass
        raise
    summary.seconds = time.monotonic() - start
    summary.faces_per_second = summary.faces / summary.seconds if summary.seconds else 0.0
    return summary
