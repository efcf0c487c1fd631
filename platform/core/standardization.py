"""Crop standardizations: ``(N, S, S, 3)`` uint8 aligned crops -> float32 network input.

A model's input contract (:attr:`ModelSpec.standardization
<facenet_platform.core.model_spec.ModelSpec.standardization>`) names one of
:data:`STANDARDIZATIONS`; :class:`~facenet_platform.core.embedding.FaceEmbedder` applies it, so
callers pass the uint8 crops the aligner produced.

* ``"prewhiten"`` (:func:`prewhiten`): FaceNet's per-image standardisation.
* ``"fixed"`` (:func:`fixed_standardization`): davidsandberg's
  ``--use_fixed_image_standardization``, ``(x - 127.5) / 128`` (the 2018 checkpoints).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import ConfigError

__all__ = ["STANDARDIZATIONS", "fixed_standardization", "get_standardization", "prewhiten"]


def prewhiten(crops: np.ndarray) -> np.ndarray:
    """FaceNet's per-image standardisation: ``(x - mean) / max(std, 1 / sqrt(x.size))``.

    ``crops`` is ``(N, S, S, 3)`` or ``(S, S, 3)``; mean and std are per image. Returns float32.
    """
    x = np.asarray(crops)
    if x.ndim not in (3, 4):
        raise ValueError(f"prewhiten expects (N, S, S, 3) or (S, S, 3), got shape {x.shape}.")
    single = x.ndim == 3
    batch = x[None] if single else x
    batch = batch.astype(np.float32, copy=False)
    if batch.shape[0] == 0:
        return np.zeros(batch.shape, np.float32)
    axes = (1, 2, 3)
    mean = batch.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = batch.std(axis=axes, keepdims=True, dtype=np.float64)
    per_image = int(np.prod(batch.shape[1:]))
    std_adj = np.maximum(std, 1.0 / np.sqrt(per_image))
    # Statistics in float64, arithmetic in float32: no float64 copy of the whole batch.
    out = (batch - mean.astype(np.float32)) * (1.0 / std_adj).astype(np.float32)
    return out[0] if single else out


def fixed_standardization(crops: np.ndarray) -> np.ndarray:
    """davidsandberg's ``--use_fixed_image_standardization``: ``(x - 127.5) / 128`` as float32.

    The 2018 checkpoints (20180402-114759, 20180408-102900) were trained with this instead of
    :func:`prewhiten`.
    """
    x = np.asarray(crops)
    if x.ndim not in (3, 4):
        raise ValueError(f"standardization expects (N, S, S, 3) or (S, S, 3), got shape {x.shape}.")
    return (x.astype(np.float32) - np.float32(127.5)) * np.float32(1.0 / 128.0)


#: Crop standardizations by name: uint8 crops -> float32 network input.
STANDARDIZATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "prewhiten": prewhiten,
    "fixed": fixed_standardization,
}


def get_standardization(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The standardization called ``name``; :class:`ConfigError` for an unknown name."""
    try:
        return STANDARDIZATIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"standardization must be one of {sorted(STANDARDIZATIONS)}, "
                          f"got {name!r}") from None
