"""Request bodies: read with a size limit, and split ``multipart/form-data`` into named files.

The multipart parser is a small, strict implementation of RFC 7578 over a body already in memory
(bounded by the size limit): it needs no ``python-multipart`` and never writes to disk. Every
failure is a :class:`BadUpload` (HTTP 400) or a :class:`BodyTooLarge` (HTTP 413).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import AsyncIterator

#: Field names a single photo may come in, in order of preference.
FILE_FIELDS = ("file", "image", "photo")


class BadUpload(ValueError):
    """The request body is not a usable upload (HTTP 400)."""


class BodyTooLarge(ValueError):
    """The request body is over the size limit (HTTP 413)."""


@dataclass(frozen=True)
class Part:
    """One part of a multipart body."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes

    @property
    def source(self) -> str:
        """How error messages name this upload."""
        return f"upload {self.filename!r}" if self.filename else f"field {self.name!r}"


async def read_body(content_length: str | None, chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, refusing (before reading, when the length is declared) above ``limit``."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise BadUpload(f"invalid Content-Length header {content_length!r}") from None
        if declared > limit:
            raise BodyTooLarge(f"request body of {declared:,} bytes exceeds the limit of "
                               f"{limit:,} bytes")
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit:,} bytes")
    return bytes(buf)


_PARAM_RE = re.compile(r';\s*([A-Za-z0-9_.*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _params(header_value: str) -> tuple[str, dict[str, str]]:
    """``'form-data; name="a"; filename="b.jpg"'`` -> ``("form-data", {"name": "a", ...})``."""
    main, _, _ = header_value.partition(";")
    params = {}
    for key, value in _PARAM_RE.findall(header_value):
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return main.strip().lower(), params


def media_type(content_type: str | None) -> str:
    return _params(content_type or "")[0]


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Split a ``multipart/form-data`` body into its parts.

    Raises:
        BadUpload: no boundary, no closing delimiter, or a part without a name.
    """
    _, params = _params(content_type)
    boundary = params.get("boundary")
    if not boundary or len(boundary) > 200:
        raise BadUpload("multipart body without a valid boundary in Content-Type")
    delimiter = b"--" + boundary.encode("latin-1")
    # The first delimiter may open the body; later ones follow a CRLF (RFC 2046 5.1.1).
    if body.startswith(delimiter):
        position = 0
    else:
        position = body.find(b"\r\n" + delimiter)
        if position < 0:
            raise BadUpload("multipart body does not contain its boundary")
        position += 2
    parts: list[Part] = []
    while True:
        position += len(delimiter)
        if body[position:position + 2] == b"--":
            return parts  # closing delimiter
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise BadUpload("multipart body ends before its closing boundary")
        header_end = body.find(b"\r\n\r\n", line_end)
        if header_end == line_end:  # no headers at all
            headers_raw = b""
            content_start = line_end + 4
        elif header_end < 0:
            raise BadUpload("multipart part without the blank line after its headers")
        else:
            headers_raw = body[line_end + 2:header_end]
            content_start = header_end + 4
        next_delimiter = body.find(b"\r\n" + delimiter, content_start)
        if next_delimiter < 0:
            raise BadUpload("multipart body ends before its closing boundary")
        headers = {}
        for line in headers_raw.decode("utf-8", "replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        disposition, dparams = _params(headers.get("content-disposition", ""))
        if disposition != "form-data" or "name" not in dparams:
            raise BadUpload("multipart part without 'Content-Disposition: form-data; name=...'")
        parts.append(Part(name=dparams["name"], filename=dparams.get("filename"),
                          content_type=headers.get("content-type"),
                          data=body[content_start:next_delimiter]))
        position = next_delimiter + 2


def files_of(parts: list[Part]) -> list[Part]:
    """The parts that carry a file (a filename, or a non-text content type)."""
    return [p for p in parts if p.filename is not None
            or (p.content_type and not p.content_type.startswith("text/"))]


def single_upload(content_type: str | None, body: bytes, fields: tuple[str, ...] = FILE_FIELDS
                  ) -> tuple[str, bytes]:
    """The one photo of a request: a multipart field (``file`` preferred) or the raw body.

    Returns:
        ``(source, data)``: a name for error messages and the encoded image.
    """
    if media_type(content_type) == "multipart/form-data":
        parts = parse_multipart(body, content_type or "")
        for field in fields:
            for part in parts:
                if part.name == field:
                    return part.source, part.data
        uploads = files_of(parts)
        if len(uploads) == 1:
            return uploads[0].source, uploads[0].data
        raise BadUpload(f"expected the photo in the multipart field {fields[0]!r} "
                        f"(got fields {sorted({p.name for p in parts})})")
    if media_type(content_type) == "application/x-www-form-urlencoded":
        raise BadUpload("send the photo as multipart/form-data (field 'file') or as the raw body")
    return "request body", body


def named_uploads(content_type: str | None, body: bytes, names: tuple[str, ...]
                  ) -> list[tuple[str, bytes]]:
    """The photos of the multipart fields ``names`` (all required), in that order."""
    if media_type(content_type) != "multipart/form-data":
        raise BadUpload(f"send multipart/form-data with the fields {', '.join(names)}")
    parts = parse_multipart(body, content_type or "")
    out = []
    for name in names:
        found = [p for p in parts if p.name == name]
        if not found:
            raise BadUpload(f"missing the multipart field {name!r} (expected "
                            f"{', '.join(names)})")
        out.append((found[0].source, found[0].data))
    return out


def all_uploads(content_type: str | None, body: bytes) -> list[tuple[str, bytes]]:
    """Every photo of a request: all file parts of a multipart body, or the raw body."""
    if media_type(content_type) == "multipart/form-data":
        parts = parse_multipart(body, content_type or "")
        uploads = files_of(parts) or [p for p in parts if p.name in FILE_FIELDS + ("files",)]
        if not uploads:
            raise BadUpload("no photo in the multipart body (send one or more 'file' fields)")
        return [(p.source, p.data) for p in uploads]
    return [("request body", body)]
