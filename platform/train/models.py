"""The networks training builds: Inception-ResNet-v1 (pretrained or not) and a scaled variant.

Both are :func:`facenet_platform.core.model.inception_resnet_v1` (the same block classes and
layer names); a config's ``model.architecture`` picks the shape:

- ``inception_resnet_v1``: davidsandberg's network, optionally initialised from the
  20180408-102900 weights (every layer whose name and shape match; the convolutions are
  input-size independent, the bottleneck loads only at 512-d).
- ``inception_resnet_v1_scaled``: every width multiplied by ``model.width``, ``model.repeats``
  blocks per stage and "same" padding, so that a small network (e.g. 64-96 px, width 0.25-0.5)
  trains on a CPU. ``core.model_io.load_model`` loads it like the full network.

Both end in ``Bottleneck`` -> ``Bottleneck.BatchNorm`` (the pre-logits,
:func:`facenet_platform.core.model.prelogits`) -> ``embeddings`` (L2-normalised).
"""

from __future__ import annotations

import logging
import re

import keras
from keras import layers

from facenet_platform.core.model import inception_resnet_v1

from .config import ModelConfig

logger = logging.getLogger(__name__)


def architecture_keywords(cfg: ModelConfig) -> dict:
    """The shape keywords of :func:`~facenet_platform.core.model.inception_resnet_v1` that
    ``cfg.architecture`` names (none for the full network: its width and repeats are fixed)."""
    if cfg.architecture == "inception_resnet_v1":
        return {}
    if cfg.architecture == "inception_resnet_v1_scaled":
        return dict(width=cfg.width, repeats=tuple(cfg.repeats), padding="same",
                    name="InceptionResnetV1Scaled")
    raise ValueError(f"unknown architecture {cfg.architecture!r}")  # config validation rejects it


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
    model = inception_resnet_v1(
        cfg.input_size, cfg.embedding_size, dropout_keep_prob=cfg.dropout_keep_prob,
        folded_batch_norm=bool(cfg.folded_batch_norm), weight_decay=cfg.weight_decay,
        **architecture_keywords(cfg),
    )
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
