"""Index build on one node vs two nodes of a local Ray cluster (cluster/local_cluster.py).

Both clusters have the same logical CPUs in total (default 2) on the same machine: "one node" is
a head with all of them, "two nodes" a head and a worker node with half each. The build is the
real CLI submitted as a Ray job (``facenet-platform index build @list --out ... --json``) with
the default resource plan (on 2 CPUs: one detection and one embedding actor of 0.75 CPU, decode
tasks of 0.25): on two 1-CPU nodes the two actors cannot share a node, so every face crop crosses
between the nodes' object stores. Same cores, so no speedup is expected: the figure is the cost
of the second node (object transfer, a second raylet, scheduling).

Reported per cluster: images/s over the pipeline (``pipeline_seconds`` of the build summary:
Ray Data from the first read to the last commit, actor start-up included), the whole job's wall
time (submission to SUCCEEDED: driver start, listing, Ray Data start-up, commits), and the nodes
the actors ran on. Images: the first N of LFW (sorted by person), else variants of the
scikit-image astronaut.

``--repeats R`` runs R rounds, each round one build on a fresh one-node cluster then one on a
fresh two-node cluster (interleaved, so load changes on a shared machine hit both alike; every
build goes into a new index). Printed: every run, then per cluster the median and the spread
(min-max) of images/s and job wall time, and the per-round ratio two nodes / one node.

    FACENET_PLATFORM_CACHE=/tmp/fpcache .venv/bin/python benchmarks/bench_cluster_nodes.py --images 32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "cluster"))

from facenet_platform.core.lfw import default_lfw_dir  # noqa: E402
from local_cluster import LocalCluster, last_json, sample_images  # noqa: E402

CLI = str(Path(sys.executable).parent / "facenet-platform")


def run(cluster: LocalCluster, listing: Path, out: Path, extra: list[str]) -> dict:
    entry = f"{CLI} index build @{listing} --out {out} --no-progress --json {' '.join(extra)}"
    sid, logs, wall = cluster.run_job(entry)
    summary = last_json(logs, "files_new")
    roles = {n.node_id: role for role, n in cluster.nodes.items()}
    placed = sorted(f"{'detect' if 'DetectAlign' in a.class_name else 'embed'}@"
                    f"{roles.get(a.node_id, '?')}"
                    for a in cluster.job_actors(sid, ("DetectAlign", "Embed")))
    return {"summary": summary, "job_wall_s": wall, "actors": placed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=2, help="logical CPUs of each cluster in total")
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--repeats", type=int, default=1,
                    help="interleaved rounds (one-node build, then two-node build, per round)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.cpus < 2:
        ap.error("--cpus must be >= 2 (two nodes get half each)")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    env = {k: v for k, v in os.environ.items() if k.startswith("FACENET_")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_cluster_") as tmp:
        tmp = Path(tmp)
        files, what = sample_images(args.images, tmp / "photos", args.lfw_dir)
        listing = tmp / "list.txt"
        listing.write_text("\n".join(files) + "\n")
        half = args.cpus // 2
        for round_ in range(1, args.repeats + 1):
            for name, head, worker in (("1 node", args.cpus, 0),
                                       ("2 nodes", args.cpus - half, half)):
                c = LocalCluster(head_cpus=head, worker_cpus=worker, env=env)
                t = time.perf_counter()
                with c:
                    start_s = time.perf_counter() - t
                    r = run(c, listing, tmp / f"index_{round_}_{worker}", [])
                s = r["summary"]
                rows.append({"round": round_, "cluster": name,
                             "cpus": f"{head}" + (f" + {worker}" if worker else ""),
                             "images": s["files_new"], "faces": s["faces"],
                             "pipeline_s": s["pipeline_seconds"],
                             "images_per_s": s["files_new"] / s["pipeline_seconds"],
                             "build_s": s["seconds"], "job_wall_s": r["job_wall_s"],
                             "cluster_start_s": start_s, "actors": r["actors"]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    print(f"command: {' '.join(sys.argv)}")
    print(f"images: {what}; default resource plan; same machine ({os.cpu_count()} cores) for "
          f"both; {args.repeats} interleaved round(s)")
    print()
    print("| round | cluster | logical CPUs | images | faces | pipeline s | images/s | build s "
          "| job wall s | actors (role@node) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['round']} | {r['cluster']} | {r['cpus']} | {r['images']} | {r['faces']} | "
              f"{r['pipeline_s']:.1f} | {r['images_per_s']:.2f} | {r['build_s']:.1f} | "
              f"{r['job_wall_s']:.1f} | {', '.join(r['actors'])} |")
    print()
    print("| cluster | runs | images/s median | images/s min-max | job wall s median "
          "| job wall s min-max |")
    print("|---|---|---|---|---|---|")
    for name in ("1 node", "2 nodes"):
        mine = [r for r in rows if r["cluster"] == name]
        ips = [r["images_per_s"] for r in mine]
        wall = [r["job_wall_s"] for r in mine]
        print(f"| {name} | {len(mine)} | {statistics.median(ips):.2f} | "
              f"{min(ips):.2f}-{max(ips):.2f} | {statistics.median(wall):.1f} | "
              f"{min(wall):.1f}-{max(wall):.1f} |")
    ratios = [two["images_per_s"] / one["images_per_s"]
              for one, two in zip(rows[0::2], rows[1::2])]
    print(f"\nimages/s two nodes / one node, per round: "
          f"{', '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
