"""Shared fixtures: paths, LFW discovery, real face photos, the pretrained pipeline (built once)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def lfw_dir() -> Path:
    """LFW root: $LFW_DIR, else ../shared/datasets/lfw beside the repo."""
    return Path(os.environ.get("LFW_DIR", REPO_ROOT.parent / "shared" / "datasets" / "lfw"))


def lfw_available() -> bool:
    return (lfw_dir() / "pairs.txt").is_file() and (lfw_dir() / "lfw-deepfunneled").is_dir()


requires_lfw = pytest.mark.skipif(
    not lfw_available(),
    reason=f"LFW not found at {lfw_dir()} (set LFW_DIR to run the LFW-backed tests)",
)


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    if not lfw_available():
        pytest.skip(f"LFW not found at {lfw_dir()} (set LFW_DIR to run the LFW-backed tests)")
    return lfw_dir()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real face photo shipped by scikit-image: (512, 512, 3) uint8 RGB."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory) -> Path:
    """Converted weights shared by the session (converted once, in a temporary cache)."""
    cache = os.environ.get("FACENET_PLATFORM_CACHE")
    if cache:
        return Path(cache)
    path = tmp_path_factory.mktemp("weights-cache")
    os.environ["FACENET_PLATFORM_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def pretrained_model(weights_cache):
    from facenet_platform.core.weights import load_pretrained_model

    return load_pretrained_model()


@pytest.fixture(scope="session")
def pipeline(pretrained_model):
    from facenet_platform.core.embedding import FaceEmbedder
    from facenet_platform.core.pipeline import FacePipeline
    from facenet_platform.core.weights import PRETRAINED

    embedder = FaceEmbedder(pretrained_model, model_id=PRETRAINED.model_id,
                            threshold=PRETRAINED.threshold, batch_size=16)
    return FacePipeline(embedder=embedder)


@pytest.fixture(scope="module")
def ray_cluster(weights_cache):
    """One local Ray per test module (2 CPUs, no dashboard); yields its GCS address."""
    import ray

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
