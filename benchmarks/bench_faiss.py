"""FAISS index types on synthetic 512-d unit vectors: build time, queries/s, recall vs exact.

Data:
* ``clustered`` (default): identities are random unit centres, each gallery face is its
  identity's centre plus Gaussian noise, re-normalised (about 10 faces per identity), so that
  faces of one person lie ~0.8 apart in squared L2 and different people ~2.0 apart, as FaceNet
  embeddings do; queries are fresh faces of random gallery identities.
* ``lfw-like``: the same recipe with the statistics of real FaceNet embeddings: identity
  centres drawn from a Gaussian with the covariance of the per-person mean embeddings of LFW,
  faces = centre + noise with the covariance of the within-person residuals, re-normalised
  (fitted on ``benchmarks/out/lfw_embeddings.npz`` from lfw_cache.py). Real embeddings of this
  model span ~100 of the 512 dimensions (participation ratio ~52), which ANN indexes exploit;
  the isotropic ``clustered`` data has no such structure and is the harder case.
* ``uniform``: vectors uniform on the sphere (no structure: the worst case for ANN indexes).

For each gallery size the exact ``IndexFlatIP`` gives the ground truth (top 10 of each query);
each approximate type of ``platform/index/faiss_index.py`` is built with the registry's default
parameters for that size (or ``--param``), then searched with a sweep of its search-time knob
(efSearch / nprobe). recall@1: the approximate top hit is the exact top hit; recall@10: the share
of the exact top 10 found in the approximate top 10. Queries/s at batch 1 (one query per call,
a loop, one thread) and batch 256 (``--threads``), per wall second and per CPU second (on a
shared machine the wall figure depends on the others' load). Every index is wrapped in
``IndexIDMap2`` as the gallery uses it. ``--cache-dir`` keeps built indexes and ground truth so
that search can be re-measured without rebuilding.

    .venv/bin/python benchmarks/bench_faiss.py --data lfw-like --types hnsw ivf --queries 1000
    .venv/bin/python benchmarks/bench_faiss.py --data lfw-like --sizes 100000 --types ivfpq
    .venv/bin/python benchmarks/bench_faiss.py --sizes 10000 100000 1000000 --data clustered
    .venv/bin/python benchmarks/bench_faiss.py --sizes 100000 --data uniform
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from facenet_platform.index import faiss_index as fx

DIM = 512
SWEEPS = {"hnsw": ("efSearch", [16, 32, 64, 128, 256]),
          "ivf": ("nprobe", [4, 8, 16, 32, 64, 128]),
          "ivfpq": ("nprobe", [8, 16, 32, 64, 128])}


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def lfw_statistics(cache: Path):
    """``(mean, between (D, r), within (D, r))``: factors L with L @ L.T = the covariance of the
    per-person means / of the within-person residuals of the cached LFW embeddings."""
    with np.load(cache, allow_pickle=False) as z:
        emb = z["embeddings"].astype(np.float64)
        names = np.array([p.split("/")[0] for p in z["paths"]])
    _, inv, cnt = np.unique(names, return_inverse=True, return_counts=True)
    means = np.zeros((cnt.size, emb.shape[1]))
    np.add.at(means, inv, emb)
    means /= cnt[:, None]
    multi = cnt[inv] >= 2
    residuals = emb[multi] - means[inv[multi]]

    def factor(x):
        w, v = np.linalg.eigh(np.cov(x.T))
        keep = w > 1e-9 * w.max()
        return (v[:, keep] * np.sqrt(w[keep])).astype(np.float32)

    return means[cnt >= 2].mean(axis=0).astype(np.float32), factor(means[cnt >= 2]), factor(residuals)


def synthetic(n: int, n_queries: int, kind: str, noise: float, faces_per_id: int, seed: int,
              lfw_cache: Path | None = None):
    """``(gallery (n, D), queries (q, D))`` float32 unit rows, generated in chunks."""
    rng = np.random.default_rng(seed)
    xb = np.empty((n, DIM), np.float32)
    if kind == "lfw-like":
        mean, between, within = lfw_statistics(lfw_cache)
        n_ids = max(1, n // faces_per_id)
        centres = mean + rng.standard_normal((n_ids, between.shape[1]), np.float32) @ between.T

        def faces(ids):
            return unit(centres[ids] + rng.standard_normal((len(ids), within.shape[1]),
                                                           np.float32) @ within.T)

        for s in range(0, n, 65536):
            m = min(65536, n - s)
            xb[s:s + m] = faces(rng.integers(0, n_ids, m))
        return xb, faces(rng.integers(0, n_ids, n_queries))
    if kind == "uniform":
        for s in range(0, n, 65536):
            xb[s:s + 65536] = unit(rng.standard_normal((min(65536, n - s), DIM), np.float32))
        return xb, unit(rng.standard_normal((n_queries, DIM), np.float32))
    n_ids = max(1, n // faces_per_id)
    centres = unit(rng.standard_normal((n_ids, DIM), np.float32))
    sigma = noise / np.sqrt(DIM)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        ids = rng.integers(0, n_ids, m)
        xb[s:s + m] = unit(centres[ids] + sigma * rng.standard_normal((m, DIM), np.float32))
    qids = rng.integers(0, n_ids, n_queries)
    xq = unit(centres[qids] + sigma * rng.standard_normal((n_queries, DIM), np.float32))
    return xb, xq


def qps(index, xq: np.ndarray, batch: int, k: int, budget_s: float) -> tuple[float, float]:
    """``(queries per wall second, queries per CPU second of this process)`` searching ``xq`` in
    batches of ``batch`` (stops after ``budget_s`` of wall time). On a shared machine the wall
    figure depends on the other load; the CPU figure is the work per query (all threads).
    Batch 1 runs on one thread (a server answers single queries side by side; OpenMP threads
    spinning on one query only burn CPU), batch 256 on ``--threads``."""
    import faiss

    threads = faiss.omp_get_max_threads()
    if batch == 1:
        faiss.omp_set_num_threads(1)
    try:
        return _qps(index, xq, batch, k, budget_s)
    finally:
        faiss.omp_set_num_threads(threads)


def _qps(index, xq: np.ndarray, batch: int, k: int, budget_s: float) -> tuple[float, float]:
    index.search(xq[:min(batch, 16)], k)  # warm-up
    done, t0, c0 = 0, time.perf_counter(), time.process_time()
    while done < len(xq):
        index.search(xq[done:done + batch], k)
        done += batch
        if time.perf_counter() - t0 > budget_s:
            break
    done = min(done, len(xq))
    return done / (time.perf_counter() - t0), done / max(time.process_time() - c0, 1e-9)


def recall(ann_ids: np.ndarray, gt_ids: np.ndarray, k: int) -> float:
    if k == 1:
        return float(np.mean(ann_ids[:, 0] == gt_ids[:, 0]))
    hits = [len(set(a[:k]) & set(g[:k])) for a, g in zip(ann_ids, gt_ids)]
    return float(np.mean(hits)) / k


def bench_size(n: int, args) -> list[dict]:
    rows: list[dict] = []
    t = time.perf_counter()
    xb, xq = synthetic(n, args.queries, args.data, args.noise, args.faces_per_id, args.seed,
                       args.lfw_cache)
    ids = np.arange(n, dtype=np.int64)
    print(f"# n={n}: data {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)

    t, c = time.perf_counter(), time.process_time()
    exact, _ = fx.build_faiss_index("flat", xb, ids)
    build, build_cpu = time.perf_counter() - t, time.process_time() - c
    tag = f"{args.data}-{n}-{args.queries}-{args.seed}"
    gt_file = args.cache_dir / f"gt-{tag}.npy" if args.cache_dir else None
    t = time.perf_counter()
    if gt_file is not None and gt_file.is_file():
        gt_ids = np.load(gt_file)
    else:
        _, gt_ids = exact.search(xq, 10)
        if gt_file is not None:
            gt_file.parent.mkdir(parents=True, exist_ok=True)
            np.save(gt_file, gt_ids)
    print(f"# exact: build {build:.1f} s, ground truth {time.perf_counter() - t:.1f} s; nearest "
          f"distance median {np.median(np.sum((xq - xb[gt_ids[:, 0]]) ** 2, axis=1)):.3f}",
          file=sys.stderr, flush=True)
    exact_q1 = qps(exact, xq, 1, 10, args.budget)
    exact_q256 = qps(exact, xq, 256, 10, args.budget * 2)
    rows.append(row(n, args.data, "flat", {}, build, build_cpu, exact_q1, exact_q256, 1.0, 1.0,
                    exact_q1, exact_q256))
    print_row(rows[-1])
    del exact
    gc.collect()

    for type_name in args.types:
        kind = fx.get_index_type(type_name)
        params = kind.params(n, dict(p.split("=", 1) for p in args.param.get(type_name, [])))
        build_key = "-".join(f"{k}{v}" for k, v in params.items() if k not in kind.search_params)
        index_file = (args.cache_dir / f"{type_name}-{tag}-{build_key}.index"
                      if args.cache_dir else None)
        t, c = time.perf_counter(), time.process_time()
        if index_file is not None and index_file.is_file():
            import faiss

            index = faiss.read_index(str(index_file))
            build, build_cpu = json.loads(index_file.with_suffix(".json").read_text())
            print(f"# {type_name}: loaded {index_file}", file=sys.stderr, flush=True)
        else:
            try:
                index, params = fx.build_faiss_index(type_name, xb, ids, params,
                                               train_size=args.train_size)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other types
                print(f"# {type_name} at {n}: {exc}", file=sys.stderr)
                continue
            build, build_cpu = time.perf_counter() - t, time.process_time() - c
            if index_file is not None:
                fx.write_index_file(index, str(index_file))
                index_file.with_suffix(".json").write_text(json.dumps([build, build_cpu]))
        print(f"# {type_name}: build {build:.1f} s ({build_cpu:.0f} CPU s) {params}",
              file=sys.stderr, flush=True)
        knob, values = SWEEPS[type_name]
        for value in values:
            if type_name.startswith("ivf") and value > params["nlist"]:
                continue
            search_params = {**params, knob: value}
            fx.configure_search(index, type_name, search_params)
            _, ann_ids = index.search(xq, 10)
            q1 = qps(index, xq, 1, 10, args.budget)
            q256 = qps(index, xq, 256, 10, args.budget)
            rows.append(row(n, args.data, type_name, search_params, build, build_cpu, q1, q256,
                            recall(ann_ids, gt_ids, 1), recall(ann_ids, gt_ids, 10),
                            exact_q1, exact_q256))
            print_row(rows[-1])
        del index
        gc.collect()
    return rows


def row(n, data, type_name, params, build, build_cpu, q1, q256, r1, r10, exact_q1, exact_q256):
    return {"n": n, "data": data, "type": type_name, "params": params, "build_s": build,
            "build_cpu_s": build_cpu, "qps_b1": q1[0], "qps_b256": q256[0],
            "cpu_qps_b1": q1[1], "cpu_qps_b256": q256[1], "recall@1": r1, "recall@10": r10,
            "speedup_b1": q1[0] / exact_q1[0], "speedup_b256": q256[0] / exact_q256[0],
            "cpu_speedup_b1": q1[1] / exact_q1[1], "cpu_speedup_b256": q256[1] / exact_q256[1]}


HEADER = ("| n | data | index | params | build s (CPU s) | q/s b=1 | q/s b=256 | q/CPU-s b=1 "
          "| q/CPU-s b=256 | recall@1 | recall@10 | x exact b=1 (CPU) | x exact b=256 (CPU) |")


def print_row(r: dict) -> None:
    params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
    print(f"| {r['n']:,} | {r['data']} | {r['type']} | {params} | {r['build_s']:.1f} "
          f"({r['build_cpu_s']:.0f}) | {r['qps_b1']:,.0f} | {r['qps_b256']:,.0f} | "
          f"{r['cpu_qps_b1']:,.0f} | {r['cpu_qps_b256']:,.0f} | {r['recall@1']:.3f} | "
          f"{r['recall@10']:.3f} | {r['speedup_b1']:.1f} ({r['cpu_speedup_b1']:.1f}) | "
          f"{r['speedup_b256']:.1f} ({r['cpu_speedup_b256']:.1f}) |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--types", nargs="+", default=["hnsw", "ivf", "ivfpq"],
                    choices=[t for t in fx.INDEX_TYPES if t != "flat"])
    ap.add_argument("--data", choices=["clustered", "lfw-like", "uniform"], default="clustered")
    ap.add_argument("--lfw-cache", type=Path,
                    default=Path(__file__).resolve().parent / "out" / "lfw_embeddings.npz",
                    help="lfw-like: the cached LFW embeddings the statistics come from")
    ap.add_argument("--queries", type=int, default=1000, help="queries (ground truth: exact top 10)")
    ap.add_argument("--noise", type=float, default=0.8,
                    help="clustered: noise norm relative to the unit centre")
    ap.add_argument("--faces-per-id", type=int, default=10)
    ap.add_argument("--train-size", type=int, default=200_000, help="IVF/PQ training sample")
    ap.add_argument("--param", action="append", default=[], metavar="TYPE:KEY=VALUE",
                    help="override a build parameter, e.g. hnsw:M=16 (repeatable)")
    ap.add_argument("--budget", type=float, default=5.0, help="seconds per queries/s measurement")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="append the rows to this JSON file")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="keep built indexes and ground truth here and reuse them (re-measure "
                         "search without rebuilding)")
    args = ap.parse_args()
    overrides: dict[str, list[str]] = {}
    for item in args.param:
        type_name, kv = item.split(":", 1)
        overrides.setdefault(type_name, []).append(kv)
    args.param = overrides

    import faiss

    faiss.omp_set_num_threads(args.threads)
    print(f"command: {' '.join(sys.argv)}")
    print(f"faiss {faiss.__version__}, {args.threads} threads, dim {DIM}, {args.queries} queries, "
          f"data {args.data}" + (f" (noise {args.noise}, {args.faces_per_id} faces/identity)"
                                  if args.data == "clustered" else
                                  f" ({args.faces_per_id} faces/identity, statistics of "
                                  f"{args.lfw_cache.name})" if args.data == "lfw-like" else ""))
    print()
    print(HEADER)
    print("|---" * (HEADER.count("|") - 1) + "|")
    all_rows = []
    for n in args.sizes:
        load = os.getloadavg()[0]
        all_rows.extend(bench_size(n, args))
        print(f"<!-- n={n}: load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at "
              f"the end ({os.cpu_count()} CPUs, shared machine) -->", flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            old = json.loads(args.json.read_text()) if args.json.is_file() else []
            args.json.write_text(json.dumps(old + [r for r in all_rows if r["n"] == n], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
