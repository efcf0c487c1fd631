"""Sideways photos: when a photo declares no orientation and no face is found, try the others.

Scanned prints, exports from old software and photos from cameras without an orientation sensor
are often stored sideways or upside down with no EXIF Orientation tag, and MTCNN (trained on
upright faces) finds nothing in them. :class:`RotationRetry` takes the images of a batch on which
detection found no face and whose file declared no orientation (``orientation == 0``), rotates
each by 90, 270 and 180 degrees clockwise, detects on all rotated copies in one batch per angle,
and keeps, per image, the rotation whose best face scores highest (at least ``min_score``). The
rotated image replaces the original for the later stages (crops are cut from it) and the angle
is recorded (``rotation``: degrees clockwise applied to the decoded image, 0 when none).

Cost: on an image that needs no retry, nothing. On one with no face and no orientation tag,
three more detections (all three angles are tried, because a face found at a wrong angle with a
lower score is common); ``benchmarks/bench_media.py`` measures it on a rotated copy of LFW.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["RETRY_ANGLES", "RotationRetry", "RetryResult", "rotate", "box_to_unrotated"]

logger = logging.getLogger(__name__)

#: Angles tried, degrees clockwise (phones held sideways first).
RETRY_ANGLES: tuple[int, ...] = (90, 270, 180)


def rotate(image: np.ndarray, degrees_cw: int) -> np.ndarray:
    """``image`` rotated by ``degrees_cw`` (a multiple of 90) clockwise, C-contiguous."""
    k = (int(degrees_cw) // 90) % 4
    if k == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, -k))


def box_to_unrotated(points: np.ndarray, degrees_cw: int, width: int, height: int) -> np.ndarray:
    """Map ``(..., 2)`` x, y points of an image rotated by ``degrees_cw`` back to the image
    before rotation.

    Args:
        points: x, y pixel coordinates in the rotated image.
        degrees_cw: the rotation that was applied (0, 90, 180, 270).
        width, height: size of the image *before* rotation (px).

    Returns:
        Points in the unrotated image, same shape, float32.
    """
    p = np.asarray(points, np.float32)
    x, y = p[..., 0], p[..., 1]
    k = (int(degrees_cw) // 90) % 4
    if k == 0:
        ox, oy = x, y
    elif k == 1:  # rotated clockwise: (x', y') = (H - y, x)
        ox, oy = y, height - x
    elif k == 2:
        ox, oy = width - x, height - y
    else:  # 270 clockwise: (x', y') = (y, W - x)
        ox, oy = width - y, x
    return np.stack([ox, oy], axis=-1).astype(np.float32)


@dataclass
class RetryResult:
    """Per image: the detections, the image they refer to, and the rotation applied."""

    detections: list[Any]
    images: list[np.ndarray]
    rotations: list[int]
    retried: int  # images that were retried (no face, no orientation)
    detector_calls: int  # extra detect() batches run


class RotationRetry:
    """Retry detection on rotated copies of faceless, orientation-less images.

    Args:
        detector: anything with ``detect(list of (H, W, 3) uint8) -> list[Detections]``.
        angles: clockwise angles to try.
        min_score: the best face of a rotation must score at least this to be kept.
        retry_below: also retry orientation-less images whose best face scores below this
            (MTCNN finds some faces turned by 90 degrees at ~0.98 and then crops them
            sideways); the upright angle is kept unless a rotation's best face scores higher
            and at least ``retry_below`` itself. None: retry only images with no face.
    """

    def __init__(self, detector: Any, angles: Sequence[int] = RETRY_ANGLES,
                 min_score: float = 0.9, retry_below: float | None = None):
        self.detector = detector
        self.angles = tuple(int(a) for a in angles)
        self.min_score = float(min_score)
        self.retry_below = None if retry_below is None else float(retry_below)

    def _needs_retry(self, detections: Any, orientation: int) -> bool:
        if isinstance(detections, Exception) or int(orientation) != 0:
            return False
        if len(detections) == 0:
            return True
        return self.retry_below is not None and float(detections.scores.max()) < self.retry_below

    def __call__(self, images: Sequence[np.ndarray], detections: Sequence[Any],
                 orientations: Sequence[int]) -> RetryResult:
        """Args:
            images: the decoded images, ``(H, W, 3) uint8``.
            detections: detection results of ``images`` (``Detections`` or an exception).
            orientations: what each file declared (0: nothing; only those are retried).

        Returns:
            :class:`RetryResult` (lists aligned with ``images``).
        """
        dets = list(detections)
        out_images = list(images)
        rotations = [0] * len(dets)
        todo = [i for i, d in enumerate(dets) if self._needs_retry(d, orientations[i])]
        calls = 0
        if todo:
            best: dict[int, tuple[float, int, Any]] = {
                i: (float(dets[i].scores.max()), 0, dets[i]) for i in todo if len(dets[i])}
            for angle in self.angles:
                rotated = [rotate(out_images[i], angle) for i in todo]
                found = self.detector.detect(rotated)
                calls += 1
                for i, d in zip(todo, found):
                    # a photo with upright faces is turned only by a confident rotation
                    floor = self.min_score if len(dets[i]) == 0 else max(self.min_score,
                                                                         self.retry_below or 0.0)
                    if len(d) and float(d.scores.max()) >= floor:
                        score = float(d.scores.max())
                        if i not in best or score > best[i][0]:
                            best[i] = (score, angle, d)
            for i, (score, angle, d) in best.items():
                if angle == 0:
                    continue
                dets[i] = d
                out_images[i] = rotate(out_images[i], angle)
                rotations[i] = angle
            logger.debug("rotation retry: %d images, faces found in %d", len(todo), len(best))
        return RetryResult(dets, out_images, rotations, len(todo), calls)
