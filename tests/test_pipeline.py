"""The face pipeline end to end on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import requires_lfw


def test_pipeline_finds_and_embeds_the_astronaut(pipeline, astronaut):
    blank = np.full((200, 300, 3), 128, np.uint8)
    faces = pipeline([astronaut, blank])
    assert len(faces) == 2 and faces[1] == []
    assert len(faces[0]) == 1
    face = faces[0][0]
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert abs(np.linalg.norm(face.embedding) - 1) < 1e-5
    assert face.score > 0.95
    x1, y1, x2, y2 = face.box
    assert x1 < x2 and y1 < y2
    d = face.to_dict()
    assert set(d) == {"index", "box", "landmarks", "score"} and len(d["landmarks"]) == 5


def test_same_photo_is_same_person_and_mirror_is_close(pipeline, astronaut):
    assert pipeline.verify(astronaut, astronaut).distance < 1e-6
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    result = pipeline.verify(astronaut, mirrored)
    assert result.same_person and result.distance < 0.5


def test_central_faces_raises_or_falls_back_without_a_face(pipeline):
    from facenet_platform.core.errors import NoFaceFoundError

    blank = np.full((250, 250, 3), 90, np.uint8)
    with pytest.raises(NoFaceFoundError):
        pipeline.central_faces([blank])
    emb, faces = pipeline.central_faces([blank], fallback_center=True)
    assert emb.shape == (1, 512) and faces == [None]


def test_embedder_batches_do_not_change_results(pipeline, astronaut):
    from facenet_platform.core.alignment import crop_with_margin
    from facenet_platform.core.embedding import FaceEmbedder

    dets = pipeline.detector.detect([astronaut])[0]
    crops = np.repeat(crop_with_margin(astronaut, dets.boxes[:1]), 5, axis=0)
    small = FaceEmbedder(pipeline.embedder.model, batch_size=2)(crops)
    big = pipeline.embedder(crops)
    np.testing.assert_allclose(small, big, atol=1e-5)
    assert FaceEmbedder(pipeline.embedder.model)(crops[:0]).shape == (0, 512)


@pytest.mark.parametrize("flip,size", [("mean", 512), ("concat", 1024)])
def test_flip_modes(pipeline, astronaut, flip, size):
    from facenet_platform.core.alignment import crop_with_margin
    from facenet_platform.core.embedding import FaceEmbedder

    dets = pipeline.detector.detect([astronaut])[0]
    crops = crop_with_margin(astronaut, dets.boxes[:1])
    emb = FaceEmbedder(pipeline.embedder.model, flip=flip)(crops)
    assert emb.shape == (1, size)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_pretrained_embeddings_are_centred_on_the_model_mean(pipeline, astronaut):
    """The pretrained embedding is l2_normalize(raw - mean); center=None gives the raw output."""
    from facenet_platform.core.alignment import crop_with_margin
    from facenet_platform.core.embedding import FaceEmbedder, l2_normalize
    from facenet_platform.core.weights import pretrained_embedding_mean

    mean = pretrained_embedding_mean()
    assert mean.shape == (512,) and mean.dtype == np.float32
    assert 0.1 < np.linalg.norm(mean) < 0.4  # the raw embeddings share a common direction
    dets = pipeline.detector.detect([astronaut])[0]
    crops = crop_with_margin(astronaut, dets.boxes[:1])
    model = pipeline.embedder.model
    assert pipeline.embedder.center is not None
    raw = FaceEmbedder(model, center=None)(crops)
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pipeline.embedder(crops), l2_normalize(raw - mean), atol=1e-5)
    x = pipeline.embedder._standardize(crops)
    np.testing.assert_allclose(pipeline.embedder.embed_prewhitened(x), raw, atol=1e-5)
    # mirror halves are centred each before flip="concat" joins them
    concat = FaceEmbedder(model, flip="concat")(crops)
    mirrored = FaceEmbedder(model, center=None)(np.ascontiguousarray(crops[:, :, ::-1]))
    expected = l2_normalize(np.concatenate([l2_normalize(raw - mean),
                                            l2_normalize(mirrored - mean)], axis=1))
    np.testing.assert_allclose(concat, expected, atol=1e-5)


def test_center_argument_is_checked(pipeline):
    from facenet_platform.core.embedding import FaceEmbedder
    from facenet_platform.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"shape \(512,\)"):
        FaceEmbedder(pipeline.embedder.model, center=np.zeros(3, np.float32))
    with pytest.raises(ConfigError, match="center must be"):
        FaceEmbedder(pipeline.embedder.model, center="mean")


@requires_lfw
@pytest.mark.slow
def test_lfw_first_fold_accuracy(pipeline, lfw_root):
    """300 same + 300 different pairs (View 2, fold 1) reach >= 0.97 accuracy."""
    from facenet_platform.core.lfw import read_pairs
    from facenet_platform.core.lfw_eval import evaluate_lfw

    pairs = read_pairs(lfw_root / "pairs.txt", lfw_root).take_folds(1)
    assert len(pairs) == 600 and int(pairs.issame.sum()) == 300
    run = evaluate_lfw(pipeline, pairs, batch_size=32, progress=False)
    print(f"\nLFW fold 1: {run.report.summary()}  ({run.seconds:.0f} s)")
    assert run.report.accuracy >= 0.97
