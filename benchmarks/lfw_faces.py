"""Detections of LFW images, computed once and cached as ``.npz`` (for face quality figures).

For each image, the face ``lfw_cache.py`` embeds (the central face, ``select_central_face``):
its box, landmarks, detection score and the sharpness of its 160 px margin crop (the index's
``sharpness`` column, ``index.stages.sharpness``). Images without a detected face get score 0
and a zero box (quality 0). Keyed by the path relative to the LFW image root, like the embedding
cache; resumable.

    .venv/bin/python benchmarks/lfw_faces.py       # all 13,233 images (~10 min on 2 cores)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path(__file__).resolve().parent / "out" / "lfw_faces.npz"

logger = logging.getLogger("lfw_faces")


@dataclass
class LfwFaces:
    """Per image: box (4,), landmarks (5, 2), score, sharpness, found."""

    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    sharpness: np.ndarray
    found: np.ndarray

    def quality(self) -> np.ndarray:
        from facenet_platform.core.quality import face_quality

        q = face_quality(self.scores, self.boxes, self.landmarks, self.sharpness)
        return np.where(self.found, q, 0.0).astype(np.float32)

    def components(self):
        from facenet_platform.core.quality import quality_components

        return quality_components(self.scores, self.boxes, self.landmarks, self.sharpness)


def _load(cache: Path) -> dict[str, np.ndarray]:
    if not cache.is_file():
        return {}
    with np.load(cache, allow_pickle=False) as z:
        return {str(p): r for p, r in zip(z["paths"], z["rows"])}


def _save(cache: Path, store: dict[str, np.ndarray]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    paths = sorted(store)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez(tmp, paths=np.array(paths), rows=np.stack([store[p] for p in paths]))
    tmp.replace(cache)


# row layout: box 4, landmarks 10, score, sharpness, found
ROW = 17


def lfw_faces(lfw_dir: Path, rel_paths: list[str], cache: Path = DEFAULT_CACHE,
              checkpoint_every: int = 1024) -> LfwFaces:
    """Detections for ``rel_paths`` (relative to the LFW image root), from the cache or computed."""
    from facenet_platform.core.lfw import image_root

    root = image_root(lfw_dir)
    store = _load(cache)
    missing = [p for p in rel_paths if p not in store]
    if missing:
        from facenet_platform.core.alignment import FaceAligner, select_central_face
        from facenet_platform.core.detection import FaceDetector
        from facenet_platform.core.images import read_image
        from facenet_platform.core.weights import PRETRAINED
        from facenet_platform.index.stages import sharpness

        detector = FaceDetector()
        aligner = FaceAligner(image_size=160, margin=PRETRAINED.margin)
        logger.warning("detecting faces in %d LFW images (%d cached) -> %s", len(missing),
                       len(store), cache)
        t0, since = time.perf_counter(), 0
        for k, rel in enumerate(missing):
            image = read_image(root / rel)
            dets = detector.detect([image])[0]
            row = np.zeros(ROW, np.float32)
            if len(dets):
                best = dets.take([select_central_face(dets, image.shape[:2])])
                row[:4] = best.boxes[0]
                row[4:14] = best.landmarks[0].reshape(10)
                row[14] = best.scores[0]
                row[15] = sharpness(aligner(image, best))[0]
                row[16] = 1
            store[rel] = row
            since += 1
            if since >= checkpoint_every:
                _save(cache, store)
                since = 0
                rate = (k + 1) / (time.perf_counter() - t0)
                logger.warning("%d/%d images, %.1f img/s", k + 1, len(missing), rate)
        _save(cache, store)
    rows = np.stack([store[p] for p in rel_paths]) if rel_paths else np.zeros((0, ROW), np.float32)
    return LfwFaces(boxes=rows[:, :4], landmarks=rows[:, 4:14].reshape(-1, 5, 2),
                    scores=rows[:, 14], sharpness=rows[:, 15], found=rows[:, 16] > 0)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lfw_cache import select_people

    from facenet_platform.core.lfw import default_lfw_dir, image_root

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    root = image_root(args.lfw_dir)
    rel = [p.relative_to(root).as_posix() for ps in select_people(args.lfw_dir, None).values()
           for p in ps]
    faces = lfw_faces(args.lfw_dir, rel, args.cache)
    q = faces.quality()
    print(f"{len(rel)} images, {int((~faces.found).sum())} without a face -> {args.cache}; "
          f"quality quantiles 1/5/50%: {np.quantile(q, [0.01, 0.05, 0.5]).round(3).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
