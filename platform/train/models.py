"""The networks training builds: Inception-ResNet-v1 (pretrained or not) and a scaled variant.

- ``inception_resnet_v1``: :func:`facenet_platform.core.model.inception_resnet_v1`, optionally
  initialised from the 20180408-102900 weights (every layer whose name and shape match; the
  convolutions are input-size independent, the bottleneck loads only at 512-d).
- ``inception_resnet_v1_scaled``: the same stem/block/reduction pattern and layer names, every
  width multiplied by ``width``, ``repeats`` blocks per stage and "same" padding, so that a small
  network (e.g. 64-96 px, width 0.25-0.5) trains on a CPU. Built only from standard Keras layers
  and the core's registered ``ScaledResidual``/``L2Normalize``, so ``core.embedding.load_model``
  loads it like the full network.

Both end in ``Bottleneck`` -> ``Bottleneck.BatchNorm`` (the pre-logits,
:func:`facenet_platform.core.model.prelogits`) -> ``embeddings`` (L2-normalised).
"""

from __future__ import annotations

import logging
import re

import keras
from keras import layers

from facenet_platform.core.model import (
    BATCH_NORM_EPSILON,
    BATCH_NORM_MOMENTUM,
    ConvUnit,
    L2Normalize,
    ScaledResidual,
    inception_resnet_v1,
    layer_name,
)

from .config import ModelConfig

logger = logging.getLogger(__name__)


def _ch(n: int, width: float) -> int:
    return max(4, int(round(n * width)))


def inception_resnet_v1_scaled(
    input_size: int = 96,
    embedding_size: int = 128,
    *,
    width: float = 0.5,
    repeats: tuple[int, int, int] | list[int] = (2, 4, 2),
    dropout_keep_prob: float = 0.8,
    folded_batch_norm: bool = False,
    weight_decay: float = 0.0,
    name: str = "InceptionResnetV1Scaled",
) -> keras.Model:
    """Inception-ResNet-v1 with widths x ``width``, ``repeats`` blocks per stage, "same" padding.

    Grid at input S: stem S/8, stage A S/8, stage B S/16, stage C S/32 (S >= 32).
    """
    if input_size < 32:
        raise ValueError(f"input_size must be at least 32 pixels, got {input_size}")
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None

    def conv(filters, k, scope, strides=1):
        return ConvUnit(_ch(filters, width), k, scope, strides, "same", folded_batch_norm,
                        weight_decay)

    def residual(x, branches, scope, scale, activation=True):
        mixed = layers.Concatenate(axis=-1, name=layer_name(f"{scope}/concat"))(branches)
        up = layers.Conv2D(x.shape[-1], 1, use_bias=True, kernel_regularizer=reg,
                           name=layer_name(f"{scope}/Conv2d_1x1"))(mixed)
        x = ScaledResidual(scale, name=layer_name(f"{scope}/add"))([x, up])
        return layers.ReLU(name=layer_name(f"{scope}/Relu"))(x) if activation else x

    inputs = keras.Input((input_size, input_size, 3), name="input")
    x = conv(32, 3, "Conv2d_1a_3x3", strides=2)(inputs)
    x = conv(32, 3, "Conv2d_2a_3x3")(x)
    x = conv(64, 3, "Conv2d_2b_3x3")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="MaxPool_3a_3x3")(x)
    x = conv(80, 1, "Conv2d_3b_1x1")(x)
    x = conv(192, 3, "Conv2d_4a_3x3")(x)
    x = conv(256, 3, "Conv2d_4b_3x3", strides=2)(x)

    for i in range(1, repeats[0] + 1):
        s = f"Repeat/block35_{i}"
        b0 = conv(32, 1, f"{s}/Branch_0/Conv2d_1x1")(x)
        b1 = conv(32, 3, f"{s}/Branch_1/Conv2d_0b_3x3")(conv(32, 1, f"{s}/Branch_1/Conv2d_0a_1x1")(x))
        b2 = conv(32, 1, f"{s}/Branch_2/Conv2d_0a_1x1")(x)
        b2 = conv(32, 3, f"{s}/Branch_2/Conv2d_0c_3x3")(conv(32, 3, f"{s}/Branch_2/Conv2d_0b_3x3")(b2))
        x = residual(x, [b0, b1, b2], s, 0.17)

    s = "Mixed_6a"
    b0 = conv(384, 3, f"{s}/Branch_0/Conv2d_1a_3x3", strides=2)(x)
    b1 = conv(192, 1, f"{s}/Branch_1/Conv2d_0a_1x1")(x)
    b1 = conv(256, 3, f"{s}/Branch_1/Conv2d_1a_3x3", strides=2)(conv(192, 3, f"{s}/Branch_1/Conv2d_0b_3x3")(b1))
    b2 = layers.MaxPooling2D(3, strides=2, padding="same", name=layer_name(f"{s}/Branch_2/MaxPool_1a_3x3"))(x)
    x = layers.Concatenate(axis=-1, name=layer_name(f"{s}/concat"))([b0, b1, b2])

    for i in range(1, repeats[1] + 1):
        s = f"Repeat_1/block17_{i}"
        b0 = conv(128, 1, f"{s}/Branch_0/Conv2d_1x1")(x)
        b1 = conv(128, 1, f"{s}/Branch_1/Conv2d_0a_1x1")(x)
        b1 = conv(128, (1, 7), f"{s}/Branch_1/Conv2d_0b_1x7")(b1)
        b1 = conv(128, (7, 1), f"{s}/Branch_1/Conv2d_0c_7x1")(b1)
        x = residual(x, [b0, b1], s, 0.10)

    s = "Mixed_7a"
    b0 = conv(384, 3, f"{s}/Branch_0/Conv2d_1a_3x3", strides=2)(conv(256, 1, f"{s}/Branch_0/Conv2d_0a_1x1")(x))
    b1 = conv(256, 3, f"{s}/Branch_1/Conv2d_1a_3x3", strides=2)(conv(256, 1, f"{s}/Branch_1/Conv2d_0a_1x1")(x))
    b2 = conv(256, 3, f"{s}/Branch_2/Conv2d_0b_3x3")(conv(256, 1, f"{s}/Branch_2/Conv2d_0a_1x1")(x))
    b2 = conv(256, 3, f"{s}/Branch_2/Conv2d_1a_3x3", strides=2)(b2)
    b3 = layers.MaxPooling2D(3, strides=2, padding="same", name=layer_name(f"{s}/Branch_3/MaxPool_1a_3x3"))(x)
    x = layers.Concatenate(axis=-1, name=layer_name(f"{s}/concat"))([b0, b1, b2, b3])

    for i in range(1, repeats[2] + 2):
        last = i == repeats[2] + 1
        s = "Block8" if last else f"Repeat_2/block8_{i}"
        b0 = conv(192, 1, f"{s}/Branch_0/Conv2d_1x1")(x)
        b1 = conv(192, 1, f"{s}/Branch_1/Conv2d_0a_1x1")(x)
        b1 = conv(192, (1, 3), f"{s}/Branch_1/Conv2d_0b_1x3")(b1)
        b1 = conv(192, (3, 1), f"{s}/Branch_1/Conv2d_0c_3x1")(b1)
        x = residual(x, [b0, b1], s, 1.0 if last else 0.20, activation=not last)

    x = layers.GlobalAveragePooling2D(name="Logits.AvgPool_1a_8x8")(x)
    x = layers.Dropout(1.0 - dropout_keep_prob, name="Logits.Dropout")(x)
    x = layers.Dense(embedding_size, use_bias=False, kernel_regularizer=reg, name="Bottleneck")(x)
    x = layers.BatchNormalization(scale=False, momentum=BATCH_NORM_MOMENTUM,
                                  epsilon=BATCH_NORM_EPSILON, name="Bottleneck.BatchNorm")(x)
    outputs = L2Normalize(name="embeddings")(x)
    return keras.Model(inputs, outputs, name=name)


# ------------------------------------------------------------------------------------------
# blocks and freezing

_BLOCK_RE = re.compile(r"^(Repeat(?:_\d)?\.block\d+_\d+|Mixed_6a|Mixed_7a|Block8)\.")


def block_of(layer_name_: str) -> str:
    """The block a layer belongs to: ``stem``, ``Repeat.block35_3``, ``Mixed_6a``, ``Block8``,
    ``head`` (pooling, dropout, bottleneck, its batch norm, the L2 normalisation), or ``input``."""
    if layer_name_ == "input":
        return "input"
    m = _BLOCK_RE.match(layer_name_)
    if m:
        return m.group(1)
    if layer_name_.startswith(("Conv2d_", "MaxPool_3a")):
        return "stem"
    return "head"


def blocks_in_order(model: keras.Model) -> list[str]:
    """Block names from input to output (``stem``, blocks..., ``head``)."""
    seen: dict[str, None] = {}
    for layer in model.layers:
        b = block_of(layer.name)
        if b != "input":
            seen.setdefault(b, None)
    return list(seen)


def apply_freeze(model: keras.Model, mode: str, trainable_blocks: int = 2) -> list[str]:
    """Freeze part of ``model`` in place; returns the names of the blocks left trainable.

    ``stem``: the convolutions before the first residual block. ``all_but_last``: every block
    but the last ``trainable_blocks`` (the head, i.e. bottleneck + its batch norm, counts as one).
    """
    order = blocks_in_order(model)
    if mode == "none":
        frozen: set[str] = set()
    elif mode == "stem":
        frozen = {"stem"}
    elif mode == "all_but_last":
        frozen = set(order[:max(0, len(order) - trainable_blocks)])
    else:
        raise ValueError(f"unknown freeze mode {mode!r}")
    for layer in model.layers:
        if block_of(layer.name) in frozen:
            layer.trainable = False
    return [b for b in order if b not in frozen]


# ------------------------------------------------------------------------------------------


def load_pretrained_into(model: keras.Model) -> tuple[int, list[str]]:
    """Copy the 20180408-102900 weights into every layer of ``model`` with the same name and
    weight shapes. Returns (layers loaded, names of layers skipped for a shape mismatch)."""
    from facenet_platform.core.weights import load_pretrained_model

    source = load_pretrained_model()
    by_name = {layer.name: layer for layer in source.layers}
    loaded, skipped = 0, []
    for layer in model.layers:
        src = by_name.get(layer.name)
        if src is None or not layer.weights:
            continue
        src_w = src.get_weights()
        if [w.shape for w in src_w] != [tuple(w.shape) for w in layer.weights]:
            skipped.append(layer.name)
            continue
        layer.set_weights(src_w)
        loaded += 1
    del source
    if skipped:
        logger.info("pretrained weights: %d layers loaded, %d skipped (shape differs): %s",
                    loaded, len(skipped), ", ".join(skipped))
    return loaded, skipped


def build_model(cfg: ModelConfig, *, load_pretrained: bool = True) -> keras.Model:
    """The embedding network a config describes (pretrained weights loaded when asked and
    ``load_pretrained``; a resumed run skips that and loads its checkpoint instead)."""
    if cfg.architecture == "inception_resnet_v1":
        model = inception_resnet_v1(
            cfg.input_size, cfg.embedding_size, dropout_keep_prob=cfg.dropout_keep_prob,
            folded_batch_norm=bool(cfg.folded_batch_norm), weight_decay=cfg.weight_decay,
        )
    elif cfg.architecture == "inception_resnet_v1_scaled":
        model = inception_resnet_v1_scaled(
            cfg.input_size, cfg.embedding_size, width=cfg.width, repeats=tuple(cfg.repeats),
            dropout_keep_prob=cfg.dropout_keep_prob,
            folded_batch_norm=bool(cfg.folded_batch_norm), weight_decay=cfg.weight_decay,
        )
    else:  # pragma: no cover - config validation rejects it
        raise ValueError(f"unknown architecture {cfg.architecture!r}")
    if cfg.batch_norm_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = float(cfg.batch_norm_momentum)
    if cfg.pretrained and load_pretrained:
        load_pretrained_into(model)
    trainable = apply_freeze(model, cfg.freeze, cfg.trainable_blocks)
    if cfg.freeze != "none":
        logger.info("freeze=%s: trainable blocks %s", cfg.freeze, ", ".join(trainable))
    return model
