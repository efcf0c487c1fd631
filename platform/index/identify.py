"""Who is in a photo: every face, its nearest gallery identities, and a decision.

:func:`identify_faces` is shared by the ``identify`` command and the Serve endpoint; both return
:meth:`IdentifiedFace.to_dict` objects::

    {"box": [x1, y1, x2, y2], "score": 0.99987, "landmarks": [[x, y], ... 5 points],
     "decision": "Ada_Lovelace" | "unknown",
     "matches": [{"name": "Ada_Lovelace", "distance": 0.612}, ...]}

The decision is the nearest identity when its squared L2 distance is at or under the threshold,
else ``"unknown"``. The default threshold is the gallery's *identification* threshold
(:attr:`Gallery.identify_threshold`, calibrated for 1:N open-set use;
``PRETRAINED.identify_threshold`` for the pretrained model), stricter than the 1:1
verification threshold that ``verify`` uses; a threshold given explicitly overrides it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from facenet_platform.core.errors import ConfigError

from .gallery import UNKNOWN, Gallery, GalleryError, Match, check_threshold

logger = logging.getLogger(__name__)

__all__ = ["UNKNOWN", "IdentifiedFace", "Match", "check_compatible", "decide", "describe_pipeline",
           "identify_faces"]


@dataclass(frozen=True)
class IdentifiedFace:
    """One detected face with its gallery matches.

    Attributes:
        index: position among the image's detections (highest detection score first).
        box: ``(4,) float32`` x1, y1, x2, y2 in pixels.
        landmarks: ``(5, 2) float32`` eyes, nose, mouth corners (x, y) in pixels.
        score: detection probability.
        decision: the identity's name, or :data:`UNKNOWN`.
        matches: nearest identities, ascending squared L2 distance.
        threshold: the threshold the decision used.
    """

    index: int
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    decision: str
    matches: list[Match] = field(default_factory=list)
    threshold: float = float("nan")

    @property
    def known(self) -> bool:
        return self.decision != UNKNOWN

    @property
    def distance(self) -> float | None:
        """Distance to the nearest identity (None for an empty gallery)."""
        return self.matches[0].distance if self.matches else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON face object of ``identify --json`` and of the Serve endpoint."""
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 5),
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
            "decision": self.decision,
            "matches": [m.to_dict() for m in self.matches],
        }


def decide(matches: Sequence[Match], threshold: float) -> str:
    """The nearest identity's name when within ``threshold``, else :data:`UNKNOWN`.

    Args:
        matches: identities sorted by ascending squared L2 distance (only the first is used).
        threshold: squared L2 distance; a match exactly at the threshold is accepted.
    """
    if matches and matches[0].distance <= threshold:
        return matches[0].name
    return UNKNOWN


def describe_pipeline(pipeline) -> dict[str, Any]:
    """The settings of a FacePipeline that decide its embedding space (recorded by the gallery).

    The backend (Keras, ONNX, int8) is left out: it changes embeddings only slightly, not the
    space. Settings a pipeline does not expose are None (and never compared).
    """
    embedder, aligner = pipeline.embedder, pipeline.aligner
    return {
        "model_id": embedder.model_id,
        "embedding_size": int(embedder.embedding_size),
        "standardization": getattr(embedder, "standardization", None),
        "flip": getattr(embedder, "flip", None),
        "alignment": getattr(aligner, "method", None),
        "margin": (float(aligner.margin) if getattr(aligner, "margin", None) is not None else None),
        "image_size": getattr(aligner, "image_size", None),
    }


def check_compatible(pipeline, gallery: Gallery) -> None:
    """Raise GalleryError unless the pipeline embeds like the gallery's faces were embedded:
    same model and size, and the same crop/standardization settings where the gallery recorded
    them (a gallery enrolled with another standardization would give meaningless distances)."""
    model_id = pipeline.embedder.model_id
    size = pipeline.embedder.embedding_size
    if model_id != gallery.model_id or size != gallery.embedding_size:
        raise GalleryError(
            f"the gallery of {gallery.layout.root} holds {gallery.embedding_size}-d embeddings of "
            f"model {gallery.model_id!r}, but the pipeline produces {size}-d embeddings of "
            f"{model_id!r}; use the same model or enroll again"
        )
    recorded = gallery.pipeline or {}
    current = describe_pipeline(pipeline)
    differ = {k: (recorded[k], current[k]) for k in recorded
              if k in current and None not in (recorded[k], current[k]) and recorded[k] != current[k]}
    if differ:
        detail = ", ".join(f"{k}: gallery {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise GalleryError(f"the gallery of {gallery.layout.root} was enrolled with other pipeline "
                           f"settings ({detail}); use the same settings or enroll again")


def identify_faces(pipeline, gallery: Gallery, images: Sequence[np.ndarray], top_k: int = 5,
                   threshold: float | None = None) -> list[list[IdentifiedFace]]:
    """Detect, embed and identify every face of every image.

    Args:
        pipeline: a :class:`~facenet_platform.core.pipeline.FacePipeline`.
        gallery: the enrolled identities.
        images: ``(H, W, 3) uint8`` RGB arrays.
        top_k: identities listed per face.
        threshold: squared L2 decision threshold (default ``gallery.identify_threshold``,
            the open-set identification threshold; not the 1:1 verification one).

    Returns:
        Per image, its faces (highest detection score first); an image without faces gives [].
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    threshold = gallery.identify_threshold if threshold is None else check_threshold(threshold)
    check_compatible(pipeline, gallery)
    per_image = pipeline(list(images))
    faces = [face for image_faces in per_image for face in image_faces]
    if faces:
        matches = gallery.search(np.stack([f.embedding for f in faces]), top_k)
    else:
        matches = []
    out: list[list[IdentifiedFace]] = []
    position = 0
    for image_faces in per_image:
        row = []
        for face in image_faces:
            m = matches[position]
            position += 1
            row.append(IdentifiedFace(face.index, face.box, face.landmarks, face.score,
                                      decide(m, threshold), m, threshold))
        out.append(row)
    return out
