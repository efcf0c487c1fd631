"""End-to-end ``index build`` throughput on LFW vs a plain single-process loop, by pool size.

For the same LFW files (an evenly spaced sample of ``--limit`` of them), in one run:

* **loop**: one process, ``FacePipeline`` (the foundation API) over batches of 16 images,
  ``read_image`` for each file; TensorFlow and onnxruntime use their default thread pools (all
  cores). Model loading is timed apart.
* **index build DxE**: ``build_index`` into a fresh index directory with D detection and E
  embedding actors (everything else from the resource plan), on one local Ray started once
  (its start-up is timed apart; a build's time includes listing, hashing, actor start-up and
  the commits).

Prints a markdown table (and writes JSON with ``--json``)::

    .venv/bin/python benchmarks/bench_index_build.py --limit 400 --actors 1 2 1x2
    .venv/bin/python benchmarks/bench_index_build.py            # all 13,233 images

``--actors`` takes ``N`` (N detection and N embedding actors) or ``DxE``. ``--backend`` picks the
embedding backend of both sides (default: the platform's). "cores busy" is the machine's
average number of busy CPUs during a run (``/proc/stat``, all processes): how much of the
two cores each side actually uses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _pools(text: str) -> tuple[int, int]:
    if "x" in text:
        d, e = text.lower().split("x", 1)
        return int(d), int(e)
    return int(text), int(text)


def sample_lfw(lfw_dir: Path, limit: int | None) -> list[Path]:
    root = lfw_dir / "lfw-deepfunneled"
    if not root.is_dir():
        sys.exit(f"bench_index_build: {root} not found (pass --lfw-dir)")
    paths = sorted(root.glob("*/*.jpg"))
    if limit and limit < len(paths):
        step = len(paths) / limit
        paths = [paths[int(i * step)] for i in range(limit)]
    return paths


def _busy() -> float:
    """Seconds all CPUs of the machine have spent busy so far (Linux ``/proc/stat``; NaN
    elsewhere)."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(v) for v in fh.readline().split()[1:]]
    except OSError:
        return float("nan")
    # user nice system idle iowait irq softirq steal ...; in clock ticks
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_loop(paths: list[Path], batch_size: int, backend: str | None) -> dict:
    from facenet_platform.core.embedding import FaceEmbedder
    from facenet_platform.core.images import read_image
    from facenet_platform.core.pipeline import FacePipeline

    t = time.perf_counter()
    pipeline = FacePipeline(embedder=FaceEmbedder(**({"backend": backend} if backend else {})))
    pipeline([read_image(paths[0])])  # trace/compile once, as the actors do at their first batch
    load_s = time.perf_counter() - t
    faces = no_face = 0
    t, busy = time.perf_counter(), _busy()
    for start in range(0, len(paths), batch_size):
        images = [read_image(p) for p in paths[start:start + batch_size]]
        for found in pipeline(images):
            faces += len(found)
            no_face += not found
    seconds = time.perf_counter() - t
    return {"config": f"loop (FacePipeline, batch {batch_size})", "seconds": seconds,
            "cores_busy": (_busy() - busy) / seconds,
            "load_seconds": load_s, "images": len(paths), "faces": faces, "no_face": no_face,
            "failures": 0, "images_per_second": len(paths) / seconds}


def run_build(list_file: Path, detect: int, embed: int, workdir: Path,
              backend: str | None) -> dict:
    from facenet_platform.index.build import BuildOptions, build_index

    index = workdir / f"index-{detect}x{embed}"
    shutil.rmtree(index, ignore_errors=True)
    options = BuildOptions(detect_actors=detect, embed_actors=embed, progress=False,
                           backend=backend)
    t, busy = time.perf_counter(), _busy()
    summary = build_index([f"@{list_file}"], index, options=options)
    seconds = time.perf_counter() - t
    plan = summary.plan or {}
    shutil.rmtree(index, ignore_errors=True)
    return {"config": f"index build {detect}x{embed}", "seconds": seconds,
            "pipeline_seconds": summary.pipeline_seconds,
            "first_result_seconds": summary.first_result_seconds,
            "first_result_files": summary.first_result_files, "images": summary.files_new,
            "faces": summary.faces, "no_face": summary.files_no_face,
            "failures": summary.failures, "images_per_second": summary.files_new / seconds,
            "cores_busy": (_busy() - busy) / seconds,
            "detect_cpus": plan.get("detect_cpus"), "embed_cpus": plan.get("embed_cpus"),
            "embed_batch_size": plan.get("embed_batch_size")}


def print_table(results: list[dict], n_images: int, cpus: int | None, ray_start: float) -> None:
    """The markdown table: end-to-end times (the loop's model load and a build's actor start-up
    both included), so the two are compared like for like."""
    loop = next((r for r in results if "load_seconds" in r), None)
    base = n_images / (loop["seconds"] + loop["load_seconds"]) if loop else None
    print()
    print(f"LFW images: {n_images}; CPUs: {cpus}; Ray start-up {ray_start:.1f} s (once, not "
          "counted)")
    print()
    print("| run | wall s | images/s | vs loop | first result s | faces | no face | failures | "
          "cores busy | CPU per detect/embed actor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        if "load_seconds" in r:
            wall = r["seconds"] + r["load_seconds"]
            first, cpus = f"{r['load_seconds']:.1f} (model load)", "-"
        else:
            wall = r["seconds"]
            first = f"{r.get('first_result_seconds', float('nan')):.1f}"
            cpus = f"{r['detect_cpus']}/{r['embed_cpus']}"
        rate = r["images"] / wall
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"| {r['config']} | {wall:.1f} | {rate:.2f} | {ratio} | {first} | {r['faces']} | "
              f"{r['no_face']} | {r['failures']} | {r.get('cores_busy', float('nan')):.2f} | {cpus} |")
    if loop:
        print(f"| (loop without its model load) | {loop['seconds']:.1f} | "
              f"{loop['images_per_second']:.2f} | | | | | | | |")
    print()
    print("wall s: the loop with its model load; a build from its call to its summary: listing, "
          "hashing, actor start-up (model load), pipeline, commits. first result s: when the "
          "first faces reached the driver (the embedding actor's start-up dominates it; "
          "detection runs meanwhile).")


def main() -> int:
    from facenet_platform.core.lfw import default_lfw_dir

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--limit", type=int, default=None,
                    help="images, evenly spaced over LFW (default: all 13,233)")
    ap.add_argument("--actors", nargs="+", default=["1", "2"],
                    help="pool sizes: N (N detect + N embed actors) or DxE")
    ap.add_argument("--batch-size", type=int, default=16, help="batch of the plain loop")
    ap.add_argument("--backend", default=None, help="embedding backend of both sides "
                    "(default: the platform's)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    ap.add_argument("--skip-loop", action="store_true", help="no single-process baseline")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--table-from", type=Path, default=None,
                    help="only print the table of an earlier --json file")
    args = ap.parse_args()
    if args.table_from:
        saved = json.loads(args.table_from.read_text())
        print_table(saved["results"], saved["images"], saved["cpus"], saved["ray_start_seconds"])
        return 0

    paths = sample_lfw(args.lfw_dir, args.limit)
    workdir = Path(tempfile.mkdtemp(prefix="bench-index-build-"))
    list_file = workdir / "files.txt"
    list_file.write_text("".join(f"{p}\n" for p in paths))
    print(f"{len(paths)} LFW images from {args.lfw_dir}; {os.cpu_count()} CPUs", flush=True)

    results = []
    if not args.skip_loop:
        results.append(run_loop(paths, args.batch_size, args.backend))
        print(f"loop: {results[-1]['images_per_second']:.2f} images/s", flush=True)

    import ray

    t = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    ray_start = time.perf_counter() - t
    try:
        for spec in args.actors:
            detect, embed = _pools(spec)
            results.append(run_build(list_file, detect, embed, workdir, args.backend))
            print(f"{results[-1]['config']}: {results[-1]['images_per_second']:.2f} images/s",
                  flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    print_table(results, len(paths), os.cpu_count(), ray_start)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"images": len(paths), "cpus": os.cpu_count(),
                                         "ray_start_seconds": ray_start, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
