"""Parity of the Keras model with the original frozen graph on real LFW face crops.

    .venv/bin/python benchmarks/bench_parity.py --n-images 100

Crops are MTCNN central faces with the default margin crop; both models get the same
prewhitened input. Prints mean, std and max of |keras - frozen| over all embedding entries.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from facenet_platform.core.alignment import FaceAligner, select_central_face  # noqa: E402
from facenet_platform.core.standardization import prewhiten  # noqa: E402
from facenet_platform.core.detection import FaceDetector  # noqa: E402
from facenet_platform.core.embedding import FaceEmbedder, FrozenGraphEmbedder  # noqa: E402
from facenet_platform.core.images import read_image  # noqa: E402
from facenet_platform.core.lfw import default_lfw_dir, image_root  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--n-images", type=int, default=100)
    args = ap.parse_args()

    files = sorted(image_root(args.lfw_dir).glob("*/*.jpg"))
    files = files[:: max(1, len(files) // args.n_images)][: args.n_images]
    detector, aligner = FaceDetector(), FaceAligner()
    crops = []
    for path in files:
        image = read_image(path)
        dets = detector.detect([image])[0]
        if len(dets):
            crops.append(aligner(image, dets.take([select_central_face(dets, image.shape[:2])]))[0])
    x = prewhiten(np.stack(crops))
    keras_emb = FaceEmbedder(batch_size=32, backend="keras-fp32").embed_prewhitened(x)
    frozen_emb = FrozenGraphEmbedder().embed_prewhitened(x)
    diff = np.abs(keras_emb - frozen_emb)
    cos = np.sum(keras_emb * frozen_emb, axis=1)
    print(f"| crops | mean abs diff | std | max | min cosine |\n|---|---|---|---|---|\n"
          f"| {len(crops)} | {diff.mean():.3g} | {diff.std():.3g} | {diff.max():.3g} | {cos.min():.8f} |")
    return 0 if diff.max() <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
