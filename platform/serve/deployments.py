"""The model and gallery deployments the HTTP ingress composes with handles.

======================  ==========================================================================
deployment              job
======================  ==========================================================================
``Detector``            image bytes -> decode (pixel limit) -> MTCNN -> aligned crops
``Embedder``            crops -> embeddings, batched across callers with ``@serve.batch``
                        (a batch is counted in faces, not requests)
``Searcher``            the gallery's FAISS index: top-k identities; reloads on a version bump
``GalleryWriter``       the single writer: enroll / remove, one change at a time, saved atomically
``Thumbnailer``         face crops and downscaled photos as JPEG (LRU cache, ETags); reloads the
                        photo catalog when ``index build`` commits
``PeopleReader``        the people for browsing: lists, one person, photos, history, search by
                        face; polls the people HEAD (at most every 0.25 s) and reloads
======================  ==========================================================================

The gallery writer also applies people decisions (one writer for every change), each recorded
with its request's idempotency key.

Each scales on its own (see :mod:`facenet_platform.serve.config`). Replies are plain picklable
values; expected failures (a corrupt image, an unknown name) come back as :class:`Failure`
values instead of exceptions, so the ingress maps them to HTTP codes without depending on how Ray
wraps exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from ray import serve

from facenet_platform.core.errors import ConfigError, ImageError

from .config import DETECTOR, EMBEDDER, PEOPLE, SEARCHER, THUMBNAILER, WRITER
from .http_errors import Failure, failure_for

logger = logging.getLogger(__name__)


@dataclass
class Detected:
    """The faces of one image (highest detection score first), with their aligned crops."""

    width: int
    height: int
    boxes: np.ndarray          # (N, 4) float32
    scores: np.ndarray         # (N,) float32
    landmarks: np.ndarray      # (N, 5, 2) float32
    crops: np.ndarray          # (N, S, S, 3) uint8
    indices: np.ndarray        # (N,) position among all detections
    n_detected: int = 0        # faces found before max_faces / the central-face choice

    def __len__(self) -> int:
        return int(len(self.boxes))


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_tag
    except Exception:  # noqa: BLE001 - outside a replica (unit tests)
        return f"pid-{os.getpid()}"


# ----------------------------------------------------------------------------------- detector


@serve.deployment(name=DETECTOR)
class Detector:
    """Decodes uploads and finds faces. Sync methods: Serve runs them in a thread pool."""

    def __init__(self, spec: dict[str, Any], min_face_size: int = 20,
                 threads: int | None = None):
        """``spec``: the served model's ``ModelSpec.to_metadata()`` (its crop is cut here)."""
        from facenet_platform.core.factory import build_detect_align, resolve_spec

        self.spec = resolve_spec(spec)
        self.detector, self.aligner = build_detect_align(self.spec, min_face_size=min_face_size,
                                                         num_threads=threads)
        self.calls = Counter()
        self.seconds = 0.0
        logger.info("detector ready: %r, %r", self.detector, self.aligner)

    def _decode(self, data: bytes, source: str, max_pixels: int | None):
        from facenet_platform.core.images import decode_image

        try:
            return decode_image(data, source=source, max_pixels=max_pixels)
        except ImageError as exc:
            return failure_for(exc)

    def _result(self, image: np.ndarray, dets, indices: np.ndarray, n_detected: int) -> Detected:
        chosen = dets.take(indices)
        return Detected(
            width=int(image.shape[1]), height=int(image.shape[0]),
            boxes=chosen.boxes, scores=chosen.scores, landmarks=chosen.landmarks,
            crops=self.aligner(image, chosen), indices=np.asarray(indices, np.int64),
            n_detected=n_detected,
        )

    def _detect_and_crop(self, kind: str, data: bytes, source: str, max_pixels: int | None,
                         choose) -> Detected | Failure:
        """Decode, detect, keep the faces ``choose(image, dets)`` picks, crop them; counted
        under ``kind`` in the stats."""
        t0 = time.perf_counter()
        image = self._decode(data, source, max_pixels)
        if isinstance(image, Failure):
            self.calls["failed"] += 1
            return image
        dets = self.detector.detect([image])[0]
        out = self._result(image, dets, np.asarray(choose(image, dets), np.int64), len(dets))
        self.calls[kind] += 1
        self.seconds += time.perf_counter() - t0
        return out

    def detect(self, data: bytes, source: str, max_faces: int, max_pixels: int | None = None
               ) -> Detected | Failure:
        """Every face of an encoded image, at most ``max_faces`` (highest score first)."""
        return self._detect_and_crop("detect", data, source, max_pixels,
                                     lambda image, dets: np.arange(min(len(dets), max_faces)))

    def central(self, data: bytes, source: str, max_pixels: int | None = None
                ) -> Detected | Failure:
        """The one face a photo is about (largest near the centre), or none."""
        from facenet_platform.core.alignment import select_central_face

        return self._detect_and_crop(
            "central", data, source, max_pixels,
            lambda image, dets: [select_central_face(dets, image.shape)] if len(dets) else [])

    def ready(self) -> dict[str, Any]:
        return {"replica": _replica_id(), "aligner": repr(self.aligner),
                "crop_size": self.aligner.image_size, "model_id": self.spec.model_id}

    def stats(self) -> dict[str, Any]:
        n = self.calls["detect"] + self.calls["central"]
        return {"replica": _replica_id(), "calls": dict(self.calls),
                "mean_ms": round(1000 * self.seconds / n, 2) if n else None}


# ----------------------------------------------------------------------------------- embedder


def _n_faces(items: Sequence[np.ndarray]) -> int:
    """``@serve.batch`` batch size: faces, not requests (a request may carry several)."""
    return int(sum(len(item) for item in items))


@serve.deployment(name=EMBEDDER)
class Embedder:
    """Face crops -> embeddings, with requests of every client batched together.

    A batch holds at most ``max_batch_size`` faces (callers send at most that many per call) and
    runs at the smallest compiled model batch size ("bucket") that holds it: the Keras backends
    pad every forward pass to a fixed size, so one face must not pay for sixteen.
    """

    def __init__(self, spec: dict[str, Any], max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.01, buckets: Sequence[int] | None = None,
                 backend: str = "auto", jit_compile: bool | None = None,
                 threads: int | None = None):
        """``spec``: the served model's ``ModelSpec.to_metadata()`` (its weights are loaded)."""
        from facenet_platform.core.tensorflow_setup import start_tensorflow

        start_tensorflow(threads)  # thread pools before TensorFlow runs anything; quiet start-up
        from facenet_platform.core.factory import build_embedder, resolve_spec

        self.max_batch_size = int(max_batch_size)
        sizes = sorted(set(buckets or [self.max_batch_size]) | {self.max_batch_size})
        if backend.startswith("onnx"):
            sizes = [self.max_batch_size]  # ONNX Runtime takes any batch size: no padding
        t0 = time.perf_counter()
        spec = resolve_spec(spec)
        largest = build_embedder(spec, batch_size=sizes[-1], backend=backend,
                                 jit_compile=jit_compile)
        self._by_size = {sizes[-1]: largest}
        for size in sizes[:-1]:
            self._by_size[size] = build_embedder(spec, batch_size=size, backend=backend,
                                                 jit_compile=jit_compile, network=largest.model)
        self.spec = largest.spec
        self.sizes = sizes
        self.model_id = largest.model_id
        self.input_size = largest.input_size
        self.embedding_size = largest.embedding_size
        self.threshold = largest.threshold
        self.backend = largest.backend  # "auto" resolved on this replica's machine
        for size, embedder in self._by_size.items():  # trace / compile every bucket now
            embedder(np.zeros((size, self.input_size, self.input_size, 3), np.uint8))
        self.embed.set_max_batch_size(self.max_batch_size)
        self.embed.set_batch_wait_timeout_s(float(batch_wait_timeout_s))
        self.batch_wait_timeout_s = float(batch_wait_timeout_s)
        self.batches = 0
        self.faces = 0
        self.requests = 0
        self.batch_sizes: Counter[int] = Counter()
        self.seconds = 0.0
        logger.info("embedder ready in %.1f s: %s, buckets %s, max_batch_size %d",
                    time.perf_counter() - t0, backend, sizes, self.max_batch_size)

    def _run(self, crops: np.ndarray) -> np.ndarray:
        out = []
        largest = self.sizes[-1]
        for start in range(0, len(crops), largest):
            piece = crops[start:start + largest]
            size = next(s for s in self.sizes if s >= len(piece))
            out.append(self._by_size[size](piece))
        return np.concatenate(out) if out else np.zeros((0, self.embedding_size), np.float32)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, batch_size_fn=_n_faces)
    async def embed(self, items: list[np.ndarray]) -> list[np.ndarray]:
        """One ``(n_i, S, S, 3) uint8`` crop array per caller -> one ``(n_i, D)`` array each."""
        counts = [len(item) for item in items]
        crops = np.concatenate(items) if items else np.zeros((0,), np.uint8)
        t0 = time.perf_counter()
        # In a thread, so the event loop keeps queueing the next batch meanwhile.
        embeddings = await asyncio.to_thread(self._run, crops)
        self.seconds += time.perf_counter() - t0
        self.batches += 1
        self.faces += len(crops)
        self.requests += len(items)
        self.batch_sizes[len(crops)] += 1
        bounds = np.cumsum([0, *counts])
        return [embeddings[bounds[i]:bounds[i + 1]] for i in range(len(items))]

    def ready(self) -> dict[str, Any]:
        return {"replica": _replica_id(), "model_id": self.model_id,
                "embedding_size": self.embedding_size, "input_size": self.input_size,
                "threshold": self.threshold, "backend": self.backend,
                "spec": self.spec.to_metadata()}

    def stats(self) -> dict[str, Any]:
        return {
            "replica": _replica_id(), "backend": self.backend, "buckets": self.sizes,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "batches": self.batches, "faces": self.faces, "requests": self.requests,
            "mean_batch_faces": round(self.faces / self.batches, 2) if self.batches else None,
            "batch_size_histogram": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "mean_batch_ms": round(1000 * self.seconds / self.batches, 2) if self.batches else None,
        }


# ------------------------------------------------------------------------------------- gallery


def _gallery_version(layout) -> int:
    from facenet_platform.index.layout import read_manifest

    section = read_manifest(layout).get("gallery") or {}
    return int(section.get("version", 0))


def _spec(model: dict[str, Any] | None):
    from facenet_platform.core.model_spec import ModelSpec

    return None if model is None else ModelSpec.from_metadata(model, where="the served model")


def _open_gallery(index_dir: str, *, mmap: bool, model: dict[str, Any] | None = None):
    """The saved gallery of ``index_dir``, or a new empty one (version 0) when it has none;
    ``model``: the ``ModelSpec.to_metadata()`` of the served model (a new gallery records it).

    Retries a load that races with a writer deleting an old version under it.
    """
    from facenet_platform.index.gallery import Gallery, GalleryError
    from facenet_platform.index.layout import IndexLayout, read_manifest

    layout = IndexLayout.open(index_dir)
    for attempt in range(3):
        if "gallery" not in read_manifest(layout):
            return Gallery.create(index_dir, spec=_spec(model), flip="none" if model else None)
        try:
            return Gallery.load(index_dir, mmap=mmap)
        except GalleryError:
            if attempt == 2:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _open_people_gallery(index_dir: str):
    """The people of ``index_dir`` as the identify gallery
    (:class:`~facenet_platform.index.people_gallery.PeopleGallery`), or a new empty gallery
    (version 0) when it has neither people nor enrolled photos. Retries a load that races with
    a writer replacing an old version under it."""
    from facenet_platform.core.errors import DatasetError
    from facenet_platform.index.gallery import GalleryError
    from facenet_platform.index.layout import IndexLayout
    from facenet_platform.index.people_gallery import PeopleGallery, identity_version

    layout = IndexLayout.open(index_dir)
    for attempt in range(3):
        if identity_version(layout) == (0, 0):
            return _open_gallery(index_dir, mmap=True)
        try:
            return PeopleGallery.load(index_dir)
        except (GalleryError, DatasetError, FileNotFoundError):
            if attempt == 2:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _versions(gallery) -> tuple[int, int]:
    return gallery.version, getattr(gallery, "people_version", 0)


@serve.deployment(name=SEARCHER)
class Searcher:
    """Holds the people as the identify gallery (templates of named, visible people and of
    enrolled identities) and answers top-k searches.

    Before every request it reads the gallery and people versions (two small files) and loads
    again when one changed, so an enrollment or a people decision (a rename, a merge) is visible
    to the next request on every replica.
    """

    def __init__(self, index_dir: str):
        from facenet_platform.index.layout import IndexLayout

        self.index_dir = index_dir
        self.layout = IndexLayout.open(index_dir)
        self._lock = threading.Lock()
        self._gallery = _open_people_gallery(index_dir)
        self.reloads = 0
        self.searches = 0
        logger.info("searcher ready: %r", self._gallery)

    def _current(self):
        from facenet_platform.index.people_gallery import identity_version

        gallery = self._gallery
        if identity_version(self.layout) != _versions(gallery):
            with self._lock:
                if identity_version(self.layout) != _versions(self._gallery):
                    self._gallery = _open_people_gallery(self.index_dir)
                    self.reloads += 1
                    logger.info("searcher reloaded %r", self._gallery)
                gallery = self._gallery
        return gallery

    def search(self, embeddings: np.ndarray, top_k: int) -> tuple[int, float, list, float]:
        """``(gallery version, identification threshold, per query [Match, ...], quality
        floor)``.

        The threshold is the people's assign distance (:attr:`PeopleGallery.identify_threshold`:
        the decision ``people update`` makes), the default of the identify decision;
        ``embeddings`` may have no rows.
        """
        gallery = self._current()
        self.searches += 1
        return (gallery.version, gallery.identify_threshold, gallery.search(embeddings, top_k),
                float(getattr(gallery, "min_quality", 0.0)))

    def identities(self) -> tuple[int, dict[str, int]]:
        gallery = self._current()
        return gallery.version, gallery.identities()

    def info(self) -> dict[str, Any]:
        gallery = self._current()
        return {"replica": _replica_id(), "version": gallery.version,
                "model_id": gallery.model_id, "embedding_size": gallery.embedding_size,
                "threshold": gallery.threshold,
                "identify_threshold": gallery.identify_threshold, "faces": len(gallery),
                "people_version": getattr(gallery, "people_version", 0),
                "identities": len(gallery.identities()), "index_type": gallery.index_type,
                "reloads": self.reloads, "searches": self.searches}

    def ready(self) -> dict[str, Any]:
        return self.info()

    def check_health(self) -> None:
        if self._gallery is None:
            raise RuntimeError("gallery not loaded")


@dataclass
class WriteResult:
    """What an enrollment or removal changed."""

    name: str
    version: int
    faces: int                      # faces of ``name`` after the change
    added: int = 0
    removed: int = 0
    already_enrolled: int = 0
    identities: int = 0
    sources_added: list[str] = field(default_factory=list)


class GalleryWriterImpl:
    """Every change to the gallery goes through here, one at a time.

    Each change starts from the version on disk (loaded again if another writer, e.g. the CLI,
    saved since), is applied in memory and saved as a new version (Parquet + FAISS written
    under temporary names, renamed, then the manifest swapped atomically). A change that fails
    anywhere drops the in-memory copy, so the next one starts again from the last good version on
    disk; a crash during the save leaves that version current.
    """

    def __init__(self, index_dir: str):
        from facenet_platform.index.layout import IndexLayout

        self.index_dir = index_dir
        self.layout = IndexLayout.open(index_dir)
        self._gallery = None
        self._lock = asyncio.Lock()
        self._people = None  # (PeopleStore, DecisionLog), made on the first decision
        self.writes = 0
        self.failures = 0
        self.decisions = 0
        self.replayed = 0

    def _fresh(self, model: dict[str, Any] | None):
        gallery = self._gallery
        if gallery is None or gallery.dirty or _gallery_version(self.layout) != gallery.version:
            gallery = self._gallery = _open_gallery(self.index_dir, mmap=False, model=model)
        return gallery

    def _change(self, apply, model: dict[str, Any] | None) -> WriteResult | Failure:
        from facenet_platform.index.gallery import GalleryError, UnknownIdentityError

        for attempt in range(3):
            gallery = self._fresh(model)
            try:
                result = apply(gallery)
                if isinstance(result, Failure):
                    self._gallery = None if gallery.dirty else gallery
                    return result
                if gallery.dirty:
                    result.version = gallery.save()
                    self.writes += 1
                result.version = gallery.version
                result.identities = len(gallery.identities())
                return result
            except UnknownIdentityError as exc:
                self._gallery = None
                return failure_for(exc)
            except ConfigError as exc:
                self._gallery = None
                return failure_for(exc)
            except GalleryError as exc:
                # Most likely another writer saved in between: start again from disk.
                self._gallery = None
                self.failures += 1
                logger.warning("gallery change failed (attempt %d): %s", attempt + 1, exc)
                if attempt == 2:
                    return failure_for(exc)
            except BaseException:
                self._gallery = None
                self.failures += 1
                raise
        raise AssertionError("unreachable")

    def add_sync(self, name: str, embeddings: np.ndarray, sources: list[str],
                 content_hashes: list[str], model: dict[str, Any] | None = None
                 ) -> WriteResult | Failure:
        """Enroll the faces of ``name``; ``model``: the served model's spec metadata (checked
        against the gallery's; 409 when the gallery holds another model's embeddings)."""
        spec = _spec(model)

        def apply(gallery):
            if spec is not None:
                from facenet_platform.index.gallery import GalleryError

                try:
                    gallery.check_model(spec)
                except GalleryError as exc:
                    return Failure(409, "model_mismatch", str(exc))
                if gallery.spec is None:  # a gallery from before the spec was recorded
                    gallery.spec, gallery.flip = spec, "none"
            keep = [i for i, h in enumerate(content_hashes) if not gallery.has_photo(name, h)]
            # Also skip a photo sent twice in the same request.
            seen, unique = set(), []
            for i in keep:
                if content_hashes[i] not in seen:
                    seen.add(content_hashes[i])
                    unique.append(i)
            already = len(content_hashes) - len(unique)
            if unique:
                gallery.add(name, np.asarray(embeddings, np.float32)[unique],
                            [sources[i] for i in unique],
                            content_hashes=[content_hashes[i] for i in unique])
            else:
                from facenet_platform.index.gallery import check_name

                check_name(name)
            return WriteResult(name=name, version=gallery.version,
                               faces=gallery.identities().get(name, 0), added=len(unique),
                               already_enrolled=already,
                               sources_added=[sources[i] for i in unique])

        return self._change(apply, model)

    def remove_sync(self, name: str) -> WriteResult | Failure:
        def apply(gallery):
            removed = gallery.remove(name)
            return WriteResult(name=name, version=gallery.version, faces=0, removed=removed)

        return self._change(apply, None)

    async def add(self, name: str, embeddings: np.ndarray, sources: list[str],
                  content_hashes: list[str], model: dict[str, Any] | None = None
                  ) -> WriteResult | Failure:
        async with self._lock:
            return await asyncio.to_thread(self.add_sync, name, embeddings, sources,
                                           content_hashes, model)

    async def remove(self, name: str) -> WriteResult | Failure:
        async with self._lock:
            return await asyncio.to_thread(self.remove_sync, name)

    # -- people decisions ----------------------------------------------------------------------

    def decide_sync(self, kind: str, params: dict[str, Any], request_id: str
                    ) -> dict[str, Any] | Failure:
        """Apply one people decision (see :func:`.people_service.apply_decision`), once.

        ``request_id`` (the client's ``Idempotency-Key`` or one the ingress made) is recorded
        in the event; a request whose id is already in the log is answered with that event
        (``replayed``) and changes nothing, so a retry after this replica died is safe.
        """
        from facenet_platform.index.people_store import PeopleStore, event_tags

        from .people_service import DecisionLog, apply_decision, event_json, failure_of

        if self._people is None:
            store = PeopleStore(self.layout)
            self._people = (store, DecisionLog(store))
        store, log = self._people
        try:
            prior = log.find(request_id)
            if prior is not None:
                self.replayed += 1
                return {"event": event_json(prior), "people_version": store.version(),
                        "replayed": True}
            with event_tags(request_id=request_id):
                event = apply_decision(store, kind, params)
        except Exception as exc:  # noqa: BLE001 - mapped below, or re-raised
            mapped = failure_of(exc, self.layout.root, self.index_dir)
            if mapped is None:
                self.failures += 1
                raise
            return Failure(*mapped)
        log.record(request_id, event)
        self.decisions += event is not None
        return {"event": event_json(event) if event else None,
                "people_version": store.version(), "replayed": False}

    async def decide(self, kind: str, params: dict[str, Any], request_id: str
                     ) -> dict[str, Any] | Failure:
        async with self._lock:
            return await asyncio.to_thread(self.decide_sync, kind, params, request_id)

    def stats(self) -> dict[str, Any]:
        return {"replica": _replica_id(), "writes": self.writes, "failures": self.failures,
                "decisions": self.decisions, "replayed": self.replayed}


GalleryWriter = serve.deployment(name=WRITER, num_replicas=1)(GalleryWriterImpl)


# ---------------------------------------------------------------------------------- thumbnails


@dataclass(frozen=True)
class Thumbnail:
    """A JPEG thumbnail, or (``data`` None) the answer that the client's copy is current."""

    data: bytes | None
    etag: str
    size: int


class ThumbnailerImpl:
    """Face crops and downscaled photos of the collection, as JPEG, with an LRU cache.

    The photo catalog (face id / photo id -> source file and box) is read from the index's live
    faces table and read again when the manifest's collection stamp changes (checked at most
    every ``check_interval_s``). Sync methods: Serve runs them in its thread pool.
    """

    def __init__(self, index_dir: str, cache_mb: float = 64.0, check_interval_s: float = 0.5):
        from facenet_platform.index.layout import IndexLayout

        from .catalog import PhotoCatalog
        from .thumbnails import ThumbnailCache

        self.index_dir = index_dir
        self.layout = IndexLayout.open(index_dir)
        self.check_interval_s = float(check_interval_s)
        self._lock = threading.Lock()
        self._catalog = PhotoCatalog.load(self.layout)
        self._checked = time.monotonic()
        self.cache = ThumbnailCache(int(cache_mb * 1024 * 1024))
        self.reloads = 0
        self.encoded = 0
        self.not_modified = 0

    def catalog(self):
        """The current catalog (re-read when ``index build`` committed since)."""
        from .catalog import PhotoCatalog, collection_version

        now = time.monotonic()
        if now - self._checked >= self.check_interval_s:
            with self._lock:
                if now - self._checked >= self.check_interval_s:
                    self._checked = now
                    if collection_version(self.layout) != self._catalog.version:
                        self._catalog = PhotoCatalog.load(self.layout)
                        self.reloads += 1
        return self._catalog

    def _image(self, record, label: str) -> np.ndarray | Failure:
        from facenet_platform.core.images import decode_image

        from .catalog import read_source

        try:
            data = read_source(record.path)
        except OSError as exc:
            logger.warning("thumbnail of %s: cannot read its source file: %s", label, exc)
            return Failure(410, "photo_unavailable",
                           f"{label}: its photo is no longer readable by the service (moved or "
                           "deleted since it was indexed; run index build again)")
        try:
            return decode_image(data, source=label)
        except ImageError as exc:
            return Failure(410, "photo_unavailable", str(exc))

    def _serve(self, key: tuple, etag: str, size: int, if_none_match: str | None,
               render) -> Thumbnail | Failure:
        if if_none_match and etag in {t.strip() for t in if_none_match.split(",")}:
            self.not_modified += 1
            return Thumbnail(None, etag, size)
        cached = self.cache.get(key)
        if cached is not None:
            return Thumbnail(cached[1], etag, size)
        data = render()
        if isinstance(data, Failure):
            return data
        self.cache.put(key, etag, data)
        self.encoded += 1
        return Thumbnail(data, etag, size)

    def face(self, fid: str, size: int, if_none_match: str | None = None
             ) -> Thumbnail | Failure:
        """JPEG crop of face ``fid`` (a checked face id), ``size`` px square (a bucket)."""
        from .thumbnails import etag_of, face_thumbnail

        record = self.catalog().face(fid)
        if record is None:
            return Failure(404, "unknown_face", f"no face {fid} in the collection")
        etag = etag_of("face", record.content_hash, record.box, size)

        def render():
            image = self._image(record, f"face {fid}")
            return image if isinstance(image, Failure) else face_thumbnail(image, record.box,
                                                                           size)

        return self._serve(("face", fid, size), etag, size, if_none_match, render)

    def photo(self, pid: str, size: int, if_none_match: str | None = None
              ) -> Thumbnail | Failure:
        """JPEG of photo ``pid`` (a checked photo id), longer side at most ``size`` px."""
        from .thumbnails import etag_of, photo_thumbnail

        record = self.catalog().photo(pid)
        if record is None:
            return Failure(404, "unknown_photo", f"no photo {pid} in the collection")
        etag = etag_of("photo", record.content_hash, size)

        def render():
            image = self._image(record, f"photo {pid}")
            return image if isinstance(image, Failure) else photo_thumbnail(image, size)

        return self._serve(("photo", pid, size), etag, size, if_none_match, render)

    def photo_info(self, pid: str) -> dict[str, Any] | Failure:
        """Size and faces (ids, boxes) of photo ``pid``; never its path."""
        catalog = self.catalog()
        record = catalog.photo(pid)
        if record is None:
            return Failure(404, "unknown_photo", f"no photo {pid} in the collection")
        return {"photo_id": pid, "width": record.width, "height": record.height,
                "faces": [{"face_id": f.face_id, "box": [round(v, 1) for v in f.box]}
                          for f in catalog.faces_of_photo(pid)]}

    def stats(self) -> dict[str, Any]:
        catalog = self.catalog()
        return {"replica": _replica_id(), "faces": len(catalog), "photos": catalog.n_photos,
                "reloads": self.reloads, "encoded": self.encoded,
                "not_modified": self.not_modified, "cache": self.cache.stats()}


Thumbnailer = serve.deployment(name=THUMBNAILER)(ThumbnailerImpl)


# ------------------------------------------------------------------------------------- people


class PeopleReaderImpl:
    """The people for browsing (lists, one person, photos, history, search by face).

    Holds one :class:`~.people_service.PeopleView`; before a request it reads the people HEAD
    (at most every ``check_interval_s``; always when the caller saw a newer version, e.g. its
    own decision) and loads the new version when it changed, so every replica answers a
    decision within ``check_interval_s`` of it, and its author at once.
    """

    def __init__(self, index_dir: str, check_interval_s: float = 0.25):
        from facenet_platform.index.layout import IndexLayout
        from facenet_platform.index.people_store import PeopleStore

        from .catalog import PhotoCatalog

        self.layout = IndexLayout.open(index_dir)
        self.store = PeopleStore(self.layout)
        self.check_interval_s = float(check_interval_s)
        self._lock = threading.Lock()
        self._catalog = PhotoCatalog.load(self.layout)
        self._view = self._load()
        self._checked = time.monotonic()
        self.reloads = 0

    def _load(self):
        from .people_service import PeopleView

        return PeopleView.load(self.store, self._catalog)

    def view(self, min_version: int = 0):
        """The current view (reloaded when the HEAD moved, or when ``min_version`` is newer)."""
        from .catalog import PhotoCatalog, collection_version

        now = time.monotonic()
        if min_version > self._view.version or now - self._checked >= self.check_interval_s:
            with self._lock:
                if min_version > self._view.version or now - self._checked >= \
                        self.check_interval_s:
                    self._checked = now
                    catalog_changed = collection_version(self.layout) != self._catalog.version
                    if catalog_changed:
                        self._catalog = PhotoCatalog.load(self.layout)
                    if catalog_changed or self.store.version() != self._view.version:
                        self._view = self._load()
                        self.reloads += 1
        return self._view

    def _answer(self, fn):
        from .people_service import failure_of

        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - mapped below, or re-raised
            mapped = failure_of(exc, self.layout.root)
            if mapped is None:
                raise
            return Failure(*mapped)

    def list_people(self, which: str, min_faces: int, offset: int, limit: int,
                    query: str | None, min_version: int = 0):
        return self._answer(lambda: self.view(min_version).list_people(
            which, min_faces=min_faces, offset=offset, limit=limit, query=query))

    def person(self, ref: str, offset: int, limit: int, min_version: int = 0):
        return self._answer(lambda: self.view(min_version).person(ref, offset=offset,
                                                                  limit=limit))

    def photos(self, ref: str, with_refs: list[str], offset: int, limit: int,
               min_version: int = 0):
        return self._answer(lambda: self.view(min_version).photos(ref, with_refs,
                                                                  offset=offset, limit=limit))

    def history(self, limit: int, min_version: int = 0):
        return self._answer(lambda: self.view(min_version).history(limit))

    def search_face(self, embedding: np.ndarray, top_k: int, threshold: float | None):
        return self._answer(lambda: self.view().search_face(embedding, top_k, threshold))

    def stats(self) -> dict[str, Any]:
        view = self.view()
        return {"replica": _replica_id(), "people_version": view.version,
                "people": len(view.state.people), "faces": len(view.state.faces),
                "reloads": self.reloads}


PeopleReader = serve.deployment(name=PEOPLE)(PeopleReaderImpl)
