"""RAW + JPEG of the same shot (cameras set to "RAW+JPEG", phones' ProRAW + HEIC).

Two files are the same shot when

1. they are in the **same folder** and have the **same stem**, compared case-insensitively
   (``IMG_0042.CR2`` and ``IMG_0042.JPG``), one a camera RAW and the other a rendered photo
   (JPEG, HEIC/HEIF, AVIF, TIFF, PNG, WebP); and
2. when **both** carry capture metadata, it agrees: EXIF ``DateTimeOriginal`` within
   :data:`MAX_CLOCK_SKEW_S` seconds (the JPEG is written a moment after the RAW by some
   cameras, and sub-second fields differ) and the same camera ``Model``. When either file lacks
   the metadata (exports that strip EXIF, LibRaw-only RAW formats), the folder + stem rule
   decides alone.

A folder with one RAW and two renders of the same stem (``IMG_1.CR2``, ``IMG_1.JPG``,
``IMG_1.HEIC``) pairs all of them with the RAW. Two RAWs with one stem (``.CR2`` and ``.DNG``
conversion) are one shot too. Each group gets a ``shot_id``: the folder and stem of its RAW
(``/photos/2024/IMG_0042``), so a people view can count the shot once.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Mapping, Sequence

__all__ = ["MAX_CLOCK_SKEW_S", "ShotMeta", "pair_shots", "read_shot_meta"]

logger = logging.getLogger(__name__)

#: Largest difference between the RAW's and the render's DateTimeOriginal (s).
MAX_CLOCK_SKEW_S: float = 2.0

_RENDER_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".heic", ".heif", ".hif", ".avif",
                                ".tif", ".tiff", ".png", ".webp"})


@dataclass(frozen=True)
class ShotMeta:
    """Capture metadata used to confirm a pair (``None`` when the file does not say)."""

    taken_at: str | None = None  # EXIF "YYYY:MM:DD HH:MM:SS"
    model: str | None = None

    @property
    def time(self) -> datetime | None:
        if not self.taken_at:
            return None
        try:
            return datetime.strptime(self.taken_at.strip()[:19], "%Y:%m:%d %H:%M:%S")
        except ValueError:
            return None


def read_shot_meta(data: bytes) -> ShotMeta:
    """DateTimeOriginal (else DateTime) and Model from a file's EXIF, header only.

    Works for JPEG, TIFF-structured RAWs (DNG, NEF, CR2, ARW, ...), HEIF (with pillow-heif),
    PNG and WebP. Never raises: unreadable metadata is ``ShotMeta()``.
    """
    from PIL import Image

    try:
        if bytes(data[:4]) in (b"II*\x00", b"MM\x00*"):
            taken, model = _tiff_meta(data)
        else:
            from facenet_platform.core.media.sniff import sniff

            if sniff(data).format == "HEIF":
                from facenet_platform.core.media.heif import heif_available

                heif_available()
            with Image.open(io.BytesIO(data)) as image:
                exif = image.getexif()
                model = exif.get(0x0110)
                try:
                    taken = exif.get_ifd(0x8769).get(0x9003)
                except Exception:  # noqa: BLE001
                    taken = None
                taken = taken or exif.get(0x0132)
    except Exception:  # noqa: BLE001 - no readable metadata
        return ShotMeta()

    def text(value) -> str | None:
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("latin-1", "replace")
        value = str(value).strip("\x00 ").strip()
        return value or None

    return ShotMeta(text(taken), text(model))


def _tiff_meta(data: bytes) -> tuple[object, object]:
    """DateTimeOriginal/DateTime and Model of a TIFF-structured file (RAWs Pillow cannot open
    as images): IFD0 and its Exif IFD only, read with Pillow's IFD parser."""
    from PIL.TiffImagePlugin import ImageFileDirectory_v2

    fp = io.BytesIO(data)
    ifd = ImageFileDirectory_v2(ifh=bytes(data[:8]))
    fp.seek(ifd.next)
    ifd.load(fp)
    taken = None
    exif_at = ifd.get(0x8769)
    if exif_at:
        sub = ImageFileDirectory_v2(ifh=bytes(data[:8]))
        fp.seek(int(exif_at))
        sub.load(fp)
        taken = sub.get(0x9003)
    return taken or ifd.get(0x0132), ifd.get(0x0110)


def _agree(a: ShotMeta, b: ShotMeta) -> bool:
    ta, tb = a.time, b.time
    if ta is not None and tb is not None and abs((ta - tb).total_seconds()) > MAX_CLOCK_SKEW_S:
        return False
    if a.model and b.model and a.model.lower() != b.model.lower():
        return False
    return True


def pair_shots(paths: Sequence[str],
               meta: Mapping[str, ShotMeta] | Callable[[str], ShotMeta] | None = None,
               ) -> dict[str, str]:
    """Group RAW files with the renders of the same shot.

    Args:
        paths: file paths or URIs (``/`` separated).
        meta: capture metadata per path (a mapping, or a function called on the members of
            candidate groups only); None: folder + stem alone.

    Returns:
        ``{path: shot_id}`` for every path that belongs to a RAW+render group (paths of no
        group are absent). The shot id is the RAW's folder + stem.
    """
    def get_meta(path: str) -> ShotMeta:
        if meta is None:
            return ShotMeta()
        if callable(meta):
            return meta(path)
        return meta.get(path, ShotMeta())

    groups: dict[tuple[str, str], list[str]] = {}
    for path in paths:
        folder, name = posixpath.split(path.replace(os.sep, "/"))
        stem, ext = os.path.splitext(name)
        groups.setdefault((folder, stem.lower()), []).append(path)
    from facenet_platform.core.images import RAW_EXTENSIONS

    out: dict[str, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        raws = [p for p in members if os.path.splitext(p)[1].lower() in RAW_EXTENSIONS]
        renders = [p for p in members if os.path.splitext(p)[1].lower() in _RENDER_EXTENSIONS]
        if not raws or not (renders or len(raws) > 1):
            continue
        anchor = sorted(raws)[0]
        anchor_meta = get_meta(anchor)
        shot_id = os.path.splitext(anchor)[0]
        grouped = [anchor]
        for other in sorted(set(raws + renders) - {anchor}):
            if _agree(anchor_meta, get_meta(other)):
                grouped.append(other)
            else:
                logger.info("%s and %s share a stem but not the capture time/camera: not paired",
                            anchor, other)
        if len(grouped) > 1:
            for path in grouped:
                out[path] = shot_id
    return out
