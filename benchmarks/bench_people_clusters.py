"""People clustering on LFW: pairwise P/R/F1 and BCubed against the labels, and the time.

Two sets: the faces of people with at least two images (9,164 in full LFW), and all 13,233 faces
(4,069 people then have a single image: ideally each stays unassigned or alone). Every clusterer
of ``platform/index/people_clusters.py`` runs over the same FAISS k-NN graph at several ``max_distance``
values with ``min_faces=2``; unassigned faces count as singletons in the metrics. The time of a
run is the k-NN graph plus the clustering (the graph is built once per set and reused; its time
is listed separately and included in "total s").

Embeddings come from ``benchmarks/lfw_cache.py`` (cached in benchmarks/out/lfw_embeddings.npz).

    .venv/bin/python benchmarks/bench_people_clusters.py
    .venv/bin/python benchmarks/bench_people_clusters.py --limit-people 800 --distances 0.9
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lfw_cache import DEFAULT_CACHE, lfw_embeddings, select_people  # noqa: E402

from facenet_platform.core.lfw import default_lfw_dir  # noqa: E402
from facenet_platform.index import people_clusters as cl  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--limit-people", type=int, default=None)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--cached-only", action="store_true",
                    help="only the people whose images are all in the cache already")
    ap.add_argument("--algorithms", nargs="+", default=sorted(cl.CLUSTERERS), choices=sorted(cl.CLUSTERERS))
    ap.add_argument("--distances", type=float, nargs="+", default=[0.7, 0.8, 0.9, 1.0, 1.1])
    ap.add_argument("--min-faces", type=int, default=2)
    ap.add_argument("--neighbors", type=int, default=cl.DEFAULT_NEIGHBORS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    people = select_people(args.lfw_dir, args.limit_people,
                           cached_only=args.cache if args.cached_only else None)
    data = lfw_embeddings(args.lfw_dir, people, args.cache)
    counts = {n: len(p) for n, p in people.items()}
    multi = np.array([counts[n] >= 2 for n in data.names])
    sets = {">=2 images": np.flatnonzero(multi), "all faces": np.arange(len(data.names))}

    print(f"command: {' '.join(sys.argv)}")
    run = "full LFW" if not (args.limit_people or args.cached_only) else (
        (f"--cached-only ({len(people)} people, {min(people)} .. {max(people)}) " if args.cached_only else "")
        + (f"--limit-people {args.limit_people}" if args.limit_people else ""))
    print(f"run: {run}; "
          f"min_faces={args.min_faces}, k={args.neighbors}; unassigned faces count as singletons")
    print()
    header = ("| faces | algorithm | max dist | clusters | unassigned | pairwise P | pairwise R "
              "| pairwise F1 | BCubed P | BCubed R | BCubed F | cluster s | total s |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    rows = []
    for set_name, idx in sets.items():
        x = data.embeddings[idx]
        y = data.names[idx]
        t = time.perf_counter()
        graph = cl.knn_graph(x, args.neighbors)
        graph_s = time.perf_counter() - t
        for algorithm in args.algorithms:
            for dist in args.distances:
                t = time.perf_counter()
                labels = cl.cluster_embeddings(x, max_distance=dist, min_faces=args.min_faces,
                                               algorithm=algorithm, neighbors=args.neighbors,
                                               graph=graph)
                cluster_s = time.perf_counter() - t
                pw = cl.pairwise_scores(y, labels)
                bc = cl.bcubed_scores(y, labels)
                row = {"set": set_name, "faces": len(idx), "algorithm": algorithm,
                       "max_distance": dist, "clusters": int(labels.max() + 1),
                       "unassigned": int((labels < 0).sum()), "pairwise": pw, "bcubed": bc,
                       "graph_s": graph_s, "cluster_s": cluster_s, "total_s": graph_s + cluster_s}
                rows.append(row)
                print(f"| {set_name} ({len(idx):,}) | {algorithm} | {dist:g} | {row['clusters']:,} | "
                      f"{row['unassigned']:,} | {pw['precision']:.3f} | {pw['recall']:.3f} | "
                      f"{pw['f1']:.3f} | {bc['precision']:.3f} | {bc['recall']:.3f} | {bc['f']:.3f} | "
                      f"{cluster_s:.2f} | {row['total_s']:.2f} |", flush=True)
        n_people = len(set(y))
        print(f"<!-- {set_name}: {len(idx)} faces of {n_people} people; k-NN graph {graph_s:.2f} s -->")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
