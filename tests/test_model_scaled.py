"""The scaled Inception-ResNet-v1 that training builds from core's block classes."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from conftest import REPO_ROOT

#: parameter and layer counts of the scaled configs, as the hand-written scaled builder of
#: train/models.py made them before it was replaced by core's blocks (commit 96787b7); the
#: replacement was checked to give the same layers and bit-identical outputs.
SCALED_CONFIGS = {
    "smoke_lfw_tiny.yaml": {"params": 621_684, "layers": 131},
    "scratch_lfw_softmax.yaml": {"params": 3_473_288, "layers": 217},
}


def scaled_config_files() -> list[str]:
    """The configs/*.yaml that train ``inception_resnet_v1_scaled``."""
    names = []
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        if model.get("architecture") == "inception_resnet_v1_scaled":
            names.append(path.name)
    return names


def test_every_scaled_config_is_covered():
    assert scaled_config_files() == sorted(SCALED_CONFIGS)


@pytest.mark.parametrize("name", sorted(SCALED_CONFIGS))
def test_scaled_config_builds_the_same_network(name):
    from facenet_platform.train.config import load_config
    from facenet_platform.train.models import blocks_in_order, build_model

    m = load_config(REPO_ROOT / "configs" / name).model
    model = build_model(m, load_pretrained=False)
    assert model.count_params() == SCALED_CONFIGS[name]["params"]
    assert len(model.layers) == SCALED_CONFIGS[name]["layers"]
    a, b, c = m.repeats
    assert blocks_in_order(model) == (
        ["stem"] + [f"Repeat.block35_{i}" for i in range(1, a + 1)] + ["Mixed_6a"]
        + [f"Repeat_1.block17_{i}" for i in range(1, b + 1)] + ["Mixed_7a"]
        + [f"Repeat_2.block8_{i}" for i in range(1, c + 1)] + ["Block8", "head"])
    x = np.random.default_rng(0).normal(size=(2, m.input_size, m.input_size, 3))
    emb = np.asarray(model(x.astype(np.float32), training=False))
    assert emb.shape == (2, m.embedding_size) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_width_repeats_and_padding_shape_the_grid():
    from facenet_platform.core.model import inception_resnet_v1

    model = inception_resnet_v1(64, 16, width=0.25, repeats=(1, 2, 0), padding="same",
                                folded_batch_norm=False)
    shape = {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}
    assert shape["Conv2d_1a_3x3.Relu"] == (32, 32, 8)        # 32 channels x 0.25
    assert shape["Conv2d_4b_3x3.Relu"] == (8, 8, 64)         # stem: S/8
    assert shape["Mixed_6a.concat"] == (4, 4, 96 + 64 + 64)  # S/16
    assert shape["Mixed_7a.concat"] == (2, 2, 96 + 64 + 64 + 224)  # S/32
    assert "Repeat_1.block17_2.add" in shape and "Repeat_1.block17_3.add" not in shape
    assert not any(n.startswith("Repeat_2.") for n in shape) and "Block8.add" in shape
    assert shape["Block8.add"] == (2, 2, 448)
    # a unit never drops below four channels
    tiny = inception_resnet_v1(32, 4, width=0.01, repeats=(0, 0, 0), padding="same")
    assert tiny.get_layer("Conv2d_1a_3x3").filters == 4


@pytest.mark.parametrize("kwargs,match", [
    ({"input_size": 31, "padding": "same"}, "input_size"),
    ({"input_size": 74}, "input_size"),
    ({"padding": "causal"}, "padding"),
    ({"width": 0.0}, "width"),
    ({"repeats": (1, 1)}, "repeats"),
    ({"repeats": (1, -1, 1)}, "repeats"),
])
def test_bad_shapes_are_rejected(kwargs, match):
    from facenet_platform.core.model import inception_resnet_v1

    with pytest.raises(ValueError, match=match):
        inception_resnet_v1(**kwargs)
