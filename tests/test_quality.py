"""Face quality: components on synthetic landmarks and boxes, and on the astronaut photo degraded."""

from __future__ import annotations

import numpy as np
import pytest

from facenet_platform.core import quality as Q
from facenet_platform.core.errors import ConfigError

# a frontal face in a 100 px box: eyes level, nose on the midline, mouth below
FRONTAL = np.array([[35, 40], [65, 40], [50, 58], [38, 75], [62, 75]], np.float32)
BOX = np.array([0, 0, 100, 110], np.float32)


def rotate(points, degrees, center=(50, 55)):
    a = np.radians(degrees)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return ((points - center) @ r.T + center).astype(np.float32)


def test_pose_of_a_frontal_face_and_its_rotations():
    yaw, roll, pitch = Q.pose(FRONTAL[None])
    assert abs(yaw[0]) < 1e-6 and abs(roll[0]) < 1e-6 and 0.4 < pitch[0] < 0.7
    for deg in (-30, 15, 40):
        y, r, p = Q.pose(rotate(FRONTAL, deg)[None])
        # in-plane rotation changes roll only
        assert r[0] == pytest.approx(deg, abs=1e-3)
        assert abs(y[0]) < 1e-5 and p[0] == pytest.approx(pitch[0], abs=1e-5)


def test_frontal_component_falls_with_yaw_roll_and_broken_landmarks():
    turned = FRONTAL.copy()
    profile = FRONTAL.copy()
    turned[2, 0] += 0.3 * 30       # nose 0.3 inter-ocular distances off the midline
    profile[2, 0] += 0.9 * 30      # nose outside the eyes: profile
    upside = FRONTAL.copy()
    upside[3:, 1] = 20             # mouth above the eyes
    f = Q.frontal_component(np.stack([FRONTAL, turned, profile, rotate(FRONTAL, 70), upside]))
    assert f[0] == 1.0
    assert 0 < f[1] < 1
    assert f[2] == 0 and f[3] == 0 and f[4] == 0


def test_size_detection_sharpness_components_are_monotonic():
    sides = np.array([8, 16, 24, 40, 72, 300], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides * 1.2], axis=1)
    size = Q.size_component(boxes)
    assert size[0] == 0 and size[-1] == 1 and np.all(np.diff(size) >= 0)
    det = Q.detection_component(np.array([0.5, 0.85, 0.95, 0.999]))
    assert det[0] == 0 and det[-1] == 1 and np.all(np.diff(det) > 0)
    sharp = Q.sharpness_component(np.array([1, 10, 40, 500.0]), 4)
    assert sharp[0] == 0 and sharp[-1] == 1 and np.all(np.diff(sharp) > 0)
    assert np.all(Q.sharpness_component(None, 3) == 1)


def test_face_quality_combines_and_validates():
    n = 4
    scores = np.array([0.999, 0.999, 0.85, 0.999], np.float32)
    boxes = np.stack([BOX, BOX, BOX, np.array([0, 0, 14, 15], np.float32)])
    lm = np.stack([FRONTAL] * 3 + [FRONTAL * 0.14])
    sharp = np.array([200, 12, 200, 200], np.float32)
    c = Q.quality_components(scores, boxes, lm, sharp)
    assert c.score.dtype == np.float32 and c.score.shape == (n,)
    assert c.score[0] == pytest.approx(1.0)
    assert 0 < c.score[1] < c.score[0] and 0 < c.score[2] < c.score[0]
    assert c.score[3] == 0                         # a 14 px face
    assert np.array_equal(Q.face_quality(scores, boxes, lm.reshape(n, 10), sharp), c.score)
    assert Q.face_quality(np.zeros(0), np.zeros((0, 4)), np.zeros((0, 5, 2))).shape == (0,)
    with pytest.raises(ConfigError):
        Q.face_quality(scores, boxes[:3], lm, sharp)
    with pytest.raises(ConfigError):
        Q.face_quality(scores, boxes, lm, sharp[:2])


def test_astronaut_good_then_degraded(astronaut):
    import cv2

    from facenet_platform.core.alignment import FaceAligner
    from facenet_platform.core.detection import FaceDetector
    from facenet_platform.index.stages import sharpness

    detector = FaceDetector()
    aligner = FaceAligner(image_size=160, margin=32)

    def quality(image):
        d = detector.detect([image])[0]
        assert len(d) >= 1
        best = int(np.argmax(d.scores))
        d = d.take([best])
        return Q.quality_components(d.scores, d.boxes, d.landmarks, sharpness(aligner(image, d)))

    original = quality(astronaut)
    assert original.score[0] > 0.9
    blurred = quality(cv2.GaussianBlur(astronaut, (0, 0), 4))
    assert blurred.sharpness[0] < 0.2 and blurred.score[0] < 0.5
    small = quality(cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA))
    assert small.size[0] < 0.5 and small.score[0] < original.score[0]
    rot = cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((256, 256), 45, 1), (512, 512))
    rolled = quality(rot)
    assert rolled.frontal[0] < original.frontal[0]
