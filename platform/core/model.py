"""Inception-ResNet-v1 in Keras, with davidsandberg/facenet's structure and layer names.

The network maps a prewhitened ``(N, S, S, 3) float32`` face crop (S = 160 for the pretrained
model) to an ``(N, D) float32`` L2-normalised embedding (D = 512 for the pretrained model):

    stem -> 5 x Block35 (scale 0.17) -> Mixed_6a -> 10 x Block17 (0.10) -> Mixed_7a
         -> 5 x Block8 (0.20) -> Block8 (scale 1.0, no activation) -> global average pool
         -> dropout -> Bottleneck dense (no bias) -> batch norm -> L2 normalisation

Every Keras layer is named after the TF-slim scope it came from with ``/`` replaced by ``.``
(``Repeat.block35_1.Branch_0.Conv2d_1x1``), so porting weights from the original checkpoint is a
mechanical name map (see :mod:`facenet_platform.core.weights`).

Each kind of block is a small class (:class:`Stem`, :class:`Block35`, :class:`Block17`,
:class:`Block8`, :class:`Mixed6a`, :class:`Mixed7a`) whose instance carries the settings shared
by all convolution units (:class:`Units`) and whose call adds one block to a Keras graph.
:func:`inception_resnet_v1` stacks them; its ``width``, ``repeats`` and ``padding`` scale the
network down (training's ``inception_resnet_v1_scaled`` architecture) with the same blocks and
layer names. The defaults build the pretrained network.

Two flavours of convolution unit:

- ``folded_batch_norm=True`` (pretrained inference and fine-tuning): convolution with a bias and
  ReLU. The frozen graph we convert has batch norm folded into the convolution weights and
  biases, so this is exactly what it computes.
- ``folded_batch_norm=False`` (training a new network): convolution without bias, batch norm
  (no scale, as TF-slim's default), ReLU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import keras
from keras import layers

logger = logging.getLogger(__name__)

PRETRAINED_INPUT_SIZE = 160
PRETRAINED_EMBEDDING_SIZE = 512
#: residual blocks per stage (A: Block35, B: Block17, C: Block8) in the pretrained network
PRETRAINED_REPEATS = (5, 10, 5)
#: fewest channels a scaled-down convolution unit keeps
MIN_CHANNELS = 4
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
class Units:
    """What every convolution of one network shares; the base of every block class.

    Attributes:
        folded_batch_norm: convolution + bias (the pretrained graph, batch norm folded in) or
            convolution + batch norm.
        weight_decay: L2 factor on convolution kernels (0 disables).
        width: channel multiplier; a unit of ``n`` filters gets ``max(4, round(n * width))``
            (1.0: the pretrained network's channels).
        padding: padding of the stem and reduction layers that shrink the grid (``valid`` in the
            pretrained network; ``same`` keeps ``ceil(S / stride)`` so that small inputs work).
    """

    folded_batch_norm: bool = True
    weight_decay: float = 0.0
    width: float = 1.0
    padding: str = "valid"

    def channels(self, filters: int) -> int:
        """Channels of a unit that has ``filters`` in the pretrained network."""
        return max(MIN_CHANNELS, int(round(filters * self.width)))

    def conv(self, filters: int, kernel_size, scope: str, strides: int = 1, *,
             shrinks: bool = False) -> ConvUnit:
        """A conv unit of ``filters`` x ``width`` channels; ``shrinks``: it takes ``padding``
        (a grid-shrinking layer of the stem or a reduction), else ``same``."""
        return ConvUnit(self.channels(filters), kernel_size, scope, strides,
                        self.padding if shrinks else "same", self.folded_batch_norm,
                        self.weight_decay)

    def max_pool(self, scope: str) -> layers.MaxPooling2D:
        """The 3x3 stride-2 max pooling of the stem and the reductions."""
        return layers.MaxPooling2D(3, strides=2, padding=self.padding, name=layer_name(scope))

    def concat(self, branches: list, scope: str):
        """Channel concatenation of a block's branches (``scope/concat``)."""
        return layers.Concatenate(axis=-1, name=layer_name(f"{scope}/concat"))(branches)


@dataclass(frozen=True)
class Stem(Units):
    """The convolutions before the first residual block: grid S -> S/8 (``same`` padding) or
    (S - 27) / 8 rounded down (``valid``, 160 -> 17), 256 x ``width`` channels."""

    def __call__(self, x):
        x = self.conv(32, 3, "Conv2d_1a_3x3", strides=2, shrinks=True)(x)
        x = self.conv(32, 3, "Conv2d_2a_3x3", shrinks=True)(x)
        x = self.conv(64, 3, "Conv2d_2b_3x3")(x)
        x = self.max_pool("MaxPool_3a_3x3")(x)
        x = self.conv(80, 1, "Conv2d_3b_1x1", shrinks=True)(x)
        x = self.conv(192, 3, "Conv2d_4a_3x3", shrinks=True)(x)
        return self.conv(256, 3, "Conv2d_4b_3x3", strides=2, shrinks=True)(x)


@dataclass(frozen=True)
class _ResidualBlock(Units):
    """An Inception-ResNet block: branches -> concat -> linear 1x1 up-projection to the input's
    channels -> ``x + scale * up`` -> ReLU (unless ``activation`` is False)."""

    #: residual scale of the block in the pretrained network
    default_scale: ClassVar[float]

    def branches(self, x, scope: str) -> list:  # pragma: no cover - every block defines it
        raise NotImplementedError

    def __call__(self, x, scope: str, scale: float | None = None, activation: bool = True):
        mixed = self.concat(self.branches(x, scope), scope)
        regularizer = keras.regularizers.L2(self.weight_decay) if self.weight_decay else None
        up = layers.Conv2D(x.shape[-1], 1, use_bias=True, kernel_regularizer=regularizer,
                           name=layer_name(f"{scope}/Conv2d_1x1"))(mixed)
        scale = self.default_scale if scale is None else scale
        x = ScaledResidual(scale, name=layer_name(f"{scope}/add"))([x, up])
        if activation:
            x = layers.ReLU(name=layer_name(f"{scope}/Relu"))(x)
        return x


@dataclass(frozen=True)
class Block35(_ResidualBlock):
    """Inception-ResNet-A (35x35 grid in the paper; 17x17 at 160 px input)."""

    default_scale: ClassVar[float] = 0.17

    def branches(self, x, scope: str) -> list:
        b0 = self.conv(32, 1, f"{scope}/Branch_0/Conv2d_1x1")(x)
        b1 = self.conv(32, 1, f"{scope}/Branch_1/Conv2d_0a_1x1")(x)
        b1 = self.conv(32, 3, f"{scope}/Branch_1/Conv2d_0b_3x3")(b1)
        b2 = self.conv(32, 1, f"{scope}/Branch_2/Conv2d_0a_1x1")(x)
        b2 = self.conv(32, 3, f"{scope}/Branch_2/Conv2d_0b_3x3")(b2)
        b2 = self.conv(32, 3, f"{scope}/Branch_2/Conv2d_0c_3x3")(b2)
        return [b0, b1, b2]


@dataclass(frozen=True)
class _FactorisedBlock(_ResidualBlock):
    """Block17 and Block8: a 1x1 branch and a 1x1 -> 1xk -> kx1 branch of ``filters`` each."""

    filters: ClassVar[int]
    kernel: ClassVar[int]

    def branches(self, x, scope: str) -> list:
        n, k = self.filters, self.kernel
        b0 = self.conv(n, 1, f"{scope}/Branch_0/Conv2d_1x1")(x)
        b1 = self.conv(n, 1, f"{scope}/Branch_1/Conv2d_0a_1x1")(x)
        b1 = self.conv(n, (1, k), f"{scope}/Branch_1/Conv2d_0b_1x{k}")(b1)
        b1 = self.conv(n, (k, 1), f"{scope}/Branch_1/Conv2d_0c_{k}x1")(b1)
        return [b0, b1]


@dataclass(frozen=True)
class Block17(_FactorisedBlock):
    """Inception-ResNet-B (17x17 in the paper; 8x8 at 160 px input)."""

    default_scale: ClassVar[float] = 0.10
    filters: ClassVar[int] = 128
    kernel: ClassVar[int] = 7


@dataclass(frozen=True)
class Block8(_FactorisedBlock):
    """Inception-ResNet-C (8x8 in the paper; 3x3 at 160 px input)."""

    default_scale: ClassVar[float] = 0.20
    filters: ClassVar[int] = 192
    kernel: ClassVar[int] = 3


@dataclass(frozen=True)
class Mixed6a(Units):
    """Reduction-A: ``reduction_a(net, k=192, l=192, m=256, n=384)``; halves the grid."""

    def __call__(self, x, scope: str = "Mixed_6a"):
        b0 = self.conv(384, 3, f"{scope}/Branch_0/Conv2d_1a_3x3", strides=2, shrinks=True)(x)
        b1 = self.conv(192, 1, f"{scope}/Branch_1/Conv2d_0a_1x1")(x)
        b1 = self.conv(192, 3, f"{scope}/Branch_1/Conv2d_0b_3x3")(b1)
        b1 = self.conv(256, 3, f"{scope}/Branch_1/Conv2d_1a_3x3", strides=2, shrinks=True)(b1)
        b2 = self.max_pool(f"{scope}/Branch_2/MaxPool_1a_3x3")(x)
        return self.concat([b0, b1, b2], scope)


@dataclass(frozen=True)
class Mixed7a(Units):
    """Reduction-B; halves the grid."""

    def __call__(self, x, scope: str = "Mixed_7a"):
        b0 = self.conv(256, 1, f"{scope}/Branch_0/Conv2d_0a_1x1")(x)
        b0 = self.conv(384, 3, f"{scope}/Branch_0/Conv2d_1a_3x3", strides=2, shrinks=True)(b0)
        b1 = self.conv(256, 1, f"{scope}/Branch_1/Conv2d_0a_1x1")(x)
        b1 = self.conv(256, 3, f"{scope}/Branch_1/Conv2d_1a_3x3", strides=2, shrinks=True)(b1)
        b2 = self.conv(256, 1, f"{scope}/Branch_2/Conv2d_0a_1x1")(x)
        b2 = self.conv(256, 3, f"{scope}/Branch_2/Conv2d_0b_3x3")(b2)
        b2 = self.conv(256, 3, f"{scope}/Branch_2/Conv2d_1a_3x3", strides=2, shrinks=True)(b2)
        b3 = self.max_pool(f"{scope}/Branch_3/MaxPool_1a_3x3")(x)
        return self.concat([b0, b1, b2, b3], scope)


def min_input_size(padding: str = "valid") -> int:
    """Smallest input side (pixels) that leaves at least a 1x1 grid after the last reduction."""
    return 75 if padding == "valid" else 32


def inception_resnet_v1(
    input_size: int = PRETRAINED_INPUT_SIZE,
    embedding_size: int = PRETRAINED_EMBEDDING_SIZE,
    *,
    width: float = 1.0,
    repeats: Sequence[int] = PRETRAINED_REPEATS,
    padding: str = "valid",
    dropout_keep_prob: float = 0.8,
    folded_batch_norm: bool = True,
    weight_decay: float = 0.0,
    name: str = "InceptionResnetV1",
) -> keras.Model:
    """Build an Inception-ResNet-v1 embedding network (random weights).

    The defaults of ``width``, ``repeats`` and ``padding`` give davidsandberg's network (the
    pretrained 20180408-102900); other values give a narrower/shallower network with the same
    blocks and layer names (for training small networks on a CPU).

    Args:
        input_size: side of the square input crop in pixels (160 for the pretrained model; at
            least :func:`min_input_size` so that the reductions leave a 1x1 grid).
        embedding_size: length D of the embedding (512 pretrained; 128 as in the FaceNet paper).
        width: channel multiplier of every convolution unit (see :class:`Units`).
        repeats: residual blocks in stages A (Block35), B (Block17) and C (Block8), each >= 0;
            a final Block8 without activation always follows stage C.
        padding: ``valid`` (the pretrained network: grid 160 -> 17 -> 8 -> 3) or ``same``
            (grid S/8, S/16, S/32).
        dropout_keep_prob: keep probability of the dropout before the bottleneck (training only).
        folded_batch_norm: True for convolutions with biases and no batch norm (the pretrained
            frozen graph); False for conv + batch norm (training from scratch).
        weight_decay: L2 factor on convolution and bottleneck kernels (0 disables).
        name: the Keras model name.

    Returns:
        A Keras model mapping ``(N, input_size, input_size, 3) float32`` prewhitened crops to
        ``(N, embedding_size) float32`` L2-normalised embeddings.
    """
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    if input_size < min_input_size(padding):
        raise ValueError(f"input_size must be at least {min_input_size(padding)} pixels with "
                         f"{padding!r} padding, got {input_size}")
    if embedding_size < 1:
        raise ValueError(f"embedding_size must be positive, got {embedding_size}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    repeats = tuple(int(n) for n in repeats)
    if len(repeats) != 3 or min(repeats) < 0:
        raise ValueError(f"repeats must be three block counts >= 0, got {repeats}")
    if not 0.0 < dropout_keep_prob <= 1.0:
        raise ValueError(f"dropout_keep_prob must be in (0, 1], got {dropout_keep_prob}")

    units = dict(folded_batch_norm=folded_batch_norm, weight_decay=weight_decay, width=width,
                 padding=padding)
    inputs = keras.Input((input_size, input_size, 3), name="input")
    x = Stem(**units)(inputs)
    stages = [(Block35(**units), "Repeat/block35", Mixed6a(**units)),
              (Block17(**units), "Repeat_1/block17", Mixed7a(**units)),
              (Block8(**units), "Repeat_2/block8", None)]
    for (block, prefix, reduction), n in zip(stages, repeats):
        for i in range(1, n + 1):
            x = block(x, f"{prefix}_{i}")
        if reduction is not None:
            x = reduction(x)
    x = Block8(**units)(x, "Block8", scale=1.0, activation=False)

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
