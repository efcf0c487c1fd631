"""The face pipeline: images -> detected faces -> aligned crops -> embeddings.

:class:`FacePipeline` chains a :class:`~facenet_platform.core.detection.FaceDetector`, a
:class:`~facenet_platform.core.alignment.FaceAligner` and a
:class:`~facenet_platform.core.embedding.FaceEmbedder`. Calls are batch-first: detection runs on
all images of a call together, and the crops of all images are embedded together in batches of
the embedder's size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .alignment import FaceAligner, select_central_face
from .detection import Detections, FaceDetector
from .embedding import FaceEmbedder
from .errors import NoFaceFoundError
from .model_spec import ModelSpec
from .weights import PRETRAINED

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Face:
    """One face found in an image.

    Attributes:
        index: position of the face among the image's detections (highest score first).
        box: ``(4,) float32`` x1, y1, x2, y2 in pixels of the input image.
        landmarks: ``(5, 2) float32`` (x, y) of left eye, right eye, nose, mouth corners.
        score: detection probability in [0, 1].
        embedding: ``(D,) float32``, L2-normalised.
    """

    index: int
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    embedding: np.ndarray = field(repr=False)

    def to_dict(self, with_embedding: bool = False) -> dict:
        """JSON-ready dict (:func:`face_json`, with ``index``)."""
        return face_json(self.box, self.score, self.landmarks, index=self.index,
                         embedding=self.embedding if with_embedding else None)


def face_json(box: np.ndarray, score: float, landmarks: np.ndarray, *, index: int | None = None,
              embedding: np.ndarray | None = None) -> dict[str, Any]:
    """The one JSON form of a detected face, used by the CLI, ``identify`` and the Serve API::

        {"index": 0, "box": [x1, y1, x2, y2], "score": 0.99987,
         "landmarks": [[x, y], ... 5 points], "embedding": [...]}

    Args:
        box: ``(4,)`` x1, y1, x2, y2 in pixels (rounded to 0.1 px).
        score: detection probability (rounded to 5 decimals).
        landmarks: ``(5, 2)`` (x, y) of eyes, nose, mouth corners in pixels (rounded to 0.1 px).
        index: the face's rank among the image's detections; left out when None.
        embedding: ``(D,)`` float32; left out when None.

    Callers add their own keys after these (``decision``, ``matches``, ``faces_in_photo``).
    """
    out: dict[str, Any] = {} if index is None else {"index": int(index)}
    out["box"] = [round(float(v), 1) for v in np.asarray(box).reshape(4)]
    out["score"] = round(float(score), 5)
    out["landmarks"] = [[round(float(x), 1), round(float(y), 1)]
                        for x, y in np.asarray(landmarks).reshape(5, 2)]
    if embedding is not None:
        out["embedding"] = [float(v) for v in embedding]
    return out


@dataclass(frozen=True)
class Verification:
    """Outcome of comparing two faces: squared L2 distance in [0, 4] against a threshold."""

    distance: float
    threshold: float

    @property
    def same_person(self) -> bool:
        return self.distance <= self.threshold

    def to_dict(self) -> dict:
        return {"distance": round(self.distance, 6), "threshold": self.threshold,
                "same_person": self.same_person}


def squared_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Squared Euclidean distance between two ``(D,)`` embeddings (0 = identical, 4 = opposite)."""
    diff = np.asarray(a, np.float32) - np.asarray(b, np.float32)
    return float(np.dot(diff, diff))


class FacePipeline:
    """image -> faces -> aligned crops -> embeddings.

    Args:
        detector: a FaceDetector (default MTCNN settings when None).
        aligner: a FaceAligner (default: the crop of the embedder's model spec).
        embedder: a FaceEmbedder (default: the pretrained 20180408-102900 model).

    :func:`facenet_platform.core.factory.build_pipeline` builds all three from a model (path or
    spec).
    """

    def __init__(self, detector: FaceDetector | None = None, aligner: FaceAligner | None = None,
                 embedder: FaceEmbedder | None = None):
        self.detector = detector or FaceDetector()
        self.embedder = embedder or FaceEmbedder()
        self.aligner = aligner or FaceAligner.for_spec(self.embedder.spec)
        if self.aligner.image_size != self.embedder.input_size:
            raise ValueError(f"aligner crops {self.aligner.image_size} px but the model takes "
                             f"{self.embedder.input_size} px")

    @property
    def spec(self) -> ModelSpec:
        """The embedder's model spec with the crop this pipeline really cuts (what indexes and
        galleries record)."""
        return self.embedder.spec.with_crop(self.aligner.method, self.aligner.margin)

    @property
    def threshold(self) -> float:
        """Same-person distance threshold of the embedding model."""
        return self.embedder.threshold if self.embedder.threshold is not None else PRETRAINED.threshold

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections per image (see :meth:`FaceDetector.detect`)."""
        return self.detector.detect(list(images))

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Every face of every image.

        Args:
            images: ``(H, W, 3) uint8`` RGB arrays.

        Returns:
            One list per image of :class:`Face` (highest detection score first); empty when an
            image has no face.
        """
        images = list(images)
        detections = self.detect(images)
        crops = [self.aligner(image, dets) for image, dets in zip(images, detections)]
        embeddings = self.embedder(np.concatenate(crops)) if crops else None
        out: list[list[Face]] = []
        start = 0
        for dets in detections:
            faces = [
                Face(i, dets.boxes[i], dets.landmarks[i], float(dets.scores[i]),
                     embeddings[start + i])
                for i in range(len(dets))
            ]
            start += len(dets)
            out.append(faces)
        return out

    def central_faces(self, images: Sequence[np.ndarray], *, fallback_center: bool = False
                      ) -> tuple[np.ndarray, list[Face | None]]:
        """One face per image: the largest face nearest the centre.

        Args:
            images: ``(H, W, 3) uint8`` RGB arrays.
            fallback_center: when no face is detected, embed a centre crop instead of raising
                (the LFW protocol must give every pair a distance).

        Returns:
            ``(N, D) float32`` embeddings, and per image the chosen :class:`Face` (None where
            the centre crop stood in).

        Raises:
            NoFaceFoundError: an image has no face and ``fallback_center`` is False.
        """
        images = list(images)
        detections = self.detect(images)
        crops, chosen = [], []
        for i, (image, dets) in enumerate(zip(images, detections)):
            if len(dets):
                best = select_central_face(dets, image.shape[:2])
                crops.append(self.aligner(image, dets.take([best]))[0])
                chosen.append(best)
            elif fallback_center:
                crops.append(self.aligner.center_crop(image))
                chosen.append(None)
            else:
                raise NoFaceFoundError(f"no face found in image {i} of the batch")
        if not crops:
            return np.zeros((0, self.embedder.embedding_size), np.float32), []
        embeddings = self.embedder(np.stack(crops))
        faces = [
            None if best is None else Face(best, dets.boxes[best], dets.landmarks[best],
                                           float(dets.scores[best]), embeddings[i])
            for i, (dets, best) in enumerate(zip(detections, chosen))
        ]
        return embeddings, faces

    def verify(self, image1: np.ndarray, image2: np.ndarray) -> Verification:
        """Compare the central faces of two images (raises NoFaceFoundError)."""
        embeddings, _ = self.central_faces([image1, image2])
        return Verification(squared_distance(embeddings[0], embeddings[1]), self.threshold)
