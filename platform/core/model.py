"""Inception-ResNet-v1 in Keras, with davidsandberg/facenet's structure and layer names.

The network maps a prewhitened ``(N, S, S, 3) float32`` face crop (S = 160 for the pretrained
model) to an ``(N, D) float32`` L2-normalised embedding (D = 512 for the pretrained model):

    stem -> 5 x Block35 (scale 0.17) -> Mixed_6a -> 10 x Block17 (0.10) -> Mixed_7a
         -> 5 x Block8 (0.20) -> Block8 (scale 1.0, no activation) -> global average pool
         -> dropout -> Bottleneck dense (no bias) -> batch norm -> L2 normalisation

Every Keras layer is named after the TF-slim scope it came from with ``/`` replaced by ``.``
(``Repeat.block35_1.Branch_0.Conv2d_1x1``), so porting weights from the original checkpoint is a
mechanical name map (see :mod:`facenet_platform.core.weights`).

Two flavours of convolution unit:

- ``folded_batch_norm=True`` (pretrained inference and fine-tuning): convolution with a bias and
  ReLU. The frozen graph we convert has batch norm folded into the convolution weights and
  biases, so this is exactly what it computes.
- ``folded_batch_norm=False`` (training a new network): convolution without bias, batch norm
  (no scale, as TF-slim's default), ReLU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
from keras import layers

logger = logging.getLogger(__name__)

PRETRAINED_INPUT_SIZE = 160
PRETRAINED_EMBEDDING_SIZE = 512
BATCH_NORM_EPSILON = 1e-3
BATCH_NORM_MOMENTUM = 0.995
L2_EPSILON = 1e-10


def layer_name(scope: str) -> str:
    """Keras layer name for a TF-slim scope (``a/b/c`` -> ``a.b.c``)."""
    return scope.replace("/", ".")


def scope_name(name: str) -> str:
    """TF-slim scope for a Keras layer name (inverse of :func:`layer_name`)."""
    return name.replace(".", "/")


@keras.saving.register_keras_serializable(package="facenet_platform")
class ScaledResidual(layers.Layer):
    """``shortcut + scale * residual``: the residual join of every Inception-ResNet block."""

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        shortcut, residual = inputs
        return shortcut + self.scale * residual

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="facenet_platform")
class L2Normalize(layers.Layer):
    """``x * rsqrt(max(sum(x**2), eps))`` along the last axis, as the frozen graph computes it."""

    def __init__(self, epsilon: float = L2_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, inputs):
        square_sum = keras.ops.sum(keras.ops.square(inputs), axis=-1, keepdims=True)
        return inputs * keras.ops.rsqrt(keras.ops.maximum(square_sum, self.epsilon))

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


@dataclass(frozen=True)
class ConvUnit:
    """TF-slim ``conv2d`` with its default normaliser and ReLU, as one callable."""

    filters: int
    kernel_size: int | tuple[int, int]
    scope: str
    strides: int = 1
    padding: str = "same"
    folded_batch_norm: bool = True
    weight_decay: float = 0.0

    def __call__(self, x):
        regularizer = keras.regularizers.L2(self.weight_decay) if self.weight_decay else None
        x = layers.Conv2D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            use_bias=self.folded_batch_norm,
            kernel_regularizer=regularizer,
            name=layer_name(self.scope),
        )(x)
        if not self.folded_batch_norm:
            x = layers.BatchNormalization(
                scale=False,
                momentum=BATCH_NORM_MOMENTUM,
                epsilon=BATCH_NORM_EPSILON,
                name=layer_name(f"{self.scope}/BatchNorm"),
            )(x)
        return layers.ReLU(name=layer_name(f"{self.scope}/Relu"))(x)


@dataclass(frozen=True)
class _Blocks:
    """Shared settings of every block builder."""

    folded_batch_norm: bool = True
    weight_decay: float = 0.0

    def conv(self, filters, kernel_size, scope, strides=1, padding="same") -> ConvUnit:
        return ConvUnit(filters, kernel_size, scope, strides, padding,
                        self.folded_batch_norm, self.weight_decay)

    def up_projection(self, x, channels: int, scope: str):
        """The linear 1x1 convolution (with bias, no norm, no ReLU) closing a residual block."""
        regularizer = keras.regularizers.L2(self.weight_decay) if self.weight_decay else None
        return layers.Conv2D(channels, 1, use_bias=True, kernel_regularizer=regularizer,
                             name=layer_name(f"{scope}/Conv2d_1x1"))(x)

    def residual(self, x, branches: list, scope: str, scale: float, activation: bool):
        mixed = layers.Concatenate(axis=-1, name=layer_name(f"{scope}/concat"))(branches)
        up = self.up_projection(mixed, x.shape[-1], scope)
        x = ScaledResidual(scale, name=layer_name(f"{scope}/add"))([x, up])
        if activation:
            x = layers.ReLU(name=layer_name(f"{scope}/Relu"))(x)
        return x


@dataclass(frozen=True)
class Block35(_Blocks):
    """Inception-ResNet-A (35x35 grid in the paper; 17x17 at 160 px input)."""

    def __call__(self, x, scope: str, scale: float = 0.17, activation: bool = True):
        b0 = self.conv(32, 1, f"{scope}/Branch_0/Conv2d_1x1")(x)
        b1 = self.conv(32, 1, f"{scope}/Branch_1/Conv2d_0a_1x1")(x)
        b1 = self.conv(32, 3, f"{scope}/Branch_1/Conv2d_0b_3x3")(b1)
        b2 = self.conv(32, 1, f"{scope}/Branch_2/Conv2d_0a_1x1")(x)
        b2 = self.conv(32, 3, f"{scope}/Branch_2/Conv2d_0b_3x3")(b2)
        b2 = self.conv(32, 3, f"{scope}/Branch_2/Conv2d_0c_3x3")(b2)
        return self.residual(x, [b0, b1, b2], scope, scale, activation)


@dataclass(frozen=True)
class Block17(_Blocks):
    """Inception-ResNet-B (17x17 in the paper; 8x8 at 160 px input)."""

    def __call__(self, x, scope: str, scale: float = 0.10, activation: bool = True):
        b0 = self.conv(128, 1, f"{scope}/Branch_0/Conv2d_1x1")(x)
        b1 = self.conv(128, 1, f"{scope}/Branch_1/Conv2d_0a_1x1")(x)
        b1 = self.conv(128, (1, 7), f"{scope}/Branch_1/Conv2d_0b_1x7")(b1)
        b1 = self.conv(128, (7, 1), f"{scope}/Branch_1/Conv2d_0c_7x1")(b1)
        return self.residual(x, [b0, b1], scope, scale, activation)


@dataclass(frozen=True)
class Block8(_Blocks):
    """Inception-ResNet-C (8x8 in the paper; 3x3 at 160 px input)."""

    def __call__(self, x, scope: str, scale: float = 0.20, activation: bool = True):
        b0 = self.conv(192, 1, f"{scope}/Branch_0/Conv2d_1x1")(x)
        b1 = self.conv(192, 1, f"{scope}/Branch_1/Conv2d_0a_1x1")(x)
        b1 = self.conv(192, (1, 3), f"{scope}/Branch_1/Conv2d_0b_1x3")(b1)
        b1 = self.conv(192, (3, 1), f"{scope}/Branch_1/Conv2d_0c_3x1")(b1)
        return self.residual(x, [b0, b1], scope, scale, activation)


@dataclass(frozen=True)
class Mixed6a(_Blocks):
    """Reduction-A: ``reduction_a(net, k=192, l=192, m=256, n=384)``."""

    def __call__(self, x, scope: str = "Mixed_6a"):
        b0 = self.conv(384, 3, f"{scope}/Branch_0/Conv2d_1a_3x3", strides=2, padding="valid")(x)
        b1 = self.conv(192, 1, f"{scope}/Branch_1/Conv2d_0a_1x1")(x)
        b1 = self.conv(192, 3, f"{scope}/Branch_1/Conv2d_0b_3x3")(b1)
        b1 = self.conv(256, 3, f"{scope}/Branch_1/Conv2d_1a_3x3", strides=2, padding="valid")(b1)
        b2 = layers.MaxPooling2D(3, strides=2, padding="valid",
                                 name=layer_name(f"{scope}/Branch_2/MaxPool_1a_3x3"))(x)
        return layers.Concatenate(axis=-1, name=layer_name(f"{scope}/concat"))([b0, b1, b2])


@dataclass(frozen=True)
class Mixed7a(_Blocks):
    """Reduction-B."""

    def __call__(self, x, scope: str = "Mixed_7a"):
        b0 = self.conv(256, 1, f"{scope}/Branch_0/Conv2d_0a_1x1")(x)
        b0 = self.conv(384, 3, f"{scope}/Branch_0/Conv2d_1a_3x3", strides=2, padding="valid")(b0)
        b1 = self.conv(256, 1, f"{scope}/Branch_1/Conv2d_0a_1x1")(x)
        b1 = self.conv(256, 3, f"{scope}/Branch_1/Conv2d_1a_3x3", strides=2, padding="valid")(b1)
        b2 = self.conv(256, 1, f"{scope}/Branch_2/Conv2d_0a_1x1")(x)
        b2 = self.conv(256, 3, f"{scope}/Branch_2/Conv2d_0b_3x3")(b2)
        b2 = self.conv(256, 3, f"{scope}/Branch_2/Conv2d_1a_3x3", strides=2, padding="valid")(b2)
        b3 = layers.MaxPooling2D(3, strides=2, padding="valid",
                                 name=layer_name(f"{scope}/Branch_3/MaxPool_1a_3x3"))(x)
        return layers.Concatenate(axis=-1, name=layer_name(f"{scope}/concat"))([b0, b1, b2, b3])


def inception_resnet_v1(
    input_size: int = PRETRAINED_INPUT_SIZE,
    embedding_size: int = PRETRAINED_EMBEDDING_SIZE,
    *,
    dropout_keep_prob: float = 0.8,
    folded_batch_norm: bool = True,
    weight_decay: float = 0.0,
    name: str = "InceptionResnetV1",
) -> keras.Model:
    """Build an Inception-ResNet-v1 embedding network (random weights).

    Args:
        input_size: side of the square input crop in pixels (160 for the pretrained model; at
            least 75 so that the reductions leave a 1x1 grid).
        embedding_size: length D of the embedding (512 pretrained; 128 as in the FaceNet paper).
        dropout_keep_prob: keep probability of the dropout before the bottleneck (training only).
        folded_batch_norm: True for convolutions with biases and no batch norm (the pretrained
            frozen graph); False for conv + batch norm (training from scratch).
        weight_decay: L2 factor on convolution and bottleneck kernels (0 disables).

    Returns:
        A Keras model mapping ``(N, input_size, input_size, 3) float32`` prewhitened crops to
        ``(N, embedding_size) float32`` L2-normalised embeddings.
    """
    if input_size < 75:
        raise ValueError(f"input_size must be at least 75 pixels, got {input_size}")
    if embedding_size < 1:
        raise ValueError(f"embedding_size must be positive, got {embedding_size}")
    if not 0.0 < dropout_keep_prob <= 1.0:
        raise ValueError(f"dropout_keep_prob must be in (0, 1], got {dropout_keep_prob}")

    settings = dict(folded_batch_norm=folded_batch_norm, weight_decay=weight_decay)
    blocks = _Blocks(**settings)
    inputs = keras.Input((input_size, input_size, 3), name="input")
    x = blocks.conv(32, 3, "Conv2d_1a_3x3", strides=2, padding="valid")(inputs)
    x = blocks.conv(32, 3, "Conv2d_2a_3x3", padding="valid")(x)
    x = blocks.conv(64, 3, "Conv2d_2b_3x3")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="MaxPool_3a_3x3")(x)
    x = blocks.conv(80, 1, "Conv2d_3b_1x1", padding="valid")(x)
    x = blocks.conv(192, 3, "Conv2d_4a_3x3", padding="valid")(x)
    x = blocks.conv(256, 3, "Conv2d_4b_3x3", strides=2, padding="valid")(x)

    block35, block17, block8 = Block35(**settings), Block17(**settings), Block8(**settings)
    for i in range(1, 6):
        x = block35(x, f"Repeat/block35_{i}", scale=0.17)
    x = Mixed6a(**settings)(x)
    for i in range(1, 11):
        x = block17(x, f"Repeat_1/block17_{i}", scale=0.10)
    x = Mixed7a(**settings)(x)
    for i in range(1, 6):
        x = block8(x, f"Repeat_2/block8_{i}", scale=0.20)
    x = block8(x, "Block8", scale=1.0, activation=False)

    x = layers.GlobalAveragePooling2D(name="Logits.AvgPool_1a_8x8")(x)
    x = layers.Dropout(1.0 - dropout_keep_prob, name="Logits.Dropout")(x)
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    x = layers.Dense(embedding_size, use_bias=False, kernel_regularizer=regularizer,
                     name="Bottleneck")(x)
    x = layers.BatchNormalization(scale=False, momentum=BATCH_NORM_MOMENTUM,
                                  epsilon=BATCH_NORM_EPSILON, name="Bottleneck.BatchNorm")(x)
    outputs = L2Normalize(name="embeddings")(x)
    return keras.Model(inputs, outputs, name=name)


def prelogits(model: keras.Model) -> keras.Model:
    """The same network up to the bottleneck batch norm (before L2 normalisation).

    Training heads (softmax + center loss) work on these ``(N, D) float32`` pre-logits.
    """
    return keras.Model(model.input, model.get_layer("Bottleneck.BatchNorm").output,
                       name=f"{model.name}_prelogits")
