"""Checkpoint round trip: model, optimizer slots, softmax head and centers come back exactly."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")


def _objects(cfg, num_classes=5):
    import keras

    from facenet_platform.train.loop import build_optimizer
    from facenet_platform.train.models import build_model

    model = build_model(cfg.model)
    head = keras.layers.Dense(num_classes, name="Logits")
    head.build((None, cfg.model.embedding_size))
    opt = build_optimizer(cfg, steps_per_epoch=3)
    variables = model.trainable_variables + head.trainable_variables
    opt.build(variables)
    centers = tf.Variable(tf.zeros((num_classes, cfg.model.embedding_size)), trainable=False)
    return model, head, opt, centers, variables


def test_save_and_restore_round_trip(tmp_path):
    from facenet_platform.train.config import config_from_dict, load_config
    from facenet_platform.train.loop import restore_checkpoint, save_checkpoint

    cfg = config_from_dict({
        "model": {"architecture": "inception_resnet_v1_scaled", "pretrained": False,
                  "input_size": 32, "embedding_size": 8, "width": 0.125, "repeats": [1, 0, 0]},
        "data": {"root": "/nowhere"}, "loss": {"name": "softmax_center"},
        "optimizer": {"schedule": "exponential", "decay_factor": 0.5, "decay_epochs": 1}})
    model, head, opt, centers, variables = _objects(cfg)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    for _ in range(2):  # two steps so that the Adam slots and the iteration count move
        with tf.GradientTape() as tape:
            logits = head(model(x, training=True))
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
    centers.assign(tf.random.normal(centers.shape))
    state = {"epoch": 3, "step": 9, "history": [{"epoch": 3, "loss": 1.5}], "steps": []}
    save_checkpoint(tmp_path, cfg, model, opt, head, centers, state)
    assert load_config(tmp_path) == cfg

    model2, head2, opt2, centers2, _ = _objects(cfg)
    assert restore_checkpoint(tmp_path, model2, opt2, head2, centers2) == state
    for a, b in zip(model.weights + head.weights, model2.weights + head2.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(opt2.iterations.numpy()) == 2
    for a, b in zip(opt.variables, opt2.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(centers.numpy(), centers2.numpy())
    np.testing.assert_allclose(float(opt2.learning_rate), float(opt.learning_rate))


def test_savedmodel_export_signatures(tmp_path):
    """The SavedModel's uint8 serving signature (prewhitening inside) and the prewhitened one
    agree with the Keras model; load_exported picks the format by path."""
    import cv2

    from facenet_platform.core.standardization import prewhiten
    from facenet_platform.train.config import config_from_dict
    from facenet_platform.core.model_io import (SavedModelEmbedder, load_exported,
                                                read_model_spec)
    from facenet_platform.train.export import export_checkpoint
    from facenet_platform.train.loop import save_checkpoint

    cfg = config_from_dict({
        "model": {"architecture": "inception_resnet_v1_scaled", "pretrained": False,
                  "input_size": 32, "embedding_size": 8, "width": 0.125, "repeats": [0, 0, 0]},
        "data": {"root": str(tmp_path / "faces"), "resize": 36}})
    model, head, opt, centers, _ = _objects(cfg)
    save_checkpoint(tmp_path / "ckpt", cfg, model, opt, None, None, {"epoch": 1, "step": 1,
                                                                     "history": [], "steps": []})
    rng = np.random.default_rng(0)
    (tmp_path / "faces").mkdir()
    for i in range(6):
        cv2.imwrite(str(tmp_path / "faces" / f"{i}.png"), rng.integers(0, 255, (40, 40, 3), np.uint8))
    report = export_checkpoint(tmp_path / "ckpt", "savedmodel", tmp_path / "sm",
                               images=tmp_path / "faces", num_images=3)
    assert report["difference"]["l2_max"] < 1e-5
    assert report["serving_default_difference"]["l2_max"] < 1e-4
    sm = load_exported(tmp_path / "sm")
    assert isinstance(sm, SavedModelEmbedder) and sm.output_shape == (None, 8)
    exported = read_model_spec(tmp_path / "sm")
    assert exported.standardization == "prewhiten" and exported.source.kind == "exported"
    assert (exported.input_size, exported.embedding_size) == (32, 8)
    assert exported.source.checkpoint == str(tmp_path / "ckpt") and exported.model_id == "sm"
    checkpoint = read_model_spec(tmp_path / "ckpt")
    assert checkpoint.input_size == 32 and checkpoint.source.kind == "checkpoint"
    assert checkpoint.source.sha256 is not None
    crops = rng.integers(0, 255, (2, 32, 32, 3), np.uint8)
    expected = np.asarray(model(prewhiten(crops), training=False))
    np.testing.assert_allclose(sm(prewhiten(crops)), expected, atol=1e-5)
    np.testing.assert_allclose(sm.embed_uint8(crops), expected, atol=1e-4)
