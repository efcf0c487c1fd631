"""FAISS indexes over L2-normalised embeddings: a small registry of index types.

Every index is an ``IndexIDMap2`` (stable ``int64`` ids chosen by the caller, the ids of the
Parquet rows the vectors came from) around an inner-product index. For unit vectors the squared
Euclidean distance the rest of the package uses is ``2 - 2 * ip``; :func:`to_squared_l2` converts.

Index types (:data:`INDEX_TYPES`, add one with :func:`register_index_type`):

=========  ===========================================  ===========  ==========================
name       FAISS structure                              removal      memory-mapped load flag
=========  ===========================================  ===========  ==========================
flat       ``IndexFlatIP`` (exact)                      in place     ``IO_FLAG_MMAP_IFC``
hnsw       ``IndexHNSWFlat`` (graph, exact distances)   rebuild      ``IO_FLAG_MMAP_IFC``
ivf        ``IndexIVFFlat`` (k-means lists, exact dist) in place     ``IO_FLAG_MMAP``
ivfpq      ``IndexIVFPQ`` + ``IndexRefineFlat`` rerank  rebuild      ``IO_FLAG_MMAP_IFC``
=========  ===========================================  ===========  ==========================

Each type derives its parameters from the number of vectors (``default_params(n)``); callers may
override any of them. Build-time parameters (``M``, ``efConstruction``, ``nlist``, ``pq_m``) and
search-time ones (``efSearch``, ``nprobe``, ``k_factor``) are both recorded by the caller (the
gallery manifest) and re-applied after loading with :func:`configure_search`.

:func:`choose_index_type` is the automatic choice: exact search up to ``auto_threshold`` vectors,
the approximate type :data:`AUTO_APPROXIMATE` above (see benchmarks/bench_faiss.py for the
measurements behind the default threshold and parameters).

Memory mapping: ``IO_FLAG_MMAP_IFC`` maps the vector storage of flat codes (flat, the HNSW
storage, the refine stage) and ``IO_FLAG_MMAP`` maps IVF inverted lists. A mapped index is
read-only: adding to it aborts inside FAISS, so :func:`read_index_file` callers that want to
change an index load it with ``mmap=False`` (:class:`~facenet_platform.index.gallery.Gallery`
does).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from facenet_platform.core.errors import ConfigError

logger = logging.getLogger(__name__)

#: Vectors per ``add_with_ids`` call when building (bounds the temporary copies FAISS makes).
ADD_BATCH = 65_536
#: Above this many vectors :func:`choose_index_type` picks :data:`AUTO_APPROXIMATE`. Exact search
#: of 100k x 512-d answers one query in ~8 ms on one core (bench_faiss.py) and stays exact, removes
#: in place and needs no build; HNSW is ~25x faster there but costs a ~15-25 s (re)build.
DEFAULT_AUTO_THRESHOLD = 100_000
#: The approximate index type chosen above the threshold. On 1M synthetic faces with the
#: statistics of real FaceNet embeddings (bench_faiss.py --data lfw-like) HNSW (M 32,
#: efConstruction 40, efSearch 64) gives recall@1 0.995 at 134x the exact queries/s (batch 1)
#: and 45x (batch 256); IVF needs nprobe 128 of 2,048 lists for 0.993, at only 15x / 6x.
AUTO_APPROXIMATE = "hnsw"
#: k-means iterations when training IVF coarse quantizers.
KMEANS_ITERATIONS = 10


def _faiss():
    import faiss

    return faiss


@dataclass(frozen=True)
class IndexType:
    """How to build, tune and load one kind of FAISS index.

    Attributes:
        name: registry key (``--index-type``).
        description: one line for ``--help`` and the manifest.
        factory: ``(dim, params) -> faiss.Index`` (untrained, without the id map).
        default_params: ``n_vectors -> params`` for an index of that size.
        search_params: names of parameters applied at search time by ``configure``.
        configure: ``(inner index, params) -> None`` sets the search-time parameters on the
            index inside the id map (after building or loading).
        supports_remove: ``remove_ids`` works in place; otherwise removal rebuilds.
        mmap_flag_name: the ``faiss.IO_FLAG_*`` that memory-maps this type, or None.
        exact: distances and rankings are exact.
        min_train: fewest vectors the type can be trained on (0: no training).
    """

    name: str
    description: str
    factory: Callable[[int, dict[str, Any]], Any]
    default_params: Callable[[int], dict[str, Any]]
    search_params: tuple[str, ...] = ()
    configure: Callable[[Any, dict[str, Any]], None] = field(default=lambda index, params: None)
    supports_remove: bool = True
    mmap_flag_name: str | None = None
    exact: bool = False
    min_train: Callable[[dict[str, Any]], int] = field(default=lambda params: 0)

    def params(self, n: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Default parameters for ``n`` vectors with ``overrides`` applied (unknown keys rejected)."""
        params = self.default_params(max(int(n), 1))
        for key, value in (overrides or {}).items():
            if key not in params:
                raise ConfigError(f"index type {self.name!r} has no parameter {key!r}; "
                                  f"it takes {sorted(params)}")
            params[key] = type(params[key])(value)
        return params

    @property
    def mmap_flag(self) -> int | None:
        return None if self.mmap_flag_name is None else getattr(_faiss(), self.mmap_flag_name)


#: name -> IndexType. Add entries with :func:`register_index_type`, never with if/elif chains.
INDEX_TYPES: dict[str, IndexType] = {}


def register_index_type(index_type: IndexType) -> IndexType:
    """Add (or replace) an index type in :data:`INDEX_TYPES`."""
    INDEX_TYPES[index_type.name] = index_type
    return index_type


def get_index_type(name: str) -> IndexType:
    """The registered type called ``name`` (ConfigError listing the choices otherwise)."""
    try:
        return INDEX_TYPES[name]
    except KeyError:
        raise ConfigError(f"unknown index type {name!r}; choose one of "
                          f"{', '.join(sorted(INDEX_TYPES))} (or auto)") from None


# --- the built-in types ------------------------------------------------------------------------

def _flat(dim: int, params: dict[str, Any]):
    return _faiss().IndexFlatIP(dim)


def _hnsw(dim: int, params: dict[str, Any]):
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(dim, int(params["M"]), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(params["efConstruction"])
    index.hnsw.efSearch = int(params["efSearch"])
    return index


def _hnsw_configure(index, params: dict[str, Any]) -> None:
    if "efSearch" in params:
        index.hnsw.efSearch = int(params["efSearch"])


def _hnsw_params(n: int) -> dict[str, Any]:
    return {"M": 32, "efConstruction": 40, "efSearch": 64}


def _nlist(n: int) -> int:
    """~4 sqrt(n) lists, at least 39 training points per list, a power of two."""
    target = max(1, min(4 * math.sqrt(n), n / 39))
    return int(2 ** max(0, math.floor(math.log2(target))))


def _ivf(dim: int, params: dict[str, Any]):
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, int(params["nlist"]), faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    index.own_fields = True
    quantizer.this.disown()
    index.nprobe = int(params["nprobe"])
    return index


def _ivf_configure(index, params: dict[str, Any]) -> None:
    if "nprobe" in params:
        index.nprobe = int(params["nprobe"])


def _ivf_params(n: int) -> dict[str, Any]:
    nlist = _nlist(n)
    return {"nlist": nlist, "nprobe": min(nlist, max(32, nlist // 16))}


def _ivfpq(dim: int, params: dict[str, Any]):
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(dim)
    pq_m = int(params["pq_m"])
    if dim % pq_m:
        raise ConfigError(f"ivfpq: pq_m={pq_m} must divide the embedding size {dim}")
    ivfpq = faiss.IndexIVFPQ(quantizer, dim, int(params["nlist"]), pq_m, int(params["pq_bits"]),
                             faiss.METRIC_INNER_PRODUCT)
    ivfpq.cp.niter = KMEANS_ITERATIONS
    ivfpq.own_fields = True
    quantizer.this.disown()
    ivfpq.nprobe = int(params["nprobe"])
    index = faiss.IndexRefineFlat(ivfpq)
    index.own_fields = True
    ivfpq.this.disown()
    index.k_factor = float(params["k_factor"])
    return index


def _ivfpq_configure(index, params: dict[str, Any]) -> None:
    faiss = _faiss()
    if "k_factor" in params:
        index.k_factor = float(params["k_factor"])
    _ivf_configure(faiss.downcast_index(index.base_index), params)


def _ivfpq_params(n: int) -> dict[str, Any]:
    params = _ivf_params(n)
    params.update({"pq_m": 64, "pq_bits": 8, "k_factor": 8.0})
    return params


register_index_type(IndexType(
    name="flat", description="exact inner-product search (IndexFlatIP)",
    factory=_flat, default_params=lambda n: {}, supports_remove=True,
    mmap_flag_name="IO_FLAG_MMAP_IFC", exact=True,
))
register_index_type(IndexType(
    name="hnsw", description="HNSW graph over the raw vectors (IndexHNSWFlat)",
    factory=_hnsw, default_params=_hnsw_params, search_params=("efSearch",),
    configure=_hnsw_configure,
    supports_remove=False, mmap_flag_name="IO_FLAG_MMAP_IFC",
))
register_index_type(IndexType(
    name="ivf", description="inverted lists over k-means cells, raw vectors (IndexIVFFlat)",
    factory=_ivf, default_params=_ivf_params, search_params=("nprobe",),
    configure=_ivf_configure,
    supports_remove=True, mmap_flag_name="IO_FLAG_MMAP",
    min_train=lambda p: int(p["nlist"]),
))
register_index_type(IndexType(
    name="ivfpq", description="IVF with product-quantised codes, re-ranked exactly (IVFPQ + RefineFlat)",
    factory=_ivfpq, default_params=_ivfpq_params, search_params=("nprobe", "k_factor"),
    configure=_ivfpq_configure,
    supports_remove=False, mmap_flag_name="IO_FLAG_MMAP_IFC",
    min_train=lambda p: max(int(p["nlist"]), 2 ** int(p["pq_bits"])),
))


# --- operations --------------------------------------------------------------------------------

def choose_index_type(n: int, auto_threshold: int = DEFAULT_AUTO_THRESHOLD) -> str:
    """The automatic index type for ``n`` vectors: exact up to ``auto_threshold``, else ANN."""
    return "flat" if n <= auto_threshold else AUTO_APPROXIMATE


def as_unit_rows(x: np.ndarray, dim: int | None = None, what: str = "embeddings") -> np.ndarray:
    """``(N, D)`` C-contiguous float32 rows with unit L2 norm (validated, re-normalised)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ConfigError(f"{what} must have shape (N, {dim if dim is not None else 'D'}), "
                          f"got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def build_faiss_index(type_name: str, vectors: np.ndarray, ids: np.ndarray,
                params: dict[str, Any] | None = None, *, train_size: int = 200_000,
                seed: int = 0):
    """A trained ``IndexIDMap2`` of ``type_name`` holding ``vectors`` under ``ids``.

    Args:
        type_name: a key of :data:`INDEX_TYPES`.
        vectors: ``(N, D)`` unit rows.
        ids: ``(N,)`` int64 ids (unique).
        params: complete parameters (see :meth:`IndexType.params`); default for ``N``.
        train_size: at most this many vectors (a seeded sample) train k-means / PQ.

    Returns:
        ``(index, params)``.
    """
    faiss = _faiss()
    kind = get_index_type(type_name)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, dim = vectors.shape
    params = kind.params(n) if params is None else dict(params)
    inner = kind.factory(dim, params)
    if not inner.is_trained:
        need = kind.min_train(params)
        if n < need:
            raise ConfigError(f"index type {type_name!r} with {params} needs at least {need} "
                              f"vectors to train, got {n}; use --index-type flat")
        sample = vectors
        if n > train_size:
            pick = np.sort(np.random.default_rng(seed).choice(n, train_size, replace=False))
            sample = vectors[pick]
        inner.train(sample)
    index = faiss.IndexIDMap2(inner)
    index.own_fields = True
    inner.this.disown()
    add_batched(index, vectors, ids)
    return index, params


def add_batched(index, vectors: np.ndarray, ids: np.ndarray, batch: int = ADD_BATCH) -> None:
    """``index.add_with_ids`` in batches of ``batch`` rows."""
    for start in range(0, len(ids), batch):
        index.add_with_ids(np.ascontiguousarray(vectors[start:start + batch], dtype=np.float32),
                           np.ascontiguousarray(ids[start:start + batch], dtype=np.int64))


def configure_search(index, type_name: str, params: dict[str, Any]) -> None:
    """Apply the search-time parameters of ``params`` to a (loaded) index."""
    faiss = _faiss()
    kind = get_index_type(type_name)
    values = {k: params[k] for k in kind.search_params if k in params}
    if values:
        index = faiss.downcast_index(index)
        inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
        kind.configure(inner, values)


def to_squared_l2(inner_products: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of unit vectors from their inner products, clipped to [0, 4]."""
    return np.clip(2.0 - 2.0 * np.asarray(inner_products, np.float32), 0.0, 4.0)


def write_index_file(index, path: str) -> None:
    """Write ``index`` to a local ``path`` atomically (temporary sibling, fsync, rename)."""
    faiss = _faiss()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        faiss.write_index(index, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def serialize_index(index) -> bytes:
    """``index`` as bytes (for filesystems FAISS cannot write to directly)."""
    return _faiss().serialize_index(index).tobytes()


def read_index_file(path: str, type_name: str, *, mmap: bool = True):
    """Load a local index file, memory-mapped when the type supports it and ``mmap``."""
    faiss = _faiss()
    flag = get_index_type(type_name).mmap_flag if mmap else None
    return faiss.read_index(path, flag) if flag else faiss.read_index(path)


def deserialize_index(data: bytes):
    """An index from :func:`serialize_index` bytes."""
    return _faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8))
