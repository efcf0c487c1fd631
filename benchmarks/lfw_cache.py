"""Embeddings of LFW images, computed once and cached as ``.npz`` (shared by the index benchmarks).

Each image gets the *raw* network embedding of its central face (``FacePipeline.central_faces``); when MTCNN
finds no face the centre crop stands in, as in the LFW protocol, and ``found`` records it. The
cache holds every image embedded so far (keyed by the path relative to the LFW root), so a
``--limit-people`` run and a full run share it; missing images are embedded and appended, with a
checkpoint every few hundred images so an interrupted run resumes. :func:`lfw_embeddings`
returns them as the platform uses them (centred on the pretrained model's embedding mean, as
``FaceEmbedder`` does) unless ``raw=True``.

    .venv/bin/python benchmarks/lfw_cache.py            # embed all 13,233 LFW images
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

DEFAULT_CACHE = Path(__file__).resolve().parent / "out" / "lfw_embeddings.npz"

logger = logging.getLogger("lfw_cache")


@dataclass
class LfwEmbeddings:
    """Per image: path relative to the LFW image root, person name, embedding, face found."""

    paths: np.ndarray       # (N,) str
    names: np.ndarray       # (N,) str
    embeddings: np.ndarray  # (N, D) float32
    found: np.ndarray       # (N,) bool

    def take(self, idx) -> "LfwEmbeddings":
        return LfwEmbeddings(self.paths[idx], self.names[idx], self.embeddings[idx], self.found[idx])


def pipeline_config() -> str:
    """What the cached embeddings depend on (the default pipeline's settings), as JSON."""
    import json

    from facenet_platform.core.weights import PRETRAINED

    margin = PRETRAINED.margin  # 32 as the caches written before the spec stored it (not 32.0)
    return json.dumps({"model_id": PRETRAINED.model_id, "alignment": PRETRAINED.alignment,
                       "margin": int(margin) if float(margin).is_integer() else margin,
                       "standardization": PRETRAINED.standardization,
                       "face": "central, centre crop when none"}, sort_keys=True)


def _load(cache: Path) -> dict[str, tuple[np.ndarray, bool]]:
    """The cached embeddings, or nothing when the cache is missing or was computed with other
    pipeline settings (it is then recomputed and overwritten)."""
    if not cache.is_file():
        return {}
    with np.load(cache, allow_pickle=False) as z:
        config = str(z["config"]) if "config" in z.files else None
        if config != pipeline_config():
            logger.warning("%s was computed with other settings (%s); recomputing", cache, config)
            return {}
        return {str(p): (e, bool(f)) for p, e, f in zip(z["paths"], z["embeddings"], z["found"])}


def _save(cache: Path, store: dict[str, tuple[np.ndarray, bool]]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    paths = sorted(store)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez(tmp, paths=np.array(paths), embeddings=np.stack([store[p][0] for p in paths]),
             found=np.array([store[p][1] for p in paths]), config=np.array(pipeline_config()))
    tmp.replace(cache)


def lfw_embeddings(lfw_dir: Path, people: dict[str, list[Path]], cache: Path = DEFAULT_CACHE,
                   batch_size: int = 32, checkpoint_every: int = 512, *,
                   raw: bool = False) -> LfwEmbeddings:
    """Embeddings of every image of ``people`` (``{name: [paths]}``), from the cache or computed:
    centred like ``FaceEmbedder``'s unless ``raw``."""
    from facenet_platform.core.images import read_image
    from facenet_platform.core.lfw import image_root

    root = image_root(lfw_dir)
    wanted = [(name, p.relative_to(root).as_posix()) for name, paths in people.items() for p in paths]
    store = _load(cache)
    missing = [rel for _, rel in wanted if rel not in store]
    if missing:
        from facenet_platform.core.embedding import FaceEmbedder
        from facenet_platform.core.pipeline import FacePipeline

        # fp32: the cache's numbers must not depend on the machine's default backend
        pipeline = FacePipeline(embedder=FaceEmbedder(center=None, backend="keras-fp32"))
        logger.warning("embedding %d LFW images (%d cached) -> %s", len(missing), len(store), cache)
        t0, done_since_save = time.perf_counter(), 0
        for start in range(0, len(missing), batch_size):
            batch = missing[start:start + batch_size]
            images = [read_image(root / rel) for rel in batch]
            emb, faces = pipeline.central_faces(images, fallback_center=True)
            for rel, e, face in zip(batch, emb, faces):
                store[rel] = (np.asarray(e, np.float32), face is not None)
            done_since_save += len(batch)
            if done_since_save >= checkpoint_every:
                _save(cache, store)
                done_since_save = 0
                done = start + len(batch)
                rate = done / (time.perf_counter() - t0)
                logger.warning("%d/%d images, %.1f img/s, eta %.0f s", done, len(missing), rate,
                               (len(missing) - done) / rate)
        _save(cache, store)
        logger.warning("embedded %d images in %.0f s", len(missing), time.perf_counter() - t0)
    embeddings = np.stack([store[rel][0] for _, rel in wanted]).astype(np.float32)
    if not raw:
        from facenet_platform.core.embedding import l2_normalize
        from facenet_platform.core.weights import pretrained_embedding_mean

        embeddings = l2_normalize(embeddings - pretrained_embedding_mean())
    return LfwEmbeddings(
        paths=np.array([rel for _, rel in wanted]),
        names=np.array([name for name, _ in wanted]),
        embeddings=embeddings,
        found=np.array([store[rel][1] for _, rel in wanted]),
    )


def select_people(lfw_dir: Path, limit_people: int | None, seed: int = 0, *,
                  cached_only: Path | None = None) -> dict[str, list[Path]]:
    """Every LFW person, or a random subset of ``limit_people`` people (same seed, same subset).

    With ``cached_only`` (a cache file), only the people all of whose images are already in that
    cache (an interrupted full run embeds people in alphabetical order)."""
    from facenet_platform.core.lfw import image_root, list_identities

    people = list_identities(lfw_dir, min_images=1)
    if cached_only is not None:
        cached = set(_load(cached_only))
        root = image_root(lfw_dir)
        people = {n: ps for n, ps in people.items()
                  if all(p.relative_to(root).as_posix() in cached for p in ps)}
    if not limit_people or limit_people >= len(people):
        return people
    rng = np.random.default_rng(seed)
    names = sorted(people)
    keep = sorted(rng.choice(len(names), size=limit_people, replace=False))
    return {names[i]: people[names[i]] for i in keep}


def main() -> int:
    from facenet_platform.core.lfw import default_lfw_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--limit-people", type=int, default=None)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    data = lfw_embeddings(args.lfw_dir, select_people(args.lfw_dir, args.limit_people), args.cache)
    print(f"{len(data.paths)} images of {len(set(data.names))} people; "
          f"{int((~data.found).sum())} without a detected face (centre crop) -> {args.cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
