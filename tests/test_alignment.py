"""Alignment: face selection, margin crop maths, similarity alignment; prewhiten (standardization)."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from facenet_platform.core.alignment import (
    TEMPLATE_MARGIN32,
    FaceAligner,
    _umeyama,
    crop_similarity,
    crop_with_margin,
    select_central_face,
    similarity_template,
)
from facenet_platform.core.detection import Detections, FaceDetector
from facenet_platform.core.errors import ConfigError, ImageError, NoFaceFoundError
from facenet_platform.core.standardization import prewhiten

pytest.importorskip("skimage.data")  # the `astronaut` fixture of conftest.py


def coordinate_image(height: int = 100, width: int = 120) -> np.ndarray:
    """R = column, G = row, B = 7: every pixel says where it is."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs, ys, np.full_like(xs, 7)], axis=2).astype(np.uint8)


def dets_from_boxes(boxes) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    return Detections(
        boxes, np.linspace(0.99, 0.9, n).astype(np.float32), np.zeros((n, 5, 2), np.float32)
    )


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(num_threads=1)


@pytest.fixture(scope="module")
def astronaut_dets(detector, astronaut):
    return detector.detect([astronaut])[0]


# ---------------------------------------------------------------------------------- margin crop


def test_margin_crop_exact_region():
    image = coordinate_image()
    # box grown by 5 px each side -> x 25..75, y 15..65: a 50 x 50 region, so a 50 px crop is a copy
    crops = crop_with_margin(image, np.array([[30, 20, 70, 60]]), image_size=50, margin=10)
    assert crops.shape == (1, 50, 50, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops[0], image[15:65, 25:75])


def test_margin_crop_truncates_fractions_like_int32():
    image = coordinate_image()
    # x0 = int(30.7 - 5) = 25, y0 = int(20.2 - 5) = 15, x1 = int(70.9 + 5) = 75, y1 = int(60.6 + 5) = 65
    crops = crop_with_margin(image, np.array([[30.7, 20.2, 70.9, 60.6]]), image_size=50, margin=10)
    np.testing.assert_array_equal(crops[0], image[15:65, 25:75])


@pytest.mark.parametrize(
    ("box", "region"),
    [
        ((-10, -5, 30, 35), (0, 0, 35, 40)),  # top-left corner: clipped at 0
        ((100, 80, 130, 110), (95, 75, 120, 100)),  # bottom-right: clipped at W=120, H=100
        ((-50, 10, 200, 20), (0, 5, 120, 25)),  # wider than the image
    ],
)
def test_margin_crop_clips_at_borders(box, region):
    image = coordinate_image()
    x0, y0, x1, y1 = region
    crops = crop_with_margin(image, np.array([box]), image_size=40, margin=10)
    expected = cv2.resize(image[y0:y1, x0:x1], (40, 40), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(crops[0], expected)
    # the corners of the crop come from the corners of the region
    assert abs(int(crops[0, 0, 0, 0]) - x0) <= 1 and abs(int(crops[0, 0, 0, 1]) - y0) <= 1
    assert (
        abs(int(crops[0, -1, -1, 0]) - (x1 - 1)) <= 1
        and abs(int(crops[0, -1, -1, 1]) - (y1 - 1)) <= 1
    )


def test_margin_crop_many_and_none():
    image = coordinate_image()
    crops = crop_with_margin(
        image, np.array([[30, 20, 70, 60], [0, 0, 10, 10], [200, 200, 220, 220]]), 32, 8
    )
    assert crops.shape == (3, 32, 32, 3)
    assert crop_with_margin(image, np.zeros((0, 4)), 160).shape == (0, 160, 160, 3)
    with pytest.raises(ValueError):
        crop_with_margin(image, np.zeros((2, 3)))
    with pytest.raises(ImageError):
        crop_with_margin(image.astype(np.float32), np.zeros((0, 4)))
    with pytest.raises(ConfigError):
        crop_with_margin(image, np.zeros((0, 4)), image_size=0)
    with pytest.raises(ConfigError):
        crop_with_margin(image, np.zeros((0, 4)), margin=-2)


# ---------------------------------------------------------------------------------- selection


def reference_score(boxes, shape):
    boxes = np.asarray(boxes, np.float64)
    size = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    offsets = np.vstack(
        [
            (boxes[:, 0] + boxes[:, 2]) / 2 - shape[1] / 2,
            (boxes[:, 1] + boxes[:, 3]) / 2 - shape[0] / 2,
        ]
    )
    return size - np.sum(offsets**2, 0) * 2.0


def test_select_central_face_prefers_central_over_larger_corner_face():
    central = (175, 175, 325, 325)  # 150 x 150 at the centre: score 22500
    corner = (0, 0, 200, 200)  # 200 x 200, larger, but centred 150 px away on both axes: -50000
    for boxes, expected in (([corner, central], 1), ([central, corner], 0)):
        assert select_central_face(dets_from_boxes(boxes), (500, 500)) == expected
        assert expected == int(np.argmax(reference_score(boxes, (500, 500))))


def test_select_central_face_size_beats_small_offset():
    small_central = (200, 200, 300, 300)  # 10000
    large_near = (190, 170, 350, 330)  # 25600 - 2 * (20^2 + 0^2) = 24800
    assert select_central_face(dets_from_boxes([small_central, large_near]), (500, 500, 3)) == 1


def test_select_central_face_uses_height_and_width():
    # image 200 high, 600 wide: centre (x=300, y=100)
    boxes = [(250, 50, 350, 150), (50, 50, 150, 150)]
    assert select_central_face(dets_from_boxes(boxes), (200, 600)) == 0
    assert select_central_face(dets_from_boxes(boxes[::-1]), (200, 600)) == 1


def test_select_central_face_empty():
    with pytest.raises(NoFaceFoundError):
        select_central_face(Detections.empty(), (100, 100))


# ---------------------------------------------------------------------------------- prewhiten


def test_prewhiten_batch_and_single():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (4, 160, 160, 3), dtype=np.uint8)
    crops[1] = crops[1] // 4 + 100  # a low-contrast one
    out = prewhiten(crops)
    assert out.dtype == np.float32 and out.shape == crops.shape
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-4)
    single = prewhiten(crops[2])
    assert single.shape == (160, 160, 3)
    np.testing.assert_allclose(single, out[2], atol=1e-6)
    x = crops[3].astype(np.float64)
    np.testing.assert_allclose(
        out[3], (x - x.mean()) / max(x.std(), 1 / np.sqrt(x.size)), atol=1e-5
    )


def test_prewhiten_constant_image_is_finite():
    out = prewhiten(np.full((2, 8, 8, 3), 77, np.uint8))
    assert np.all(np.isfinite(out)) and np.all(out == 0)
    assert prewhiten(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 8, 8, 3)
    with pytest.raises(ValueError):
        prewhiten(np.zeros((8, 8), np.uint8))


# ---------------------------------------------------------------------------------- similarity


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    matrix = _umeyama(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_similarity_template():
    template = similarity_template(160, 32)
    np.testing.assert_allclose(template, TEMPLATE_MARGIN32 * 160 - 0.5)
    assert template.shape == (5, 2)
    left_eye, right_eye, nose, mouth_left, mouth_right = template
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    wider = similarity_template(160, 64)  # more margin: the face is smaller in the crop
    assert wider[1, 0] - wider[0, 0] < template[1, 0] - template[0, 0]
    np.testing.assert_allclose(similarity_template(320, 32), TEMPLATE_MARGIN32 * 320 - 0.5)


def test_similarity_crop_puts_eyes_on_template(detector, astronaut, astronaut_dets):
    assert len(astronaut_dets) == 1
    crops = crop_similarity(astronaut, astronaut_dets.landmarks, image_size=160)
    assert crops.shape == (1, 160, 160, 3) and crops.dtype == np.uint8
    template = similarity_template(160)
    # the fitted transform takes the landmarks near the template (a least-squares fit of 5 points)
    matrix = _umeyama(astronaut_dets.landmarks[0], template)
    moved = astronaut_dets.landmarks[0] @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(moved - template).max() < 8
    # and detecting again in the aligned crop finds the eyes where the template puts them
    (again,) = detector.detect([crops[0]])
    assert len(again) >= 1
    eyes = again.landmarks[0, :2]
    assert np.linalg.norm(eyes - template[:2], axis=1).max() < 4
    # lmeds gives a similar result
    lmeds = crop_similarity(astronaut, astronaut_dets.landmarks, 160, estimator="lmeds")
    assert np.abs(lmeds.astype(int) - crops.astype(int)).mean() < 20
    with pytest.raises(ConfigError):
        crop_similarity(astronaut, astronaut_dets.landmarks, estimator="affine")
    assert crop_similarity(astronaut, np.zeros((0, 5, 2))).shape == (0, 160, 160, 3)


# ---------------------------------------------------------------------------------- aligner


def test_face_aligner(astronaut, astronaut_dets):
    margin = FaceAligner()(astronaut, astronaut_dets)
    np.testing.assert_array_equal(
        margin, crop_with_margin(astronaut, astronaut_dets.boxes, 160, 32)
    )
    similar = FaceAligner(method="similarity")(astronaut, astronaut_dets)
    np.testing.assert_array_equal(
        similar, crop_similarity(astronaut, astronaut_dets.landmarks, 160)
    )
    small = FaceAligner(image_size=96, margin=16)(astronaut, astronaut_dets)
    assert small.shape == (1, 96, 96, 3)
    assert FaceAligner()(astronaut, Detections.empty()).shape == (0, 160, 160, 3)
    clone = pickle.loads(pickle.dumps(FaceAligner(112, 20, "similarity")))
    assert (clone.image_size, clone.margin, clone.method) == (112, 20, "similarity")
    assert set(FaceAligner.METHODS) == {"margin", "similarity"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "affine"},
        {"image_size": 0},
        {"image_size": 16.5},
        {"margin": -1},
        {"margin": "32"},
    ],
)
def test_face_aligner_invalid(kwargs):
    with pytest.raises(ConfigError):
        FaceAligner(**kwargs)


def test_face_aligner_rejects_bad_image(astronaut_dets):
    with pytest.raises(ImageError):
        FaceAligner()(np.zeros((10, 10), np.uint8), astronaut_dets)
