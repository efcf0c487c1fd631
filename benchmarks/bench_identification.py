"""Identification on LFW with the gallery: closed-set rank-1 and open-set rejection of strangers.

Protocol: for every person with at least two images, the first image (``_0001``) is enrolled in
a :class:`~facenet_platform.index.gallery.Gallery` (one face per identity, 1,680 people in full
LFW) and every other image of that person is a probe. People with exactly one image are never
enrolled; their image is a stranger probe that should come out ``unknown``.

* rank-1 / rank-5: the right person is the nearest identity / among the 5 nearest (closed set).
* identified at threshold (DIR): the nearest identity is the right one *and* within the threshold.
* rejection of strangers: the stranger's nearest identity is farther than the threshold.

Both stored thresholds are reported: the identification threshold ``identify`` uses by default
(``PRETRAINED.identify_threshold``, calibrated on LFW View 1 by
``calibrate_identify_threshold.py``, so these full-LFW figures are a report, not a fit) and the
1:1 verification threshold (``PRETRAINED.threshold``); ``--threshold`` adds another row.

Embeddings come from ``benchmarks/lfw_cache.py`` (central face of each image, centre crop when
MTCNN finds none; computed once, cached in benchmarks/out/lfw_embeddings.npz).

    .venv/bin/python benchmarks/bench_identification.py --limit-people 600   # quick
    .venv/bin/python benchmarks/bench_identification.py                       # all of LFW
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lfw_cache import DEFAULT_CACHE, lfw_embeddings, select_people  # noqa: E402

from facenet_platform.core.lfw import default_lfw_dir  # noqa: E402
from facenet_platform.core.weights import PRETRAINED  # noqa: E402
from facenet_platform.index.gallery import Gallery  # noqa: E402
from facenet_platform.index.identify import decide  # noqa: E402


def describe_run(args, people) -> str:
    parts = []
    if args.cached_only:
        parts.append(f"--cached-only ({len(people)} people, {min(people)} .. {max(people)})")
    if args.limit_people:
        parts.append(f"--limit-people {args.limit_people}")
    return " ".join(parts) or "full LFW"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--limit-people", type=int, default=None,
                    help="a random subset of people (same seed, same subset)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--cached-only", action="store_true",
                    help="only the people whose images are all in the cache already")
    ap.add_argument("--threshold", type=float, default=None,
                    help="a further threshold for the main table (the identification and the "
                         "verification thresholds are always reported)")
    ap.add_argument("--sweep", type=float, nargs="*", default=[0.8, 0.9, 1.0, 1.1, 1.2, 1.3])
    ap.add_argument("--index-type", default="auto")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    t0 = time.perf_counter()
    people = select_people(args.lfw_dir, args.limit_people,
                           cached_only=args.cache if args.cached_only else None)
    data = lfw_embeddings(args.lfw_dir, people, args.cache)
    embed_s = time.perf_counter() - t0
    names, paths = data.names, data.paths
    counts = {n: len(p) for n, p in people.items()}
    multi = np.array([counts[n] >= 2 for n in names])
    first = np.array([Path(p).stem.endswith("_0001") for p in paths])
    enrol = multi & first
    probes = multi & ~first
    strangers = ~multi

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        gallery = Gallery.create(Path(tmp) / "idx", index_type=args.index_type)
        for i in np.flatnonzero(enrol):
            gallery.add(str(names[i]), data.embeddings[i][None], [str(paths[i])])
        gallery.save()
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        probe_matches = gallery.search(data.embeddings[probes], top_k=5)
        stranger_matches = gallery.search(data.embeddings[strangers], top_k=1)
        search_s = time.perf_counter() - t
        index_type = gallery.index_type

    truth = names[probes]
    top1 = np.array([m[0].name for m in probe_matches])
    d1 = np.array([m[0].distance for m in probe_matches])
    rank1 = float(np.mean(top1 == truth))
    rank5 = float(np.mean([t in {x.name for x in m} for t, m in zip(truth, probe_matches)]))
    s1 = np.array([m[0].distance for m in stranger_matches])

    def at(threshold: float) -> dict:
        decisions = np.array([decide(m, threshold) for m in probe_matches])
        return {
            "threshold": threshold,
            "dir": float(np.mean(decisions == truth)),
            "probe_rejected": float(np.mean(d1 > threshold)),
            "probe_wrong_accepted": float(np.mean((decisions != truth) & (decisions != "unknown"))),
            "stranger_rejected": float(np.mean(s1 > threshold)) if len(s1) else float("nan"),
        }

    main_rows = [{**at(PRETRAINED.identify_threshold), "label": "identification threshold"},
                 {**at(PRETRAINED.threshold), "label": "verification threshold"}]
    if args.threshold is not None:
        main_rows.append({**at(args.threshold), "label": "--threshold"})
    main_row = main_rows[0]
    result = {
        "run": describe_run(args, people),
        "people": len(people), "images": len(names),
        "enrolled_people": int(enrol.sum()), "probes": int(probes.sum()),
        "strangers": int(strangers.sum()), "centre_crop_fallbacks": int((~data.found).sum()),
        "index_type": index_type, "rank1": rank1, "rank5": rank5, **main_row,
        "thresholds": main_rows,
        "sweep": [at(t) for t in args.sweep],
        "embed_or_load_s": embed_s, "gallery_build_s": build_s, "search_s": search_s,
        "queries_per_s": (probes.sum() + strangers.sum()) / search_s,
    }
    print(f"command: {' '.join(sys.argv)}")
    print(f"run: {result['run']}: {result['people']} people, {result['images']} images "
          f"({result['centre_crop_fallbacks']} without a detected face: centre crop); "
          f"gallery {result['enrolled_people']} people x 1 image ({index_type} index), "
          f"{result['probes']} probes of enrolled people, {result['strangers']} strangers")
    print()
    print("| rank-1 | rank-5 | threshold | identified (DIR) | probes wrongly accepted "
          "| strangers rejected |")
    print("|---|---|---|---|---|---|")
    for i, row in enumerate(main_rows):
        ranks = f"{rank1:.4f} | {rank5:.4f}" if i == 0 else " | "
        print(f"| {ranks} | {row['threshold']:g} ({row['label']}) | {row['dir']:.4f} | "
              f"{row['probe_wrong_accepted']:.4f} | {row['stranger_rejected']:.4f} |")
    print()
    print("| threshold | identified (DIR) | probes rejected | probes wrongly accepted | strangers rejected |")
    print("|---|---|---|---|---|")
    for row in result["sweep"]:
        print(f"| {row['threshold']:g} | {row['dir']:.4f} | {row['probe_rejected']:.4f} | "
              f"{row['probe_wrong_accepted']:.4f} | {row['stranger_rejected']:.4f} |")
    print()
    print(f"embeddings (cache) {embed_s:.1f} s, gallery build {build_s:.2f} s, search "
          f"{search_s:.2f} s ({result['queries_per_s']:,.0f} queries/s, top-5)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
