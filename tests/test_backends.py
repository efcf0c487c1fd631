"""Embedding backends: registry, agreement with keras-fp32 on real face crops, ONNX file cache.

Real-ish crops: LFW deep-funneled images centre-cropped to the face when LFW is present, else
shifted/mirrored crops of the astronaut's face. ONNX files go to a temporary cache (not the
user's), exported once per session.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import lfw_available, lfw_dir
from facenet_platform.core import backends
from facenet_platform.core.standardization import prewhiten
from facenet_platform.core.backends import BACKENDS, RunnerOptions, create_runner
from facenet_platform.core.errors import ConfigError
from facenet_platform.core.weights import CACHE_ENV, PRETRAINED

N_EVAL = 6
N_CALIBRATION = 24


@pytest.fixture(scope="module")
def face_crops(astronaut) -> np.ndarray:
    """``(N_EVAL + N_CALIBRATION, 160, 160, 3) uint8`` real face crops."""
    n = N_EVAL + N_CALIBRATION
    rng = np.random.default_rng(0)
    if lfw_available():
        from PIL import Image

        files = sorted((lfw_dir() / "lfw-deepfunneled").glob("*/*.jpg"))
        picked = rng.choice(len(files), size=n, replace=False)
        return np.stack([np.asarray(Image.open(files[i]).convert("RGB"))[45:205, 45:205]
                         for i in picked])
    crops = []
    for _ in range(n):
        dy, dx = rng.integers(-12, 13, size=2)
        crop = astronaut[20 + dy:180 + dy, 170 + dx:330 + dx]
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return np.stack(crops)


@pytest.fixture(scope="module")
def eval_x(face_crops) -> np.ndarray:
    return prewhiten(face_crops[:N_EVAL])


@pytest.fixture(scope="module")
def calibration_x(face_crops) -> np.ndarray:
    return prewhiten(face_crops[N_EVAL:])


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory, pretrained_model):
    """A private cache root for ONNX files while the module runs (the model is loaded first)."""
    path = tmp_path_factory.mktemp("onnx-cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(path)
    yield path
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(scope="module")
def keras_runner(pretrained_model):
    """keras-fp32 at batch 8 without XLA (compiles faster; same numbers within 1e-6)."""
    return create_runner("keras-fp32", pretrained_model, 8, RunnerOptions(jit_compile=False))


@pytest.fixture(scope="module")
def reference(keras_runner, eval_x) -> np.ndarray:
    return keras_runner(eval_x)


def _options(calibration=None) -> RunnerOptions:
    return RunnerOptions(model_id=PRETRAINED.model_id, calibration=calibration)


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_registry_names():
    assert list(BACKENDS) == ["keras-fp32", "keras-bf16", "onnx-fp32", "onnx-int8"]


def test_unknown_backend_is_config_error_listing_choices(pretrained_model):
    with pytest.raises(ConfigError) as err:
        create_runner("onnx-fp16", pretrained_model, 4)
    for name in BACKENDS:
        assert name in str(err.value)


def test_auto_backend_resolves_by_cpu_flags(tmp_path, monkeypatch):
    from facenet_platform.core import backends

    with_bf16 = tmp_path / "cpuinfo-bf16"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    without = tmp_path / "cpuinfo-plain"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert backends.cpu_has_native_bf16(with_bf16)
    assert not backends.cpu_has_native_bf16(without)
    assert not backends.cpu_has_native_bf16(tmp_path / "missing")
    assert backends.DEFAULT_BACKEND == "auto"
    assert backends.resolve_backend("onnx-int8") == "onnx-int8"
    monkeypatch.setattr(backends, "_has_gpu", lambda: False)
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    assert backends.resolve_backend("auto") == "keras-bf16"
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    assert backends.resolve_backend("auto") == "keras-fp32"
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(backends, "_has_gpu", lambda: True)
    assert backends.resolve_backend("auto") == "keras-fp32"
    with pytest.raises(ConfigError, match="auto"):
        backends.resolve_backend("bf16")


def test_face_embedder_rejects_unknown_backend_before_loading():
    from facenet_platform.core.embedding import FaceEmbedder

    with pytest.raises(ConfigError, match="keras-fp32"):
        FaceEmbedder(None, backend="tflite")


def test_keras_fp32_pads_partial_batches(keras_runner, eval_x, reference):
    out = keras_runner(eval_x[:3])
    assert out.shape == (3, PRETRAINED.embedding_size) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference[:3], atol=1e-5)


def test_onnx_fp32_matches_keras(pretrained_model, onnx_cache, eval_x, reference):
    runner = create_runner("onnx-fp32", pretrained_model, 4, _options())
    out = np.concatenate([runner(eval_x[:4]), runner(eval_x[4:])])
    assert out.shape == reference.shape and out.dtype == np.float32
    assert np.abs(out - reference).max() <= 1e-4


def test_keras_bf16_close_to_fp32(pretrained_model, eval_x, reference):
    out = create_runner("keras-bf16", pretrained_model, 8)(eval_x)
    assert out.dtype == np.float32
    assert _row_cosines(out, reference).min() >= 0.99


@pytest.mark.slow
def test_onnx_int8_close_to_fp32(pretrained_model, onnx_cache, eval_x, calibration_x, reference):
    runner = create_runner("onnx-int8", pretrained_model, N_EVAL, _options(calibration_x))
    out = runner(eval_x)
    assert out.shape == reference.shape and out.dtype == np.float32
    assert _row_cosines(out, reference).min() >= 0.99


def test_onnx_files_are_cached_and_reused(pretrained_model, onnx_cache, eval_x, monkeypatch):
    first = backends.ensure_onnx_fp32(pretrained_model, _options())
    assert first.is_file() and first.parent == onnx_cache / PRETRAINED.model_id / "onnx"
    mtime = first.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again instead of reusing the cached file")

    monkeypatch.setattr("facenet_platform.core.onnx_export.export_onnx", no_export)
    runner = create_runner("onnx-fp32", pretrained_model, 2, _options())
    assert runner.path == first and first.stat().st_mtime_ns == mtime
    assert not list(first.parent.glob(".*"))  # no temporary files left behind


def test_onnx_threads_follow_omp_num_threads(pretrained_model, onnx_cache, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert create_runner("onnx-fp32", pretrained_model, 2, _options()).threads == 1
    threads = create_runner("onnx-fp32", pretrained_model, 2,
                            RunnerOptions(model_id=PRETRAINED.model_id, threads=2)).threads
    assert threads == 2


@pytest.mark.slow
def test_onnx_int8_reuses_cached_model_without_calibration(pretrained_model, onnx_cache,
                                                           calibration_x, monkeypatch):
    built = backends.ensure_onnx_int8(pretrained_model, _options(calibration_x))

    def no_quantize(*args, **kwargs):
        raise AssertionError("quantized again instead of reusing the cached file")

    monkeypatch.setattr("facenet_platform.core.onnx_export.quantize_int8", no_quantize)
    assert backends.ensure_onnx_int8(pretrained_model, _options(calibration_x)) == built
    assert backends.ensure_onnx_int8(pretrained_model, _options(None)) == built


def test_onnx_int8_without_calibration_or_cache_is_config_error(pretrained_model, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="calibration"):
        create_runner("onnx-int8", pretrained_model, 2, _options(None))


def test_face_embedder_backend_option(pretrained_model, onnx_cache, face_crops):
    from facenet_platform.core.embedding import FaceEmbedder

    crops = face_crops[:3]
    keras_emb = FaceEmbedder(pretrained_model, batch_size=2, model_id=PRETRAINED.model_id,
                             jit_compile=False, backend="keras-fp32")(crops)
    onnx_embedder = FaceEmbedder(pretrained_model, batch_size=2, model_id=PRETRAINED.model_id,
                                 backend="onnx-fp32")
    assert onnx_embedder.backend == "onnx-fp32"
    assert np.abs(onnx_embedder(crops) - keras_emb).max() <= 1e-4


@pytest.mark.slow
def test_export_folds_unfolded_batch_norm(tmp_path):
    """A small training-flavour network (conv + batch norm) exports with the same outputs."""
    import onnxruntime as ort

    from facenet_platform.core.model import inception_resnet_v1
    from facenet_platform.core.onnx_export import export_onnx

    model = inception_resnet_v1(80, 16, folded_batch_norm=False)
    rng = np.random.default_rng(1)
    for weight in model.weights:
        if weight.path.endswith("moving_variance"):
            weight.assign(rng.uniform(0.5, 2.0, weight.shape).astype(np.float32))
        elif weight.path.endswith(("moving_mean", "beta")):
            weight.assign(rng.normal(0.0, 0.1, weight.shape).astype(np.float32))
    path = export_onnx(model, tmp_path / "small.onnx")
    x = rng.standard_normal((2, 80, 80, 3)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": x})[0]
    assert np.abs(out - model(x, training=False).numpy()).max() <= 1e-4


def test_export_rejects_unknown_layers(tmp_path):
    import keras

    from facenet_platform.core.onnx_export import export_onnx

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="gelu", name="odd")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.LayerNormalization(name="ln")(x))
    with pytest.raises(ConfigError, match="odd|ln"):
        export_onnx(model, tmp_path / "x.onnx")


def test_export_does_not_fold_into_a_tensor_read_twice(tmp_path):
    """Batch norm behind a Dropout whose input another layer also reads stays a Mul/Add."""
    import keras
    import onnxruntime as ort

    from facenet_platform.core.model import L2Normalize
    from facenet_platform.core.onnx_export import export_onnx

    rng = np.random.default_rng(2)
    inputs = keras.Input((9, 9, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same", strides=2)(inputs)
    norm = keras.layers.BatchNormalization()(keras.layers.Dropout(0.5)(conv))
    x = keras.layers.Concatenate()([conv, norm])
    x = keras.layers.MaxPooling2D(2, padding="same")(keras.layers.ReLU()(x))
    x = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, L2Normalize()(x))
    bn = model.layers[3]
    bn.set_weights([rng.uniform(0.5, 2, 4), rng.normal(0, 1, 4), rng.normal(0, 1, 4),
                    rng.uniform(0.5, 2, 4)])
    path = export_onnx(model, tmp_path / "tiny.onnx")
    x = rng.standard_normal((3, 9, 9, 3)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": x})[0]
    assert np.abs(out - model(x, training=False).numpy()).max() <= 1e-5
