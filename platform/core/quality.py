"""Face quality: one score in [0, 1] per detected face, from what detection already measured.

Four components, each mapped onto [0, 1] (1 = good) by a clipped ramp:

* ``detection``: the MTCNN probability. Real faces score > 0.99; false detections (fabric
  patterns, jewellery, hair) mostly 0.7-0.97. Ramp from :data:`DETECTION_RAMP`.
* ``size``: the shorter side of the box in pixels, on a log scale (:data:`SIZE_RAMP`): the
  160 px crop of a 20 px face is an upscaled blur, above ~80 px nothing more is gained.
* ``sharpness``: the variance of the Laplacian of the grey aligned 160 px crop (the index's
  ``sharpness`` column, :func:`facenet_platform.index.stages.sharpness`), on a log scale
  (:data:`SHARPNESS_RAMP`). Unknown sharpness (``None``) is neutral (1).
* ``frontal``: from the five landmarks (left eye, right eye, nose, mouth left, mouth right).
  In the face's own frame (rotated so the eyes are level): *yaw* is the nose's sideways offset
  from the eye/mouth midline in inter-ocular distances (0 frontal, ~0.5 at 45 degrees, the nose
  leaves the eye span in profile); *roll* is the eye-line angle; *pitch* is where the nose sits
  between the eye line and the mouth line (about 0.55 frontal). Each gives a ramp; the
  component is their product.

The score is the product of the components: each is read as the chance that this aspect of
the face is good enough, so one bad component (a 12 px face, a profile, a blur) pulls the face
down whatever the rest says, and two middling ones (a small *and* soft stranger in the
background) do too. (A weighted geometric mean was measured against it on the in-the-wild check
and let more background strangers through at every floor: benchmarks/RESULTS.md.) Faces under a
floor (``PeopleOptions.min_quality`` in ``index/people_engine.py``; chosen by measurement in
``benchmarks/bench_people.py``) do not start or join people.

Everything is vectorised: ``(N,)`` arrays in, ``(N,)`` float32 out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

#: (bad, good): detection probability at which the component is 0 and 1.
DETECTION_RAMP = (0.80, 0.99)
#: (bad, good): shorter box side in px (log scale).
SIZE_RAMP = (16.0, 72.0)
#: (bad, good): variance of the Laplacian of the 160 px grey crop (log scale).
SHARPNESS_RAMP = (8.0, 120.0)
#: (good, bad): |yaw| in inter-ocular distances (nose offset from the eye/mouth midline).
YAW_RAMP = (0.15, 0.75)
#: (good, bad): |roll| in degrees.
ROLL_RAMP = (25.0, 60.0)
#: (good, bad): |pitch - PITCH_CENTER| (nose position between eye line 0 and mouth line 1).
PITCH_CENTER = 0.55
PITCH_RAMP = (0.25, 0.6)


@dataclass(frozen=True)
class QualityComponents:
    """Per face components in [0, 1] and the combined ``score``, each ``(N,) float32``."""

    detection: np.ndarray
    size: np.ndarray
    sharpness: np.ndarray
    frontal: np.ndarray
    score: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"detection": self.detection, "size": self.size, "sharpness": self.sharpness,
                "frontal": self.frontal, "score": self.score}


def _ramp_up(x: np.ndarray, bad: float, good: float) -> np.ndarray:
    return np.clip((x - bad) / (good - bad), 0.0, 1.0)


def _ramp_down(x: np.ndarray, good: float, bad: float) -> np.ndarray:
    return np.clip((bad - x) / (bad - good), 0.0, 1.0)


def detection_component(scores: np.ndarray) -> np.ndarray:
    """``(N,)`` detection probabilities -> ``(N,)`` in [0, 1]."""
    return _ramp_up(np.asarray(scores, np.float64), *DETECTION_RAMP)


def size_component(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` boxes x1 y1 x2 y2 px -> ``(N,)`` in [0, 1] from the shorter side (log px)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    side = np.maximum(side, 1.0)
    return _ramp_up(np.log(side), np.log(SIZE_RAMP[0]), np.log(SIZE_RAMP[1]))


def sharpness_component(sharpness: np.ndarray | None, n: int) -> np.ndarray:
    """``(N,)`` Laplacian variances -> ``(N,)`` in [0, 1] (log scale); ``None`` -> ones."""
    if sharpness is None:
        return np.ones(n, np.float64)
    s = np.maximum(np.asarray(sharpness, np.float64), 1e-3)
    return _ramp_up(np.log(s), np.log(SHARPNESS_RAMP[0]), np.log(SHARPNESS_RAMP[1]))


def pose(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(N, 5, 2)`` landmarks -> ``(yaw, roll_degrees, pitch)`` each ``(N,)``.

    yaw: the nose's sideways offset from the midline (eye centre to mouth centre) in
    inter-ocular distances, in the frame where the eyes are level; roll: eye-line angle in
    degrees; pitch: the nose's position along the midline (0 = eye line, 1 = mouth line).
    """
    lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    le, re, nose, ml, mr = (lm[:, i] for i in range(5))
    eye_vec = re - le
    iod = np.maximum(np.linalg.norm(eye_vec, axis=1), 1e-6)
    roll = np.degrees(np.arctan2(eye_vec[:, 1], eye_vec[:, 0]))
    # rotate into the face frame: x along the eye line, y perpendicular (downwards)
    ux = eye_vec / iod[:, None]
    uy = np.stack([-ux[:, 1], ux[:, 0]], axis=1)
    eyes_c = (le + re) / 2
    mouth_c = (ml + mr) / 2

    def frame(p):
        d = p - eyes_c
        return np.sum(d * ux, axis=1), np.sum(d * uy, axis=1)

    nx, ny = frame(nose)
    mx, my = frame(mouth_c)
    my_safe = np.where(np.abs(my) < 1e-6, 1e-6, my)
    t = ny / my_safe                     # where the nose sits between eye line and mouth line
    mid_x = t * mx                       # the midline's x at the nose's height
    yaw = (nx - mid_x) / iod
    # a mouth above the eyes (upside-down or broken landmarks) is as bad as it gets
    pitch = np.where(my > 0, t, np.inf)
    return yaw, roll, pitch


def frontal_component(landmarks: np.ndarray) -> np.ndarray:
    """``(N, 5, 2)`` landmarks -> ``(N,)`` in [0, 1]: 1 frontal, 0 profile or broken."""
    yaw, roll, pitch = pose(landmarks)
    q = (_ramp_down(np.abs(yaw), *YAW_RAMP) * _ramp_down(np.abs(roll), *ROLL_RAMP)
         * _ramp_down(np.abs(pitch - PITCH_CENTER), *PITCH_RAMP))
    return np.nan_to_num(q, nan=0.0, posinf=0.0, neginf=0.0)


def quality_components(scores: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray,
                       sharpness: np.ndarray | None = None) -> QualityComponents:
    """Every component and the combined score of ``N`` faces.

    Args:
        scores: ``(N,)`` detection probabilities.
        boxes: ``(N, 4)`` x1 y1 x2 y2 px.
        landmarks: ``(N, 5, 2)`` (or ``(N, 10)`` x1 y1 ... x5 y5) px.
        sharpness: ``(N,)`` variance of the Laplacian of the aligned grey crop, or None.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    n = len(scores)
    boxes = np.asarray(boxes, np.float64)
    landmarks = np.asarray(landmarks, np.float64)
    if boxes.size != 4 * n or landmarks.size != 10 * n:
        raise ConfigError(f"face_quality: {n} scores but boxes {boxes.shape} and landmarks "
                          f"{landmarks.shape}; expected (N, 4) and (N, 5, 2)")
    if sharpness is not None and np.asarray(sharpness).size != n:
        raise ConfigError(f"face_quality: {n} scores but {np.asarray(sharpness).size} sharpness values")
    parts = {
        "detection": detection_component(scores),
        "size": size_component(boxes.reshape(n, 4)),
        "sharpness": sharpness_component(sharpness, n),
        "frontal": frontal_component(landmarks.reshape(n, 5, 2)),
    }
    score = np.prod(np.stack(list(parts.values())), axis=0) if n else np.zeros(0)
    f32 = {k: np.asarray(v, np.float32) for k, v in parts.items()}
    return QualityComponents(score=np.clip(score, 0, 1).astype(np.float32), **f32)


def face_quality(scores: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray,
                 sharpness: np.ndarray | None = None) -> np.ndarray:
    """``(N,) float32`` quality in [0, 1] of ``N`` faces (see :func:`quality_components`)."""
    return quality_components(scores, boxes, landmarks, sharpness).score
