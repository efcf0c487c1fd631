"""Who is in a photo: every face, its nearest people, and a decision.

:func:`identify_faces` is shared by the ``identify`` command and the Serve endpoint; both return
:meth:`IdentifiedFace.to_dict` objects::

    {"box": [x1, y1, x2, y2], "score": 0.99987, "landmarks": [[x, y], ... 5 points],
     "decision": "Ada_Lovelace" | "unknown",
     "matches": [{"name": "Ada_Lovelace", "distance": 0.612, "person": "p4"}, ...],
     "person": "p4" | null, "quality": 0.93, "reason": "match"}

The gallery is the named people (:class:`~facenet_platform.index.people_gallery.PeopleGallery`:
their templates, plus enrolled identities no person is linked to yet); hidden people are never
answered. The decision is the nearest person's name when the distance to its nearest template is
at or under the threshold -- the people's ``assign_distance``, the same decision ``people update``
makes -- else ``"unknown"``, with a reason: ``match``, ``too_far``, ``unnamed`` (the nearest
person has no name yet; ``person`` says who), ``low_quality`` (the face is under the people's
quality floor: reported, never matched) or ``no_people``. A threshold given explicitly overrides
the default. A plain :class:`~facenet_platform.index.gallery.Gallery` works too (nearest face,
the gallery's identification threshold, no quality floor).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from facenet_platform.core.errors import ConfigError
from facenet_platform.core.pipeline import face_json

from .gallery import UNKNOWN, Gallery, Match, check_threshold

logger = logging.getLogger(__name__)

__all__ = ["UNKNOWN", "IdentifiedFace", "Match", "check_compatible", "decide", "decide_face",
           "face_quality_of", "identify_faces"]


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
        person: the person id the face was matched to (also for an unnamed person).
        quality: the face's quality in [0, 1] (``core/quality.py``), when known.
        reason: ``match``, ``too_far``, ``unnamed``, ``low_quality`` or ``no_people``.
    """

    index: int
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    decision: str
    matches: list[Match] = field(default_factory=list)
    threshold: float = float("nan")
    person: str | None = None
    quality: float | None = None
    reason: str | None = None

    @property
    def known(self) -> bool:
        return self.decision != UNKNOWN

    @property
    def distance(self) -> float | None:
        """Distance to the nearest identity (None for an empty gallery)."""
        return self.matches[0].distance if self.matches else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON face object of ``identify --json`` and of the Serve endpoint
        (:func:`~facenet_platform.core.pipeline.face_json` + decision, matches, person,
        quality and reason)."""
        return {**face_json(self.box, self.score, self.landmarks), "decision": self.decision,
                "matches": [m.to_dict() for m in self.matches], "person": self.person,
                "quality": None if self.quality is None else round(float(self.quality), 4),
                "reason": self.reason}


def decide(matches: Sequence[Match], threshold: float) -> str:
    """The nearest identity's name when within ``threshold``, else :data:`UNKNOWN`.

    Args:
        matches: identities sorted by ascending squared L2 distance (only the first is used).
        threshold: squared L2 distance; a match exactly at the threshold is accepted.
    """
    return decide_face(matches, threshold)[0]


def decide_face(matches: Sequence[Match], threshold: float, quality: float | None = None,
                min_quality: float = 0.0) -> tuple[str, str, str | None]:
    """``(decision, reason, person)`` of one face (see the module doc).

    Args:
        matches: people sorted by ascending squared L2 distance (only the first is used).
        threshold: squared L2 distance; a match exactly at the threshold is accepted.
        quality: the face's quality (None: not known, never refused for it).
        min_quality: the quality floor under which a face is answered ``unknown``.
    """
    if quality is not None and quality < min_quality:
        return UNKNOWN, "low_quality", None
    if not matches:
        return UNKNOWN, "no_people", None
    best = matches[0]
    if best.distance > threshold:
        return UNKNOWN, "too_far", None
    if not best.name:
        return UNKNOWN, "unnamed", best.person
    return best.name, "match", best.person


def face_quality_of(pipeline, image: np.ndarray, faces) -> np.ndarray:
    """``(N,) float32`` quality of ``faces`` (pipeline :class:`Face` objects of ``image``) as the
    index computes it: detection score, box size, landmarks, and the sharpness of the aligned
    crop."""
    from facenet_platform.core.detection import Detections
    from facenet_platform.core.quality import face_quality

    from .stages import sharpness

    if not faces:
        return np.zeros(0, np.float32)
    boxes = np.stack([np.asarray(f.box, np.float32) for f in faces])
    landmarks = np.stack([np.asarray(f.landmarks, np.float32).reshape(5, 2) for f in faces])
    scores = np.array([f.score for f in faces], np.float32)
    crops = pipeline.aligner(image, Detections(boxes, scores, landmarks))
    return face_quality(scores, boxes, landmarks, sharpness(crops))


def check_compatible(pipeline, gallery: Gallery) -> None:
    """Raise GalleryError unless ``pipeline`` embeds like the gallery's faces were embedded
    (:meth:`Gallery.check_model` with the pipeline's spec, crop included, and flip mode)."""
    gallery.check_model(pipeline.spec, getattr(pipeline.embedder, "flip", "none"))


def identify_faces(pipeline, gallery: Gallery, images: Sequence[np.ndarray], top_k: int = 5,
                   threshold: float | None = None) -> list[list[IdentifiedFace]]:
    """Detect, embed and identify every face of every image.

    Args:
        pipeline: a :class:`~facenet_platform.core.pipeline.FacePipeline`.
        gallery: the people (:class:`~facenet_platform.index.people_gallery.PeopleGallery`)
            or a plain :class:`~facenet_platform.index.gallery.Gallery`.
        images: ``(H, W, 3) uint8`` RGB arrays.
        top_k: identities listed per face.
        threshold: squared L2 decision threshold (default ``gallery.identify_threshold``: the
            people's assign distance, or a plain gallery's open-set identification threshold;
            not the 1:1 verification one).

    Returns:
        Per image, its faces (highest detection score first); an image without faces gives [].
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    threshold = gallery.identify_threshold if threshold is None else check_threshold(threshold)
    check_compatible(pipeline, gallery)
    images = list(images)
    per_image = pipeline(images)
    faces = [face for image_faces in per_image for face in image_faces]
    if faces:
        matches = gallery.search(np.stack([f.embedding for f in faces]), top_k)
    else:
        matches = []
    # the people have a quality floor; a plain gallery has none (and no quality is computed)
    min_quality = getattr(gallery, "min_quality", None)
    out: list[list[IdentifiedFace]] = []
    position = 0
    for image, image_faces in zip(images, per_image):
        quality = (face_quality_of(pipeline, image, image_faces) if min_quality is not None
                   else [None] * len(image_faces))
        row = []
        for face, q in zip(image_faces, quality):
            m = matches[position]
            position += 1
            q = None if q is None else float(q)
            decision, reason, person = decide_face(m, threshold, q, min_quality or 0.0)
            row.append(IdentifiedFace(face.index, face.box, face.landmarks, face.score,
                                      decision, m, threshold, person, q, reason))
        out.append(row)
    return out
