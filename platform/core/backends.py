"""Interchangeable numerics for the embedding network: a registry of embedding runners.

A runner is built from a Keras embedding model and a batch size and maps ``(B, S, S, 3) float32``
prewhitened crops (``B <= batch_size``) to ``(B, D) float32`` embeddings:

=============  ==================================================================================
name           how it runs
=============  ==================================================================================
keras-fp32     the Keras model in a ``tf.function`` (XLA optional, off by default), every call
               padded to ``batch_size`` so that it is traced once. The reference.
keras-bf16     a clone of the model under the ``bfloat16`` dtype policy (bf16 weights and compute
               on oneDNN's AVX512_BF16 kernels), same weights; the last batch norm and the L2
               normalisation stay in fp32. No XLA by default (XLA's CPU bf16 convolutions are
               about 2x slower than oneDNN's). Embedding agreement: cosine >= 0.9999.
onnx-fp32      ONNX Runtime on an ONNX graph exported from the same weights
               (:mod:`~facenet_platform.core.onnx_export`). Agreement: max abs ~1e-7.
onnx-int8      ONNX Runtime on that graph statically quantized to int8 (QDQ, per-channel int8
               weights, uint8 activations; VNNI kernels), calibrated on real face crops the
               caller passes (``RunnerOptions.calibration``).
=============  ==================================================================================

Exported and quantized ONNX files are cached in ``<weights.cache_dir()>/<model_id>/onnx/``,
named by :func:`~facenet_platform.core.onnx_export.weights_fingerprint` of the model (and, for
int8, by a fingerprint of the calibration crops), built on first use and written atomically.
``onnx-int8`` without calibration crops reuses the newest int8 file already built for these
weights and raises :class:`ConfigError` if there is none.

``auto`` (the default) resolves, where the embedder is built, to ``keras-bf16`` on a CPU with
native bfloat16 arithmetic (AVX512_BF16 or AMX-BF16; LFW accuracy within 0.001 of fp32, about
2x its speed) and to ``keras-fp32`` elsewhere, GPUs included (:func:`resolve_backend`).

Add a backend by adding a factory ``(model, batch_size, options) -> runner`` to :data:`BACKENDS`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from .errors import ConfigError

logger = logging.getLogger(__name__)

AUTO_BACKEND = "auto"
DEFAULT_BACKEND = AUTO_BACKEND
#: /proc/cpuinfo flags of CPUs that compute bfloat16 natively (oneDNN uses them for keras-bf16).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@runtime_checkable
class EmbeddingRunner(Protocol):
    """Forward pass of an embedding network on prewhitened crops."""

    batch_size: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``(B <= batch_size, S, S, 3) float32`` prewhitened -> ``(B, D) float32``."""


@dataclass(frozen=True)
class RunnerOptions:
    """Settings a backend may use; each backend ignores those that do not apply to it.

    Attributes:
        jit_compile: Keras backends: compile the forward pass with XLA (None: the backend's
            default, see :data:`KERAS_JIT_DEFAULT`).
        threads: ONNX Runtime intra-op threads. None: ``$OMP_NUM_THREADS`` when set (Ray sets
            it to the CPUs of each task or actor), else one per physical core.
        ort_spinning: let ONNX Runtime's idle worker threads spin. Off by default: on a machine
            shared with other processes (Ray workers, other services) spinning burns about half
            the CPU time for nothing and halved throughput at batch 1 in our measurements.
        model_id: name of the cache subdirectory for ONNX files (default: the model's name).
        calibration: onnx-int8: ``(N, S, S, 3) float32`` prewhitened crops of real aligned faces
            (a few hundred) to calibrate activation ranges on.
    """

    jit_compile: bool | None = None
    threads: int | None = None
    ort_spinning: bool = False
    model_id: str | None = None
    calibration: np.ndarray | None = field(default=None, repr=False, compare=False)


RunnerFactory = Callable[[object, int, RunnerOptions], EmbeddingRunner]


# ---------------------------------------------------------------------------------------- Keras


class KerasRunner:
    """A Keras model in a ``tf.function``, called at exactly ``batch_size`` (zero padded)."""

    def __init__(self, model, batch_size: int, *, jit_compile: bool = True):
        import tensorflow as tf

        self.model = model
        self.batch_size = int(batch_size)
        self._forward = tf.function(
            lambda x: model(x, training=False), jit_compile=jit_compile, reduce_retracing=True
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n < self.batch_size:
            pad = np.zeros((self.batch_size - n, *x.shape[1:]), np.float32)
            x = np.concatenate([x, pad])
        return np.asarray(self._forward(x), dtype=np.float32)[:n]


# Whether XLA is used when RunnerOptions.jit_compile is None. Measured on a 2-core AVX-512 EPYC
# (TF 2.21): without XLA, TF's oneDNN kernels did ~17% more images per CPU second at batch 8-32
# in fp32 (XLA only won at batch 1) and ~2x more in bf16; they also compile in half the time.
KERAS_JIT_DEFAULT = {"keras-fp32": False, "keras-bf16": False}


def _jit(backend: str, options: RunnerOptions) -> bool:
    return KERAS_JIT_DEFAULT[backend] if options.jit_compile is None else options.jit_compile


def _keras_fp32(model, batch_size: int, options: RunnerOptions) -> KerasRunner:
    return KerasRunner(model, batch_size, jit_compile=_jit("keras-fp32", options))


# Layers kept in fp32 in the bf16 clone: the final normalisations, which are cheap and where
# bf16's 8-bit mantissa would cost accuracy directly in the embedding.
_FP32_LAYERS = ("InputLayer", "BatchNormalization", "L2Normalize")


def bf16_clone(model, policy: str = "bfloat16"):
    """A copy of ``model`` whose layers compute in bfloat16, with the same weights.

    ``policy="bfloat16"`` stores the weights in bf16 too (no per-call cast of ~28M weights;
    same numerics as ``"mixed_bfloat16"``, which casts fp32 weights to bf16 on every call).
    """
    import keras

    def clone_layer(layer):
        config = layer.get_config()
        if type(layer).__name__ not in _FP32_LAYERS:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def _keras_bf16(model, batch_size: int, options: RunnerOptions) -> KerasRunner:
    return KerasRunner(bf16_clone(model), batch_size, jit_compile=_jit("keras-bf16", options))


# ----------------------------------------------------------------------------------------- ONNX


def onnx_cache_dir(model, options: RunnerOptions) -> Path:
    """Where the ONNX files of ``model`` are cached: ``<cache>/<model_id>/onnx/``.

    ``model_id`` is ``options.model_id``, else the model's name; the pretrained model's Keras
    name (``facenet_20180408_102900``) maps to its model id, the directory of its converted
    weights.
    """
    from .weights import PRETRAINED, cache_dir

    model_id = options.model_id or model.name
    if model_id == PRETRAINED.model_id.replace("-", "_"):
        model_id = PRETRAINED.model_id
    return cache_dir() / model_id / "onnx"


def ensure_onnx_fp32(model, options: RunnerOptions = RunnerOptions()) -> Path:
    """Path of the fp32 ONNX export of ``model``, exporting it on first use."""
    from .onnx_export import export_onnx, weights_fingerprint

    path = onnx_cache_dir(model, options) / f"fp32-{weights_fingerprint(model)[:16]}.onnx"
    if not path.is_file():
        export_onnx(model, path)
    return path


def calibration_fingerprint(calibration: np.ndarray) -> str:
    """Hex sha256 of calibration crops (shape, dtype, values) and the quantization settings."""
    from .onnx_export import INT8_CALIBRATION_PERCENTILE, INT8_OP_TYPES

    data = np.ascontiguousarray(calibration, np.float32)
    settings = f"{INT8_OP_TYPES}:{INT8_CALIBRATION_PERCENTILE}:{data.shape};"
    digest = hashlib.sha256(settings.encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


def ensure_onnx_int8(model, options: RunnerOptions = RunnerOptions()) -> Path:
    """Path of the int8 ONNX model for ``model`` and ``options.calibration``, built on first use."""
    from .onnx_export import quantize_int8, weights_fingerprint

    directory = onnx_cache_dir(model, options)
    prefix = f"int8-{weights_fingerprint(model)[:16]}-"
    if options.calibration is None:
        built = sorted(directory.glob(f"{prefix}*.onnx"), key=lambda p: p.stat().st_mtime)
        if not built:
            raise ConfigError(
                f"backend 'onnx-int8' has no quantized model for {model.name} in {directory} "
                "yet: the first time, pass a few hundred aligned face crops to calibrate on "
                "(FaceEmbedder(..., calibration_crops=crops) or RunnerOptions(calibration=...))"
            )
        logger.info("onnx-int8: no calibration crops given, using %s", built[-1])
        return built[-1]
    path = directory / f"{prefix}{calibration_fingerprint(options.calibration)[:12]}.onnx"
    if not path.is_file():
        quantize_int8(ensure_onnx_fp32(model, options), path, options.calibration)
    return path


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


class OnnxRunner:
    """ONNX Runtime session over a cached ONNX file (any batch size; no padding)."""

    def __init__(self, path: Path, batch_size: int, *, threads: int | None = None,
                 spinning: bool = False):
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or _env_threads()
        if threads:
            session_options.intra_op_num_threads = threads
        session_options.add_session_config_entry("session.intra_op.allow_spinning",
                                                 "1" if spinning else "0")
        self.path = Path(path)
        self.batch_size = int(batch_size)
        self.threads = threads  # None: ONNX Runtime's default
        self._session = ort.InferenceSession(str(path), session_options,
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self._session.run(None, {self._input: x})[0].astype(np.float32, copy=False)


def _onnx_fp32(model, batch_size: int, options: RunnerOptions) -> OnnxRunner:
    return OnnxRunner(ensure_onnx_fp32(model, options), batch_size, threads=options.threads,
                      spinning=options.ort_spinning)


def _onnx_int8(model, batch_size: int, options: RunnerOptions) -> OnnxRunner:
    return OnnxRunner(ensure_onnx_int8(model, options), batch_size, threads=options.threads,
                      spinning=options.ort_spinning)


# ------------------------------------------------------------------------------------- registry

BACKENDS: dict[str, RunnerFactory] = {
    "keras-fp32": _keras_fp32,
    "keras-bf16": _keras_bf16,
    "onnx-fp32": _onnx_fp32,
    "onnx-int8": _onnx_int8,
}


def cpu_has_native_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU computes bfloat16 natively (Linux; False where unknown)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_backend(name: str) -> str:
    """A concrete backend name: ``name`` itself, or what ``"auto"`` means on this machine
    (``keras-bf16`` on a CPU-only machine with native bf16, else ``keras-fp32``)."""
    if name != AUTO_BACKEND:
        check_backend(name)
        return name
    if cpu_has_native_bf16() and not _has_gpu():
        return "keras-bf16"
    return "keras-fp32"


def check_backend(name: str) -> RunnerFactory | None:
    """The factory of backend ``name`` (None for ``"auto"``, resolved later by
    :func:`resolve_backend`); :class:`ConfigError` listing the choices if unknown."""
    if name == AUTO_BACKEND:
        return None
    factory = BACKENDS.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ConfigError(f"unknown embedding backend {name!r}; choices: "
                          f"{', '.join([AUTO_BACKEND, *BACKENDS])}")
    return factory


def create_runner(name: str, model, batch_size: int,
                  options: RunnerOptions | None = None) -> EmbeddingRunner:
    """Build the runner called ``name`` (a key of :data:`BACKENDS`, or ``"auto"``) for ``model``."""
    factory = check_backend(resolve_backend(name))
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    return factory(model, int(batch_size), options or RunnerOptions())
