"""LFW View 2 with the pretrained model: crop method x standardization x backend x centring x
flip mode x davidsandberg's per-fold mean subtraction, in one run.

Detection runs once per image; each crop method (margin, similarity) and crop standardization
(prewhiten, fixed) then embeds the same central faces, with and without the mirror image, so the
variants differ only in what they name. Centring: ``raw`` is the network's output, ``model``
the platform's embedding (raw minus the model's stored mean, re-normalised); ``subtract_mean``
additionally centres each fold on its nine training folds (``validate_on_lfw --subtract_mean``). Reports accuracy
+- std, VAL@FAR=1e-3 +- std, AUC, EER and the selected threshold for each, plus the wall time
and images/s of each stage.

    .venv/bin/python benchmarks/bench_lfw.py --json benchmarks/out/lfw.json
    .venv/bin/python benchmarks/bench_lfw.py --limit-folds 1 --backends keras-fp32 onnx-int8

The end-to-end wall time of the CLI (`facenet-platform eval lfw`) is timed separately with
`time`; see RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from facenet_platform.core.alignment import FaceAligner, select_central_face  # noqa: E402
from facenet_platform.core.detection import FaceDetector  # noqa: E402
from facenet_platform.core.embedding import FaceEmbedder, l2_normalize  # noqa: E402
from facenet_platform.core.evaluation import evaluate_embeddings  # noqa: E402
from facenet_platform.core.images import read_image  # noqa: E402
from facenet_platform.core.lfw import default_lfw_dir, read_pairs  # noqa: E402
from facenet_platform.core.weights import (PRETRAINED, load_pretrained_model,  # noqa: E402
                                           pretrained_embedding_mean)


def central_crops(paths, detector, aligners, batch_size):
    """Per crop method, ``(N, 160, 160, 3) uint8`` crops of each image's central face."""
    crops = {name: [] for name in aligners}
    found = []
    for start in tqdm(range(0, len(paths), batch_size), desc="detect+align", unit="batch"):
        images = [read_image(p) for p in paths[start:start + batch_size]]
        for image, dets in zip(images, detector.detect(images)):
            found.append(len(dets) > 0)
            for name, aligner in aligners.items():
                if len(dets):
                    best = select_central_face(dets, image.shape[:2])
                    crops[name].append(aligner(image, dets.take([best]))[0])
                else:
                    crops[name].append(aligner.center_crop(image))
    return {k: np.stack(v) for k, v in crops.items()}, np.array(found)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--pairs", type=Path, default=None)
    ap.add_argument("--limit-folds", type=int, default=None)
    ap.add_argument("--alignments", nargs="+", default=["margin", "similarity"])
    ap.add_argument("--backends", nargs="+", default=["keras-fp32"],
                    help="embedding backends; the first is the reference")
    ap.add_argument("--standardizations", nargs="+", default=["fixed", "prewhiten"],
                    help="crop standardizations; the first is used for the other backends")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    pairs = read_pairs(args.pairs or args.lfw_dir / "pairs.txt", args.lfw_dir, check_exists=True)
    if args.limit_folds:
        pairs = pairs.take_folds(args.limit_folds)
    paths = pairs.unique_paths()
    idx1, idx2 = pairs.pair_indices()
    print(f"{len(pairs)} pairs, {pairs.n_folds} folds, {len(paths)} images", flush=True)

    t0 = time.perf_counter()
    detector = FaceDetector()
    aligners = {m: FaceAligner(PRETRAINED.input_size, PRETRAINED.margin, method=m)
                for m in args.alignments}
    crops, found = central_crops(paths, detector, aligners, args.batch_size)
    detect_s = time.perf_counter() - t0
    print(f"detect+align: {detect_s:.1f} s ({len(paths) / detect_s:.1f} img/s), "
          f"face found in {found.mean():.4f}", flush=True)

    model = load_pretrained_model()
    mean = pretrained_embedding_mean()
    rows, timings = [], {}
    for backend in args.backends:
        for standardization in args.standardizations:
            if backend != args.backends[0] and standardization != args.standardizations[0]:
                continue  # other backends: only the first standardization
            calibration = None
            if backend == "onnx-int8":  # activation ranges from 200 of the evaluated crops
                default_crops = crops[PRETRAINED.alignment]
                calibration = default_crops[:: max(1, len(default_crops) // 200)][:200]
            embedder = FaceEmbedder(model, backend=backend, batch_size=args.batch_size,
                                    standardization=standardization, center=None,
                                    calibration_crops=calibration)
            for method, method_crops in crops.items():
                if backend != args.backends[0] and method != PRETRAINED.alignment:
                    continue  # other backends: only the default crop
                t = time.perf_counter()
                plain = embedder(method_crops)
                mirrored = embedder(np.ascontiguousarray(method_crops[:, :, ::-1]))
                seconds = time.perf_counter() - t
                timings[f"{backend}/{standardization}/{method}"] = {
                    "seconds": seconds, "images_per_second": 2 * len(paths) / seconds}
                reference = (backend == args.backends[0] and method == PRETRAINED.alignment
                             and standardization == args.standardizations[0])
                for centring in ("raw", "model") if reference else ("model",):
                    if centring == "model":
                        p, m = l2_normalize(plain - mean), l2_normalize(mirrored - mean)
                    else:
                        p, m = plain, mirrored
                    variants = {"none": p, "mean": l2_normalize(p + m),
                                "concat": l2_normalize(np.concatenate([p, m], axis=1))}
                    for flip, emb in variants.items():
                        for subtract_mean in (False, True):
                            report = evaluate_embeddings(emb[idx1], emb[idx2], pairs.issame,
                                                         pairs.folds, subtract_mean=subtract_mean)
                            row = {"backend": backend, "standardization": standardization,
                                   "alignment": method, "centring": centring, "flip": flip,
                                   "subtract_mean": subtract_mean,
                                   **{k: v for k, v in report.to_dict().items()
                                      if k in ("accuracy", "accuracy_std", "val", "val_std", "far",
                                               "auc", "eer", "threshold")}}
                            rows.append(row)
                            print(json.dumps(row), flush=True)

    print("\n| backend | standardization | alignment | centring | flip | subtract mean | accuracy | "
          "VAL@FAR=1e-3 | AUC | EER | threshold |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['standardization']} | {r['alignment']} | {r['centring']} | "
              f"{r['flip']} | {'per fold' if r['subtract_mean'] else 'no'} | {r['accuracy']:.5f} +- "
              f"{r['accuracy_std']:.5f} | {r['val']:.5f} +- {r['val_std']:.5f} | {r['auc']:.4f} | "
              f"{r['eer']:.4f} | {r['threshold']:.4f} |")
    print(f"\ndetect+align {detect_s:.1f} s for {len(paths)} images; embedding timings: "
          + json.dumps({k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in timings.items()}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"pairs": len(pairs), "images": len(paths),
                                         "face_found_rate": float(found.mean()),
                                         "detect_align_seconds": detect_s, "timings": timings,
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
