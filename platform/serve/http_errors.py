"""Exception -> HTTP status and error code: the one table of the Serve app.

The ingress (:mod:`.api`) answers an exception of a request with the status and code of
:data:`ERROR_STATUS`; the deployments (:mod:`.deployments`) turn the same exceptions into
:class:`Failure` values with :func:`failure_for` (a reply that crosses a Ray handle without
depending on how Ray wraps exceptions), which the ingress answers the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from facenet_platform.core.errors import (ConfigError, ImageError, ImageTooLargeError,
                                          NoFaceFoundError)
from facenet_platform.index.face_ids import FaceIdError
from facenet_platform.index.gallery import GalleryError, UnknownIdentityError

from .catalog import PhotoIdError
from .uploads import BadUpload, BodyTooLarge

__all__ = ["ERROR_STATUS", "Failure", "failure_for", "http_status"]

#: ``(exception class, HTTP status, error code)``, the first class that matches wins (subclasses
#: before their bases). An exception of none of these is a 500 ``internal_error``.
ERROR_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (BodyTooLarge, 413, "body_too_large"),
    (ImageTooLargeError, 413, "image_too_large"),
    (BadUpload, 400, "bad_upload"),
    (ImageError, 400, "bad_image"),
    (NoFaceFoundError, 422, "no_face"),
    (FaceIdError, 400, "invalid_id"),
    (PhotoIdError, 400, "invalid_id"),
    (UnknownIdentityError, 404, "unknown_identity"),
    (GalleryError, 503, "gallery_unavailable"),
    (ConfigError, 400, "bad_request"),
)


@dataclass(frozen=True)
class Failure:
    """An expected failure: the HTTP status and code the ingress answers with, and why."""

    status: int
    code: str
    message: str


def http_status(exc: BaseException) -> tuple[int, str] | None:
    """``(status, code)`` of ``exc`` from :data:`ERROR_STATUS`, or ``None`` (an internal error)."""
    for cls, status, code in ERROR_STATUS:
        if isinstance(exc, cls):
            return status, code
    return None


def failure_for(exc: BaseException) -> Failure:
    """``exc`` as a :class:`Failure` (status and code from :data:`ERROR_STATUS`).

    Raises:
        TypeError: ``exc`` is not in the table (an internal error is raised, not returned).
    """
    mapped = http_status(exc)
    if mapped is None:
        raise TypeError(f"{type(exc).__name__} has no HTTP status") from exc
    return Failure(mapped[0], mapped[1], str(exc))
