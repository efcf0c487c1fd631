"""Derive the pretrained model's embedding mean from LFW View 1 (DevTrain people).

davidsandberg's ``validate_on_lfw --subtract_mean`` subtracts the mean embedding of the nine
training folds before taking cosine distances, which lifts this checkpoint's LFW accuracy. The
platform makes that centring a fixed part of the model: ``FaceEmbedder`` returns
``l2_normalize(raw - mean)`` with the mean computed here, once, on the development split that the
LFW README sets aside for tuning (View 1: the people of ``peopleDevTrain.txt``), so View 2 stays a
pure report. Raw embeddings come from ``benchmarks/lfw_cache.py``'s cache (central face, margin
crop, fixed standardization; computed when missing).

    .venv/bin/python benchmarks/derive_embedding_mean.py              # writes the package file
    .venv/bin/python benchmarks/derive_embedding_mean.py --check      # compares, writes nothing
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from lfw_cache import DEFAULT_CACHE, lfw_embeddings
from facenet_platform.core.lfw import default_lfw_dir, list_identities, read_people
from facenet_platform.core.weights import DATA_DIR, EMBEDDING_MEAN_FILE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--people", type=Path, default=None, help="default: LFW_DIR/peopleDevTrain.txt")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=DATA_DIR / EMBEDDING_MEAN_FILE)
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    names = {name for name, _ in read_people(args.people or args.lfw_dir / "peopleDevTrain.txt")}
    people = {n: ps for n, ps in list_identities(args.lfw_dir).items() if n in names}
    data = lfw_embeddings(args.lfw_dir, people, args.cache, raw=True)
    mean = data.embeddings.astype(np.float64).mean(axis=0).astype(np.float32)
    print(f"{len(data.paths)} images of {len(people)} DevTrain people; |mean| = "
          f"{np.linalg.norm(mean):.4f}")
    if args.check:
        stored = np.load(args.out)
        diff = float(np.abs(stored - mean).max())
        print(f"max |stored - derived| = {diff:.2e} ({args.out})")
        return 0 if diff < 1e-5 else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, mean)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
