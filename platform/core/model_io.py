"""Loading embedding models and reading their specs: any model by path, or by its spec.

A model comes as one of:

=========================  ================================================================
the pretrained network     :data:`~facenet_platform.core.weights.PRETRAINED` (no path)
a training checkpoint      a folder holding ``model.keras`` + ``config.yaml`` (+ ``state.json``),
                           or the ``model.keras`` in it
a ``.keras`` file          any saved Keras embedding model
a SavedModel folder        ``saved_model.pb`` + ``facenet_export.json`` (``train export``)
a ``.tflite`` file         + ``<file>.tflite.json`` (``train export``)
=========================  ================================================================

:func:`read_model_spec` says what a path holds (its :class:`~facenet_platform.core.model_spec.
ModelSpec`) from the model's own files, without TensorFlow except for a bare ``.keras`` file
(whose sizes only the network knows): the export sidecar holds the spec itself; a checkpoint's
``config.yaml`` gives input size, embedding size and standardization and its ``state.json`` the
last validation threshold. :func:`load_network` loads the weights a spec names;
:func:`load_exported` loads any path into an object with the embedding contract
``__call__(standardized (N, S, S, 3) float32) -> (N, D) float32`` plus ``input_shape``,
``output_shape`` and ``name`` (the Keras model itself for ``.keras`` and checkpoints).

The training side writes these files (``train/export.py`` through :func:`write_export_metadata`);
this module only reads them, so the core never imports the training code.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, ModelSpecError
from .model_spec import ModelSource, ModelSpec

logger = logging.getLogger(__name__)

__all__ = ["ExportedEmbedder", "METADATA_FILE", "SavedModelEmbedder", "TFLiteEmbedder",
           "checkpoint_threshold", "is_checkpoint", "is_exported", "load_exported", "load_model",
           "load_network", "metadata_path", "read_export_metadata", "read_model_spec",
           "write_export_metadata"]

#: The export sidecar: ``<savedmodel dir>/facenet_export.json`` or ``<file>.tflite.json``.
METADATA_FILE = "facenet_export.json"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
STATE_FILE = "state.json"


# ------------------------------------------------------------------------------------------
# Keras files


def load_model(path: str | os.PathLike):
    """Load an embedding model saved as ``.keras`` (or a directory holding ``model.keras``)."""
    import keras

    from . import model as _model  # noqa: F401  registers the custom layers

    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no such model file")
    return keras.models.load_model(path, compile=False)


# ------------------------------------------------------------------------------------------
# exported models


class ExportedEmbedder:
    """Common face of a loaded SavedModel / TFLite embedding model."""

    is_exported_embedder = True
    format = "?"

    def __init__(self, path: Path, input_size: int, embedding_size: int, batch_size: int = 32):
        self.path = Path(path)
        self.input_size = int(input_size)
        self.embedding_size = int(embedding_size)
        self.batch_size = int(batch_size)
        self.name = self.path.stem if self.path.suffix else self.path.name

    @property
    def input_shape(self) -> tuple:
        return (None, self.input_size, self.input_size, 3)

    @property
    def output_shape(self) -> tuple:
        return (None, self.embedding_size)

    def _forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x, training: bool = False) -> np.ndarray:
        """``(N, S, S, 3) float32`` standardised crops -> ``(N, D) float32`` embeddings."""
        x = np.asarray(x, np.float32)
        if x.ndim != 4 or x.shape[1:] != (self.input_size, self.input_size, 3):
            raise ConfigError(f"{self.path}: expected (N, {self.input_size}, {self.input_size}, 3) "
                              f"input, got {x.shape}")
        if len(x) == 0:
            return np.zeros((0, self.embedding_size), np.float32)
        out = [self._forward(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, input_size={self.input_size}, "
                f"embedding_size={self.embedding_size})")


class SavedModelEmbedder(ExportedEmbedder):
    """A SavedModel written by ``train export --format savedmodel`` (its ``embed_standardized``
    signature)."""

    format = "savedmodel"

    def __init__(self, path, batch_size: int = 32):
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["embed_standardized"]
        spec = fn.structured_input_signature[1]["x"]
        out_dim = fn.structured_outputs["embeddings"].shape[-1]
        super().__init__(Path(path), spec.shape[1], out_dim, batch_size)
        self._loaded = loaded
        self._fn = fn
        self._serving = loaded.signatures["serving_default"]

    def _forward(self, x):
        import tensorflow as tf

        return self._fn(x=tf.constant(x))["embeddings"].numpy()

    def embed_uint8(self, crops: np.ndarray) -> np.ndarray:
        """The serving signature: ``(N, S, S, 3) uint8`` crops, standardisation inside."""
        import tensorflow as tf

        return self._serving(images=tf.constant(np.asarray(crops, np.uint8)))["embeddings"].numpy()


class TFLiteEmbedder(ExportedEmbedder):
    """A float or int8 TFLite flatbuffer (LiteRT's interpreter when installed)."""

    format = "tflite"

    def __init__(self, path, batch_size: int = 32, num_threads: int | None = None):
        import warnings

        try:  # LiteRT, the interpreter's new home, when installed
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter
        with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
            warnings.simplefilter("ignore", UserWarning)
            self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()[0]
        super().__init__(Path(path), inp["shape_signature"][1], out["shape_signature"][-1],
                         batch_size)
        self._in, self._out = inp["index"], out["index"]
        self._in_dtype = inp["dtype"]
        self._in_quant = inp.get("quantization", (0.0, 0))
        self._out_quant = out.get("quantization", (0.0, 0))
        self._allocated_for = None

    def _forward(self, x):
        n = len(x)
        if self._allocated_for != n:
            self._interpreter.resize_tensor_input(self._in, [n, *x.shape[1:]], strict=False)
            self._interpreter.allocate_tensors()
            self._allocated_for = n
        if self._in_dtype != np.float32:  # a fully integer model
            scale, zero = self._in_quant
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(self._in_dtype)
        self._interpreter.set_tensor(self._in, x)
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(self._out)
        if y.dtype != np.float32:
            scale, zero = self._out_quant
            y = (y.astype(np.float32) - zero) * scale
        return y


def is_exported(path: str | os.PathLike) -> bool:
    """A ``.tflite`` file or a SavedModel folder."""
    path = Path(path)
    return path.suffix == ".tflite" or (path.is_dir() and (path / "saved_model.pb").is_file())


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A folder holding ``model.keras``, or a ``.keras`` file."""
    path = Path(path)
    return ((path.is_dir() and (path / MODEL_FILE).is_file())
            or (path.is_file() and path.suffix == ".keras"))


def load_exported(path: str | os.PathLike, batch_size: int = 32):
    """Any model by path: ``*.tflite``, a SavedModel folder, a ``.keras`` file or a checkpoint
    folder (the Keras model itself is returned for the last two)."""
    path = Path(path)
    if path.suffix == ".tflite":
        if not path.is_file():
            raise ConfigError(f"{path}: no such TFLite file")
        return TFLiteEmbedder(path, batch_size)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return SavedModelEmbedder(path, batch_size)
    return load_model(path)


def load_network(spec: ModelSpec, batch_size: int = 32):
    """The network ``spec.source`` names: the pretrained Keras model, a checkpoint's Keras model
    or an exported model (see :func:`load_exported`).

    Raises:
        ModelSpecError: the source cannot be loaded (a model handed over in memory), or the
            network's input/embedding size is not the spec's.
    """
    source = spec.source
    if source.kind == "pretrained":
        from .weights import load_pretrained_model

        network = load_pretrained_model()
    elif source.loadable:
        network = load_exported(source.path, batch_size=batch_size)
    else:
        raise ModelSpecError(f"model {spec.model_id!r} was handed over in memory: its spec "
                             "names no weights to load")
    check_network(spec, network)
    return network


def check_network(spec: ModelSpec, network) -> None:
    """Raise :class:`ModelSpecError` unless ``network`` takes ``spec.input_size`` px crops and
    returns ``spec.embedding_size``-d embeddings."""
    size, dim = int(network.input_shape[1]), int(network.output_shape[-1])
    if (size, dim) != (spec.input_size, spec.embedding_size):
        raise ModelSpecError(
            f"model {spec.model_id!r}: its spec says {spec.input_size} px in, "
            f"{spec.embedding_size}-d out, but the network takes {size} px and returns {dim}-d")


# ------------------------------------------------------------------------------------------
# metadata


def metadata_path(export_path: str | os.PathLike) -> Path:
    """``<savedmodel dir>/facenet_export.json`` or ``<file>.tflite.json``."""
    p = Path(export_path)
    return p / METADATA_FILE if p.is_dir() else p.with_name(p.name + ".json")


def write_export_metadata(export_path: str | os.PathLike, spec: ModelSpec) -> Path:
    """Write the export sidecar: ``spec.to_metadata()`` as JSON. Returns its path."""
    path = metadata_path(export_path)
    path.write_text(json.dumps(spec.to_metadata(), indent=1) + "\n")
    return path


def read_export_metadata(export_path: str | os.PathLike) -> dict[str, Any] | None:
    """The export sidecar's JSON object, or None when there is none.

    Raises:
        ModelSpecError: the sidecar exists but is not a JSON object.
    """
    path = metadata_path(export_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelSpecError(f"{path}: cannot read the model metadata ({exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ModelSpecError(f"{path}: the model metadata is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: the model metadata must be a JSON object")
    return data


def checkpoint_threshold(checkpoint: str | os.PathLike) -> float | None:
    """The validation threshold of a checkpoint's last epoch (``state.json``), if any."""
    path = Path(checkpoint)
    state = (path if path.is_dir() else path.parent) / STATE_FILE
    try:
        history = json.loads(state.read_text()).get("history") or []
    except (OSError, ValueError, AttributeError):
        return None
    value = history[-1].get("val_threshold") if history and isinstance(history[-1], dict) else None
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 4 else None


def sha256_of(path: Path) -> str | None:
    """sha256 of a file (None for a folder)."""
    from .weights import sha256_file

    return sha256_file(path) if path.is_file() else None


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelSpecError(f"{path}: cannot read the checkpoint's configuration ({exc})") from None
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: the checkpoint's configuration is not a mapping")
    return data


def _checkpoint_spec(path: Path, default_standardization: str) -> ModelSpec:
    """A training checkpoint's spec from its ``config.yaml`` and ``state.json``; a bare
    ``.keras`` file's from the network itself."""
    folder = path if path.is_dir() else path.parent
    weights = folder / MODEL_FILE if path.is_dir() else path
    config_file = folder / CONFIG_FILE
    source = ModelSource(kind="checkpoint", path=str(path), sha256=sha256_of(weights),
                         format="keras", checkpoint=str(folder))
    if config_file.is_file():
        cfg = _read_yaml(config_file)
        model, data = cfg.get("model") or {}, cfg.get("data") or {}
        try:
            return ModelSpec(
                model_id=path.name, input_size=model["input_size"],
                embedding_size=model["embedding_size"],
                standardization=data.get("standardization") or default_standardization,
                threshold=checkpoint_threshold(folder),
                source=ModelSource(**{**source.to_metadata(),
                                      "training_data": data.get("root")}))
        except (KeyError, TypeError) as exc:
            raise ModelSpecError(f"{config_file}: no model.input_size / model.embedding_size "
                                 f"({exc})") from None
    logger.warning("%s: no %s beside the model, so its input standardization is unknown; "
                   "assuming %r", path, CONFIG_FILE, default_standardization)
    network = load_model(path)
    return ModelSpec(model_id=path.name, input_size=int(network.input_shape[1]),
                     embedding_size=int(network.output_shape[-1]),
                     standardization=default_standardization, source=source)


def _legacy_export_spec(path: Path, meta: dict[str, Any]) -> ModelSpec:
    """The spec of an export whose sidecar predates :class:`ModelSpec` (input_size,
    embedding_size, standardization, threshold, format, checkpoint)."""
    where = str(metadata_path(path))
    try:
        return ModelSpec(
            model_id=path.name, input_size=meta["input_size"],
            embedding_size=meta["embedding_size"], standardization=meta["standardization"],
            threshold=meta.get("threshold"),
            source=ModelSource(kind="exported", path=str(path), sha256=sha256_of(path),
                               format=meta.get("format"), checkpoint=meta.get("checkpoint")))
    except KeyError as exc:
        raise ModelSpecError(f"{where}: not a model spec (no {exc})") from None
    except ModelSpecError as exc:
        raise ModelSpecError(f"{where}: {exc}") from None


def read_model_spec(path: str | os.PathLike, *,
                    default_standardization: str | None = None) -> ModelSpec:
    """The spec of the model at ``path`` (see the module docstring for what a path may be).

    Args:
        path: a checkpoint folder, ``.keras`` file, SavedModel folder or ``.tflite`` file.
        default_standardization: used only when the model's files do not say (a bare
            ``.keras`` file); default the pretrained model's.

    Raises:
        ConfigError: nothing at ``path``, or not a model.
        ModelSpecError: the model's metadata is garbled or from an unknown version.
    """
    if default_standardization is None:
        from .weights import PRETRAINED

        default_standardization = PRETRAINED.standardization
    path = Path(os.path.abspath(os.fspath(path)))
    if not path.exists():
        raise ConfigError(f"{path}: no such model file or folder")
    if is_exported(path):
        meta = read_export_metadata(path)
        if meta is None:
            raise ModelSpecError(
                f"{path}: no {metadata_path(path).name} beside the exported model, so its input "
                "contract is unknown: export it again with `facenet-platform export`")
        if "spec_version" not in meta:
            return _legacy_export_spec(path, meta)
        spec = ModelSpec.from_metadata(meta, where=str(metadata_path(path)))
        # Where it is now (the sidecar recorded where it was written).
        return spec.replace(source=ModelSource(**{**spec.source.to_metadata(), "path": str(path)}))
    if is_checkpoint(path) or (path.is_file() and path.name == MODEL_FILE):
        return _checkpoint_spec(path, default_standardization)
    raise ConfigError(f"{path}: not a model (a checkpoint folder holding {MODEL_FILE}, a .keras "
                      "file, a SavedModel folder or a .tflite file)")
