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
from facenet_platform.core.pipeline import face_json

from .gallery import UNKNOWN, Gallery, GalleryError, Match, check_threshold

logger = logging.getLogger(__name__)

__all__ = ["UNKNOWN", "IdentifiedFace", "Match", "check_compatible", "decide", "identify_faces"]


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
        """The JSON face object of ``identify --json`` and of the Serve endpoint
        (:func:`~facenet_platform.core.pipeline.face_json` + decision and matches)."""
        return {**face_json(self.box, self.score, self.landmarks), "decision": self.decision,
                "matches": [m.to_dict() for m in self.matches]}


def decide(matches: Sequence[Match], threshold: float) -> str:
    """The nearest identity's name when within ``threshold``, else :data:`UNKNOWN`.

    Args:
        matches: identities sorted by ascending squared L2 distance (only the first is used).
        threshold: squared L2 distance; a match exactly at the threshold is accepted.
    """
    if matches and matches[0].distance <= threshold:
        return matches[0].name
    return UNKNOWN


def check_compatible(pipeline, gallery: Gallery) -> None:
    """Raise GalleryError unless ``pipeline`` embeds like the gallery's faces were embedded
    (:meth:`Gallery.check_model` with the pipeline's spec, crop included, and flip mode)."""
    gallery.check_model(pipeline.spec, getattr(pipeline.embedder, "flip", "none"))


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
