"""People clustering: group the collection's faces into people without labels.

As photo managers do (Immich, PhotoPrism): a FAISS k-nearest-neighbour graph over the embeddings
(exact for small collections, the automatic approximate index above the gallery threshold), its
edges pruned at ``max_distance`` (squared L2), then a clustering on that graph. Groups smaller
than ``min_faces`` are noise: their faces stay unassigned (cluster id -1).

Clusterers (:data:`CLUSTERERS`; see benchmarks/bench_people_clusters.py for how they compare on LFW):

* ``chinese-whispers`` (default): label propagation on the weighted graph; each face takes the
  label with the largest total edge weight among its neighbours (weight ``max_distance - d``),
  in random order, until stable. No chaining through single weak links, no number of clusters.
* ``components``: connected components of the pruned graph (single linkage; chains).
* ``dbscan``: density-based; faces with at least ``max(2, min_faces - 1)`` neighbours within
  ``max_distance`` are cores, cores linked within the distance form clusters, other faces join
  the cluster of their nearest core within the distance, or stay noise.

``cluster_index`` writes, under ``INDEX_DIR/clusters/``:

* ``clusters.parquet``: content_hash, face_index, path, cluster_id (-1: unassigned);
* ``sheets/cluster-NNNNN.png``: a contact sheet per cluster, the faces nearest its centre
  (at most ``max_thumbnails``) cropped from the source photos with their boxes;
* the manifest's ``"clusters"`` section: parameters, counts, sizes.

Incremental runs (the default when a clustering exists with the same parameters and model):
faces already clustered keep their cluster; each new face joins the cluster of its nearest
clustered face when that is within ``max_distance``; the rest, with the faces left unassigned
before, are clustered among themselves and may form new clusters. ``recluster=True`` starts over.

Quality metrics (:func:`pairwise_scores`, :func:`bcubed_scores`) treat every unassigned face as a
cluster of its own.
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facenet_platform.core.errors import ConfigError, DatasetError

from . import faiss_index as fx
from .layout import IndexLayout, read_manifest, update_manifest
from .people_cluster_defaults import (DEFAULT_ALGORITHM, DEFAULT_MAX_DISTANCE,
                                      DEFAULT_MAX_THUMBNAILS, DEFAULT_MIN_FACES,
                                      DEFAULT_NEIGHBORS)

logger = logging.getLogger(__name__)

SECTION = "clusters"
TABLE_NAME = "clusters.parquet"
SHEETS_DIR = "sheets"

THUMBNAIL_SIZE = 96
UNASSIGNED = -1
#: dbscan: neighbours within max_distance that make a face a core face (at least min_faces - 1).
DBSCAN_MIN_NEIGHBORS = 2


def clusters_schema() -> pa.Schema:
    """Schema of ``clusters/clusters.parquet``."""
    return pa.schema([
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("cluster_id", pa.int64(), nullable=False),
    ])


# =============================================================================================
# k-NN graph
# =============================================================================================

@dataclass(frozen=True)
class KnnGraph:
    """Each face's nearest other faces: ``neighbors (N, k)`` int64 (-1 pads) and their
    ``distances (N, k)`` float32 squared L2, ascending."""

    neighbors: np.ndarray
    distances: np.ndarray

    def __len__(self) -> int:
        return int(self.neighbors.shape[0])

    def edges(self, max_distance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Undirected edges ``(i, j, d)`` with ``i < j`` and ``d <= max_distance``, each once."""
        n, k = self.neighbors.shape
        rows = np.repeat(np.arange(n, dtype=np.int64), k)
        cols = self.neighbors.reshape(-1)
        dist = self.distances.reshape(-1)
        keep = (cols >= 0) & (cols != rows) & (dist <= max_distance)
        i, j, d = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep], dist[keep]
        if len(i) == 0:
            return i, j, d
        key = i * n + j
        _, first = np.unique(key, return_index=True)
        return i[first], j[first], d[first]


def knn_graph(embeddings: np.ndarray, k: int = DEFAULT_NEIGHBORS, *,
              auto_threshold: int = fx.DEFAULT_AUTO_THRESHOLD, batch: int = 4096) -> KnnGraph:
    """The k-NN graph of ``(N, D)`` unit embeddings with FAISS (self excluded)."""
    x = fx.as_unit_rows(embeddings)
    n = len(x)
    k = max(1, min(int(k), n - 1)) if n > 1 else 1
    if n <= 1:
        return KnnGraph(np.full((n, k), -1, np.int64), np.full((n, k), np.inf, np.float32))
    kind = fx.choose_index_type(n, auto_threshold)
    index, _ = fx.build_faiss_index(kind, x, np.arange(n, dtype=np.int64))
    if kind == "hnsw":
        fx.configure_search(index, kind, {"efSearch": max(128, 2 * (k + 1))})
    neighbors = np.empty((n, k), np.int64)
    distances = np.empty((n, k), np.float32)
    for start in range(0, n, batch):
        q = x[start:start + batch]
        scores, ids = index.search(q, k + 1)
        d = fx.to_squared_l2(scores)
        d[ids < 0] = np.inf
        self_hit = ids == np.arange(start, start + len(q))[:, None]
        # drop the query itself (or the last hit when it was not returned)
        drop = np.where(self_hit.any(axis=1), self_hit.argmax(axis=1), k)
        keep = np.ones_like(ids, dtype=bool)
        keep[np.arange(len(q)), drop] = False
        neighbors[start:start + len(q)] = ids[keep].reshape(len(q), k)
        distances[start:start + len(q)] = d[keep].reshape(len(q), k)
    return KnnGraph(neighbors, distances)


# =============================================================================================
# clusterers: (graph, max_distance, min_faces, seed) -> labels, -1 for noise
# =============================================================================================

Clusterer = Callable[[KnnGraph, float, int, int], np.ndarray]
CLUSTERERS: dict[str, Clusterer] = {}


def register_clusterer(name: str) -> Callable[[Clusterer], Clusterer]:
    """Decorator adding a clusterer to :data:`CLUSTERERS`."""
    def wrap(fn: Clusterer) -> Clusterer:
        CLUSTERERS[name] = fn
        return fn
    return wrap


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


@register_clusterer("components")
def cluster_components(graph: KnnGraph, max_distance: float, min_faces: int, seed: int = 0) -> np.ndarray:
    i, j, _ = graph.edges(max_distance)
    return _components(len(graph), i, j)


@register_clusterer("chinese-whispers")
def cluster_chinese_whispers(graph: KnnGraph, max_distance: float, min_faces: int, seed: int = 0,
                             max_iterations: int = 30, chunks: int = 20) -> np.ndarray:
    """Chinese whispers (Biemann 2006) on the pruned k-NN graph, edge weight ``max_distance - d``.

    Faces are visited in a random order each iteration, in ``chunks`` slices; the faces of one
    slice take their new labels together (vectorised), so each sees labels at most one slice old:
    close to the classic one-at-a-time update without a Python loop over faces.
    """
    from scipy.sparse import coo_matrix

    n = len(graph)
    i, j, d = graph.edges(max_distance)
    w = (max_distance - d).astype(np.float64) + 1e-6
    adj = coo_matrix((np.concatenate([w, w]), (np.concatenate([i, j]), np.concatenate([j, i]))),
                     shape=(n, n)).tocsr()
    labels = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    active = np.flatnonzero(np.diff(adj.indptr) > 0)
    if len(active) == 0:
        return labels
    for _ in range(max_iterations):
        changed = 0
        for part in np.array_split(rng.permutation(active), min(chunks, len(active))):
            sub = adj[part].tocoo()
            # total weight per (face in part, neighbour label); the heaviest label wins
            key = sub.row.astype(np.int64) * n + labels[sub.col]
            uniq, inverse = np.unique(key, return_inverse=True)
            total = np.bincount(inverse, weights=sub.data)
            row, label = uniq // n, uniq % n
            order = np.lexsort((label, -total, row))  # per row: heaviest, then smallest label
            first = order[np.r_[True, row[order][1:] != row[order][:-1]]]
            new = labels[part].copy()
            new[row[first]] = label[first]
            changed += int(np.sum(new != labels[part]))
            labels[part] = new
        if changed == 0:
            break
    return labels


@register_clusterer("dbscan")
def cluster_dbscan(graph: KnnGraph, max_distance: float, min_faces: int, seed: int = 0) -> np.ndarray:
    n = len(graph)
    within = (graph.neighbors >= 0) & (graph.distances <= max_distance)
    core = within.sum(axis=1) >= max(DBSCAN_MIN_NEIGHBORS, min_faces - 1)
    i, j, _ = graph.edges(max_distance)
    both = core[i] & core[j]
    labels = _components(n, i[both], j[both])
    labels[~core] = UNASSIGNED
    # border faces join the cluster of their nearest core neighbour within the distance
    for node in np.flatnonzero(~core):
        for nb, dist in zip(graph.neighbors[node], graph.distances[node]):
            if nb >= 0 and dist <= max_distance and core[nb]:
                labels[node] = labels[nb]
                break
    return labels


def finalize_labels(labels: np.ndarray, min_faces: int, start: int = 0) -> np.ndarray:
    """Groups smaller than ``min_faces`` -> -1; the rest renumbered ``start, start+1, ...`` by
    decreasing size (ties: smallest first member first)."""
    labels = np.asarray(labels, np.int64)
    out = np.full(len(labels), UNASSIGNED, np.int64)
    valid = labels >= 0
    if not valid.any():
        return out
    uniq, first, inverse, counts = np.unique(labels[valid], return_index=True,
                                             return_inverse=True, return_counts=True)
    keep = counts >= max(1, min_faces)
    order = sorted(np.flatnonzero(keep), key=lambda c: (-counts[c], first[c]))
    new_id = np.full(len(uniq), UNASSIGNED, np.int64)
    new_id[order] = np.arange(start, start + len(order))
    out[valid] = new_id[inverse]
    return out


def cluster_embeddings(embeddings: np.ndarray, *, max_distance: float = DEFAULT_MAX_DISTANCE,
                       min_faces: int = DEFAULT_MIN_FACES, algorithm: str = DEFAULT_ALGORITHM,
                       neighbors: int = DEFAULT_NEIGHBORS, seed: int = 0,
                       graph: KnnGraph | None = None) -> np.ndarray:
    """Cluster ids ``(N,) int64`` (0 = largest cluster, -1 = unassigned) of unit embeddings."""
    _check_params(max_distance, min_faces, algorithm, neighbors)
    n = len(embeddings) if graph is None else len(graph)
    if n == 0:
        return np.zeros(0, np.int64)
    graph = graph if graph is not None else knn_graph(embeddings, neighbors)
    labels = CLUSTERERS[algorithm](graph, max_distance, min_faces, seed)
    return finalize_labels(labels, min_faces)


def _check_params(max_distance: float, min_faces: int, algorithm: str, neighbors: int) -> None:
    if not (0 < max_distance <= 4):
        raise ConfigError(f"--max-distance must be in (0, 4] (squared L2 of unit vectors), "
                          f"got {max_distance}")
    if min_faces < 1:
        raise ConfigError(f"--min-faces must be >= 1, got {min_faces}")
    if neighbors < 1:
        raise ConfigError(f"--neighbors must be >= 1, got {neighbors}")
    if algorithm not in CLUSTERERS:
        raise ConfigError(f"unknown clustering algorithm {algorithm!r}; choose one of "
                          f"{', '.join(sorted(CLUSTERERS))}")


# =============================================================================================
# metrics
# =============================================================================================

def _as_labels(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(labels_true)
    p = np.asarray(labels_pred, np.int64)
    if t.shape != p.shape or t.ndim != 1:
        raise ConfigError(f"label arrays must be 1-D of the same length, got {t.shape} and {p.shape}")
    _, t = np.unique(t, return_inverse=True)
    # every unassigned face is a cluster of its own
    p = p.copy()
    noise = p < 0
    p[noise] = p.max(initial=0) + 1 + np.arange(int(noise.sum()))
    _, p = np.unique(p, return_inverse=True)
    return t.astype(np.int64), p.astype(np.int64)


def _contingency(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero cells of the (pred, true) contingency table with their row/column totals."""
    key = p * (t.max(initial=0) + 1) + t
    _, inverse, cell = np.unique(key, return_inverse=True, return_counts=True)
    return cell, inverse, key


def pairwise_scores(labels_true, labels_pred) -> dict[str, float]:
    """Pairwise precision, recall and F1 over all pairs of faces.

    Precision: of the pairs put in the same cluster, the fraction of the same person; recall: of
    the pairs of the same person, the fraction put together. Unassigned faces (-1) are singletons.
    With no pair on one side the ratio is 1 (nothing claimed / nothing to find).
    """
    t, p = _as_labels(labels_true, labels_pred)
    cells, _, _ = _contingency(t, p)

    def pairs(counts):
        counts = np.asarray(counts, np.float64)
        return float(np.sum(counts * (counts - 1) / 2))

    tp = pairs(cells)
    pred_pairs = pairs(np.bincount(p))
    true_pairs = pairs(np.bincount(t))
    precision = tp / pred_pairs if pred_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "pred_pairs": pred_pairs, "true_pairs": true_pairs, "true_positive_pairs": tp}


def bcubed_scores(labels_true, labels_pred) -> dict[str, float]:
    """BCubed precision, recall and F (Bagga & Baldwin; Amigo et al. 2009).

    Per face: precision = |its cluster ∩ its person| / |its cluster|, recall = |its cluster ∩
    its person| / |its person|; both averaged over faces. Unassigned faces are singletons.
    """
    t, p = _as_labels(labels_true, labels_pred)
    if len(t) == 0:
        return {"precision": 1.0, "recall": 1.0, "f": 1.0}
    cells, inverse, _ = _contingency(t, p)
    overlap = cells[inverse].astype(np.float64)
    precision = float(np.mean(overlap / np.bincount(p)[p]))
    recall = float(np.mean(overlap / np.bincount(t)[t]))
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f": f}


# =============================================================================================
# the collection's faces
# =============================================================================================

@dataclass
class FaceRows:
    """The columns of the collection's faces that clustering needs, one entry per face."""

    content_hash: np.ndarray  # (N,) object str
    face_index: np.ndarray    # (N,) int32
    path: np.ndarray          # (N,) object str
    box: np.ndarray           # (N, 4) float32
    embedding: np.ndarray     # (N, D) float32
    model_id: str | None

    def __len__(self) -> int:
        return len(self.content_hash)

    def keys(self) -> np.ndarray:
        return np.array([f"{h}\x1f{i}" for h, i in zip(self.content_hash, self.face_index)], object)


def _fixed_list(column, size: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, size)


def _read_faces_table(layout: IndexLayout, columns: list[str]) -> pa.Table:
    """Through the build's commit log when there is one, else every ``faces/*.parquet``."""
    import pyarrow.dataset as ds

    from .collection import CollectionStore, read_faces

    if CollectionStore(layout).commits():
        return read_faces(layout, columns)
    if not layout.exists(layout.faces_dir):
        raise DatasetError(f"{layout.faces_dir} does not exist: build the index first with "
                           f"`facenet-platform index build PHOTOS --index {layout.root}`")
    dataset = ds.dataset(layout.faces_dir, filesystem=layout.fs, format="parquet",
                         exclude_invalid_files=True)
    present = set(dataset.schema.names)
    return dataset.to_table(columns=[c for c in columns if c in present])


def read_collection_faces(layout: IndexLayout) -> FaceRows:
    """The collection's faces (``index build``'s faces table; a folder of Parquet files with at
    least path, face_index, box and embedding columns also works, keyed by path when it has no
    content_hash)."""
    columns = ["content_hash", "face_index", "path", "box", "embedding", "model_id"]
    try:
        table = _read_faces_table(layout, columns)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{layout.faces_dir}: cannot read the faces table ({exc})") from exc
    missing = [c for c in ("path", "face_index", "box", "embedding") if c not in table.column_names]
    if missing:
        raise DatasetError(f"{layout.faces_dir}: the faces table lacks the columns {missing}")
    if table.num_rows == 0:
        raise DatasetError(f"{layout.faces_dir} holds no faces; build the index first")
    size = table.schema.field("embedding").type.list_size
    if size <= 0:
        raise DatasetError(f"{layout.faces_dir}: embedding column is not a fixed-size list")
    models = (set(table.column("model_id").unique().to_pylist())
              if "model_id" in table.column_names else set())
    if len(models) > 1:
        raise DatasetError(f"{layout.faces_dir} mixes embeddings of models {sorted(models)}; "
                           f"rebuild the index with one model")
    key = "content_hash" if "content_hash" in table.column_names else "path"
    return FaceRows(
        content_hash=np.array(table.column(key).to_pylist(), object),
        face_index=table.column("face_index").to_numpy().astype(np.int32),
        path=np.array(table.column("path").to_pylist(), object),
        box=_fixed_list(table.column("box"), 4),
        embedding=fx.as_unit_rows(_fixed_list(table.column("embedding"), size)),
        model_id=models.pop() if models else None,
    )


# =============================================================================================
# the command
# =============================================================================================

@dataclass
class ClusterSummary:
    """What a clustering run did."""

    mode: str                      # "full" or "incremental"
    reason: str                    # why this mode
    n_faces: int
    n_clusters: int
    assigned: int
    unassigned: int
    sizes: list[int]               # cluster sizes, largest first
    params: dict[str, Any]
    seconds: float
    new_faces: int = 0             # incremental: faces not clustered before
    joined: int = 0                # incremental: new faces that joined an existing cluster
    new_clusters: int = 0          # incremental: clusters formed by the run
    sheets_written: int = 0
    table: str = ""
    sheets_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["largest"] = self.sizes[:10]
        out["size_histogram"] = size_histogram(self.sizes)
        out.pop("sizes")
        return out

    def text(self) -> str:
        hist = ", ".join(f"{k}: {v}" for k, v in size_histogram(self.sizes).items())
        lines = [
            f"{self.mode} clustering ({self.reason}): {self.n_faces} faces -> {self.n_clusters} "
            f"clusters; {self.assigned} assigned, {self.unassigned} unassigned "
            f"({self.seconds:.1f} s)",
            f"cluster sizes: {hist or 'none'}; largest {self.sizes[:10]}",
            "parameters: " + ", ".join(f"{k}={v}" for k, v in self.params.items()),
        ]
        if self.mode == "incremental":
            lines.append(f"new faces: {self.new_faces}, joined existing clusters: {self.joined}, "
                         f"new clusters: {self.new_clusters}")
        lines.append(f"table: {self.table}; contact sheets ({self.sheets_written} written): "
                     f"{self.sheets_dir}")
        return "\n".join(lines)


def size_histogram(sizes: list[int]) -> dict[str, int]:
    """Cluster counts by size bucket (``"2"``, ``"3-4"``, ``"5-9"``, ``"10-19"``, ``"20+"``...)."""
    buckets = [(1, 1), (2, 2), (3, 4), (5, 9), (10, 19), (20, 49), (50, 99), (100, None)]
    out = {}
    for lo, hi in buckets:
        n = sum(1 for s in sizes if s >= lo and (hi is None or s <= hi))
        if n:
            out[f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")] = n
    return out


def _resolve_params(previous: dict[str, Any], max_distance, min_faces, algorithm, neighbors,
                    model_id) -> dict[str, Any]:
    old = previous.get("params", {})
    params = {
        "algorithm": algorithm if algorithm is not None else old.get("algorithm", DEFAULT_ALGORITHM),
        "max_distance": float(max_distance if max_distance is not None
                              else old.get("max_distance", DEFAULT_MAX_DISTANCE)),
        "min_faces": int(min_faces if min_faces is not None
                         else old.get("min_faces", DEFAULT_MIN_FACES)),
        "neighbors": int(neighbors if neighbors is not None
                         else old.get("neighbors", DEFAULT_NEIGHBORS)),
        "model_id": model_id,
    }
    _check_params(params["max_distance"], params["min_faces"], params["algorithm"],
                  params["neighbors"])
    return params


def _read_clusters(layout: IndexLayout) -> pa.Table | None:
    path = layout.path(SECTION, TABLE_NAME)
    if not layout.exists(path):
        return None
    try:
        return pq.read_table(path, filesystem=layout.fs)
    except (OSError, pa.ArrowException) as exc:
        logger.warning("%s unreadable (%s); clustering everything again", path, exc)
        return None


def assign_to_nearest(queries: np.ndarray, members: np.ndarray, member_labels: np.ndarray,
                      max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Cluster of each query's nearest member when within ``max_distance`` (else -1), and that
    distance."""
    if len(queries) == 0 or len(members) == 0:
        return np.full(len(queries), UNASSIGNED, np.int64), np.full(len(queries), np.inf, np.float32)
    kind = fx.choose_index_type(len(members))
    index, _ = fx.build_faiss_index(kind, members, np.arange(len(members), dtype=np.int64))
    scores, ids = index.search(fx.as_unit_rows(queries), 1)
    d = fx.to_squared_l2(scores[:, 0])
    ok = (ids[:, 0] >= 0) & (d <= max_distance)
    labels = np.where(ok, member_labels[np.clip(ids[:, 0], 0, None)], UNASSIGNED)
    return labels.astype(np.int64), np.where(ids[:, 0] >= 0, d, np.inf).astype(np.float32)


def cluster_index(index_dir, *, max_distance: float | None = None, min_faces: int | None = None,
                  algorithm: str | None = None, neighbors: int | None = None,
                  recluster: bool = False, sheets: bool = True,
                  max_thumbnails: int = DEFAULT_MAX_THUMBNAILS, seed: int = 0,
                  progress: bool = False) -> ClusterSummary:
    """Cluster the faces of an index directory (incrementally when possible); see the module doc.

    Parameters left ``None`` keep the previous run's values (or the defaults).
    """
    if max_thumbnails < 1:
        raise ConfigError(f"--max-thumbnails must be >= 1, got {max_thumbnails}")
    _check_params(DEFAULT_MAX_DISTANCE if max_distance is None else max_distance,
                  DEFAULT_MIN_FACES if min_faces is None else min_faces,
                  DEFAULT_ALGORITHM if algorithm is None else algorithm,
                  DEFAULT_NEIGHBORS if neighbors is None else neighbors)
    t0 = time.perf_counter()
    layout = IndexLayout.open(index_dir)
    faces = read_collection_faces(layout)
    previous = read_manifest(layout).get(SECTION) or {}
    params = _resolve_params(previous, max_distance, min_faces, algorithm, neighbors,
                             faces.model_id)
    old_table = None if recluster else _read_clusters(layout)
    if recluster:
        mode, reason = "full", "--recluster"
    elif old_table is None or not previous:
        mode, reason = "full", "first run"
    elif previous.get("params") != params:
        mode, reason = "full", "parameters or model changed"
    else:
        mode, reason = "incremental", "existing clusters kept"

    keys = faces.keys()
    new_faces = joined = new_clusters = 0
    if mode == "full":
        labels = cluster_embeddings(faces.embedding, max_distance=params["max_distance"],
                                    min_faces=params["min_faces"], algorithm=params["algorithm"],
                                    neighbors=params["neighbors"], seed=seed)
        changed = set(int(c) for c in np.unique(labels[labels >= 0]))
        new_clusters = len(changed)
    else:
        old_keys = np.array([f"{h}\x1f{i}" for h, i in zip(
            old_table.column("content_hash").to_pylist(),
            old_table.column("face_index").to_pylist())], object)
        old_map = dict(zip(old_keys, old_table.column("cluster_id").to_numpy()))
        NEW = -2
        labels = np.array([old_map.get(k, NEW) for k in keys], np.int64)
        is_new = labels == NEW
        new_faces = int(is_new.sum())
        members = labels >= 0
        joined_labels, _ = assign_to_nearest(faces.embedding[is_new], faces.embedding[members],
                                             labels[members], params["max_distance"])
        labels[np.flatnonzero(is_new)] = joined_labels
        joined = int((joined_labels >= 0).sum())
        changed = set(int(c) for c in np.unique(joined_labels[joined_labels >= 0]))
        # clusters that lost faces (photos gone from the collection) get a new sheet too
        present = set(keys.tolist())
        gone = [int(old_map[k]) for k in old_keys if k not in present and old_map[k] >= 0]
        changed |= set(gone)
        pool = np.flatnonzero(labels < 0)
        if len(pool) and new_faces:
            pool_labels = cluster_embeddings(
                faces.embedding[pool], max_distance=params["max_distance"],
                min_faces=params["min_faces"], algorithm=params["algorithm"],
                neighbors=params["neighbors"], seed=seed)
            start = int(labels.max(initial=-1)) + 1
            pool_labels = np.where(pool_labels >= 0, pool_labels + start, UNASSIGNED)
            labels[pool] = pool_labels
            fresh = set(int(c) for c in np.unique(pool_labels[pool_labels >= 0]))
            new_clusters = len(fresh)
            changed |= fresh

    # -- write ---------------------------------------------------------------------------------
    table = pa.Table.from_arrays([
        pa.array(faces.content_hash.tolist(), pa.string()),
        pa.array(faces.face_index, pa.int32()),
        pa.array(faces.path.tolist(), pa.string()),
        pa.array(labels, pa.int64()),
    ], schema=clusters_schema())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    table_path = layout.path(SECTION, TABLE_NAME)
    layout.write_bytes_atomic(table_path, sink.getvalue().to_pybytes())

    sheets_dir = layout.path(SECTION, SHEETS_DIR)
    sheets_written = 0
    if sheets:
        if mode == "full":
            _clear_sheets(layout, sheets_dir)
        cluster_ids = sorted(c for c in changed if np.any(labels == c))
        for c in sorted(changed - set(cluster_ids)):  # clusters now empty
            _delete(layout, f"{sheets_dir}/cluster-{c:05d}.png")
        sheets_written = write_contact_sheets(layout, sheets_dir, faces, labels, cluster_ids,
                                              max_thumbnails, progress=progress)

    assigned_ids, sizes = np.unique(labels[labels >= 0], return_counts=True)
    sizes_sorted = sorted((int(s) for s in sizes), reverse=True)
    summary = ClusterSummary(
        mode=mode, reason=reason, n_faces=len(faces), n_clusters=len(assigned_ids),
        assigned=int((labels >= 0).sum()), unassigned=int((labels < 0).sum()),
        sizes=sizes_sorted, params=params, seconds=time.perf_counter() - t0,
        new_faces=new_faces, joined=joined, new_clusters=new_clusters,
        sheets_written=sheets_written, table=table_path, sheets_dir=sheets_dir,
    )
    update_manifest(layout, SECTION, {
        "params": params,
        "table": f"{SECTION}/{TABLE_NAME}",
        "sheets": f"{SECTION}/{SHEETS_DIR}" if sheets else None,
        "mode": mode,
        "n_faces": summary.n_faces,
        "n_clusters": summary.n_clusters,
        "assigned": summary.assigned,
        "unassigned": summary.unassigned,
        "largest": sizes_sorted[:10],
        "size_histogram": size_histogram(sizes_sorted),
        "seconds": round(summary.seconds, 3),
    })
    logger.info("%s", summary.text())
    return summary


# =============================================================================================
# contact sheets
# =============================================================================================

def _delete(layout: IndexLayout, path: str) -> None:
    try:
        if layout.exists(path):
            layout.fs.delete_file(path)
    except OSError as exc:
        logger.warning("could not delete %s: %s", path, exc)


def _clear_sheets(layout: IndexLayout, sheets_dir: str) -> None:
    import pyarrow.fs as pafs

    if not layout.exists(sheets_dir):
        return
    for info in layout.fs.get_file_info(pafs.FileSelector(sheets_dir)):
        if info.base_name.startswith("cluster-") and info.base_name.endswith(".png"):
            _delete(layout, info.path)


def _read_source(path: str) -> np.ndarray:
    from facenet_platform.core.images import decode_image, read_image

    if "://" in path:
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as src:
            return decode_image(src.read(), source=path)
    return read_image(path)


def face_thumbnail(image: np.ndarray, box, size: int = THUMBNAIL_SIZE, pad: float = 0.25):
    """A square ``size`` px Pillow thumbnail around ``box`` (x1, y1, x2, y2), ``pad`` x the box
    side added on each side; outside the photo is black."""
    from PIL import Image

    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1 + 2 * pad)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    region = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    crop = Image.fromarray(image).crop(region)
    return crop.resize((size, size), Image.Resampling.LANCZOS)


def contact_sheet(thumbnails: list, title: str, size: int = THUMBNAIL_SIZE, columns: int | None = None):
    """Thumbnails on a grid under a one-line title, as a Pillow RGB image."""
    from PIL import Image, ImageDraw

    n = max(1, len(thumbnails))
    columns = columns or min(n, max(1, math.ceil(math.sqrt(n))), 8) or 1
    rows = math.ceil(n / columns)
    gap, header = 4, 20
    sheet = Image.new("RGB", (columns * (size + gap) + gap, header + rows * (size + gap) + gap),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, 4), title, fill=(0, 0, 0))
    for k, thumb in enumerate(thumbnails):
        r, c = divmod(k, columns)
        sheet.paste(thumb, (gap + c * (size + gap), header + r * (size + gap)))
    return sheet


def write_contact_sheets(layout: IndexLayout, sheets_dir: str, faces: FaceRows, labels: np.ndarray,
                         cluster_ids, max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
                         progress: bool = False) -> int:
    """One PNG per cluster id: its faces nearest the cluster centre, at most ``max_thumbnails``."""
    from PIL import Image

    from facenet_platform.core.errors import ImageError

    cluster_ids = list(cluster_ids)
    if not cluster_ids:
        return 0
    layout.makedirs(sheets_dir)
    iterator = cluster_ids
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(cluster_ids, desc="contact sheets", unit="sheet")
    written = 0
    for c in iterator:
        members = np.flatnonzero(labels == c)
        centre = faces.embedding[members].mean(axis=0)
        order = members[np.argsort(-(faces.embedding[members] @ centre), kind="stable")]
        chosen = order[:max_thumbnails]
        cache: dict[str, np.ndarray | None] = {}
        thumbs = []
        for m in chosen:
            path = str(faces.path[m])
            if path not in cache:
                try:
                    cache[path] = _read_source(path)
                except (ImageError, OSError) as exc:
                    logger.warning("contact sheet of cluster %d: %s", c, exc)
                    cache[path] = None
            image = cache[path]
            thumbs.append(face_thumbnail(image, faces.box[m]) if image is not None
                          else Image.new("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), (128, 128, 128)))
        title = f"cluster {c}: {len(members)} faces" + (
            f" (showing {len(chosen)} nearest the centre)" if len(chosen) < len(members) else "")
        buffer = io.BytesIO()
        contact_sheet(thumbs, title).save(buffer, format="PNG", optimize=True)
        layout.write_bytes_atomic(f"{sheets_dir}/cluster-{c:05d}.png", buffer.getvalue())
        written += 1
    return written
