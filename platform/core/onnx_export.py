"""Keras embedding model -> ONNX (fp32, and static int8 QDQ), built directly from the layers.

:func:`export_onnx` walks ``model.layers`` of a functional Keras model (the Inception-ResNet-v1 of
:mod:`facenet_platform.core.model`, any input size, folded or unfolded batch norm) and writes the
same computation as an ONNX graph with :mod:`onnx.helper`, one handler per Keras layer type:

- input ``(N, S, S, 3) float32`` NHWC is transposed once to NCHW; everything after runs in NCHW;
- ``Conv2D`` -> ``Conv`` (TF ``same`` padding as explicit pads), ``ReLU`` -> ``Relu``,
  ``Concatenate`` -> ``Concat``, ``MaxPooling2D`` -> ``MaxPool``,
  ``GlobalAveragePooling2D`` -> ``GlobalAveragePool`` + ``Flatten``, ``Dense`` -> ``Gemm``,
  ``Dropout`` -> nothing,
  ``L2Normalize`` -> ``ReduceSumSquare``/``Max``/``Sqrt``/``Reciprocal``/``Mul``;
- per-channel affine layers (``BatchNormalization``, the ``ScaledResidual`` scale) are folded into
  the weights of the ``Conv``/``Gemm`` that produces their input when nothing else reads it, so the
  residual join is a bare ``Add`` that ONNX Runtime fuses into the convolution.

An unsupported layer raises :class:`~facenet_platform.core.errors.ConfigError` naming it.

:func:`quantize_int8` turns the fp32 ONNX model into a statically quantized one (QDQ format,
int8 per-channel weights, uint8 activations: ONNX Runtime's u8s8 kernels use AVX-512 VNNI, while
s8s8 activations ran several times slower here), calibrated on prewhitened crops the caller
provides.

:func:`weights_fingerprint` is the sha256 of a model's architecture and weight values; the backends
key their cached files on it (plus :data:`EXPORTER_VERSION`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ConfigError

logger = logging.getLogger(__name__)

EXPORTER_VERSION = 1  # bump when the exported graph changes, so cached files are rebuilt
OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "embeddings"
# Keras NHWC axis -> ONNX NCHW axis for 4-D tensors.
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}
# int8: the convolutions and what joins them; the bottleneck Gemm and L2 norm stay fp32.
INT8_OP_TYPES = ("Conv", "Concat", "MaxPool", "Add", "Relu")
INT8_CALIBRATION_PERCENTILE = 99.999


def weights_fingerprint(model) -> str:
    """Hex sha256 of the model's layer config and every weight (name, shape, dtype, bytes)."""
    digest = hashlib.sha256()
    digest.update(f"exporter={EXPORTER_VERSION};".encode())
    config = [(layer.name, type(layer).__name__) for layer in model.layers]
    digest.update(json.dumps(config).encode())
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight))
        digest.update(f"{weight.path}:{value.shape}:{value.dtype};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF ``same`` padding (extra pixel at the end) for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _spatial_pads(layer, input_shape, kernel, strides) -> list[int]:
    if layer.padding == "valid":
        return [0, 0, 0, 0]
    if layer.padding != "same":
        raise ConfigError(f"layer {layer.name}: padding {layer.padding!r} is not exportable")
    (top, bottom), (left, right) = (
        _same_pads(int(input_shape[axis]), int(kernel[i]), int(strides[i]))
        for i, axis in enumerate((1, 2))
    )
    return [top, left, bottom, right]


class _GraphBuilder:
    """ONNX nodes and initializers under construction, with Keras tensor -> ONNX name mapping."""

    def __init__(self, model):
        self.model = model
        self.nodes: list = []
        self.initializers: dict[str, np.ndarray] = {}
        self.names: dict[int, str] = {}
        self.producers: dict[str, object] = {}  # ONNX tensor name -> NodeProto producing it
        self.readers: dict[int, int] = {}  # id(Keras tensor) -> number of layers reading it
        self.onnx_readers: dict[str, int] = {}  # ONNX tensor name -> number of readers
        for layer in model.layers:
            for tensor in self.inputs_of(layer):
                self.readers[id(tensor)] = self.readers.get(id(tensor), 0) + 1
        for tensor in model.outputs:
            self.readers[id(tensor)] = self.readers.get(id(tensor), 0) + 1

    @staticmethod
    def inputs_of(layer) -> list:
        if type(layer).__name__ == "InputLayer":
            return []
        inputs = layer.input
        return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]

    def name_of(self, tensor) -> str:
        return self.names[id(tensor)]

    def add_layer(self, layer, name: str) -> None:
        """Record that ``layer``'s output is the ONNX tensor ``name`` and who will read it.

        A layer that emits nothing (``Dropout``, a folded batch norm) returns its input's name:
        that tensor's readers are then its own other readers plus the layer's.
        """
        alias = name in self.onnx_readers
        self.names[id(layer.output)] = name
        self.onnx_readers[name] = (self.onnx_readers.get(name, 0) - int(alias)
                                   + self.readers.get(id(layer.output), 0))

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers[name] = np.asarray(value)
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        node = helper.make_node(op, inputs, [output], name=output, **attrs)
        self.nodes.append(node)
        self.producers[output] = node
        return output

    def fold_affine(self, tensor, scale: np.ndarray, shift: np.ndarray | None) -> bool:
        """Fold ``y = x * scale + shift`` (per output channel) into the Conv/Gemm producing ``x``.

        Only when that producer's output is read by nothing else; returns whether it folded.
        """
        name = self.name_of(tensor)
        producer = self.producers.get(name)
        if producer is None or producer.op_type not in ("Conv", "Gemm") \
                or self.onnx_readers.get(name, 0) != 1:
            return False
        weight_name, bias_name = producer.input[1], producer.input[2]
        weight = self.initializers[weight_name].astype(np.float64)
        if producer.op_type == "Conv":  # (out, in, kh, kw)
            scale = np.broadcast_to(np.asarray(scale, np.float64), weight.shape[:1])
            weight = weight * scale[:, None, None, None]
        else:  # Gemm B: (in, out)
            scale = np.broadcast_to(np.asarray(scale, np.float64), weight.shape[1:])
            weight = weight * scale[None, :]
        bias = self.initializers[bias_name] * scale
        if shift is not None:
            bias = bias + shift
        self.initializers[weight_name] = weight.astype(np.float32)
        self.initializers[bias_name] = bias.astype(np.float32)
        return True

    def affine(self, layer, scale: np.ndarray, shift: np.ndarray | None) -> str:
        """Emit ``x * scale + shift`` for ``layer`` (folded into the producer where possible)."""
        source = layer.input
        if self.fold_affine(source, scale, shift):
            return self.name_of(source)
        x = self.name_of(source)
        shape = (1, -1, 1, 1) if len(source.shape) == 4 else (1, -1)
        out = self.node("Mul", [x, self.const(f"{layer.name}.scale",
                        np.asarray(scale, np.float32).reshape(shape))], f"{layer.name}.mul")
        if shift is not None:
            out = self.node("Add", [out, self.const(f"{layer.name}.shift",
                            np.asarray(shift, np.float32).reshape(shape))], layer.name)
        return out

    # ---- one handler per Keras layer type; each returns the ONNX name of the layer's output ----

    def input_layer(self, layer) -> str:
        return self.node("Transpose", [INPUT_NAME], "input.nchw", perm=[0, 3, 1, 2])

    def conv2d(self, layer) -> str:
        if tuple(layer.dilation_rate) != (1, 1) or getattr(layer, "groups", 1) != 1:
            raise ConfigError(f"layer {layer.name}: dilated or grouped convolutions are not "
                              "exportable")
        kernel = np.asarray(layer.kernel)  # (kh, kw, in, out)
        bias = np.asarray(layer.bias) if layer.use_bias else np.zeros(kernel.shape[-1], np.float32)
        pads = _spatial_pads(layer, layer.input.shape, kernel.shape[:2], layer.strides)
        w = self.const(f"{layer.name}.weight", kernel.transpose(3, 2, 0, 1).astype(np.float32))
        b = self.const(f"{layer.name}.bias", bias.astype(np.float32))
        out = self.node("Conv", [self.name_of(layer.input), w, b], layer.name,
                        kernel_shape=list(kernel.shape[:2]), strides=list(layer.strides), pads=pads)
        return self._activation(layer, out)

    def _activation(self, layer, x: str) -> str:
        activation = getattr(layer.activation, "__name__", str(layer.activation))
        if activation == "linear":
            return x
        if activation == "relu":
            return self.node("Relu", [x], f"{layer.name}.relu")
        raise ConfigError(f"layer {layer.name}: activation {activation!r} is not exportable")

    def relu(self, layer) -> str:
        if layer.max_value is not None or float(layer.negative_slope) != 0.0 \
                or float(layer.threshold) != 0.0:
            raise ConfigError(f"layer {layer.name}: only a plain ReLU is exportable")
        return self.node("Relu", [self.name_of(layer.input)], layer.name)

    def concatenate(self, layer) -> str:
        rank = len(layer.output.shape)
        axis = layer.axis % rank
        axis = _NHWC_TO_NCHW_AXIS[axis] if rank == 4 else axis
        return self.node("Concat", [self.name_of(t) for t in layer.input], layer.name, axis=axis)

    def max_pooling2d(self, layer) -> str:
        pads = _spatial_pads(layer, layer.input.shape, layer.pool_size, layer.strides)
        return self.node("MaxPool", [self.name_of(layer.input)], layer.name,
                         kernel_shape=list(layer.pool_size), strides=list(layer.strides), pads=pads)

    def global_average_pooling2d(self, layer) -> str:
        if getattr(layer, "keepdims", False):
            raise ConfigError(f"layer {layer.name}: keepdims=True is not exportable")
        pooled = self.node("GlobalAveragePool", [self.name_of(layer.input)], f"{layer.name}.pool")
        return self.node("Flatten", [pooled], layer.name, axis=1)

    def identity(self, layer) -> str:
        return self.name_of(layer.input)

    def dense(self, layer) -> str:
        if len(layer.input.shape) != 2:
            raise ConfigError(f"layer {layer.name}: only 2-D Dense inputs are exportable")
        kernel = np.asarray(layer.kernel).astype(np.float32)  # (in, out)
        bias = np.asarray(layer.bias) if layer.use_bias else np.zeros(kernel.shape[1], np.float32)
        w = self.const(f"{layer.name}.weight", kernel)
        b = self.const(f"{layer.name}.bias", bias.astype(np.float32))
        out = self.node("Gemm", [self.name_of(layer.input), w, b], layer.name)
        return self._activation(layer, out)

    def batch_normalization(self, layer) -> str:
        rank = len(layer.input.shape)
        if int(layer.axis) % rank != rank - 1:
            raise ConfigError(f"layer {layer.name}: only channel-last batch norm is exportable")
        mean = np.asarray(layer.moving_mean, np.float64)
        inv_std = 1.0 / np.sqrt(np.asarray(layer.moving_variance, np.float64) + layer.epsilon)
        gamma = np.asarray(layer.gamma, np.float64) if layer.scale else 1.0
        beta = np.asarray(layer.beta, np.float64) if layer.center else 0.0
        scale = gamma * inv_std
        return self.affine(layer, scale, beta - mean * scale)

    def scaled_residual(self, layer) -> str:
        shortcut, residual = layer.input
        if self.fold_affine(residual, np.float64(layer.scale), None):
            residual_name = self.name_of(residual)
        else:
            residual_name = self.node(
                "Mul", [self.name_of(residual),
                        self.const(f"{layer.name}.scale", np.float32(layer.scale))],
                f"{layer.name}.mul")
        return self.node("Add", [self.name_of(shortcut), residual_name], layer.name)

    def l2_normalize(self, layer) -> str:
        x = self.name_of(layer.input)
        axis = len(layer.input.shape) - 1
        square_sum = self.node("ReduceSumSquare", [x], f"{layer.name}.sumsq", axes=[axis],
                               keepdims=1)
        clipped = self.node("Max", [square_sum, self.const(f"{layer.name}.eps",
                            np.float32(layer.epsilon))], f"{layer.name}.max")
        norm = self.node("Sqrt", [clipped], f"{layer.name}.sqrt")
        inv = self.node("Reciprocal", [norm], f"{layer.name}.inv")
        return self.node("Mul", [x, inv], layer.name)


_HANDLERS: dict[str, Callable[[_GraphBuilder, object], str]] = {
    "InputLayer": _GraphBuilder.input_layer,
    "Conv2D": _GraphBuilder.conv2d,
    "ReLU": _GraphBuilder.relu,
    "Concatenate": _GraphBuilder.concatenate,
    "MaxPooling2D": _GraphBuilder.max_pooling2d,
    "GlobalAveragePooling2D": _GraphBuilder.global_average_pooling2d,
    "Dropout": _GraphBuilder.identity,
    "Dense": _GraphBuilder.dense,
    "BatchNormalization": _GraphBuilder.batch_normalization,
    "ScaledResidual": _GraphBuilder.scaled_residual,
    "L2Normalize": _GraphBuilder.l2_normalize,
}


def build_onnx_model(model):
    """The ``onnx.ModelProto`` computing ``model`` (NHWC float32 in, ``(N, D)`` float32 out)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConfigError(f"model {model.name}: ONNX export needs one input and one output")
    in_shape, out_shape = model.inputs[0].shape, model.outputs[0].shape
    if len(in_shape) != 4 or len(out_shape) != 2:
        raise ConfigError(f"model {model.name}: expected (N, S, S, C) -> (N, D), got "
                          f"{in_shape} -> {out_shape}")
    graph = _GraphBuilder(model)
    for layer in model.layers:
        handler = _HANDLERS.get(type(layer).__name__)
        if handler is None:
            raise ConfigError(
                f"model {model.name}: layer {layer.name} of type {type(layer).__name__} has no "
                f"ONNX export; supported: {sorted(_HANDLERS)}. Use backend 'keras-fp32'."
            )
        graph.add_layer(layer, handler(graph, layer))
    final = graph.name_of(model.outputs[0])
    if final != OUTPUT_NAME:
        read_elsewhere = any(final in node.input for node in graph.nodes)
        if OUTPUT_NAME in graph.producers or final not in graph.producers or read_elsewhere:
            graph.node("Identity", [final], OUTPUT_NAME)
        else:  # the last node writes the graph output directly
            graph.producers[final].output[0] = OUTPUT_NAME
    # drop initializers orphaned by folding (none today, but keep the file minimal)
    used = {name for node in graph.nodes for name in node.input}
    initializers = [numpy_helper.from_array(np.asarray(v), name)
                    for name, v in graph.initializers.items() if name in used]
    onnx_graph = helper.make_graph(
        graph.nodes, model.name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                       ["N", *[int(d) for d in in_shape[1:]]])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", int(out_shape[1])])],
        initializer=initializers,
    )
    proto = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="facenet_platform",
                              producer_version=str(EXPORTER_VERSION))
    proto.ir_version = 8  # the lowest IR for opset 17: readable by any onnxruntime >= 1.13
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path: Path) -> Path:
    """Write ``model`` as fp32 ONNX to ``path`` (atomically) and return it."""
    proto = build_onnx_model(model)
    atomic_write_bytes(Path(path), proto.SerializeToString())
    logger.info("exported %s to %s (%d nodes)", model.name, path, len(proto.graph.node))
    return Path(path)


class _CalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over an array, in equal batches.

    The batch size is the largest divisor of ``len(data)`` not above ``batch_size``: the
    percentile calibrator stacks the per-batch activations and needs them all the same shape.
    """

    def __init__(self, data: np.ndarray, batch_size: int):
        size = next(b for b in range(min(batch_size, len(data)), 0, -1) if len(data) % b == 0)
        self._batches = iter([data[i:i + size] for i in range(0, len(data), size)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, *,
                  batch_size: int = 16) -> Path:
    """Static int8 quantization (QDQ) of an fp32 ONNX file from :func:`export_onnx`.

    Args:
        fp32_path: the fp32 model.
        out_path: where to write the quantized model (atomically).
        calibration: ``(N, S, S, 3) float32`` prewhitened crops of real aligned faces (a
            hundred or two is plenty). Each activation's range is its 0.001st..99.999th
            percentile over them: plain min/max lets rare outliers stretch the int8 grid (on LFW
            crops the worst embedding's cosine to fp32 drops from 0.995 to 0.970).
        batch_size: calibration batch size (memory only; the result does not depend on it).
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    calibration = np.asarray(calibration, np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ConfigError(f"int8 calibration needs (N, S, S, 3) prewhitened crops with N >= 1, "
                          f"got shape {calibration.shape}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".onnx", dir=out_path.parent)
    os.close(fd)
    progress = io.StringIO()  # the percentile calibrator prints its progress to stdout
    try:
        with contextlib.redirect_stdout(progress):
            quantize_static(
                str(fp32_path), tmp, _CalibrationReader(calibration, batch_size),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
                op_types_to_quantize=list(INT8_OP_TYPES),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                               "CalibPercentile": INT8_CALIBRATION_PERCENTILE},
            )
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        logger.debug("quantization output: %s", progress.getvalue().strip())
    logger.info("quantized %s to %s with %d calibration crops", fp32_path, out_path,
                len(calibration))
    return out_path
