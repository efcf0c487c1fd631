"""ModelSpec: the pretrained model's values, JSON round trip, bad metadata, reading a model path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facenet_platform.core.errors import ConfigError, ModelSpecError
from facenet_platform.core.model_spec import (CROP_METHODS, SPEC_VERSION, ModelSource,
                                              ModelSpec)
from facenet_platform.core.weights import PRETRAINED


def test_pretrained_spec_values():
    assert isinstance(PRETRAINED, ModelSpec)
    assert PRETRAINED.model_id == "facenet-20180408-102900"
    assert (PRETRAINED.input_size, PRETRAINED.embedding_size) == (160, 512)
    assert (PRETRAINED.alignment, PRETRAINED.margin) == ("margin", 32.0)
    assert PRETRAINED.standardization == "fixed"
    assert (PRETRAINED.threshold, PRETRAINED.identify_threshold) == (1.290, 0.845)
    assert PRETRAINED.source.kind == "pretrained" and PRETRAINED.source.loadable
    assert PRETRAINED.source.checkpoint == "20180408-102900"
    assert PRETRAINED.source.training_data == "CASIA-WebFace"
    with pytest.raises(AttributeError):  # frozen
        PRETRAINED.margin = 10  # type: ignore[misc]


def test_crop_methods_are_the_aligners():
    from facenet_platform.core.alignment import FaceAligner

    assert set(CROP_METHODS) == set(FaceAligner.METHODS)
    aligner = FaceAligner.for_spec(PRETRAINED.with_crop("similarity", 20))
    assert (aligner.image_size, aligner.margin, aligner.method) == (160, 20.0, "similarity")


def test_round_trip_through_json():
    spec = ModelSpec(model_id="scratch-64", input_size=64, embedding_size=128,
                     alignment="similarity", margin=20, standardization="prewhiten",
                     threshold=1.1, identify_threshold=None,
                     source=ModelSource("exported", path="/m/x.tflite", sha256="ab" * 32,
                                        format="tflite", checkpoint="/runs/c1"))
    for original in (spec, PRETRAINED):
        metadata = original.to_metadata()
        assert metadata["spec_version"] == SPEC_VERSION
        back = ModelSpec.from_metadata(json.loads(json.dumps(metadata)))
        assert back == original and back.to_metadata() == metadata


def test_replace_checks_and_compares():
    other = PRETRAINED.replace(standardization="prewhiten", threshold=None)
    assert other.standardization == "prewhiten" and other.threshold == PRETRAINED.threshold
    assert PRETRAINED.replace() is PRETRAINED
    assert other.differences(PRETRAINED) == {"standardization": ("prewhiten", "fixed")}
    # a partial (old manifest) mapping: only what it has is compared
    assert PRETRAINED.differences({"margin": 32, "alignment": None}) == {}
    assert PRETRAINED.differences({"input_size": 64}) == {"input_size": (160, 64)}
    with pytest.raises(ModelSpecError, match="alignment"):
        PRETRAINED.with_crop("affine")
    with pytest.raises(ModelSpecError, match="margin"):
        PRETRAINED.with_crop(margin=-1)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(spec_version=99), "spec_version"),
    (lambda m: m.pop("spec_version"), "spec_version"),
    (lambda m: m.update(colour="blue"), "unknown model spec key"),
    (lambda m: m.pop("input_size"), "input_size"),
    (lambda m: m.update(input_size="160"), "input_size"),
    (lambda m: m.update(input_size=True), "input_size"),
    (lambda m: m.update(embedding_size=0), "embedding_size"),
    (lambda m: m.update(model_id=""), "model_id"),
    (lambda m: m.update(alignment="affine"), "alignment"),
    (lambda m: m.update(margin=float("nan")), "margin"),
    (lambda m: m.update(standardization="zscore"), "standardization"),
    (lambda m: m.update(threshold=5.0), "threshold"),
    (lambda m: m.update(identify_threshold="low"), "identify_threshold"),
    (lambda m: m.update(source="pretrained"), "source"),
    (lambda m: m["source"].update(kind="downloaded"), "kind"),
    (lambda m: m["source"].update(url="http://x"), "unknown source key"),
    (lambda m: m["source"].pop("kind"), "kind"),
    (lambda m: m["source"].update(sha256=12), "sha256"),
])
def test_bad_metadata_is_rejected(change, message):
    metadata = PRETRAINED.to_metadata()
    change(metadata)
    with pytest.raises(ModelSpecError, match=message) as info:
        ModelSpec.from_metadata(metadata, where="index/manifest.json")
    assert str(info.value).startswith("index/manifest.json: ")
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("data", [None, [], "spec", 3])
def test_not_a_mapping_is_rejected(data):
    with pytest.raises(ModelSpecError, match="mapping"):
        ModelSpec.from_metadata(data)


def test_read_model_spec_of_files(tmp_path):
    """Checkpoint folder (config.yaml + state.json), export sidecars old and new, errors."""
    from facenet_platform.core.model_io import (metadata_path, read_model_spec,
                                                write_export_metadata)

    ckpt = tmp_path / "checkpoint_000002"
    ckpt.mkdir()
    (ckpt / "model.keras").write_bytes(b"not read here")
    (ckpt / "config.yaml").write_text(
        "model: {input_size: 64, embedding_size: 128}\n"
        "data: {standardization: prewhiten, root: /data/lfw}\n")
    (ckpt / "state.json").write_text(json.dumps({"history": [{"val_threshold": 1.21}]}))
    spec = read_model_spec(ckpt)
    assert (spec.model_id, spec.input_size, spec.embedding_size) == ("checkpoint_000002", 64, 128)
    assert spec.standardization == "prewhiten" and spec.threshold == 1.21
    assert spec.identify_threshold is None and (spec.alignment, spec.margin) == ("margin", 32.0)
    assert spec.source.kind == "checkpoint" and spec.source.training_data == "/data/lfw"
    assert len(spec.source.sha256) == 64 and spec.source.path == str(ckpt)

    tflite = tmp_path / "exports" / "face.tflite"
    tflite.parent.mkdir()
    tflite.write_bytes(b"\0")
    with pytest.raises(ModelSpecError, match="no face.tflite.json"):
        read_model_spec(tflite)
    exported = spec.replace(model_id="face.tflite",
                            source=ModelSource("exported", path="/elsewhere/face.tflite",
                                               format="tflite"))
    write_export_metadata(tflite, exported)
    back = read_model_spec(tflite)
    assert back.source.path == str(tflite)  # where it is now, not where it was written
    assert back.replace(source=exported.source) == exported
    # a sidecar written before specs (input_size, embedding_size, standardization, threshold)
    metadata_path(tflite).write_text(json.dumps({
        "format": "tflite", "input_size": 64, "embedding_size": 128,
        "standardization": "prewhiten", "threshold": 1.3, "checkpoint": str(ckpt)}))
    old = read_model_spec(tflite)
    assert (old.input_size, old.standardization, old.threshold) == (64, "prewhiten", 1.3)
    assert old.source.kind == "exported" and old.model_id == "face.tflite"
    metadata_path(tflite).write_text("{garbled")
    with pytest.raises(ModelSpecError, match="not JSON"):
        read_model_spec(tflite)
    metadata_path(tflite).write_text(json.dumps({**PRETRAINED.to_metadata(), "spec_version": 7}))
    with pytest.raises(ModelSpecError, match="spec_version"):
        read_model_spec(tflite)
    with pytest.raises(ConfigError, match="no such model"):
        read_model_spec(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a model"):
        read_model_spec(tmp_path / "notes.txt")


def test_factory_resolves_every_way_of_naming_a_model(tmp_path):
    from facenet_platform.core.factory import build_aligner, resolve_spec

    assert resolve_spec(None) is PRETRAINED and resolve_spec(PRETRAINED) is PRETRAINED
    assert resolve_spec(PRETRAINED.to_metadata()) == PRETRAINED
    with pytest.raises(ModelSpecError):
        resolve_spec({"model_id": "x"})
    small = PRETRAINED.replace(model_id="small", input_size=64)
    aligner = build_aligner(small)
    crops = aligner(np.zeros((100, 100, 3), np.uint8), _one_detection())
    assert crops.shape == (1, 64, 64, 3)


def _one_detection():
    from facenet_platform.core.detection import Detections

    return Detections(boxes=np.array([[20, 20, 60, 70]], np.float32),
                      scores=np.array([0.99], np.float32),
                      landmarks=np.full((1, 5, 2), 40, np.float32))
