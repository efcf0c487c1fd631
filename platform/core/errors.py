"""Exceptions raised by facenet_platform.

Every error a user can cause derives from :class:`FaceNetPlatformError`; input errors are also
``ValueError`` subclasses so that callers who only know the standard library still catch them.
The CLI prints ``str(error)`` as one line and exits non-zero; the Serve app maps them to HTTP codes.
"""

from __future__ import annotations


class FaceNetPlatformError(Exception):
    """Base class of every error this package raises on purpose."""


class ImageError(FaceNetPlatformError, ValueError):
    """An input could not be used as an image: missing, empty, truncated, corrupt or not an image."""


class ImageTooLargeError(ImageError):
    """An image declares more pixels than the configured limit (decompression-bomb guard)."""


class UnsupportedMediaError(ImageError):
    """A file whose content is not a photo or video this package decodes (a ZIP, PDF or text file,
    whatever its name says), or a media type whose decoder is not installed (see
    :class:`MissingDecoderError`)."""


class MissingDecoderError(UnsupportedMediaError):
    """A supported media type whose optional decoder is not installed (``pip install
    'facenet-platform[media]'`` brings HEIC, RAW and video decoders)."""


class MediaDecodeTimeoutError(ImageError):
    """Decoding a file took longer than its time budget (a hostile or pathological file) before
    giving a single usable frame."""


class XmpError(FaceNetPlatformError, ValueError):
    """XMP metadata (an in-file packet or a ``.xmp`` sidecar) is malformed, too large, or uses XML
    features refused for safety (entities, DTDs)."""


class NoFaceFoundError(FaceNetPlatformError, ValueError):
    """A call that needs a face found none in an image."""


class WeightsError(FaceNetPlatformError):
    """Pretrained weights are missing, corrupt, or do not match the model."""


class ConfigError(FaceNetPlatformError, ValueError):
    """A configuration value or file is invalid."""


class DatasetError(FaceNetPlatformError, ValueError):
    """A dataset (e.g. LFW) or a protocol file is missing or malformed."""


class EvaluationInputError(FaceNetPlatformError, ValueError):
    """Distances, labels or folds given to the evaluation are unusable (shape, NaN, labels, folds)."""


class ModelSpecError(ConfigError):
    """A model's metadata (its :class:`~facenet_platform.core.model_spec.ModelSpec`) is missing,
    unknown, garbled, or does not match the network it describes."""
