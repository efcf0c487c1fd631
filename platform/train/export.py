"""Export a trained checkpoint: SavedModel (TF Serving), TFLite float, TFLite int8; load them back.

    facenet-platform export CHECKPOINT --format savedmodel  -o out/facenet_savedmodel
    facenet-platform export CHECKPOINT --format tflite      -o out/facenet.tflite
    facenet-platform export CHECKPOINT --format tflite-int8 -o out/facenet_int8.tflite \\
        --lfw-pairs ../shared/datasets/lfw/pairsDevTest.txt

``CHECKPOINT`` is a training checkpoint directory (``model.keras`` + ``config.yaml``) or any
``.keras`` embedding model. Only the embedding network is exported (a softmax head lives in
``train_state.npz`` and is dropped).

Formats:

- ``savedmodel``: a TF2 SavedModel with three signatures, each returning ``{"embeddings":
  (N, D) float32}`` (L2-normalised):

  * ``serving_default``: ``images`` ``(N, S, S, 3) uint8`` RGB aligned crops; the training
    standardisation (``fixed`` or ``prewhiten``, from the checkpoint's config) runs inside, so
    TF Serving can host it as is;
  * ``serving_float``: ``images`` ``(N, S, S, 3) float32`` pixel values 0..255, same;
  * ``embed_standardized``: ``x`` ``(N, S, S, 3) float32`` already standardised (what
    :class:`ExportedEmbedder` calls).

- ``tflite``: the network (standardised float32 input) as a float32 TFLite flatbuffer, dynamic
  batch.
- ``tflite-int8``: post-training full-integer quantization (int8 weights and activations,
  float32 input/output) calibrated on a representative dataset of aligned faces.

Every export gets a sidecar ``facenet_export.json`` (inside the SavedModel folder, or
``<file>.tflite.json``) holding its :class:`~facenet_platform.core.model_spec.ModelSpec`: input
size, embedding size, the standardisation the network expects, the validation threshold of the
checkpoint, and where it came from (format, sha256 of a file, the checkpoint).

Each export is checked against the Keras model on held-out faces: the per-image L2 distance
between the two embeddings (mean, std, max), and optionally LFW accuracy of both.

Loading exports back and reading their spec is the core's job
(:func:`facenet_platform.core.model_io.load_exported`,
:func:`~facenet_platform.core.model_io.read_model_spec`): this module writes, the core reads.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from facenet_platform.core.errors import ConfigError
from facenet_platform.core.model_io import (checkpoint_threshold, load_exported, load_model,
                                            sha256_of, write_export_metadata)
from facenet_platform.core.model_spec import ModelSource, ModelSpec

logger = logging.getLogger(__name__)

FORMATS = ("savedmodel", "tflite", "tflite-int8")


# ------------------------------------------------------------------------------------------
# loading checkpoints and exported models


def load_checkpoint(path: str | os.PathLike):
    """``(keras model, TrainConfig or None)`` from a checkpoint directory or a ``.keras`` file."""
    from .config import CONFIG_FILE, load_config

    path = Path(path)
    if not ((path.is_dir() and (path / "model.keras").is_file())
            or (path.is_file() and path.suffix == ".keras")):
        raise ConfigError(f"{path}: not a checkpoint (a folder holding model.keras, or a .keras "
                          "file)")
    model = load_model(path)
    config_file = (path if path.is_dir() else path.parent) / CONFIG_FILE
    cfg = load_config(config_file) if config_file.is_file() else None
    return model, cfg


# ------------------------------------------------------------------------------------------
# exporting


def tf_standardize(x, mode: str = "prewhiten"):
    """TensorFlow version of :func:`facenet_platform.train.data.standardize` (float32 pixels)."""
    import tensorflow as tf

    x = tf.cast(x, tf.float32)
    if mode == "fixed":
        return (x - 127.5) / 128.0
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    std = tf.math.reduce_std(x, axis=[1, 2, 3], keepdims=True)
    n = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
    return (x - mean) / tf.maximum(std, 1.0 / tf.sqrt(n))


def export_savedmodel(model, out_dir: str | os.PathLike, standardization: str = "prewhiten") -> Path:
    """Write a SavedModel with the three signatures described in the module docstring.

    A ``tf.Module`` holding the Keras model and three ``tf.function`` signatures (Keras'
    ``ExportArchive`` stored every variable twice here: 180 MB instead of 90 MB)."""
    import tensorflow as tf

    out_dir = Path(out_dir)
    s = int(model.input_shape[1])
    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec((None, s, s, 3), tf.uint8, name="images")])
    def serving_default(images):
        return {"embeddings": model(tf_standardize(images, standardization), training=False)}

    @tf.function(input_signature=[tf.TensorSpec((None, s, s, 3), tf.float32, name="images")])
    def serving_float(images):
        return {"embeddings": model(tf_standardize(images, standardization), training=False)}

    @tf.function(input_signature=[tf.TensorSpec((None, s, s, 3), tf.float32, name="x")])
    def embed_standardized(x):
        return {"embeddings": model(x, training=False)}

    module.serving_default = serving_default
    module.serving_float = serving_float
    module.embed_standardized = embed_standardized
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tf.saved_model.save(module, str(out_dir), signatures={
        "serving_default": serving_default, "serving_float": serving_float,
        "embed_standardized": embed_standardized})
    return out_dir


def export_tflite(model, out_file: str | os.PathLike, *, int8: bool = False,
                  representative: np.ndarray | None = None) -> Path:
    """Write a TFLite flatbuffer (standardised float32 input, float32 output); ``int8``:
    full-integer post-training quantization calibrated on ``representative`` (standardised
    ``(N, S, S, 3) float32`` aligned faces)."""
    import tensorflow as tf

    out_file = Path(out_file)
    if int8 and (representative is None or len(representative) == 0):
        raise ConfigError("tflite-int8 needs a representative dataset of aligned faces "
                          "(--images, or a checkpoint whose config names its training data)")
    with tempfile.TemporaryDirectory(prefix="facenet-tflite-") as tmp:
        import keras

        s = int(model.input_shape[1])
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name="serving_default", fn=lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((None, s, s, 3), tf.float32, name="x")])
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if int8:
            reps = np.asarray(representative, np.float32)

            def representative_dataset():
                for i in range(len(reps)):
                    yield [reps[i:i + 1]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        flat = converter.convert()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_bytes(flat)
    return out_file


# ------------------------------------------------------------------------------------------
# images for calibration and checks


def _image_files(folder: Path) -> list[str]:
    from facenet_platform.core.images import is_image_path

    return sorted(str(p) for p in Path(folder).rglob("*") if is_image_path(p))


def sample_faces(cfg, images: Path | None, n: int, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(calibration, check)``: two disjoint sets of ``n`` eval crops (uint8) of real faces,
    from ``images`` or from the checkpoint's training data, evenly spread over the files."""
    from .data import eval_crop, index_image_folder, read_rgb

    center_crop = cfg.data.center_crop if cfg is not None else None
    resize = cfg.data.resize if cfg is not None else input_size
    if images is not None:
        files = _image_files(images)
        where = str(images)
    elif cfg is not None and cfg.data.root:
        index = index_image_folder(cfg.data.root, people_file=cfg.data.people_file,
                                   min_images=1, max_people=cfg.data.max_people)
        files, where = index.paths, cfg.data.root
    else:
        raise ConfigError("no face images to calibrate/compare on: pass --images FOLDER")
    if not files:
        raise ConfigError(f"{where}: no image files")
    pick = np.unique(np.linspace(0, len(files) - 1, min(len(files), 2 * n)).round().astype(int))
    crops = np.stack([eval_crop(read_rgb(files[i]), center_crop, resize, input_size) for i in pick])
    return crops[0::2], crops[1::2] if len(crops) > 1 else crops


def embedding_difference(reference: np.ndarray, other: np.ndarray) -> dict:
    """Per-image L2 distance between two ``(N, D)`` embedding sets: mean, std, max (and the
    largest absolute element difference)."""
    d = np.linalg.norm(np.asarray(reference, np.float64) - np.asarray(other, np.float64), axis=1)
    return {"l2_mean": float(d.mean()), "l2_std": float(d.std()), "l2_max": float(d.max()),
            "abs_max": float(np.abs(reference - other).max()), "n_images": int(len(d))}


def lfw_accuracy(embed, pairs_file, lfw_dir=None, *, center_crop=None, resize=None,
                 input_size=160, max_pairs=None, standardization="prewhiten") -> dict:
    """Verification accuracy of ``embed(standardised crops) -> embeddings`` on a pairs file
    with the eval crops of training (10 interleaved folds for a single-fold file)."""
    from facenet_platform.core.evaluation import evaluate_verification, squared_distances

    from .data import load_eval_crops, load_validation_pairs, standardize

    val = load_validation_pairs(str(pairs_file), str(lfw_dir) if lfw_dir else None,
                                max_pairs=max_pairs)
    crops = load_eval_crops(val.paths, center_crop, resize or input_size, input_size)
    emb = np.concatenate([embed(standardize(crops[i:i + 64], standardization))
                          for i in range(0, len(crops), 64)])
    rep = evaluate_verification(squared_distances(emb[val.idx1], emb[val.idx2]), val.issame,
                                val.folds)
    return {"accuracy": rep.accuracy, "accuracy_std": rep.accuracy_std, "auc": rep.auc,
            "threshold": rep.threshold, "n_pairs": len(val)}


def export_checkpoint(checkpoint, fmt: str, output, *, images=None, num_images: int = 64,
                      lfw_pairs=None, lfw_dir=None, max_pairs=None,
                      standardization: str | None = None) -> dict:
    """Export ``checkpoint`` as ``fmt`` to ``output`` and check it; returns the report."""
    import tensorflow as tf

    from .data import standardize

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choices: {', '.join(FORMATS)}")
    if num_images < 1:
        raise ConfigError(f"--num-images must be >= 1, got {num_images}")
    model, cfg = load_checkpoint(checkpoint)
    s = int(model.input_shape[1])
    mode = standardization or (cfg.data.standardization if cfg is not None else None)
    if mode is None:
        raise ConfigError(f"{checkpoint}: no config.yaml beside the model, so its input "
                          "standardisation is unknown: pass --standardization fixed|prewhiten")
    calib, check = sample_faces(cfg, images, num_images, s)
    keras_fn = tf.function(lambda x: model(x, training=False))

    def keras_embed(x):
        return np.concatenate([np.asarray(keras_fn(tf.constant(x[i:i + 32])))
                               for i in range(0, len(x), 32)])

    t = time.perf_counter()
    output = Path(output)
    if fmt == "savedmodel":
        export_savedmodel(model, output, mode)
    else:
        export_tflite(model, output, int8=fmt == "tflite-int8",
                      representative=standardize(calib, mode) if fmt == "tflite-int8" else None)
    export_s = time.perf_counter() - t
    exported = load_exported(output)
    x = standardize(check, mode)
    ref = keras_embed(x)
    t = time.perf_counter()
    got = exported(x)
    infer_s = time.perf_counter() - t
    report = {
        "checkpoint": str(checkpoint), "format": fmt, "output": str(output),
        "size_mb": _size_mb(output), "export_s": export_s,
        "input_size": s, "embedding_size": int(model.output_shape[-1]),
        "difference": embedding_difference(ref, got),
        "images_per_s": len(x) / infer_s if infer_s > 0 else None,
        "calibration_images": int(len(calib)) if fmt == "tflite-int8" else 0,
    }
    write_export_metadata(output, export_spec(model, output, fmt, checkpoint, mode, cfg))
    if fmt == "savedmodel":  # the uint8 serving signature agrees with standardize + model
        report["serving_default_difference"] = embedding_difference(ref, exported.embed_uint8(check))
    if lfw_pairs is not None:
        kwargs = dict(center_crop=cfg.data.center_crop if cfg else None,
                      resize=cfg.data.resize if cfg else s, input_size=s, max_pairs=max_pairs,
                      standardization=mode)
        report["lfw_keras"] = lfw_accuracy(keras_embed, lfw_pairs, lfw_dir, **kwargs)
        report["lfw_exported"] = lfw_accuracy(exported, lfw_pairs, lfw_dir, **kwargs)
    return report


def export_spec(model, output: Path, fmt: str, checkpoint, standardization: str,
                cfg=None) -> ModelSpec:
    """The spec of an export of ``checkpoint``'s ``model`` at ``output`` (its sidecar): the
    export's file name as model id, the checkpoint's validation threshold, the default crop."""
    output = Path(os.path.abspath(output))
    return ModelSpec(
        model_id=output.name, input_size=int(model.input_shape[1]),
        embedding_size=int(model.output_shape[-1]), standardization=standardization,
        threshold=checkpoint_threshold(checkpoint),
        source=ModelSource(kind="exported", path=str(output), sha256=sha256_of(output),
                           format=fmt, checkpoint=os.path.abspath(checkpoint),
                           training_data=cfg.data.root if cfg is not None else None))


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def format_report(r: dict) -> str:
    d = r["difference"]
    lines = [
        f"exported {r['format']} -> {r['output']} ({r['size_mb']:.1f} MB, {r['export_s']:.1f} s)",
        f"input {r['input_size']} px, embedding {r['embedding_size']}-d",
        f"embedding difference from the Keras model over {d['n_images']} faces (L2): "
        f"mean {d['l2_mean']:.2e}, std {d['l2_std']:.2e}, max {d['l2_max']:.2e} "
        f"(max |element| {d['abs_max']:.2e})",
    ]
    if "serving_default_difference" in r:
        sd = r["serving_default_difference"]
        lines.append(f"serving_default (uint8, standardisation inside) vs Keras: mean "
                     f"{sd['l2_mean']:.2e}, max {sd['l2_max']:.2e}")
    if r.get("images_per_s"):
        lines.append(f"exported model: {r['images_per_s']:.1f} images/s")
    if "lfw_keras" in r:
        k, e = r["lfw_keras"], r["lfw_exported"]
        lines.append(f"LFW accuracy on {k['n_pairs']} pairs: keras {k['accuracy']:.4f} +- "
                     f"{k['accuracy_std']:.4f}, {r['format']} {e['accuracy']:.4f} +- "
                     f"{e['accuracy_std']:.4f}")
    return "\n".join(lines)
