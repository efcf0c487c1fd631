"""Face ids and person ids: the one spelling every command prints and accepts.

A collection face is keyed by ``(content_hash, face_index)`` (the sha256 of its photo's bytes and
its rank by detection score). Its **face id** is ``<first 16 hex digits of the hash>-<index>``,
e.g. ``3f9a0c12d4e5b6a7-0``: short enough to type, stable across re-runs and across copies of the
same photo (the same bytes are the same face), and 64 bits of hash keep collisions out of reach
(about one chance in 10^7 for ten million photos).

A **person id** is ``p<number>`` (``p17``), given out by the people store in order and never
reused. Commands that take a PERSON also take a person's name; names can therefore never look
like a person id (see :func:`facenet_platform.index.people_store.check_person_name`).

Ids come from users and URLs (Serve's ``/v1/faces/{id}``), so they are checked before anything
uses them: control characters, path characters and anything else that is not the pattern get a
:class:`FaceIdError` saying which.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from facenet_platform.core.errors import ConfigError

__all__ = ["FACE_ID_HASH_CHARS", "FaceIdError", "check_face_id", "check_person_id", "face_id",
           "face_ids", "is_person_id", "person_id", "person_number"]

#: Hex digits of the content hash in a face id.
FACE_ID_HASH_CHARS = 16
_FACE_ID = re.compile(r"[0-9a-f]{16}-(0|[1-9][0-9]{0,5})")
_PERSON_ID = re.compile(r"p(0|[1-9][0-9]{0,11})")


class FaceIdError(ConfigError):
    """A face or person id that is not spelled as one (bad characters or shape)."""


def face_id(content_hash: str, face_index: int) -> str:
    """The face id of face ``face_index`` of the photo with sha256 ``content_hash``."""
    return f"{content_hash[:FACE_ID_HASH_CHARS]}-{int(face_index)}"


def face_ids(content_hashes: Iterable[str], face_indexes: Iterable[int]) -> np.ndarray:
    """``(N,) object`` face ids of parallel hash / index sequences (vectorised)."""
    hashes = np.asarray(list(content_hashes) if not isinstance(content_hashes, np.ndarray)
                        else content_hashes, dtype=str)
    idx = np.asarray(list(face_indexes) if not isinstance(face_indexes, np.ndarray)
                     else face_indexes).astype(np.int64)
    if len(hashes) == 0:
        return np.zeros(0, object)
    prefix = np.char.add(hashes.astype(f"<U{FACE_ID_HASH_CHARS}"), "-")
    return np.char.add(prefix, idx.astype(str)).astype(object)


def _describe_bad(text: str, what: str, example: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return f"{what} {text!r} contains control characters; expected e.g. {example}"
    if any(c in text for c in "/\\") or ".." in text:
        return f"{what} {text!r} contains path characters; expected e.g. {example}"
    if not text.strip():
        return f"empty {what}; expected e.g. {example}"
    return f"{text!r} is not a {what} (expected e.g. {example})"


def check_face_id(text: str) -> str:
    """``text`` (lower-cased) when it is spelled as a face id, else :class:`FaceIdError` saying
    why."""
    if not isinstance(text, str):
        raise FaceIdError(f"a face id must be a string, got {type(text).__name__}")
    if _FACE_ID.fullmatch(text.lower()):
        return text.lower()
    raise FaceIdError(_describe_bad(text, "face id", "3f9a0c12d4e5b6a7-0"))


def is_person_id(text: str) -> bool:
    """Whether ``text`` is spelled as a person id (``p17``)."""
    return isinstance(text, str) and _PERSON_ID.fullmatch(text) is not None


def check_person_id(text: str) -> str:
    """``text`` when it is spelled as a person id, else :class:`FaceIdError`."""
    if is_person_id(text):
        return text
    raise FaceIdError(_describe_bad(str(text), "person id", "p17"))


def person_id(number: int) -> str:
    """The person id of sequence number ``number``."""
    return f"p{int(number)}"


def person_number(pid: str) -> int:
    """The sequence number of a person id (``p17`` -> 17)."""
    return int(check_person_id(pid)[1:])
