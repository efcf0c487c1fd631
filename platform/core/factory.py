"""One place that builds detector, aligner and embedder for a model.

Everything that runs the face pipeline (the CLI commands, the index build's Ray actors, the
Serve deployments) builds its parts here, from the model's
:class:`~facenet_platform.core.model_spec.ModelSpec`, so that the crop always matches the
model::

    spec = resolve_spec("runs/x/checkpoint_000015")      # or None (pretrained), a spec, its dict
    detector, aligner = build_detect_align(spec)           # where the crops are cut
    embedder = build_embedder(spec, backend="auto")        # where they are embedded
    pipeline = build_pipeline("runs/x/checkpoint_000015")  # all three, in one process

A spec crosses process boundaries as ``spec.to_metadata()`` (a JSON-safe dict);
:func:`resolve_spec` accepts that dict too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .model_spec import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .alignment import FaceAligner
    from .detection import FaceDetector
    from .embedding import FaceEmbedder
    from .pipeline import FacePipeline

__all__ = ["build_aligner", "build_detect_align", "build_detector",
           "build_embedder", "build_pipeline", "resolve_spec"]

def resolve_spec(model: None | str | os.PathLike | ModelSpec | Mapping[str, Any] = None,
                 ) -> ModelSpec:
    """The spec of ``model``: None -> the pretrained model's; a path -> read from the model's
    files (:func:`~facenet_platform.core.model_io.read_model_spec`); a spec -> itself; a dict
    -> :meth:`ModelSpec.from_metadata`.

    Raises:
        ConfigError: no model at the path.
        ModelSpecError: unreadable or unknown metadata.
    """
    if model is None:
        from .weights import PRETRAINED

        return PRETRAINED
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, Mapping):
        return ModelSpec.from_metadata(model)
    from .model_io import read_model_spec

    return read_model_spec(model)


def build_detector(*, min_face_size: int = 20, num_threads: int | None = None) -> FaceDetector:
    """The MTCNN detector (the same for every model)."""
    from .detection import FaceDetector

    return FaceDetector(min_face_size=min_face_size, num_threads=num_threads)


def build_aligner(spec: ModelSpec) -> FaceAligner:
    """The aligner that cuts ``spec``'s crops (input size, margin, crop method)."""
    from .alignment import FaceAligner

    return FaceAligner.for_spec(spec)


def build_detect_align(spec: ModelSpec | Mapping[str, Any] | None = None, *,
                       min_face_size: int = 20, num_threads: int | None = None,
                       ) -> tuple[FaceDetector, FaceAligner]:
    """Detector and aligner for a model (no weights loaded: the detection side only)."""
    spec = resolve_spec(spec)
    return (build_detector(min_face_size=min_face_size, num_threads=num_threads),
            build_aligner(spec))


def build_embedder(spec: ModelSpec | Mapping[str, Any] | None = None, *, batch_size: int = 32,
                   backend: str | None = None, flip: str = "none",
                   jit_compile: bool | None = None, network: Any = None,
                   calibration_crops: np.ndarray | None = None) -> FaceEmbedder:
    """The embedder of a model: its weights loaded from ``spec.source`` (or ``network``, an
    already loaded copy to share between embedders of several batch sizes).

    Args:
        spec: the model (a spec, its metadata dict, or None for the pretrained one).
        batch_size: crops per forward pass.
        backend: a name of :data:`~facenet_platform.core.backends.BACKENDS` or ``"auto"``;
            None: the default.
        flip, jit_compile, calibration_crops: as :class:`~facenet_platform.core.embedding.FaceEmbedder`.
        network: the loaded network of ``spec`` (skips loading).
    """
    from .backends import DEFAULT_BACKEND
    from .embedding import FaceEmbedder

    spec = resolve_spec(spec)
    kwargs: dict[str, Any] = dict(batch_size=batch_size, backend=backend or DEFAULT_BACKEND,
                                  flip=flip, jit_compile=jit_compile,
                                  calibration_crops=calibration_crops)
    if network is not None:
        return FaceEmbedder(network, spec=spec, **kwargs)
    return FaceEmbedder(spec, **kwargs)


def build_pipeline(model: None | str | os.PathLike | ModelSpec | Mapping[str, Any] = None, *,
                   backend: str | None = None, flip: str = "none", batch_size: int = 32,
                   alignment: str | None = None, margin: float | None = None,
                   min_face_size: int = 20, num_threads: int | None = None) -> FacePipeline:
    """Detector, aligner and embedder of one model in one :class:`FacePipeline`.

    Args:
        model: None (pretrained), a model path, a spec or its metadata dict.
        backend, flip, batch_size: the embedder's (see :func:`build_embedder`).
        alignment, margin: crop method / margin instead of the model's (None: the model's).
        min_face_size, num_threads: the detector's.
    """
    from .pipeline import FacePipeline

    spec = resolve_spec(model).with_crop(alignment, margin)
    detector, aligner = build_detect_align(spec, min_face_size=min_face_size,
                                           num_threads=num_threads)
    embedder = build_embedder(spec, batch_size=batch_size, backend=backend, flip=flip)
    return FacePipeline(detector=detector, aligner=aligner, embedder=embedder)
