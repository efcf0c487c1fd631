"""Thumbnails: a face crop or a downscaled photo as JPEG, with bounded sizes and an LRU cache.

Sizes are snapped to a few buckets (:data:`FACE_SIZES`, :data:`PHOTO_SIZES`): a request for any
size gets the smallest bucket that is at least as large (or the largest), so that a cache holds
few variants and nobody can ask the service to encode a 20,000 px JPEG.

* :func:`face_thumbnail`: a square around the face box (the box plus ``margin`` of its size on
  every side, moved inside the photo, never stretched) -> ``size x size`` JPEG.
* :func:`photo_thumbnail`: the photo with its longer side at most ``size`` (never enlarged).
* :class:`ThumbnailCache`: encoded JPEGs keyed by what they show, bounded in bytes (LRU).
* :func:`etag_of`: a strong ETag from what a thumbnail shows (photo content hash, box, size,
  encoder version), so an unchanged thumbnail answers ``304 Not Modified``.

No Ray import here; the :class:`~facenet_platform.serve.deployments.Thumbnailer` deployment
wraps it.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np

#: Face crop edge lengths, px.
FACE_SIZES = (64, 128, 256)
#: Photo thumbnail longer sides, px.
PHOTO_SIZES = (256, 512, 1024)
#: Bumped when the crop or the encoding changes, so that every ETag changes with it.
ENCODER_VERSION = "1"
JPEG_QUALITY = 85
#: Margin around a face box, as a fraction of the box's longer side, on each side.
FACE_MARGIN = 0.3


def snap_size(size: Optional[int], buckets: Sequence[int], default: int) -> int:
    """The bucket a requested ``size`` is served at: the smallest >= ``size``, else the largest;
    ``default`` when no size was asked for."""
    if size is None:
        return default
    for bucket in buckets:
        if bucket >= size:
            return bucket
    return buckets[-1]


def etag_of(*parts: object) -> str:
    """A quoted strong ETag of ``parts`` (and the encoder version)."""
    text = "|".join([ENCODER_VERSION, *(str(p) for p in parts)])
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


def _encode(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=quality,
                                                      optimize=True)
    return buf.getvalue()


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if (image.shape[1], image.shape[0]) == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def face_square(box: Sequence[float], width: int, height: int,
                margin: float = FACE_MARGIN) -> tuple[int, int, int, int]:
    """``(x1, y1, x2, y2)`` integer pixels of a square around ``box`` inside a ``width x height``
    photo: the box's longer side plus ``margin`` of it on each side, shifted (not clipped) to
    stay inside, and shrunk only when the photo itself is smaller."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0) * (1 + 2 * margin)
    side = int(round(min(side, width, height)))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return left, top, left + side, top + side


def face_thumbnail(image: np.ndarray, box: Sequence[float], size: int) -> bytes:
    """JPEG of the face at ``box`` in an ``(H, W, 3) uint8`` photo, ``size x size`` px."""
    left, top, right, bottom = face_square(box, image.shape[1], image.shape[0])
    crop = image[top:bottom, left:right]
    return _encode(_resize(crop, size, size))


def photo_thumbnail(image: np.ndarray, size: int) -> bytes:
    """JPEG of the photo with its longer side at most ``size`` px (never enlarged)."""
    height, width = image.shape[:2]
    scale = min(1.0, size / max(width, height))
    out = _resize(image, max(1, round(width * scale)), max(1, round(height * scale)))
    return _encode(out)


class ThumbnailCache:
    """Encoded thumbnails, least recently used dropped first, at most ``max_bytes`` in all.

    Thread-safe (the thumbnailer encodes in worker threads)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, tuple[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> Optional[tuple[str, bytes]]:
        """``(etag, jpeg)`` of ``key``, or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: tuple, etag: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._items[key] = (etag, data)
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    def stats(self) -> dict:
        with self._lock:
            return {"items": len(self._items), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses}
