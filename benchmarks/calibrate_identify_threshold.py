"""Calibrate the pretrained model's open-set identification threshold on LFW View 1.

The 1:1 verification threshold (``PRETRAINED.threshold``) is far too lenient for 1:N
identification: the more people are enrolled, the more likely a stranger is close to one of
them. This script picks ``PRETRAINED.identify_threshold`` at a standard open-set operating point,
the false positive identification rate (FPIR: the share of strangers that get a name), on the
development split the LFW README sets aside for tuning, so that View 2 (and the full-LFW
figures of ``bench_identification.py``) stay a pure report:

* gallery: the people of ``peopleDevTrain.txt`` with at least two images; the first image
  (``_0001``) of each is enrolled in a :class:`~facenet_platform.index.gallery.Gallery`
  (one face per person, as ``bench_identification.py`` does);
* mated probes: their other images (to report the identification rate at the chosen threshold);
* strangers: the people of ``peopleDevTest.txt`` (no person in common with DevTrain), their
  first image each so that every stranger counts once (``--all-stranger-images``: every image).

The chosen threshold is the largest value, rounded down to 3 decimals, at which at most
``--fpir`` (default 0.05) of the strangers' nearest identities are within the threshold.
Embeddings come from ``benchmarks/lfw_cache.py`` (centred like the platform's; computed once).

    .venv/bin/python benchmarks/calibrate_identify_threshold.py
    .venv/bin/python benchmarks/calibrate_identify_threshold.py --fpir 0.01 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lfw_cache import DEFAULT_CACHE, lfw_embeddings  # noqa: E402

from facenet_platform.core.lfw import default_lfw_dir, list_identities, read_people  # noqa: E402
from facenet_platform.core.weights import PRETRAINED  # noqa: E402
from facenet_platform.index.gallery import UNKNOWN, Gallery  # noqa: E402
from facenet_platform.index.identify import decide  # noqa: E402

#: Other FPIR operating points printed for context (the chosen one is ``--fpir``).
CONTEXT_FPIRS = (0.01, 0.02, 0.05, 0.10, 0.20)


@dataclass
class OperatingPoint:
    """Open-set rates at one threshold (all fractions in [0, 1])."""

    threshold: float
    fpir: float              # strangers whose nearest identity is within the threshold
    dir: float               # mated probes given their own name (detection and identification)
    wrong_name: float        # mated probes given someone else's name
    probe_rejected: float    # mated probes called unknown


def threshold_at_fpir(stranger_distances: np.ndarray, fpir: float, decimals: int = 3) -> float:
    """The largest threshold (rounded down to ``decimals``) with ``mean(d <= t) <= fpir``.

    Args:
        stranger_distances: ``(S,)`` squared L2 distance of each stranger to its nearest
            gallery identity.
        fpir: the largest acceptable share of strangers given a name, in (0, 1).
    """
    if not 0 < fpir < 1:
        raise ValueError(f"fpir must be in (0, 1), got {fpir}")
    d = np.sort(np.asarray(stranger_distances, np.float64))
    if d.size == 0:
        raise ValueError("no stranger distances to calibrate on")
    allowed = math.floor(fpir * d.size)   # strangers that may be accepted (< d.size: fpir < 1)
    limit = d[allowed]                     # the threshold must stay below this distance
    step = 10 ** -decimals
    t = math.floor(limit / step) * step
    while t >= limit:                      # exactly on a grid value: one step under it
        t -= step
    return round(t, decimals)


def operating_point(threshold: float, probe_matches, truth: np.ndarray,
                    stranger_d1: np.ndarray) -> OperatingPoint:
    decisions = np.array([decide(m, threshold) for m in probe_matches])
    return OperatingPoint(
        threshold=float(threshold),
        fpir=float(np.mean(stranger_d1 <= threshold)),
        dir=float(np.mean(decisions == truth)),
        wrong_name=float(np.mean((decisions != truth) & (decisions != UNKNOWN))),
        probe_rejected=float(np.mean(decisions == UNKNOWN)),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--fpir", type=float, default=0.05,
                    help="share of strangers allowed a name at the chosen threshold (default 0.05)")
    ap.add_argument("--all-stranger-images", action="store_true",
                    help="every image of the DevTest people is a stranger probe (default: the "
                         "first image of each person)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    identities = list_identities(args.lfw_dir)
    train_names = {n for n, _ in read_people(args.lfw_dir / "peopleDevTrain.txt")}
    test_names = {n for n, _ in read_people(args.lfw_dir / "peopleDevTest.txt")}
    shared = train_names & test_names
    if shared:
        raise SystemExit(f"peopleDevTrain and peopleDevTest share {len(shared)} people")
    gallery_people = {n: sorted(ps) for n, ps in identities.items()
                      if n in train_names and len(ps) >= 2}
    strangers = {n: sorted(ps) if args.all_stranger_images else sorted(ps)[:1]
                 for n, ps in identities.items() if n in test_names}
    known = lfw_embeddings(args.lfw_dir, gallery_people, args.cache)
    other = lfw_embeddings(args.lfw_dir, strangers, args.cache)

    first = np.array([Path(p).stem.endswith("_0001") for p in known.paths])
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Gallery.create(Path(tmp) / "idx", index_type="flat")
        for i in np.flatnonzero(first):
            gallery.add(str(known.names[i]), known.embeddings[i][None], [str(known.paths[i])])
        probe_matches = gallery.search(known.embeddings[~first], top_k=1)
        stranger_matches = gallery.search(other.embeddings, top_k=1)
    truth = known.names[~first]
    stranger_d1 = np.array([m[0].distance for m in stranger_matches])
    rank1 = float(np.mean([m[0].name == t for m, t in zip(probe_matches, truth)]))

    chosen = threshold_at_fpir(stranger_d1, args.fpir)
    point = operating_point(chosen, probe_matches, truth, stranger_d1)
    context = [operating_point(threshold_at_fpir(stranger_d1, f), probe_matches, truth, stranger_d1)
               for f in CONTEXT_FPIRS]
    verification = operating_point(PRETRAINED.threshold, probe_matches, truth, stranger_d1)

    print(f"command: {' '.join(sys.argv)}")
    print(f"LFW View 1: gallery {int(first.sum())} DevTrain people x 1 image (flat index), "
          f"{int((~first).sum())} mated probes; {len(other.paths)} stranger images of "
          f"{len(strangers)} DevTest people; closed-set rank-1 {rank1:.4f}")
    print()
    print("| target FPIR | threshold | FPIR | identified (DIR) | wrong name | probes rejected |")
    print("|---|---|---|---|---|---|")
    for target, p in zip(CONTEXT_FPIRS, context):
        print(f"| {target:g} | {p.threshold:.3f} | {p.fpir:.4f} | {p.dir:.4f} | "
              f"{p.wrong_name:.4f} | {p.probe_rejected:.4f} |")
    p = verification
    print(f"| (verification) | {p.threshold:.3f} | {p.fpir:.4f} | {p.dir:.4f} | "
          f"{p.wrong_name:.4f} | {p.probe_rejected:.4f} |")
    print()
    print(f"identify threshold at FPIR <= {args.fpir:g}: {chosen:.3f} "
          f"(FPIR {point.fpir:.4f}, DIR {point.dir:.4f}); stored PRETRAINED.identify_threshold = "
          f"{PRETRAINED.identify_threshold:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(sys.argv), "fpir_target": args.fpir, "threshold": chosen,
            "gallery_people": int(first.sum()), "mated_probes": int((~first).sum()),
            "strangers": len(strangers), "stranger_images": len(other.paths), "rank1": rank1,
            "chosen": asdict(point), "context": [asdict(c) for c in context],
            "verification": asdict(verification),
            "stored_identify_threshold": PRETRAINED.identify_threshold,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
