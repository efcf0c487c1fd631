"""The gallery of known people: one row per enrolled face, a FAISS index over their embeddings.

    INDEX_DIR/gallery/faces-v{N}.parquet   id, name, source, content_hash, embedding, model_id, added_at
    INDEX_DIR/gallery/faiss-v{N}.index     IndexIDMap2 over the same ids (see faiss_index.py)
    INDEX_DIR/manifest.json  "gallery"     version N, the two file names, index type + parameters,
                                           counts, model id, embedding size, thresholds, next id,
                                           the model's spec ("model") and flip mode

Two decision thresholds (squared L2) are stored with the model's identity: ``threshold``, the 1:1
verification threshold (two faces are the same person), and ``identify_threshold``, the stricter
1:N open-set one (a face is its nearest enrolled identity rather than ``unknown``). For the
pretrained model both follow :data:`~facenet_platform.core.weights.PRETRAINED`, also when it is
re-derived later (``*_source: "pretrained"``); any other value given is fixed in the manifest
(``"fixed"``). A model of its own without an identification threshold falls back to its
verification threshold (``"verification"``), with a warning: that accepts far more strangers.

Every face gets a stable ``int64`` id (never reused) that is both its FAISS id and its ``id``
column, so a search hit maps straight back to its Parquet row.

Saving writes version ``N + 1`` of both files (each to a temporary name, then renamed) and only
then points the manifest at it (an atomic rename as well), so a save that fails midway leaves
version ``N`` intact and current. The previous version is kept on disk so that readers that
loaded it (memory-mapped) keep working; older ones are deleted. Saving checks that the manifest
still names the version this gallery was loaded from and refuses otherwise (another writer saved
in between: load again and repeat the change).

Loading reads the id/name columns and memory-maps the FAISS index where the type allows it; the
embeddings themselves are read only when a change needs them (add, remove, rebuild). The index
type is chosen automatically by size (:func:`~facenet_platform.index.faiss_index.choose_index_type`)
unless fixed with ``index_type``; a save re-builds the index when the size crosses the threshold,
when removal is not supported in place, or when an IVF index has grown far past the data it was
trained on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from facenet_platform.core.errors import ConfigError, DatasetError
from facenet_platform.core.facetable import fixed_size_list
from facenet_platform.core.model_spec import ModelSpec

from . import faiss_index as fx
from .layout import IndexLayout, read_manifest, update_manifest

logger = logging.getLogger(__name__)

SECTION = "gallery"
#: The identify decision for a face nobody in the gallery is close to (not a valid name).
UNKNOWN = "unknown"
#: Versions of the gallery files kept on disk (the current one and the one before).
KEEP_VERSIONS = 2
#: An IVF-type index is re-trained when the gallery outgrows its training set by this factor.
RETRAIN_GROWTH = 4.0


class GalleryError(DatasetError):
    """The gallery is missing, damaged, from another model, or was changed by another writer."""


class UnknownIdentityError(GalleryError, KeyError):
    """No identity of that name is enrolled."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


#: Model ids already warned about (once per process) for lacking an identification threshold.
_WARNED_NO_IDENTIFY_THRESHOLD: set[str] = set()


@dataclass(frozen=True)
class Match:
    """One identity returned by a gallery search: squared L2 distance of its nearest face (or
    template). ``person``: the person id when the identity is one of the people (an unnamed
    person has ``name == ""``)."""

    name: str
    distance: float
    person: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name or None, "distance": round(float(self.distance), 6),
                "person": self.person}


def gallery_schema(embedding_size: int) -> pa.Schema:
    """Schema of ``gallery/faces-v{N}.parquet``."""
    return pa.schema([
        pa.field("id", pa.int64(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),       # photo path or URI it came from
        pa.field("content_hash", pa.string(), nullable=True),  # sha256 of the photo's bytes
        pa.field("embedding", pa.list_(pa.float32(), embedding_size), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("added_at", pa.timestamp("s", tz="UTC"), nullable=False),
    ])


_META_COLUMNS = ("id", "name", "source", "content_hash", "model_id", "added_at")


def _empty_meta() -> dict[str, np.ndarray]:
    return {
        "id": np.zeros(0, np.int64),
        "name": np.zeros(0, object),
        "source": np.zeros(0, object),
        "content_hash": np.zeros(0, object),
        "model_id": np.zeros(0, object),
        "added_at": np.zeros(0, "datetime64[s]"),
    }


class Gallery:
    """Known people and the FAISS index over their faces.

    Create one with :meth:`create` (new, empty) or :meth:`load`; :meth:`open` does either.
    Changes (:meth:`add`, :meth:`remove`) live in memory until :meth:`save`.

    Args:
        layout: where the index directory is.
        model_id: id of the embedding model every face must come from.
        embedding_size: length of the embeddings.
        threshold: 1:1 same-person squared-L2 threshold of the model (verification). ``None``
            (or the pretrained model's own value) for the pretrained model follows
            ``PRETRAINED.threshold``, also when that is re-derived later; any other value is
            fixed in the manifest.
        identify_threshold: 1:N open-set squared-L2 threshold (identification: at or under it
            a face is its nearest identity, else unknown). ``None`` (or the pretrained model's
            own value) for the pretrained model follows ``PRETRAINED.identify_threshold``; for
            another model ``None`` falls back to ``threshold`` with a warning (calibrate one:
            benchmarks/calibrate_identify_threshold.py); any other value is fixed.
        index_type: ``"auto"`` or a key of :data:`~facenet_platform.index.faiss_index.INDEX_TYPES`.
        index_params: overrides of the type's parameters (``{"efSearch": 256}``).
        auto_threshold: above this many faces ``"auto"`` picks the approximate index.
        spec: the :class:`~facenet_platform.core.model_spec.ModelSpec` of the model (with the
            crop really used) that embeds the faces; recorded in the manifest and checked
            against the pipeline of later enrollments and identifications
            (:meth:`check_model`).
        flip: the embedder's flip mode (``"none"``, ``"mean"``, ``"concat"``), recorded beside
            the spec.
        legacy_pipeline: the settings dict a gallery saved before specs were recorded (read
            from old manifests, compared where it has a value; replaced by ``spec`` on save).
    """

    def __init__(self, layout: IndexLayout, *, model_id: str, embedding_size: int,
                 threshold: float | None = None, identify_threshold: float | None = None,
                 index_type: str = "auto",
                 index_params: dict[str, Any] | None = None,
                 auto_threshold: int = fx.DEFAULT_AUTO_THRESHOLD,
                 spec: ModelSpec | None = None, flip: str | None = None,
                 legacy_pipeline: dict[str, Any] | None = None):
        if index_type != "auto":
            fx.get_index_type(index_type)
        if auto_threshold < 0:
            raise ConfigError(f"auto_threshold must be >= 0, got {auto_threshold}")
        self.layout = layout
        self.model_id = model_id
        self.embedding_size = int(embedding_size)
        from facenet_platform.core.weights import PRETRAINED

        follows = model_id == PRETRAINED.model_id and (
            threshold is None or float(threshold) == PRETRAINED.threshold)
        if threshold is None and not follows:
            logger.warning("no threshold given for model %r; using the pretrained model's %.3f "
                           "(pass the model's own)", model_id, PRETRAINED.threshold)
            threshold = PRETRAINED.threshold
        self._threshold = None if follows else check_threshold(threshold, "threshold")
        pretrained = model_id == PRETRAINED.model_id
        if identify_threshold is not None:
            identify_threshold = check_threshold(identify_threshold, "identify_threshold")
        # None: follows PRETRAINED.identify_threshold (pretrained model) or, for another model,
        # the verification threshold (self._identify_fallback).
        self._identify_fallback = identify_threshold is None and not pretrained
        if pretrained and identify_threshold in (None, PRETRAINED.identify_threshold):
            self._identify_threshold = None
        elif identify_threshold is None:
            self._identify_threshold = None
            if model_id not in _WARNED_NO_IDENTIFY_THRESHOLD:
                _WARNED_NO_IDENTIFY_THRESHOLD.add(model_id)
                logger.warning(
                    "no identification threshold for model %r; identify uses its verification "
                    "threshold %.3f, which accepts many strangers in a large gallery (calibrate "
                    "one with benchmarks/calibrate_identify_threshold.py and pass it as "
                    "identify_threshold, or give identify a threshold)", model_id, self.threshold)
        else:
            self._identify_threshold = identify_threshold
        self.index_type_setting = index_type
        self.index_param_overrides = dict(index_params or {})
        self.auto_threshold = int(auto_threshold)
        if spec is not None and spec.model_id != model_id:
            raise ConfigError(f"the gallery's model id {model_id!r} is not its spec's "
                              f"{spec.model_id!r}")
        self.spec: ModelSpec | None = spec
        self.flip = flip
        self.legacy_pipeline = dict(legacy_pipeline) if legacy_pipeline else None
        self.version = 0
        self._next_id = 0
        self._meta_rows = _empty_meta()
        self._pending: list[tuple[dict[str, np.ndarray], np.ndarray]] = []  # added, not merged
        self._photos: set[tuple[str, str]] | None = None  # (name, content_hash), built lazily
        self._embeddings: np.ndarray | None = np.zeros((0, self.embedding_size), np.float32)
        self._faces_file: str | None = None       # current Parquet version (lazy embeddings)
        self._index = None                          # faiss IndexIDMap2 or None (empty / to build)
        self._index_type: str | None = None         # type of self._index
        self._index_params: dict[str, Any] = {}
        self._index_mmapped = False
        self._index_path: str | None = None         # file the index was loaded from
        self._trained_on = 0                        # vectors the current index was trained on
        self._needs_rebuild = False
        self._dirty = False
        self._refresh_lookup()

    @property
    def _meta(self) -> dict[str, np.ndarray]:
        """Row metadata sorted by id (pending additions merged first)."""
        if self._pending:
            self._merge_pending()
        return self._meta_rows

    @_meta.setter
    def _meta(self, value: dict[str, np.ndarray]) -> None:
        self._meta_rows = value

    def _merge_pending(self) -> None:
        """Concatenate the rows added since the last merge (once, not per add)."""
        pending, self._pending = self._pending, []
        self._ensure_embeddings()
        self._meta_rows = {k: np.concatenate([self._meta_rows[k], *(m[k] for m, _ in pending)])
                           for k in self._meta_rows}
        self._embeddings = np.concatenate([self._embeddings, *(e for _, e in pending)])
        self._refresh_lookup()

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def create(cls, index_dir, *, model_id: str | None = None, embedding_size: int | None = None,
               spec: ModelSpec | None = None, **kwargs) -> "Gallery":
        """A new empty gallery for ``index_dir`` (nothing is written until :meth:`save`).

        Model id, embedding size and thresholds default to ``spec``'s (the pretrained model's
        without one). Raises :class:`GalleryError` when the directory already has a gallery.
        """
        from facenet_platform.core.weights import PRETRAINED

        layout = IndexLayout.open(index_dir)
        if SECTION in read_manifest(layout):
            raise GalleryError(f"{layout.root} already has a gallery; load it instead")
        if spec is not None:
            kwargs.setdefault("threshold", spec.threshold)
            kwargs.setdefault("identify_threshold", spec.identify_threshold)
            factor = 2 if kwargs.get("flip") == "concat" else 1
            embedding_size = embedding_size or spec.embedding_size * factor
        model = spec or PRETRAINED
        return cls(layout, model_id=model_id or model.model_id,
                   embedding_size=embedding_size or model.embedding_size, spec=spec, **kwargs)

    @classmethod
    def open(cls, index_dir, *, mmap: bool = True, **create_kwargs) -> "Gallery":
        """:meth:`load` the gallery of ``index_dir`` if it has one, else :meth:`create` one.

        Settings in ``create_kwargs`` that concern the index (``index_type``, ``index_params``,
        ``auto_threshold``) also apply to an existing gallery from its next save.
        """
        layout = IndexLayout.open(index_dir)
        if SECTION not in read_manifest(layout):
            return cls.create(index_dir, **create_kwargs)
        gallery = cls.load(index_dir, mmap=mmap)
        gallery.configure_index(**{k: v for k, v in create_kwargs.items()
                                   if k in ("index_type", "index_params", "auto_threshold")})
        return gallery

    @classmethod
    def load(cls, index_dir, *, mmap: bool = True) -> "Gallery":
        """The saved gallery of ``index_dir``.

        Args:
            index_dir: local path or pyarrow filesystem URI of the index directory.
            mmap: memory-map the FAISS index where the type supports it (local files only).

        Raises:
            GalleryError: no gallery there, or its files are missing or damaged.
        """
        layout = IndexLayout.open(index_dir)
        try:
            section = read_manifest(layout).get(SECTION)
        except (ValueError, OSError) as exc:
            raise GalleryError(f"{layout.manifest}: unreadable manifest ({exc})") from exc
        if not section:
            raise GalleryError(f"{layout.root} has no gallery; enroll people first with "
                               f"`facenet-platform index enroll GALLERY_DIR --index {layout.root}`")
        try:
            gallery = cls(layout, model_id=section["model_id"],
                          embedding_size=section["embedding_size"],
                          threshold=(None if section.get("threshold_source") == "pretrained"
                                     else section.get("threshold")),
                          identify_threshold=(
                              section.get("identify_threshold")
                              if section.get("identify_threshold_source") == "fixed" else None),
                          index_type=section.get("index_type_setting", "auto"),
                          index_params=section.get("index_param_overrides"),
                          auto_threshold=section.get("auto_threshold", fx.DEFAULT_AUTO_THRESHOLD),
                          spec=_section_spec(section, layout), flip=section.get("flip"),
                          legacy_pipeline=section.get("pipeline"))
            gallery.version = int(section["version"])
            gallery._next_id = int(section["next_id"])
            faces_file = layout.path(section["faces"])
            index_file = layout.path(section["index"]) if section.get("index") else None
            index_type = section.get("index_type")
            index_params = dict(section.get("index_params") or {})
            trained_on = int(section.get("trained_on", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise GalleryError(f"{layout.manifest}: gallery section is incomplete ({exc})") from exc
        try:
            table = pq.read_table(faces_file, columns=list(_META_COLUMNS), filesystem=layout.fs)
        except (OSError, pa.ArrowException) as exc:
            raise GalleryError(f"{faces_file}: cannot read the gallery table ({exc})") from exc
        gallery._meta = _table_to_meta(table)
        gallery._faces_file = faces_file
        gallery._embeddings = None
        if index_file is not None:
            gallery._index = _load_index(layout, index_file, index_type, mmap=mmap)
            if gallery._index.ntotal != len(gallery._meta["id"]):
                raise GalleryError(f"{index_file} holds {gallery._index.ntotal} vectors but "
                                   f"{faces_file} has {len(gallery._meta['id'])} rows")
            fx.configure_search(gallery._index, index_type, index_params)
            gallery._index_type = index_type
            gallery._index_params = index_params
            gallery._index_mmapped = mmap and layout_is_local(layout)
            gallery._index_path = index_file
            gallery._trained_on = trained_on
        gallery._refresh_lookup()
        logger.info("gallery v%d of %s: %d faces of %d people, %s index", gallery.version,
                    layout.root, len(gallery), len(gallery._names), index_type)
        return gallery

    def configure_index(self, *, index_type: str | None = None,
                        index_params: dict[str, Any] | None = None,
                        auto_threshold: int | None = None) -> None:
        """Change the index settings; the index is rebuilt at the next :meth:`save` if needed."""
        if index_type is not None:
            if index_type != "auto":
                fx.get_index_type(index_type)
            if index_type != self.index_type_setting:
                self.index_type_setting = index_type
                self._dirty = True
        if index_params is not None and index_params != self.index_param_overrides:
            self.index_param_overrides = dict(index_params)
            self._needs_rebuild = self._dirty = True
        if auto_threshold is not None and auto_threshold != self.auto_threshold:
            self.auto_threshold = int(auto_threshold)
            self._dirty = True

    # -- queries -----------------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        """1:1 same-person squared-L2 distance threshold of the gallery's model (verification)."""
        if self._threshold is None:
            from facenet_platform.core.weights import PRETRAINED

            return PRETRAINED.threshold
        return self._threshold

    @property
    def identify_threshold(self) -> float:
        """1:N open-set squared-L2 threshold: at or under it a face is its nearest identity.

        The pretrained model's calibrated ``PRETRAINED.identify_threshold`` unless fixed; for
        another model without one, its verification :attr:`threshold`.
        """
        if self._identify_threshold is not None:
            return self._identify_threshold
        if self._identify_fallback:
            return self.threshold
        from facenet_platform.core.weights import PRETRAINED

        return PRETRAINED.identify_threshold

    @property
    def identify_threshold_source(self) -> str:
        """``"pretrained"``, ``"fixed"`` or ``"verification"`` (fallback), as in the manifest."""
        if self._identify_threshold is not None:
            return "fixed"
        return "verification" if self._identify_fallback else "pretrained"

    def check_model(self, spec: ModelSpec, flip: str = "none") -> None:
        """Raise :class:`GalleryError` unless a pipeline with this model spec (crop included)
        and flip mode embeds like the gallery's faces were embedded: same model id and
        embedding size, and the same crop, standardization and flip where the gallery recorded
        them (a gallery enrolled with another standardization gives meaningless distances)."""
        check_same_model(spec, flip, self.model_id, self.embedding_size,
                         f"the gallery of {self.layout.root} holds",
                         "use the same model or enroll again")
        recorded: dict[str, Any] = {}
        if self.spec is not None:
            recorded = self.spec.embedding_space()
        elif self.legacy_pipeline:
            old = self.legacy_pipeline
            recorded = {"standardization": old.get("standardization"),
                        "alignment": old.get("alignment"), "margin": old.get("margin"),
                        "input_size": old.get("image_size")}
        differ = {k: (theirs, ours) for k, (ours, theirs) in spec.differences(recorded).items()}
        recorded_flip = self.flip if self.spec is not None else (
            self.legacy_pipeline or {}).get("flip")
        if recorded_flip is not None and recorded_flip != flip:
            differ["flip"] = (recorded_flip, flip)
        if differ:
            detail = ", ".join(f"{k}: gallery {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise GalleryError(f"the gallery of {self.layout.root} was enrolled with other "
                               f"pipeline settings ({detail}); use the same settings or enroll "
                               "again")

    def is_current(self) -> bool:
        """Whether the manifest still names the version this gallery was loaded from or saved as
        (a server can poll this and :meth:`load` again when another process saved)."""
        section = read_manifest(self.layout).get(SECTION) or {}
        return int(section.get("version", 0)) == self.version

    @property
    def dirty(self) -> bool:
        """Changes not saved yet."""
        return self._dirty

    @property
    def index_type(self) -> str | None:
        """Type of the current FAISS index (``None`` while empty or not yet built)."""
        return self._index_type

    @property
    def index_params(self) -> dict[str, Any]:
        return dict(self._index_params)

    def __len__(self) -> int:
        return int(len(self._meta["id"]))

    def identities(self) -> dict[str, int]:
        """``{name: number of enrolled faces}``, names sorted."""
        self._meta  # noqa: B018 - merges pending additions
        return {name: int(n) for name, n in zip(self._names, self._counts)}

    def faces(self, name: str | None = None) -> list[dict[str, Any]]:
        """Rows (without embeddings) of one identity, or of everyone."""
        keep = np.ones(len(self), bool) if name is None else self._meta["name"] == name
        return [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in self._meta.items()}
                for i in np.flatnonzero(keep)]

    def enrolled_faces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every enrolled face: ``ids (M,) int64`` (ascending), ``names (M,) object`` and
        ``embeddings (M, D) float32``."""
        meta = self._meta  # merges pending additions
        self._ensure_embeddings()
        return meta["id"].copy(), meta["name"].copy(), self._embeddings.copy()

    def search(self, embeddings: np.ndarray, top_k: int = 5) -> list[list[Match]]:
        """The ``top_k`` nearest identities of each query embedding.

        Args:
            embeddings: ``(N, D) float32`` L2-normalised (re-normalised here).
            top_k: identities per query.

        Returns:
            Per query, up to ``top_k`` :class:`Match` sorted by ascending squared L2 distance;
            an identity appears once, with the distance of its nearest face.
        """
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        queries = fx.as_unit_rows(embeddings, self.embedding_size, "query embeddings")
        n_queries, n = len(queries), len(self)  # len() merges pending additions
        if n_queries == 0 or n == 0:
            return [[] for _ in range(n_queries)]
        index = self._search_index()
        top_k = min(top_k, len(self._names))
        results: list[list[Match] | None] = [None] * n_queries
        pending = np.arange(n_queries)
        # Enough hits for top_k distinct people when nobody has more than a few faces; rows
        # that come back short are searched again with a larger k.
        k = min(n, top_k * int(min(self._max_count, 4)))
        while len(pending):
            scores, ids = index.search(queries[pending], k)
            distances = fx.to_squared_l2(scores)
            codes = self._codes_of(ids)
            short = []
            for row, qi in enumerate(pending):
                valid = codes[row] >= 0
                row_codes, row_dist = codes[row][valid], distances[row][valid]
                _, first = np.unique(row_codes, return_index=True)
                first.sort()
                first = first[:top_k]
                if len(first) < top_k and k < n:
                    short.append(qi)
                    continue
                results[qi] = [Match(self._names[row_codes[j]], float(row_dist[j])) for j in first]
            if k >= n:
                for qi in short:  # the index returned fewer than top_k people even at k = n
                    results[qi] = results[qi] or []
                break
            pending = np.asarray(short, dtype=np.int64)
            k = min(n, k * 4)
        return [r if r is not None else [] for r in results]

    # -- changes -----------------------------------------------------------------------------

    def add(self, name: str, embeddings: np.ndarray, sources: Sequence[str] | None = None, *,
            content_hashes: Sequence[str | None] | None = None) -> np.ndarray:
        """Enroll faces of ``name`` (a new or an existing identity).

        Args:
            name: the person's name (non-empty, no newline).
            embeddings: ``(N, D)`` float32 embeddings of the same model.
            sources: where each face came from (path or URI); default ``""``.
            content_hashes: sha256 of each source file, used to skip re-enrolling a photo.

        Returns:
            The ``(N,)`` int64 ids given to the new faces.
        """
        name = check_name(name)
        vectors = fx.as_unit_rows(embeddings, self.embedding_size, f"embeddings of {name!r}")
        n = len(vectors)
        sources = [""] * n if sources is None else [os.fspath(s) for s in sources]
        hashes = [None] * n if content_hashes is None else list(content_hashes)
        if len(sources) != n or len(hashes) != n:
            raise ConfigError(f"{n} embeddings of {name!r} but {len(sources)} sources and "
                              f"{len(hashes)} content hashes")
        if n == 0:
            return np.zeros(0, np.int64)
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        now = np.datetime64(int(time.time()), "s")
        new = {
            "id": ids,
            "name": np.array([name] * n, object),
            "source": np.array(sources, object),
            "content_hash": np.array(hashes, object),
            "model_id": np.array([self.model_id] * n, object),
            "added_at": np.full(n, now, "datetime64[s]"),
        }
        self._pending.append((new, vectors))
        if self._photos is not None:
            self._photos.update((name, h) for h in hashes if h is not None)
        self._next_id += n
        if self._index is not None and not self._needs_rebuild:
            self._make_index_writable()
        if self._index is not None and not self._needs_rebuild:
            fx.add_batched(self._index, vectors, ids)
        self._dirty = True
        return ids

    def remove(self, name: str) -> int:
        """Remove every face of ``name``; returns how many (UnknownIdentityError if none)."""
        mask = self._meta["name"] == name
        removed = int(mask.sum())
        if removed == 0:
            raise UnknownIdentityError(f"no identity named {name!r} in the gallery of "
                                       f"{self.layout.root} ({len(self._names)} enrolled)")
        self._ensure_embeddings()
        ids = self._meta["id"][mask]
        keep = ~mask
        self._meta = {k: v[keep] for k, v in self._meta.items()}
        self._embeddings = self._embeddings[keep]
        if self._index is not None and not self._needs_rebuild:
            if fx.get_index_type(self._index_type).supports_remove:
                self._make_index_writable()
            if self._index is not None and fx.get_index_type(self._index_type).supports_remove:
                self._index.remove_ids(ids)
            else:
                self._needs_rebuild = True
        self._refresh_lookup()
        self._photos = None
        self._dirty = True
        return removed

    def has_photo(self, name: str, content_hash: str) -> bool:
        """Whether a photo with this content hash is already enrolled under ``name``."""
        if self._photos is None:
            meta = self._meta
            self._photos = {(n, h) for n, h in zip(meta["name"], meta["content_hash"]) if h is not None}
        return (name, content_hash) in self._photos

    def save(self) -> int:
        """Write a new version (Parquet + FAISS index, then the manifest); returns its number.

        Raises:
            GalleryError: another writer saved a newer version since this one was loaded.
        """
        current = (read_manifest(self.layout).get(SECTION) or {}).get("version", 0)
        if int(current) != self.version:
            raise GalleryError(f"the gallery of {self.layout.root} changed since it was loaded "
                               f"(version {current}, loaded {self.version}); load it again and "
                               f"repeat the change")
        self._meta  # noqa: B018 - merges pending additions (and loads the saved embeddings)
        self._ensure_embeddings()
        self._update_index()
        version = self.version + 1
        faces_name = f"{SECTION}/faces-v{version}.parquet"
        index_name = f"{SECTION}/faiss-v{version}.index" if self._index is not None else None
        self.layout.makedirs(self.layout.gallery_dir)
        self._write_table(self.layout.path(faces_name))
        if index_name is not None:
            _save_index(self.layout, self.layout.path(index_name), self._index)
        update_manifest(self.layout, SECTION, {
            "version": version,
            "faces": faces_name,
            "index": index_name,
            "index_type": self._index_type,
            "index_params": self._index_params,
            "index_type_setting": self.index_type_setting,
            "index_param_overrides": self.index_param_overrides,
            "auto_threshold": self.auto_threshold,
            "trained_on": self._trained_on,
            "metric": "inner_product; squared_l2 = 2 - 2 * ip",
            "n_faces": len(self),
            "n_identities": len(self._names),
            "model_id": self.model_id,
            "embedding_size": self.embedding_size,
            "threshold": self.threshold,
            "threshold_source": "pretrained" if self._threshold is None else "fixed",
            "identify_threshold": self.identify_threshold,
            "identify_threshold_source": self.identify_threshold_source,
            "model": self.spec.to_metadata() if self.spec is not None else None,
            "flip": self.flip,
            **({"pipeline": self.legacy_pipeline}
               if self.spec is None and self.legacy_pipeline else {}),
            "next_id": self._next_id,
        })
        self.version = version
        self._faces_file = self.layout.path(faces_name)
        self._dirty = False
        self._delete_old_versions()
        logger.info("saved gallery v%d: %d faces of %d people (%s index)", version, len(self),
                    len(self._names), self._index_type)
        return version

    # -- internals ---------------------------------------------------------------------------

    def _refresh_lookup(self) -> None:
        """Name codes per row, sorted ids for id -> row, counts per name."""
        order = np.argsort(self._meta["id"], kind="stable")
        if np.any(order != np.arange(len(order))):
            self._meta = {k: v[order] for k, v in self._meta.items()}
            if self._embeddings is not None:
                self._embeddings = self._embeddings[order]
        names, codes, counts = np.unique(self._meta["name"].astype(str), return_inverse=True,
                                         return_counts=True)
        self._names = [str(s) for s in names]
        self._row_codes = codes.astype(np.int64)
        self._counts = counts
        self._max_count = int(counts.max()) if len(counts) else 0

    def _codes_of(self, ids: np.ndarray) -> np.ndarray:
        """Name code of every FAISS id (-1 for the -1 padding and for unknown ids)."""
        sorted_ids = self._meta["id"]
        if len(sorted_ids) == 0:
            return np.full(ids.shape, -1, np.int64)
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        found = (ids >= 0) & (sorted_ids[pos] == ids)
        return np.where(found, self._row_codes[pos], -1)

    def _ensure_embeddings(self) -> None:
        if self._embeddings is not None:
            return
        try:
            table = pq.read_table(self._faces_file, columns=["id", "embedding"],
                                  filesystem=self.layout.fs)
        except (OSError, pa.ArrowException) as exc:
            raise GalleryError(f"{self._faces_file}: cannot read embeddings ({exc})") from exc
        ids = table.column("id").to_numpy()
        emb = _embedding_matrix(table.column("embedding"), self.embedding_size)
        order = np.argsort(ids, kind="stable")
        if not np.array_equal(ids[order], self._meta_rows["id"]):  # the saved rows only
            raise GalleryError(f"{self._faces_file}: ids differ from the loaded gallery")
        self._embeddings = emb[order]

    def _desired_type(self) -> str:
        if self.index_type_setting != "auto":
            return self.index_type_setting
        return fx.choose_index_type(len(self), self.auto_threshold)

    def _update_index(self) -> None:
        """Build the index again when needed (type change, removal, growth past training)."""
        n = len(self)
        if n == 0:
            self._index, self._index_type, self._index_params = None, None, {}
            self._needs_rebuild = False
            return
        desired = self._desired_type()
        kind = fx.get_index_type(desired)
        grown = (not kind.exact and kind.min_train(kind.params(n)) > 0
                 and n > RETRAIN_GROWTH * max(self._trained_on, 1))
        if (self._index is None or self._needs_rebuild or desired != self._index_type or grown):
            params = kind.params(n, self.index_param_overrides)
            t0 = time.perf_counter()
            self._index, self._index_params = fx.build_faiss_index(desired, self._embeddings,
                                                             self._meta["id"], params)
            self._index_type, self._index_mmapped = desired, False
            self._trained_on = 0 if kind.min_train(params) == 0 else n
            self._needs_rebuild = False
            logger.info("built %s index over %d faces in %.2f s (%s)", desired, n,
                        time.perf_counter() - t0, params)

    def _search_index(self):
        if self._index is None or self._needs_rebuild or self._index_type is None:
            self._ensure_embeddings()
            self._update_index()
        return self._index

    def _make_index_writable(self) -> None:
        """Swap a memory-mapped (read-only) index for an in-memory copy before changing it: read
        the file it was mapped from again without mapping, or rebuild when that file is gone."""
        if not self._index_mmapped:
            return
        self._ensure_embeddings()
        try:
            self._index = _load_index(self.layout, self._index_path, self._index_type, mmap=False)
            fx.configure_search(self._index, self._index_type, self._index_params)
        except GalleryError as exc:
            logger.warning("%s; rebuilding the index from the gallery table", exc)
            self._index, self._needs_rebuild = None, True
        self._index_mmapped = False

    def _write_table(self, path: str) -> None:
        m = self._meta
        table = pa.Table.from_arrays([
            pa.array(m["id"], pa.int64()),
            pa.array(m["name"].tolist(), pa.string()),
            pa.array(m["source"].tolist(), pa.string()),
            pa.array(m["content_hash"].tolist(), pa.string()),
            fixed_size_list(self._embeddings, self.embedding_size),
            pa.array(m["model_id"].tolist(), pa.string()),
            pa.array(m["added_at"].astype("datetime64[s]"), pa.timestamp("s", tz="UTC")),
        ], schema=gallery_schema(self.embedding_size))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.layout.write_bytes_atomic(path, sink.getvalue().to_pybytes())

    def _delete_old_versions(self) -> None:
        oldest_kept = self.version - KEEP_VERSIONS + 1
        try:
            infos = self.layout.fs.get_file_info(pafs.FileSelector(self.layout.gallery_dir))
        except OSError:
            return
        for info in infos:
            base = info.base_name
            for prefix, suffix in (("faces-v", ".parquet"), ("faiss-v", ".index")):
                if base.startswith(prefix) and base.endswith(suffix):
                    number = base[len(prefix):-len(suffix)]
                    if number.isdigit() and int(number) < oldest_kept:
                        try:
                            self.layout.fs.delete_file(info.path)
                        except OSError as exc:
                            logger.warning("could not delete old gallery file %s: %s", info.path, exc)

    def __repr__(self) -> str:
        self._meta  # noqa: B018 - merges pending additions
        return (f"Gallery({self.layout.root!r}, v{self.version}, {len(self)} faces, "
                f"{len(self._names)} identities, index={self._index_type})")


# -- helpers ------------------------------------------------------------------------------------

def layout_is_local(layout: IndexLayout) -> bool:
    return isinstance(layout.fs, pafs.LocalFileSystem)


def _save_index(layout: IndexLayout, path: str, index) -> None:
    if layout_is_local(layout):
        layout.makedirs(path.rsplit("/", 1)[0])
        fx.write_index_file(index, path)
    else:
        layout.write_bytes_atomic(path, fx.serialize_index(index))


def _load_index(layout: IndexLayout, path: str, type_name: str, *, mmap: bool):
    try:
        if layout_is_local(layout):
            return fx.read_index_file(path, type_name, mmap=mmap)
        return fx.deserialize_index(layout.read_bytes(path))
    except (RuntimeError, OSError) as exc:
        raise GalleryError(f"{path}: cannot read the FAISS index ({str(exc).splitlines()[0]})") from exc


def _section_spec(section: dict[str, Any], layout: IndexLayout) -> ModelSpec | None:
    """The model spec a gallery manifest records (None in manifests from before specs)."""
    if not section.get("model"):
        return None
    return ModelSpec.from_metadata(section["model"], where=f"{layout.manifest} gallery.model")


def check_same_model(spec: ModelSpec, flip: str, model_id: str, embedding_size: int,
                     holder: str, remedy: str) -> None:
    """Raise :class:`GalleryError` unless ``spec`` with ``flip`` produces the stored
    ``embedding_size``-d embeddings of ``model_id`` (``holder``: "the gallery of X holds")."""
    size = spec.embedding_size * (2 if flip == "concat" else 1)
    if spec.model_id != model_id or size != embedding_size:
        raise GalleryError(
            f"{holder} {embedding_size}-d embeddings of model {model_id!r}, but the pipeline "
            f"produces {size}-d embeddings of {spec.model_id!r}; {remedy}")


def check_threshold(value, what: str = "threshold") -> float:
    """``value`` as a float squared L2 distance in [0, 4] (ConfigError otherwise)."""
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if not 0.0 <= threshold <= 4.0:  # squared L2 of unit vectors; NaN fails too
        raise ConfigError(f"{what} must be a squared L2 distance in [0, 4], got {threshold}")
    return threshold


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("an identity name must be a non-empty string")
    if any(c in name for c in "\n\r\0"):
        raise ConfigError(f"identity name {name!r} contains a line break or NUL")
    if name == UNKNOWN:
        raise ConfigError(f"{UNKNOWN!r} is reserved for faces that match nobody; pick another name")
    return name


def _table_to_meta(table: pa.Table) -> dict[str, np.ndarray]:
    return {
        "id": table.column("id").to_numpy().astype(np.int64),
        "name": np.array(table.column("name").to_pylist(), object),
        "source": np.array(table.column("source").to_pylist(), object),
        "content_hash": np.array(table.column("content_hash").to_pylist(), object),
        "model_id": np.array(table.column("model_id").to_pylist(), object),
        "added_at": table.column("added_at").to_numpy().astype("datetime64[s]"),
    }


def _embedding_matrix(column: pa.ChunkedArray, size: int) -> np.ndarray:
    """A ``fixed_size_list<float32>[size]`` column -> ``(N, size) float32`` without a Python loop."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten()  # honours the array's offset
    return np.asarray(flat.to_numpy(zero_copy_only=False), np.float32).reshape(-1, size)
