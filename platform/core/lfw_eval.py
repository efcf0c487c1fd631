"""Run the LFW verification protocol end to end with a :class:`FacePipeline`.

pairs file -> unique images -> central-face embeddings (one batched pass, progress bar)
-> squared distances per pair (optionally after davidsandberg's per-fold mean subtraction)
-> :func:`~facenet_platform.core.evaluation.evaluate_embeddings`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .evaluation import VerificationReport, evaluate_embeddings
from .images import read_image
from .lfw import PairList
from .pipeline import FacePipeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LfwRun:
    """An LFW evaluation: the protocol report plus what it cost."""

    report: VerificationReport
    n_images: int
    n_no_face: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        return {**self.report.to_dict(), "images": self.n_images, "images_without_face": self.n_no_face,
                "seconds": round(self.seconds, 2), "images_per_second": round(self.images_per_second, 2)}


def embed_paths(pipeline: FacePipeline, paths: Sequence[Path], *, batch_size: int = 32,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Central-face embeddings of image files, a centre crop standing in where no face is found.

    Returns:
        ``(N, D) float32`` embeddings and ``(N,) bool`` (True where a face was detected).
    """
    from tqdm.auto import tqdm

    embeddings, found = [], []
    with tqdm(total=len(paths), unit="img", desc="embedding", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = [read_image(p) for p in chunk]
            emb, faces = pipeline.central_faces(images, fallback_center=True)
            embeddings.append(emb)
            found.append(np.array([face is not None for face in faces], bool))
            bar.update(len(chunk))
    if not embeddings:
        return np.zeros((0, pipeline.embedder.embedding_size), np.float32), np.zeros(0, bool)
    return np.concatenate(embeddings), np.concatenate(found)


def evaluate_lfw(pipeline: FacePipeline, pairs: PairList, *, batch_size: int = 32,
                 far_target: float = 1e-3, progress: bool = True,
                 subtract_mean: bool = False) -> LfwRun:
    """Embed every image the pairs use once, then apply the 10-fold protocol.

    ``subtract_mean``: davidsandberg's ``--subtract_mean`` (each fold centred on the mean
    embedding of its nine training folds; see :func:`evaluate_embeddings`)."""
    started = time.perf_counter()
    paths = pairs.unique_paths()
    embeddings, found = embed_paths(pipeline, paths, batch_size=batch_size, progress=progress)
    row = {p: i for i, p in enumerate(paths)}
    idx1 = np.array([row[p] for p in pairs.paths1])
    idx2 = np.array([row[p] for p in pairs.paths2])
    report = evaluate_embeddings(embeddings[idx1], embeddings[idx2], pairs.issame, pairs.folds,
                                 far_target=far_target, subtract_mean=subtract_mean)
    n_no_face = int((~found).sum())
    if n_no_face:
        logger.warning("%d of %d images had no detected face; a centre crop was used",
                       n_no_face, len(paths))
    return LfwRun(report, len(paths), n_no_face, time.perf_counter() - started)
