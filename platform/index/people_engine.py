"""People engine: which person each face of a collection belongs to (pure library code).

The people store (``index/people*.py``) keeps ids, names and the user's decisions; this module
only decides. Inputs are arrays over every face of the collection (row ``i`` = face ``i``):

* ``embeddings (N, D)`` unit float32, ``quality (N,)`` in [0, 1] (``core/quality.py``);
* ``person (N,)`` object: the current person id of each face, or None;
* ``pinned (N,)`` bool: a user decision put the face in ``person`` (never changed here);
* ``rejected``: face row -> person ids the face must never join.

:func:`update_assignments` (``people update``):

* without ``recluster``: faces that have a person keep it. Unassigned faces of quality
  ``>= min_quality`` join the person whose template (:func:`person_templates`) is nearest when
  within ``assign_distance`` and not rejected for that person (:func:`identify_against_templates`,
  the same decision ``identify`` makes). The rest are clustered among themselves
  (:func:`cluster_faces`) into groups; a group whose average linkage to an existing person's
  good faces is within ``merge_distance`` joins that person, the others become new people of at
  least ``min_faces`` faces holding at least ``seed_faces`` faces of ``seed_quality`` (ids from
  ``new_person_id()``). Faces under the floor never start or join a person.
  With ``new`` (the faces added since the last update) only those are matched and queried;
  older unassigned faces take part as their neighbours, so the work follows the new faces.
  Above ``CANDIDATE_PEOPLE_ABOVE`` people, with a kept k-NN index, a new face is compared only
  with the templates of the people its nearest faces belong to
  (:func:`match_through_neighbours`) instead of every person's.
* with ``recluster``: every face that is not pinned is decided again: the good faces are
  clustered from scratch (pinned faces take part, and faces pinned to two different people are
  never put together); each new cluster that overlaps an existing person takes that person's id
  (greatest overlap first, pinned faces counting double, one cluster per id and one id per
  cluster), so names survive; the others get new ids; then the faces left over go through the
  incremental step. Rejections hold throughout; pinned faces never move.

Clustering (:func:`cluster_graph`) has two stages on a k-NN graph: Chinese whispers
(``people_clusters``) on edges within ``cluster_distance``, then :func:`merge_groups`,
average linkage between the groups a k-NN edge joins, up to ``merge_distance``. The graph is
exact up to ``approximate_above`` faces and HNSW above; its queries are sharded over Ray actors
for large batches (``index/people_knn.py``). Defaults and the figures that chose them:
benchmarks/RESULTS.md, "People engine".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from facenet_platform.core.errors import ConfigError

from . import people_clusters as cl
from . import faiss_index as fx
from . import people_knn as pk

logger = logging.getLogger(__name__)

TEMPLATE_KINDS = ("mean", "centroids")
#: People above which ``people update`` matches a new face only against the templates of the
#: people its nearest collection faces belong to (:func:`match_through_neighbours`), when it
#: keeps a k-NN index; below, against every template (exact). Exact matching costs new faces x
#: people: 27.7 s for 10k new faces against 173k people on 2 cores, 9.6 s through the
#: neighbours with the same answer for 99.0% of them (bench_people.py scale, 1M faces).
CANDIDATE_PEOPLE_ABOVE = 20_000
#: Faces above which the k-NN graph goes through HNSW. Lower than the gallery's switch
#: (``faiss_index.DEFAULT_AUTO_THRESHOLD``, which is about one query's latency): the graph asks
#: every face, so exact search costs N^2; on all of LFW (13,233 faces) HNSW gave the very same
#: people (bench_people.py), and exact was 1.6x faster there, 80 vs 125 s on a loaded machine.
APPROXIMATE_ABOVE = 20_000
#: Candidate pairs whose linkage is computed at once (two (PAIR_BLOCK, D) float32 gathers).
PAIR_BLOCK = 32_768


@dataclass(frozen=True)
class PeopleOptions:
    """How faces become people (see the module doc; defaults measured in bench_people.py).

    Attributes:
        min_quality: faces under this quality never start, join or shape a person.
        assign_distance: max squared L2 between a face and a person's template to join it.
        cluster_distance: edges of the k-NN graph longer than this (squared L2) are dropped
            before the first stage (Chinese whispers: tight groups).
        merge_distance: second stage: groups (and lone faces) joined by a graph edge no longer
            than ``merge_candidates`` merge while their average linkage (the mean squared L2
            between their faces, quality-weighted) is at most this; None: no second stage.
            Also the largest average linkage at which a new group joins an existing person.
        merge_candidates: the longest k-NN edge that makes two groups merge candidates.
        min_faces: smallest new person.
        seed_quality: a new person needs at least ``seed_faces`` faces of this quality (a
            group of only middling faces, typically background strangers, stays unassigned).
        seed_faces: how many faces of ``seed_quality`` a new person needs.
        neighbors: k of the k-NN graph.
        template: ``"mean"`` (one quality-weighted mean per person) or ``"centroids"``
            (up to ``max_centroids`` k-means centroids for people with varied photos).
        max_centroids: templates per person with ``template="centroids"``.
        approximate: k-NN graph through HNSW (True), exact (False), or automatic (None: exact up
            to ``approximate_above`` faces).
        approximate_above: the automatic switch (faces).
        use_ray: shard k-NN queries over Ray actors (True; starts a local Ray when none runs),
            never (False), or when Ray is already running (None); either way only batches of
            at least ``people_knn.RAY_MIN_QUERIES`` queries go to Ray.
        seed: random seed of the clustering.
    """

    min_quality: float = 0.1
    assign_distance: float = 0.8
    cluster_distance: float = 0.7
    merge_distance: float | None = 0.9
    merge_candidates: float = 1.4
    min_faces: int = 2
    seed_quality: float = 0.4
    seed_faces: int = 1
    neighbors: int = 16
    template: str = "mean"
    max_centroids: int = 3
    approximate: bool | None = None
    approximate_above: int = APPROXIMATE_ABOVE
    use_ray: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_quality <= 1.0:
            raise ConfigError(f"min_quality must be in [0, 1], got {self.min_quality}")
        for name in ("assign_distance", "cluster_distance", "merge_candidates"):
            value = getattr(self, name)
            if not 0.0 < value <= 4.0:
                raise ConfigError(f"{name} must be in (0, 4] (squared L2 of unit vectors), "
                                  f"got {value}")
        if self.merge_distance is not None and not 0.0 < self.merge_distance <= 4.0:
            raise ConfigError(f"merge_distance must be in (0, 4] or None, got {self.merge_distance}")
        if self.min_faces < 1:
            raise ConfigError(f"min_faces must be >= 1, got {self.min_faces}")
        if not 1 <= self.seed_faces <= self.min_faces:
            raise ConfigError(f"seed_faces must be in 1..min_faces ({self.min_faces}), "
                              f"got {self.seed_faces}")
        if self.neighbors < 1:
            raise ConfigError(f"neighbors must be >= 1, got {self.neighbors}")
        if self.template not in TEMPLATE_KINDS:
            raise ConfigError(f"template must be one of {TEMPLATE_KINDS}, got {self.template!r}")
        if self.max_centroids < 1:
            raise ConfigError(f"max_centroids must be >= 1, got {self.max_centroids}")

    def can_seed(self, quality: np.ndarray) -> bool:
        """Whether a new group whose faces have these qualities may become a new person."""
        return int(np.count_nonzero(quality >= self.seed_quality)) >= self.seed_faces

    def ray_for(self, queries: int) -> bool | None:
        """Whether ``queries`` k-NN queries go to Ray: never under
        ``people_knn.RAY_MIN_QUERIES`` (shipping the index to actors costs more than the
        queries: an incremental update stays in process), else as ``use_ray`` says."""
        if self.use_ray is False or queries < pk.RAY_MIN_QUERIES:
            return False
        return self.use_ray

    def use_approximate(self, n: int) -> bool:
        return bool(self.approximate) if self.approximate is not None else n > self.approximate_above


# =============================================================================================
# input checks
# =============================================================================================

def _check_inputs(embeddings, quality, person, pinned) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray, np.ndarray]:
    x = np.asarray(embeddings, np.float32)
    if x.ndim != 2:
        raise ConfigError(f"embeddings must have shape (N, D), got {x.shape}")
    n = len(x)
    q = np.asarray(quality, np.float32).reshape(-1)
    if len(q) != n:
        raise ConfigError(f"quality has {len(q)} entries for {n} faces")
    p = np.asarray(person, dtype=object).reshape(-1) if person is not None else np.full(n, None, object)
    if len(p) != n:
        raise ConfigError(f"person has {len(p)} entries for {n} faces")
    pin = np.zeros(n, bool) if pinned is None else np.asarray(pinned, bool).reshape(-1)
    if len(pin) != n:
        raise ConfigError(f"pinned has {len(pin)} entries for {n} faces")
    if np.any(pin & np.array([v is None for v in p], bool)):
        raise ConfigError("a pinned face must have a person")
    return x, q, p, pin


def _unit_rows(x: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """``x`` itself when its rows are finite float32 unit vectors (no copy of a 2 GB matrix),
    else a re-normalised copy (ConfigError on NaN/inf)."""
    if len(x) == 0:
        return np.ascontiguousarray(x, np.float32)
    ok = x.dtype == np.float32 and x.flags.c_contiguous
    for s in range(0, len(x), chunk):
        norms = np.linalg.norm(x[s:s + chunk], axis=1)
        if not np.all(np.isfinite(norms)):
            raise ConfigError("embeddings contain NaN or infinite values")
        ok = ok and bool(np.all(np.abs(norms - 1.0) <= 1e-3))
    return x if ok else fx.as_unit_rows(x)


def _has_person(person: np.ndarray) -> np.ndarray:
    return np.fromiter((v is not None for v in person), bool, len(person))


def _groups(labels: np.ndarray, n_groups: int):
    """``(c, positions)`` for each label ``c`` in ``0..n_groups-1``: the positions of ``labels``
    equal to ``c``, ascending (one sort, not a scan of ``labels`` per group: at 1M faces the
    scans took 85 s, the sort takes seconds)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_groups + 1))
    for c in range(n_groups):
        yield c, order[bounds[c]:bounds[c + 1]]


def person_codes(person: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids (P,) object sorted, code (N,) int64)``: each face's index into ``ids``, -1 for
    None (the same ``ids`` as :func:`person_templates`)."""
    has = _has_person(person)
    code = np.full(len(person), -1, np.int64)
    if not has.any():
        return np.array([], object), code
    ids, inv = np.unique(person[has].astype(str), return_inverse=True)
    code[has] = inv
    return ids.astype(object), code


# =============================================================================================
# templates
# =============================================================================================

def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _spherical_kmeans(x: np.ndarray, w: np.ndarray, k: int, seed: int,
                      iterations: int = 10) -> np.ndarray:
    """``k`` unit centroids of unit rows ``x`` weighted by ``w`` (k-means++ seeding)."""
    rng = np.random.default_rng(seed)
    centers = [x[int(np.argmax(w))]]
    for _ in range(1, k):
        d = np.min(2 - 2 * x @ np.stack(centers).T, axis=1).clip(0)
        p = d * w
        if p.sum() <= 0:
            break
        centers.append(x[rng.choice(len(x), p=p / p.sum())])
    c = np.stack(centers)
    for _ in range(iterations):
        assign = np.argmax(x @ c.T, axis=1)
        new = np.zeros_like(c)
        np.add.at(new, assign, x * w[:, None])
        empty = np.linalg.norm(new, axis=1) == 0
        new[empty] = c[empty]
        new = _normalize(new)
        if np.allclose(new, c):
            break
        c = new
    return c


def person_templates(embeddings: np.ndarray, quality: np.ndarray, person: np.ndarray,
                     options: PeopleOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Templates of every person from its faces of quality ``>= options.min_quality``.

    ``"mean"``: the quality-weighted mean of the person's good faces, re-normalised.
    ``"centroids"``: people with at least 8 good faces get ``min(max_centroids, faces // 4)``
    quality-weighted spherical k-means centroids, the others their mean (measured against the
    mean in bench_people.py: no gain on LFW or the in-the-wild check, so "mean" is the default). People without a good face have no template (they attract nobody).

    Returns:
        ``person_ids (P,) object`` (sorted), ``templates (T, D) float32`` unit rows and
        ``owner (T,) int64``: the index into ``person_ids`` of each template.
    """
    x, q, p, _ = _check_inputs(embeddings, quality, person, None)
    ids, code = person_codes(p)
    good = (code >= 0) & (q >= options.min_quality)
    w = np.maximum(q[good], 1e-3).astype(np.float32)
    counts = np.bincount(code[good], minlength=len(ids))
    has = counts > 0
    owners = np.flatnonzero(has)
    good_rows = np.flatnonzero(good)
    templates = _normalize(_group_means(x, code[good_rows], w, len(ids), rows=good_rows)[has])
    owner = owners.astype(np.int64)
    if options.template == "centroids" and options.max_centroids > 1:
        many = np.flatnonzero(counts >= 8)
        if len(many):
            rows = np.flatnonzero(good)
            order = np.argsort(code[rows], kind="stable")
            rows = rows[order]
            starts = np.searchsorted(code[rows], many)
            extra_t, extra_o, replace = [], [], []
            for pid, start in zip(many, starts):
                member = rows[start:start + counts[pid]]
                k = int(min(options.max_centroids, counts[pid] // 4))
                if k < 2:
                    continue
                c = _spherical_kmeans(x[member], np.maximum(q[member], 1e-3).astype(np.float32),
                                      k, options.seed + int(pid))
                extra_t.append(c)
                extra_o.append(np.full(len(c), pid, np.int64))
                replace.append(pid)
            if replace:
                keep = ~np.isin(owner, replace)
                templates = np.concatenate([templates[keep]] + extra_t)
                owner = np.concatenate([owner[keep]] + extra_o)
    return ids, np.ascontiguousarray(templates, np.float32), owner


@dataclass(frozen=True)
class TemplateMatches:
    """The decision for each of ``M`` probes.

    Attributes:
        person: ``(M,) object`` person id, or None.
        distance: ``(M,) float32`` squared L2 to the nearest allowed template (inf when none).
        reason: ``(M,) object``: ``"match"``, ``"too_far"`` (nearest allowed template beyond the
            distance), ``"low_quality"`` (under the floor: never matched) or ``"no_templates"``.
    """

    person: np.ndarray
    distance: np.ndarray
    reason: np.ndarray


def identify_against_templates(queries: np.ndarray, person_ids: np.ndarray,
                               templates: np.ndarray, owner: np.ndarray, max_distance: float, *,
                               quality: np.ndarray | None = None, min_quality: float = 0.0,
                               rejected: list[frozenset[str]] | None = None,
                               candidates: int = 16) -> TemplateMatches:
    """Name each probe with the person of its nearest template within ``max_distance``.

    The nearest template whose person is not in the probe's ``rejected`` set is the answer
    (searching the ``candidates`` nearest templates; exact search). Probes with
    ``quality < min_quality`` are answered None with the reason ``low_quality``.

    Args:
        queries: ``(M, D)`` unit embeddings.
        person_ids, templates, owner: from :func:`person_templates`.
        max_distance: squared L2 (``PeopleOptions.assign_distance``; identify's threshold).
        quality: ``(M,)`` quality of the probes (None: all good).
        rejected: per probe, person ids it must not be given (None: none).
    """
    q = fx.as_unit_rows(queries) if len(queries) else np.zeros((0, templates.shape[1] if
                                                               templates.ndim == 2 else 1), np.float32)
    if len(q) == 0 or len(templates) == 0:
        return _decide(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64),
                       person_ids, owner, max_distance, quality, min_quality, rejected,
                       no_templates=len(templates) == 0)
    k = int(min(len(templates), max(1, candidates)))
    scores, hits = pk.exact_top_k(q, templates, k)
    return _decide(fx.to_squared_l2(scores), hits, person_ids, owner, max_distance, quality,
                   min_quality, rejected)


def _decide(d: np.ndarray, hits: np.ndarray, person_ids: np.ndarray, owner: np.ndarray,
            max_distance: float, quality: np.ndarray | None, min_quality: float,
            rejected: list[frozenset[str]] | None, no_templates: bool = False) -> TemplateMatches:
    """The decision from each probe's candidate templates ``hits (M, C)`` (-1 pads) at squared
    L2 ``d (M, C)``, ascending along each row: the first allowed one, if within the distance."""
    m = len(d)
    person = np.full(m, None, object)
    distance = np.full(m, np.inf, np.float32)
    reason = np.full(m, "no_templates" if no_templates else "too_far", object)
    low = np.zeros(m, bool) if quality is None else np.asarray(quality, np.float32) < min_quality
    if m == 0 or d.shape[1] == 0:
        reason[low] = "low_quality"
        return TemplateMatches(person, distance, reason)
    d = np.where(hits < 0, np.inf, d)
    who = np.where(hits >= 0, owner[np.clip(hits, 0, None)], -1)
    allowed = hits >= 0
    if rejected is not None:
        for r, banned in enumerate(rejected):
            if banned:
                banned_codes = np.flatnonzero(np.isin(person_ids, list(banned)))
                allowed[r] &= ~np.isin(who[r], banned_codes)
    first = np.where(allowed.any(axis=1), np.argmax(allowed, axis=1), -1)
    has = first >= 0
    rows = np.flatnonzero(has)
    distance[rows] = d[rows, first[rows]]
    ok = has & (distance <= max_distance) & ~low
    person[ok] = person_ids[who[ok, first[ok]]]
    reason[ok] = "match"
    reason[low] = "low_quality"
    return TemplateMatches(person, distance, reason)


def match_through_neighbours(x: np.ndarray, rows: np.ndarray, neighbors: np.ndarray,
                             code: np.ndarray, person_ids: np.ndarray, templates: np.ndarray,
                             owner: np.ndarray, max_distance: float, *,
                             rejected: list[frozenset[str]] | None = None) -> TemplateMatches:
    """:func:`identify_against_templates` for collection faces, comparing each face only with
    the templates of the people its k nearest collection faces belong to.

    Exact matching costs faces x people (10k new faces against 173k people: 27.7 s on 2
    cores); this costs faces x k, so an incremental update stays in proportion to its new
    faces. A
    face whose nearest template's person owns none of its k nearest faces is missed (answered
    ``too_far``): ``bench_people.py scale`` measures how often against exact matching.

    Args:
        x: ``(N, D)`` the collection's unit rows; ``rows (M,)`` the faces to match.
        neighbors: ``(M, k)`` their nearest collection rows (-1 pads), e.g. from the kept
            k-NN index.
        code: ``(N,) int64`` person code per row (index into ``person_ids``; -1 none).
    """
    m, k = neighbors.shape
    cand = np.where(neighbors >= 0, code[np.clip(neighbors, 0, None)], -1)
    # templates of each candidate person (one with "mean", up to max_centroids otherwise)
    t_order = np.argsort(owner, kind="stable")
    t_start = np.searchsorted(owner[t_order], np.arange(len(person_ids) + 1))
    per = int(np.max(np.diff(t_start), initial=0))
    hits = np.full((m, k * max(per, 1)), -1, np.int64)
    for j in range(max(per, 1)):
        has = cand >= 0
        start = np.where(has, t_start[np.clip(cand, 0, None)], 0)
        count = np.where(has, t_start[np.clip(cand, 0, None) + 1] - start, 0)
        ok = has & (count > j)
        hits[:, j * k:(j + 1) * k] = np.where(ok, t_order[np.clip(start + j, 0, len(t_order) - 1)],
                                              -1)
    # the same person (template) from several neighbours: keep it once
    hits = np.sort(hits, axis=1)
    hits[:, 1:][hits[:, 1:] == hits[:, :-1]] = -1
    d = np.full(hits.shape, np.inf, np.float32)
    pr, pc = np.nonzero(hits >= 0)
    for s in range(0, len(pr), PAIR_BLOCK):
        r, c = pr[s:s + PAIR_BLOCK], pc[s:s + PAIR_BLOCK]
        d[r, c] = 2.0 - 2.0 * np.einsum("ij,ij->i", x[rows[r]], templates[hits[r, c]])
    order = np.argsort(d, axis=1, kind="stable")
    d, hits = np.take_along_axis(d, order, 1), np.take_along_axis(hits, order, 1)
    hits[~np.isfinite(d)] = -1
    return _decide(d, hits, person_ids, owner, max_distance, None, 0.0, rejected)


# =============================================================================================
# clustering
# =============================================================================================

def _local_graph(nb: np.ndarray, d: np.ndarray, nodes: np.ndarray, n_total: int) -> cl.KnnGraph:
    """A k-NN graph over ``nodes`` (rows of the collection) from their neighbours (rows):
    neighbours outside ``nodes`` are dropped, the rest renumbered 0..len(nodes)-1."""
    local = np.full(n_total, -1, np.int64)
    local[nodes] = np.arange(len(nodes))
    mapped = np.where(nb >= 0, local[np.clip(nb, 0, None)], -1)
    dist = np.where(mapped >= 0, d, np.inf).astype(np.float32)
    order = np.argsort(dist, axis=1, kind="stable")
    return cl.KnnGraph(np.take_along_axis(mapped, order, 1), np.take_along_axis(dist, order, 1))


def knn_graph(embeddings: np.ndarray, options: PeopleOptions, *,
              knn: pk.KnnIndex | None = None, rows: np.ndarray | None = None) -> cl.KnnGraph:
    """The k-NN graph among ``rows`` of ``embeddings`` (all rows when None), renumbered 0..M-1.

    With ``knn`` (an index over every row of ``embeddings``) its answers are used and the
    neighbours outside ``rows`` dropped; otherwise a temporary index over ``rows`` is built
    (exact or HNSW as ``options`` say). Queries go through :func:`people_knn.search_rows`
    (sharded over Ray when it runs and there are many).
    """
    n = len(embeddings)
    rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    k = options.neighbors
    t = time.perf_counter()
    if knn is not None:
        nb, d = pk.search_rows(knn, rows, k, use_ray=options.ray_for(len(rows)))
        graph = _local_graph(nb, d, rows, n)
    else:
        local = pk.KnnIndex.empty(embeddings.shape[1], options.use_approximate(len(rows)))
        for s in range(0, len(rows), fx.ADD_BATCH):
            local.add(embeddings[rows[s:s + fx.ADD_BATCH]])
        nb, d = pk.search_rows(local, None, k, use_ray=options.ray_for(len(rows)))
        graph = cl.KnnGraph(nb, d)
    logger.info("k-NN graph: %d faces x %d neighbours in %.1f s", len(rows), k,
                time.perf_counter() - t)
    return graph


def cluster_graph(graph: cl.KnnGraph, embeddings: np.ndarray, options: PeopleOptions,
                  cannot_link: np.ndarray | None = None,
                  weights: np.ndarray | None = None, rows: np.ndarray | None = None) -> np.ndarray:
    """Cluster labels ``(M,) int64`` (-1: in no group of ``>= min_faces``) of the graph's nodes.

    Stage 1: Chinese whispers on the edges within ``cluster_distance`` (tight groups, high
    precision). Stage 2 (``merge_distance``): :func:`merge_groups`, average linkage between the
    groups (and lone faces) the graph connects.

    Args:
        embeddings: ``(M, D)`` the nodes' unit rows, or with ``rows (M,)`` the collection's
            rows (node ``i`` is ``embeddings[rows[i]]``; nothing is copied out).
        cannot_link: ``(M,) int64`` group per node (-1: none); two nodes with different groups
            >= 0 are never put in one cluster (pinned faces of different people).
        weights: ``(M,)`` per node weight in the group means (quality; None: ones).
    """
    if len(graph) == 0:
        return np.zeros(0, np.int64)
    constrained = cannot_link is not None and np.any(cannot_link >= 0)
    if constrained:
        graph = _drop_cannot_links(graph, cannot_link)
    t = time.perf_counter()
    labels = cl.CLUSTERERS["chinese-whispers"](graph, options.cluster_distance, options.min_faces,
                                               options.seed)
    if constrained:
        labels = _split_conflicts(labels, cannot_link, embeddings, rows)
    if logger.isEnabledFor(logging.INFO):
        _, sizes = np.unique(labels[labels >= 0], return_counts=True)
        logger.info("clustering stage 1: %d groups of >= %d faces among %d faces in %.1f s",
                    int(np.count_nonzero(sizes >= options.min_faces)), options.min_faces,
                    len(graph), time.perf_counter() - t)
    if options.merge_distance is not None:
        t = time.perf_counter()
        labels = merge_groups(embeddings, labels, graph, options.merge_distance,
                              options.merge_candidates, weights=weights,
                              cannot_link=cannot_link if constrained else None, rows=rows)
        logger.info("clustering stage 2: %d groups (singletons included) in %.1f s",
                    int(labels.max(initial=-1)) + 1, time.perf_counter() - t)
    return cl.finalize_labels(labels, options.min_faces)


def _group_means(x: np.ndarray, labels: np.ndarray, w: np.ndarray, n_groups: int,
                 rows: np.ndarray | None = None) -> np.ndarray:
    """Weighted raw (not re-normalised) mean of each group: ``(G, D) float32``.

    ``labels (M,)`` and ``w (M,)`` belong to ``x[rows]`` (all of ``x`` when ``rows`` is None;
    the rows are not copied out of ``x``)."""
    from scipy.sparse import csr_matrix

    cols = np.arange(len(labels)) if rows is None else np.asarray(rows, np.int64)
    member = csr_matrix((np.asarray(w, np.float32), (np.asarray(labels, np.int64), cols)),
                        shape=(n_groups, len(x)))
    total = np.asarray(member.sum(axis=1)).reshape(-1)
    sums = np.asarray(member @ x, np.float32)
    return sums / np.maximum(total, 1e-12).astype(np.float32)[:, None]


def merge_groups(x: np.ndarray, labels: np.ndarray, graph: cl.KnnGraph, merge_distance: float,
                 candidates: float, *, weights: np.ndarray | None = None,
                 cannot_link: np.ndarray | None = None, rows: np.ndarray | None = None,
                 max_rounds: int = 200) -> np.ndarray:
    """Graph-constrained average-linkage agglomeration of groups.

    Every node with label -1 starts as a group of its own. Two groups are merge candidates when
    a k-NN edge no longer than ``candidates`` joins them; their linkage is the mean squared L2
    between their faces, ``2 - 2 m_a . m_b`` with ``m`` the weighted raw mean of a group's unit
    rows. Each round merges every pair of groups that are each other's nearest candidate and
    within ``merge_distance``; rounds repeat until nothing merges.

    ``x`` holds the nodes' rows, or with ``rows (M,)`` node ``i`` is ``x[rows[i]]``.

    Returns:
        ``(M,) int64`` labels 0..G-1 (every node in a group; singletons included).
    """
    n = len(labels)
    w = np.ones(n, np.float32) if weights is None else np.maximum(np.asarray(weights, np.float32), 1e-3)
    lab = np.asarray(labels, np.int64).copy()
    lone = lab < 0
    lab[lone] = lab.max(initial=-1) + 1 + np.arange(int(lone.sum()))
    _, lab = np.unique(lab, return_inverse=True)
    lab = lab.reshape(-1)
    k = graph.neighbors.shape[1]
    src = np.repeat(np.arange(n, dtype=np.int64), k)
    dst = graph.neighbors.reshape(-1)
    keep = (dst >= 0) & (graph.distances.reshape(-1) <= candidates)
    ei, ej = src[keep], dst[keep]
    del src, dst, keep
    group_of_link = None
    for _ in range(max_rounds):
        g = int(lab.max(initial=-1)) + 1
        a, b = lab[ei], lab[ej]
        cross = a != b
        if not cross.any():
            break
        a, b = np.minimum(a[cross], b[cross]), np.maximum(a[cross], b[cross])
        key = np.unique(a * g + b)
        a, b = key // g, key % g
        if cannot_link is not None:
            # a group's pinned group: -1 none, >= 0 one, -2 several (never happens after splits)
            group_of_link = np.full(g, -1, np.int64)
            pinned = cannot_link >= 0
            group_of_link[lab[pinned]] = cannot_link[pinned]
            ok = ~((group_of_link[a] >= 0) & (group_of_link[b] >= 0)
                   & (group_of_link[a] != group_of_link[b]))
            a, b = a[ok], b[ok]
        # means of the groups that have a candidate pair only
        involved = np.unique(np.concatenate([a, b]))
        compact = np.full(g, -1, np.int64)
        compact[involved] = np.arange(len(involved))
        member = np.flatnonzero(compact[lab] >= 0)
        m = _group_means(x, compact[lab[member]], w[member], len(involved),
                         rows=member if rows is None else rows[member])
        dist = np.empty(len(a), np.float32)
        for s in range(0, len(a), PAIR_BLOCK):
            ma, mb = m[compact[a[s:s + PAIR_BLOCK]]], m[compact[b[s:s + PAIR_BLOCK]]]
            dist[s:s + len(ma)] = 2.0 - 2.0 * np.einsum("ij,ij->i", ma, mb)
        ok = dist <= merge_distance
        a, b, dist = a[ok], b[ok], dist[ok]
        if len(a) == 0:
            break
        # each group's nearest candidate (ties: smaller id); merge mutual nearest pairs
        src, dst, dd = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([dist, dist])
        order = np.lexsort((dst, dd, src))
        first = order[np.r_[True, src[order][1:] != src[order][:-1]]]
        best = np.full(g, -1, np.int64)
        best[src[first]] = dst[first]
        ids = np.arange(g)
        mutual = (best >= 0) & (best[np.clip(best, 0, None)] == ids) & (ids < best)
        if not mutual.any():
            break
        new_id = ids.copy()
        new_id[best[mutual]] = ids[mutual]
        _, lab = np.unique(new_id[lab], return_inverse=True)
        lab = lab.reshape(-1)
    return lab


def cluster_faces(embeddings: np.ndarray, options: PeopleOptions,
                  cannot_link: np.ndarray | None = None) -> np.ndarray:
    """Cluster labels ``(N,) int64`` of ``(N, D)`` unit rows (k-NN graph + clustering)."""
    x = fx.as_unit_rows(embeddings) if len(embeddings) else np.asarray(embeddings, np.float32)
    return cluster_graph(knn_graph(x, options), x, options, cannot_link)


def _drop_cannot_links(graph: cl.KnnGraph, group: np.ndarray) -> cl.KnnGraph:
    nb = graph.neighbors
    g_self = group[:, None]
    g_nb = np.where(nb >= 0, group[np.clip(nb, 0, None)], -1)
    conflict = (g_self >= 0) & (g_nb >= 0) & (g_self != g_nb)
    return cl.KnnGraph(np.where(conflict, -1, nb), np.where(conflict, np.inf, graph.distances)
                       .astype(np.float32))


def _split_conflicts(labels: np.ndarray, group: np.ndarray, x: np.ndarray,
                     rows: np.ndarray | None = None) -> np.ndarray:
    """A cluster holding pinned faces of several people: each of its faces goes with the pinned
    group whose mean is nearest (the pinned faces with their own)."""
    labels = labels.copy()
    next_label = int(labels.max(initial=-1)) + 1
    row_of = np.arange(len(labels)) if rows is None else np.asarray(rows, np.int64)
    for c in np.unique(labels[group >= 0]):
        if c < 0:
            continue
        members = np.flatnonzero(labels == c)
        groups = np.unique(group[members][group[members] >= 0])
        if len(groups) < 2:
            continue
        vec = x[row_of[members]]
        means = _normalize(np.stack([vec[group[members] == g].mean(axis=0) for g in groups]))
        pick = np.argmax(vec @ means.T, axis=1)
        fixed = group[members] >= 0
        pick[fixed] = np.searchsorted(groups, group[members][fixed])
        for k in range(1, len(groups)):
            labels[members[pick == k]] = next_label
            next_label += 1
    return labels


# =============================================================================================
# update
# =============================================================================================

def _rejected_list(rows: np.ndarray, rejected: Mapping[int, frozenset[str]]) -> list[frozenset[str]] | None:
    if not rejected:
        return None
    return [frozenset(rejected.get(int(r), ())) for r in rows]


def update_assignments(
    embeddings: np.ndarray,
    quality: np.ndarray,
    person: np.ndarray,
    pinned: np.ndarray,
    rejected: Mapping[int, frozenset[str]],
    options: PeopleOptions,
    new_person_id: Callable[[], str],
    *, recluster: bool = False,
    new: np.ndarray | None = None,
    knn_index: pk.KnnIndex | None = None,
) -> np.ndarray:
    """The person of every face after ``people update`` (see the module doc).

    Args:
        embeddings: ``(N, D)`` float32 unit rows, every face of the collection.
        quality: ``(N,)`` float32 in [0, 1].
        person: ``(N,)`` object: the current person id or None.
        pinned: ``(N,)`` bool: the user put this face in ``person`` (never changed).
        rejected: face row -> person ids the face must never join.
        options: thresholds and clustering settings.
        new_person_id: called once per new person, returns its id.
        recluster: decide every face that is not pinned again (keeping ids, see module doc).
        new: ``(N,)`` bool, the faces added since the last update (None: every unassigned face).
            Only new faces are matched and queried; unassigned older faces take part in the
            clustering only as neighbours of new ones, so the work grows with the new faces.
        knn_index: a :class:`people_knn.KnnIndex` over the collection's rows that the caller
            keeps between runs; rows it lacks (``len(knn_index)..N-1``) are added to it here.
            None: a temporary index over the faces being clustered.

    Returns:
        ``(N,) object``: person id or None per face.
    """
    x, q, p, pin = _check_inputs(embeddings, quality, person, pinned)
    x = _unit_rows(x)
    n = len(x)
    for row in rejected:
        if not 0 <= int(row) < n:
            raise ConfigError(f"rejected names face row {row}, outside 0..{n - 1}")
    if new is not None:
        new = np.asarray(new, bool).reshape(-1)
        if len(new) != n:
            raise ConfigError(f"new has {len(new)} entries for {n} faces")
    if knn_index is not None:
        knn_index.extend_to(x)
    if recluster:
        return _recluster(x, q, p, pin, rejected, options, new_person_id, knn_index)
    return _incremental(x, q, p, rejected, options, new_person_id, new, knn_index)


def _incremental(x, q, p, rejected, options, new_person_id, new=None, knn=None) -> np.ndarray:
    out = p.copy()
    good = q >= options.min_quality
    unassigned_good = ~_has_person(p) & good
    fresh = unassigned_good if new is None else unassigned_good & new
    pending = np.flatnonzero(fresh)
    if len(pending) == 0:
        return out
    ids, templates, owner = person_templates(x, q, p, options)
    joined = np.zeros(len(pending), bool)
    known = None  # the pending faces' neighbours, when matching already asked the k-NN index
    if len(templates) and knn is not None and len(ids) > CANDIDATE_PEOPLE_ABOVE:
        t = time.perf_counter()
        nb, d = pk.search_rows(knn, pending, options.neighbors,
                               use_ray=options.ray_for(len(pending)))
        known = (nb, d)
        match = match_through_neighbours(x, pending, nb, person_codes(p)[1], ids, templates, owner,
                                         options.assign_distance,
                                         rejected=_rejected_list(pending, rejected))
        joined = match.person != None  # noqa: E711 - elementwise
        out[pending[joined]] = match.person[joined]
        logger.info("people update: %d new faces matched against the %d people of their "
                    "nearest faces in %.1f s", len(pending), len(ids), time.perf_counter() - t)
    elif len(templates):
        for s in range(0, len(pending), fx.ADD_BATCH):
            part = pending[s:s + fx.ADD_BATCH]
            match = identify_against_templates(x[part], ids, templates, owner,
                                               options.assign_distance,
                                               rejected=_rejected_list(part, rejected))
            hit = match.person != None  # noqa: E711 - elementwise
            out[part[hit]] = match.person[hit]
            joined[s:s + len(part)] = hit
    rest = pending[~joined]
    older = np.flatnonzero(unassigned_good & ~fresh)
    logger.info("people update: %d new faces, %d joined existing people, %d to cluster "
                "(%d older unassigned faces as neighbours)", len(pending), int(joined.sum()),
                len(rest), len(older))
    if len(rest) == 0:
        return out
    nodes, graph = _pool_graph(x, rest, older, options, knn,
                               known=None if known is None else (known[0][~joined],
                                                                 known[1][~joined]))
    labels = cluster_graph(graph, x, options, weights=q[nodes], rows=nodes)
    n_groups = int(labels.max(initial=-1)) + 1
    joins = _join_people(x, q, out, nodes, labels, n_groups, options)
    for c, positions in _groups(labels, n_groups):
        members = nodes[positions]
        if joins[c] is None:
            if options.can_seed(q[members]):
                out[members] = new_person_id()
            continue
        pid = joins[c]
        ok = np.array([pid not in rejected.get(int(r), ()) for r in members], bool)
        out[members[ok]] = pid
    return out


def _join_people(x: np.ndarray, q: np.ndarray, person: np.ndarray, nodes: np.ndarray,
                 labels: np.ndarray, n_groups: int, options: PeopleOptions) -> list[str | None]:
    """For each new group, the existing person it joins (or None): the person with the smallest
    average linkage to it (the second clustering stage, against the people's good faces),
    when within ``merge_distance``."""
    joins: list[str | None] = [None] * n_groups
    if n_groups == 0 or options.merge_distance is None:
        return joins
    ids, code = person_codes(person)
    good = (code >= 0) & (q >= options.min_quality)
    if not good.any():
        return joins
    w = np.maximum(q, 1e-3)
    good_rows = np.flatnonzero(good)
    people = _group_means(x, code[good_rows], w[good_rows], len(ids), rows=good_rows)
    inside = labels >= 0
    groups = _group_means(x, labels[inside], w[nodes[inside]], n_groups, rows=nodes[inside])
    ip, hit = pk.exact_top_k(groups, people, 1)
    linkage = 2.0 - 2.0 * ip[:, 0]
    for c in np.flatnonzero((hit[:, 0] >= 0) & (linkage <= options.merge_distance)):
        joins[int(c)] = str(ids[hit[c, 0]])
    return joins


def _pool_graph(x: np.ndarray, rest: np.ndarray, older: np.ndarray, options: PeopleOptions,
                knn: pk.KnnIndex | None, known: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, cl.KnnGraph]:
    """The graph to cluster new unmatched faces ``rest`` on: ``rest`` plus the older unassigned
    faces among their neighbours (queried too), as ``(node rows, graph over them)``.
    ``known``: the neighbours of ``rest`` in ``knn`` when they were already asked."""
    n = len(x)
    if known is None and len(older) == 0:
        return rest, knn_graph(x, options, knn=knn, rows=rest)
    k = options.neighbors
    if knn is None:
        # a temporary index over the unassigned good faces; its rows map back through `pool`
        pool = np.union1d(rest, older)
        knn = pk.KnnIndex.build(x[pool], options.use_approximate(len(pool)))

        def query(rows):
            nb, d = pk.search_rows(knn, np.searchsorted(pool, rows), k,
                                   use_ray=options.ray_for(len(rows)))
            return np.where(nb >= 0, pool[np.clip(nb, 0, None)], -1), d
    else:
        def query(rows):
            return pk.search_rows(knn, rows, k, use_ray=options.ray_for(len(rows)))

    nb, d = known if known is not None else query(rest)
    in_older = np.zeros(n, bool)
    in_older[older] = True
    touched = np.unique(nb[(nb >= 0) & in_older[np.clip(nb, 0, None)]])
    nodes = np.concatenate([rest, touched])
    if len(touched):
        nb2, d2 = query(touched)
        nb, d = np.concatenate([nb, nb2]), np.concatenate([d, d2])
    return nodes, _local_graph(nb, d, nodes, n)


#: Weight of a pinned face in the overlap that decides which old id a new cluster inherits.
PINNED_WEIGHT = 2.0


def _inherit_ids(cluster_of: np.ndarray, old_code: np.ndarray, pin: np.ndarray) -> dict[int, int]:
    """New cluster -> the old person code it inherits.

    Greedy on the overlap (faces of the cluster that were in the person, pinned faces counting
    :data:`PINNED_WEIGHT`), largest first: each cluster takes at most one id and each id goes to
    at most one cluster; ties go to the smaller cluster number, then the smaller person code.
    """
    both = (cluster_of >= 0) & (old_code >= 0)
    if not both.any():
        return {}
    pairs, inverse = np.unique(np.stack([cluster_of[both], old_code[both]], axis=1), axis=0,
                               return_inverse=True)
    weight = np.bincount(inverse.reshape(-1), weights=np.where(pin[both], PINNED_WEIGHT, 1.0))
    taken: dict[int, int] = {}
    used: set[int] = set()
    for k in np.lexsort((pairs[:, 1], pairs[:, 0], -weight)):
        c, code = int(pairs[k, 0]), int(pairs[k, 1])
        if c not in taken and code not in used:
            taken[c] = code
            used.add(code)
    return taken


def _recluster(x, q, p, pin, rejected, options, new_person_id, knn=None) -> np.ndarray:
    out = np.full(len(p), None, object)
    out[pin] = p[pin]
    good = np.flatnonzero(q >= options.min_quality)
    old_ids, old_code = person_codes(p)
    pin_code = np.where(pin, old_code, -1)
    graph = knn_graph(x, options, knn=knn, rows=good)
    labels = cluster_graph(graph, x, options, cannot_link=pin_code[good], weights=q[good],
                           rows=good)
    n_clusters = int(labels.max(initial=-1)) + 1
    cluster_of = np.full(len(p), -1, np.int64)
    cluster_of[good] = labels
    taken = _inherit_ids(cluster_of, old_code, pin)
    for c, members in _groups(cluster_of, n_clusters):
        if c not in taken and not options.can_seed(q[members]):
            continue
        pid = str(old_ids[taken[c]]) if c in taken else new_person_id()
        members = members[~pin[members]]
        for r in members:
            if pid in rejected.get(int(r), ()):
                continue
            out[r] = pid
    # good faces in no cluster may still be close enough to a person's template
    return _incremental(x, q, out, rejected, options, new_person_id, None, knn)
