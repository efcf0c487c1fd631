"""Face selection, cropping and alignment: detections -> ``(N, S, S, 3)`` uint8 crops.

Two ways to cut a face out of an image:

* ``"margin"`` (:func:`crop_with_margin`): davidsandberg's ``align_dataset_mtcnn.py``: the MTCNN
  box grown by ``margin / 2`` pixels on each side, clipped to the image, resized to ``S x S``.
  This is how the FaceNet checkpoints were trained and evaluated on LFW.
* ``"similarity"`` (:func:`crop_similarity`): a 5-point similarity transform (rotation, uniform
  scale, translation; Umeyama least squares) taking the MTCNN landmarks onto a reference
  template. The template is the mean landmark position *in margin-crop framing* (derived from
  LFW, see :data:`TEMPLATE_MARGIN32`), so the network sees faces at the scale it was trained on;
  only the in-plane rotation and the jitter of the box are removed.

Note: MTCNN boxes are taller than wide (mean 94 x 125 px on LFW), so a margin crop resized to a
square stretches the face horizontally about 1.25x more than vertically. A similarity transform
keeps the aspect ratio, so it can only match the (stretched) template in the least-squares sense.

How crops become network input (standardization) is the model's business:
:mod:`facenet_platform.core.standardization`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from facenet_platform.core.detection import Detections
from facenet_platform.core.errors import ConfigError, ImageError, NoFaceFoundError

if TYPE_CHECKING:  # pragma: no cover
    from facenet_platform.core.detection import FaceDetector
    from facenet_platform.core.model_spec import ModelSpec

logger = logging.getLogger(__name__)

__all__ = [
    "TEMPLATE_MARGIN32",
    "TEMPLATE_MEAN_BOX",
    "FaceAligner",
    "TemplateEstimate",
    "crop_similarity",
    "crop_with_margin",
    "derive_template",
    "select_central_face",
    "similarity_template",
]

#: Reference landmarks (left eye, right eye, nose, mouth left, mouth right) as fractions of the
#: side of a ``margin=32`` crop (0 = left/top edge, 1 = right/bottom edge of the crop; a point
#: ``t`` lands on pixel ``t * S - 0.5`` of an ``S x S`` crop). Mean of the MTCNN landmarks of the
#: central face of 1000 LFW images (every 13th file of lfw-deepfunneled, sorted paths; all 1000
#: had a face and none had its margin box clipped by the border), produced by
#: ``.venv/bin/python benchmarks/derive_alignment_template.py --n-images 1000``
#: (:func:`derive_template`).
TEMPLATE_MARGIN32 = np.array(
    [
        [0.3531, 0.4178],  # left eye
        [0.6871, 0.4122],  # right eye
        [0.5255, 0.5713],  # nose
        [0.3787, 0.7111],  # mouth left
        [0.6742, 0.7064],  # mouth right
    ],
    dtype=np.float64,
)
#: Mean MTCNN box (width, height) in pixels over the same faces; used to re-express the template
#: for margins other than 32 (see :func:`similarity_template`).
TEMPLATE_MEAN_BOX = (93.74, 125.19)
_TEMPLATE_MARGIN = 32


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ImageError(f"expected an (H, W, 3) RGB image array, got {shape}.")
    if image.dtype != np.uint8:
        raise ImageError(f"expected a uint8 image, got dtype {image.dtype}.")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"the image is empty (shape {image.shape}).")
    return image


def _check_size(image_size: int) -> int:
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size < 1
    ):
        raise ConfigError(
            f"image_size must be a positive integer number of pixels, got {image_size!r}."
        )
    return int(image_size)


def _check_margin(margin: float) -> float:
    if (
        isinstance(margin, bool)
        or not isinstance(margin, (int, float, np.integer, np.floating))
        or margin < 0
    ):
        raise ConfigError(f"margin must be a number of pixels >= 0, got {margin!r}.")
    return float(margin)


# --------------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------------


def select_central_face(detections: Detections, image_shape: tuple[int, ...]) -> int:
    """Index of the face davidsandberg's ``align_dataset_mtcnn`` keeps: the largest
    ``box_area - 2 * squared distance(box centre, image centre)``.

    ``image_shape`` is ``(H, W)`` or ``(H, W, C)``. Raises :class:`NoFaceFoundError` when
    ``detections`` is empty.
    """
    if len(detections) == 0:
        raise NoFaceFoundError(
            "no face was detected in the image, so there is no central face to select."
        )
    height, width = float(image_shape[0]), float(image_shape[1])
    boxes = detections.boxes.astype(np.float64)
    size = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    dx = (boxes[:, 0] + boxes[:, 2]) / 2.0 - width / 2.0
    dy = (boxes[:, 1] + boxes[:, 3]) / 2.0 - height / 2.0
    return int(np.argmax(size - (dx * dx + dy * dy) * 2.0))


# --------------------------------------------------------------------------------------------
# margin crop
# --------------------------------------------------------------------------------------------


def _margin_regions(boxes: np.ndarray, shape: tuple[int, ...], margin: float) -> np.ndarray:
    """Integer crop regions ``(x0, y0, x1, y1)`` (end exclusive), as davidsandberg's int32 ``bb``."""
    height, width = shape[0], shape[1]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    half = margin / 2.0
    x0 = np.maximum(boxes[:, 0] - half, 0.0).astype(np.int64)
    y0 = np.maximum(boxes[:, 1] - half, 0.0).astype(np.int64)
    x1 = np.minimum(boxes[:, 2] + half, width).astype(np.int64)
    y1 = np.minimum(boxes[:, 3] + half, height).astype(np.int64)
    # never an empty crop: at least one pixel, inside the image
    x0 = np.minimum(x0, width - 1)
    y0 = np.minimum(y0, height - 1)
    x1 = np.maximum(x1, x0 + 1)
    y1 = np.maximum(y1, y0 + 1)
    return np.stack([x0, y0, x1, y1], axis=1)


def crop_with_margin(
    image: np.ndarray, boxes: np.ndarray, image_size: int = 160, margin: float = 32
) -> np.ndarray:
    """davidsandberg's margin crop of every box: ``(N, S, S, 3)`` uint8 (``(0, S, S, 3)`` for none).

    Each box is grown to ``x1 - margin/2, y1 - margin/2, x2 + margin/2, y2 + margin/2``, clipped to
    the image, truncated to integers, cut out and resized to ``S x S`` (bilinear).
    """
    image = _check_image(image)
    size = _check_size(image_size)
    margin = _check_margin(margin)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 4):
        raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}.")
    regions = _margin_regions(boxes, image.shape, margin)
    out = np.empty((len(regions), size, size, 3), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(regions):
        out[k] = cv2.resize(image[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_LINEAR)
    return out


# --------------------------------------------------------------------------------------------
# similarity alignment
# --------------------------------------------------------------------------------------------


def similarity_template(image_size: int = 160, margin: float = 32) -> np.ndarray:
    """The reference landmarks ``(5, 2)`` in pixel coordinates of an ``image_size`` crop.

    For ``margin=32`` these are the derived numbers (:data:`TEMPLATE_MARGIN32`). For another margin
    the template is re-framed around the mean LFW box (:data:`TEMPLATE_MEAN_BOX`): a point at
    ``t * (b + 32) - 16`` pixels from the box edge sits at ``(that + margin/2) / (b + margin)``.
    """
    size = _check_size(image_size)
    margin = _check_margin(margin)
    frac = TEMPLATE_MARGIN32.copy()
    if margin != _TEMPLATE_MARGIN:
        box = np.asarray(TEMPLATE_MEAN_BOX, dtype=np.float64)
        from_box_edge = frac * (box + _TEMPLATE_MARGIN) - _TEMPLATE_MARGIN / 2.0
        frac = (from_box_edge + margin / 2.0) / (box + margin)
    return (frac * size - 0.5).astype(np.float64)


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991, no reflection) mapping ``src`` to ``dst``.

    Returns the 2x3 matrix for ``cv2.warpAffine``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    var = (sc**2).sum() / len(src)
    scale = (d * sign).sum() / var if var > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def _lmeds(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    matrix, _ = cv2.estimateAffinePartial2D(
        np.asarray(src, np.float32).reshape(-1, 1, 2),
        np.asarray(dst, np.float32).reshape(-1, 1, 2),
        method=cv2.LMEDS,
    )
    return _umeyama(src, dst) if matrix is None else matrix


_ESTIMATORS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "umeyama": _umeyama,
    "lmeds": _lmeds,
}


def crop_similarity(
    image: np.ndarray,
    landmarks: np.ndarray,
    image_size: int = 160,
    template: np.ndarray | None = None,
    margin: float = 32,
    estimator: Literal["umeyama", "lmeds"] = "umeyama",
) -> np.ndarray:
    """Warp each face so its 5 landmarks land on the template: ``(N, S, S, 3)`` uint8.

    ``landmarks`` is ``(N, 5, 2)`` (x, y) in image pixels. ``template`` (``(5, 2)`` pixels of the
    ``S x S`` output) defaults to :func:`similarity_template` for ``image_size`` and ``margin``,
    i.e. the margin-crop framing. ``estimator``: ``"umeyama"`` (least squares over the 5 points)
    or ``"lmeds"`` (``cv2.estimateAffinePartial2D`` with LMEDS). Pixels outside the image are black.
    """
    image = _check_image(image)
    size = _check_size(image_size)
    if estimator not in _ESTIMATORS:
        raise ConfigError(f"estimator must be one of {sorted(_ESTIMATORS)}, got {estimator!r}.")
    estimate = _ESTIMATORS[estimator]
    dst = (
        similarity_template(size, margin) if template is None else np.asarray(template, np.float64)
    )
    if dst.shape != (5, 2):
        raise ValueError(f"template must have shape (5, 2), got {dst.shape}.")
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.size == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (5, 2):
        raise ValueError(f"landmarks must have shape (N, 5, 2), got {landmarks.shape}.")
    out = np.empty((len(landmarks), size, size, 3), np.uint8)
    for k, points in enumerate(landmarks):
        matrix = estimate(points, dst)
        out[k] = cv2.warpAffine(
            image,
            matrix,
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    return out


# --------------------------------------------------------------------------------------------
# the aligner
# --------------------------------------------------------------------------------------------


def _align_margin(aligner: FaceAligner, image: np.ndarray, detections: Detections) -> np.ndarray:
    return crop_with_margin(image, detections.boxes, aligner.image_size, aligner.margin)


def _align_similarity(
    aligner: FaceAligner, image: np.ndarray, detections: Detections
) -> np.ndarray:
    return crop_similarity(
        image, detections.landmarks, aligner.image_size, template=aligner.template
    )


_METHODS: dict[str, Callable[[FaceAligner, np.ndarray, Detections], np.ndarray]] = {
    "margin": _align_margin,
    "similarity": _align_similarity,
}


class FaceAligner:
    """Turns the detections of one image into ``(N, S, S, 3)`` uint8 face crops.

    ``method="margin"``: davidsandberg's margin crop; ``"similarity"``: 5-point similarity
    alignment onto the template in the same framing (for ``margin``).
    """

    METHODS = tuple(_METHODS)

    def __init__(
        self,
        image_size: int = 160,
        margin: float = 32,
        method: Literal["margin", "similarity"] = "margin",
    ) -> None:
        self.image_size = _check_size(image_size)
        self.margin = _check_margin(margin)
        if method not in _METHODS:
            raise ConfigError(
                f"alignment method must be one of {sorted(_METHODS)}, got {method!r}."
            )
        self.method = method
        self.template = similarity_template(self.image_size, self.margin)
        self._align = _METHODS[method]

    @classmethod
    def for_spec(cls, spec: ModelSpec) -> FaceAligner:
        """The aligner that cuts the crops a model's spec asks for (size, margin, method)."""
        return cls(image_size=spec.input_size, margin=spec.margin, method=spec.alignment)

    def __call__(self, image: np.ndarray, detections: Detections) -> np.ndarray:
        image = _check_image(image)
        if len(detections) == 0:
            return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        return self._align(self, image, detections)

    def center_crop(self, image: np.ndarray) -> np.ndarray:
        """``(S, S, 3) uint8`` margin crop of a face-sized box at the image centre.

        Stands in for a face when detection finds none but a crop is still needed (the LFW
        protocol gives every pair a distance). The box has the mean MTCNN face proportions of
        :data:`TEMPLATE_MEAN_BOX` scaled to the image: 94 x 125 px on a 250 x 250 LFW image.
        """
        image = _check_image(image)
        h, w = image.shape[:2]
        side = min(h, w) / 250.0
        bw, bh = TEMPLATE_MEAN_BOX[0] * side, TEMPLATE_MEAN_BOX[1] * side
        box = np.array([[(w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2]], np.float32)
        return crop_with_margin(image, box, self.image_size, self.margin)[0]

    def __reduce__(self):
        return (type(self), (self.image_size, self.margin, self.method))

    def __repr__(self) -> str:
        return f"FaceAligner(image_size={self.image_size}, margin={self.margin:g}, method={self.method!r})"


# --------------------------------------------------------------------------------------------
# template derivation (benchmarks/derive_alignment_template.py)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateEstimate:
    """Result of :func:`derive_template`."""

    template: np.ndarray  # (5, 2) mean landmark positions as fractions of the margin-crop side
    std: np.ndarray  # (5, 2) their standard deviation over the faces
    mean_box: tuple[float, float]  # mean MTCNN box (width, height), pixels
    n_faces: int  # faces averaged
    n_images: int  # images seen
    n_no_face: int  # images without a detection
    n_clipped: int  # central faces left out because the margin box leaves the image


def derive_template(
    images: Iterable[np.ndarray], detector: FaceDetector, margin: float = 32, batch_size: int = 16
) -> TemplateEstimate:
    """Mean MTCNN landmarks of the central face, in margin-crop coordinates.

    For each image: detect, keep :func:`select_central_face`, skip it when the margin box would be
    clipped by the image border (the framing would be distorted), and express the landmarks as
    fractions of the crop side with the exact sampling of ``cv2.resize``: a landmark at pixel
    ``x`` of a crop starting at ``x0`` and ``w`` pixels wide is at ``(x - x0 + 0.5) / w``.
    """
    margin = _check_margin(margin)
    fractions, sizes = [], []
    n_images = n_no_face = n_clipped = 0

    def consume(batch: list[np.ndarray]) -> None:
        nonlocal n_images, n_no_face, n_clipped
        for image, dets in zip(batch, detector.detect(batch)):
            n_images += 1
            if len(dets) == 0:
                n_no_face += 1
                continue
            k = select_central_face(dets, image.shape)
            box = dets.boxes[k].astype(np.float64)
            half = margin / 2.0
            if (
                box[0] - half < 0
                or box[1] - half < 0
                or box[2] + half > image.shape[1]
                or box[3] + half > image.shape[0]
            ):
                n_clipped += 1
                continue
            x0, y0, x1, y1 = _margin_regions(box[None], image.shape, margin)[0]
            points = dets.landmarks[k].astype(np.float64)
            fractions.append((points - [x0, y0] + 0.5) / [x1 - x0, y1 - y0])
            sizes.append((box[2] - box[0], box[3] - box[1]))

    batch: list[np.ndarray] = []
    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            consume(batch)
            batch = []
    if batch:
        consume(batch)
    if not fractions:
        raise NoFaceFoundError("derive_template found no usable face in the images it was given.")
    stack = np.stack(fractions)
    mean_box = np.mean(sizes, axis=0)
    logger.info(
        "template from %d faces (%d images, %d without face, %d clipped)",
        len(stack),
        n_images,
        n_no_face,
        n_clipped,
    )
    return TemplateEstimate(
        template=stack.mean(0),
        std=stack.std(0),
        mean_box=(float(mean_box[0]), float(mean_box[1])),
        n_faces=len(stack),
        n_images=n_images,
        n_no_face=n_no_face,
        n_clipped=n_clipped,
    )
