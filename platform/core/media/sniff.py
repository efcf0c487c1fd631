"""What a file is, from its first bytes (magic numbers), never from its name.

A file named ``holiday.mp4`` that holds a ZIP archive is a ZIP archive; a HEIC photo saved as
``IMG_0001.JPG`` is a HEIC photo. :func:`sniff` reads at most the first :data:`SNIFF_BYTES` bytes
(plus, for TIFF-structured files, the first IFD, which it walks within those bytes and a bounded
number of entries) and names the container:

=============  ==========================================================================
kind           formats
=============  ==========================================================================
``image``      JPEG, PNG, GIF, WEBP, BMP, TIFF (Pillow) and HEIF, AVIF (ISO BMFF ``ftyp``)
``raw``        DNG, CR2, CR3, CRW, NEF, ARW, RAF, ORF, RW2, PEF, SRW, X3F, and other TIFF-
               structured camera RAWs (see below)
``video``      MP4, MOV, MKV, WEBM, AVI
``other``      ZIP, GZIP, 7Z, RAR, PDF, ELF, ... (known, refused: never decoded)
``unknown``    nothing recognised (Pillow gets one try, as before this module existed)
=============  ==========================================================================

TIFF-structured RAWs: DNG is recognised by its ``DNGVersion`` tag, CR2 by ``CR`` at offset 8,
ORF and RW2 by their own byte-order marks; NEF, ARW, PEF, SRW and the like are plain TIFF
containers whose first IFD names the camera's ``Make``. A TIFF is taken for a RAW when its first
IFD carries ``DNGVersion``, a CFA photometric interpretation, or a camera maker's ``Make`` and the
file's extension is a RAW extension; otherwise it is a TIFF image. That tie-break on the
extension is the only place a name is read, and only inside content already known to be TIFF.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

__all__ = ["MediaType", "SNIFF_BYTES", "sniff", "RAW_EXTENSIONS_HINT"]

#: Bytes read from the start of a file to tell what it is.
SNIFF_BYTES: int = 64 * 1024

#: RAW file extensions used only to tell a camera RAW from a TIFF image (content is TIFF).
RAW_EXTENSIONS_HINT: frozenset[str] = frozenset({
    ".dng", ".cr2", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".pef", ".srw", ".orf", ".rw2",
    ".raw", ".rwl", ".3fr", ".erf", ".kdc", ".dcr", ".mef", ".mos", ".iiq",
})

_CAMERA_MAKERS = ("nikon", "sony", "pentax", "ricoh", "samsung", "olympus", "om digital",
                  "panasonic", "leica", "canon", "fujifilm", "hasselblad", "phase one",
                  "kodak", "sigma", "mamiya", "leaf", "minolta", "konica")

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs",
                b"mif1", b"msf1", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}
_MP4_BRANDS = {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"mp71",
               b"m4v ", b"m4a ", b"avc1", b"dash", b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"mmp4",
               b"msnv", b"f4v ", b"xavc", b"nvr1", b"mp4v"}
_MOV_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


@dataclass(frozen=True)
class MediaType:
    """What :func:`sniff` found.

    Attributes:
        kind: ``"image"``, ``"raw"``, ``"video"``, ``"other"`` (known non-media, refused) or
            ``"unknown"``.
        format: upper-case format name, e.g. ``"JPEG"``, ``"HEIF"``, ``"AVIF"``, ``"DNG"``,
            ``"MP4"``, ``"ZIP"``; ``""`` when unknown.
    """

    kind: str
    format: str

    @property
    def is_media(self) -> bool:
        """Whether a decoder of this package handles it (image, raw or video)."""
        return self.kind in ("image", "raw", "video")


def sniff(data: bytes | bytearray | memoryview, name: str = "") -> MediaType:
    """Name the container of ``data`` from its magic bytes.

    Args:
        data: the file's bytes (only the first :data:`SNIFF_BYTES` are looked at).
        name: the file's name or path; read only to tell a camera RAW from a TIFF image
            when the content is TIFF-structured (see the module docstring).

    Returns:
        A :class:`MediaType`. Never raises.
    """
    head = bytes(data[:SNIFF_BYTES])
    if len(head) < 4:
        return MediaType("unknown", "")
    ext = os.path.splitext(name)[1].lower()
    if head[:3] == b"\xff\xd8\xff":
        return MediaType("image", "JPEG")
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return MediaType("image", "PNG")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return MediaType("image", "GIF")
    if head[:4] == b"RIFF" and len(head) >= 12:
        sub = head[8:12]
        if sub == b"WEBP":
            return MediaType("image", "WEBP")
        if sub == b"AVI ":
            return MediaType("video", "AVI")
        return MediaType("other", "RIFF-" + sub.decode("latin-1").strip())
    if head[:2] == b"BM" and len(head) >= 26:
        return MediaType("image", "BMP")
    if head[:15] == b"FUJIFILMCCD-RAW":
        return MediaType("raw", "RAF")
    if head[:4] == b"FOVb":
        return MediaType("raw", "X3F")
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR"):
        return MediaType("raw", "ORF")
    if head[:4] == b"IIU\x00":
        return MediaType("raw", "RW2")
    if head[:2] == b"II" and head[6:14] == b"HEAPCCDR":
        return MediaType("raw", "CRW")
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _sniff_tiff(head, ext)
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _sniff_ftyp(head)
    if len(head) >= 8 and head[4:8] in _MOV_ATOMS:
        return MediaType("video", "MOV")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        doctype = b"webm" in head[:64]
        return MediaType("video", "WEBM" if doctype else "MKV")
    return _sniff_other(head)


def _sniff_ftyp(head: bytes) -> MediaType:
    size = struct.unpack(">I", head[:4])[0]
    major = head[8:12]
    end = min(max(size, 16), len(head), 4096)
    compatible = {head[i:i + 4] for i in range(16, end - 3, 4)}
    brands = [major, *sorted(compatible)]
    if major == b"crx ":
        return MediaType("raw", "CR3")
    if major in _AVIF_BRANDS or (major in _HEIF_BRANDS and compatible & _AVIF_BRANDS
                                 and not compatible & {b"heic", b"heix"}):
        return MediaType("image", "AVIF")
    if major in _HEIF_BRANDS:
        return MediaType("image", "HEIF")
    if major == b"qt  ":
        return MediaType("video", "MOV")
    if major in _MP4_BRANDS or any(b in _MP4_BRANDS for b in brands):
        return MediaType("video", "MP4")
    if compatible & _AVIF_BRANDS:
        return MediaType("image", "AVIF")
    if compatible & _HEIF_BRANDS:
        return MediaType("image", "HEIF")
    return MediaType("other", "ISOBMFF-" + major.decode("latin-1").strip())


def _sniff_other(head: bytes) -> MediaType:
    table = (
        (b"PK\x03\x04", "ZIP"), (b"PK\x05\x06", "ZIP"), (b"\x1f\x8b", "GZIP"),
        (b"7z\xbc\xaf\x27\x1c", "7Z"), (b"Rar!\x1a\x07", "RAR"), (b"BZh", "BZIP2"),
        (b"\xfd7zXZ\x00", "XZ"), (b"(\xb5/\xfd", "ZSTD"), (b"%PDF", "PDF"),
        (b"\x7fELF", "ELF"), (b"MZ", "EXE"), (b"OggS", "OGG"), (b"ID3", "MP3"),
        (b"fLaC", "FLAC"),
    )
    for magic, fmt in table:
        if head.startswith(magic):
            return MediaType("other", fmt)
    if head[:1] == b"\x47" and len(head) > 376 and head[188:189] == b"\x47" and head[376:377] == b"\x47":
        return MediaType("other", "MPEG-TS")
    stripped = head.lstrip()[:64].lower()
    if stripped.startswith((b"<?xml", b"<x:xmpmeta", b"<html", b"<!doctype", b"<svg")):
        return MediaType("other", "XML")
    return MediaType("unknown", "")


def _sniff_tiff(head: bytes, ext: str) -> MediaType:
    """TIFF container: a camera RAW or a TIFF image (see the module docstring)."""
    if head[8:10] == b"CR":
        return MediaType("raw", "CR2")
    tags = _first_ifd_tags(head)
    if 50706 in tags:  # DNGVersion
        return MediaType("raw", "DNG")
    if tags.get(262) == 32803 or ext in RAW_EXTENSIONS_HINT and (
            ext == ".dng" or any(m in str(tags.get(271, "")).lower() for m in _CAMERA_MAKERS)):
        fmt = ext[1:].upper() if ext in RAW_EXTENSIONS_HINT else "RAW"
        return MediaType("raw", fmt)
    return MediaType("image", "TIFF")


def _first_ifd_tags(head: bytes) -> dict[int, object]:
    """Tag -> value of the first IFD (short/long values and ASCII strings inside ``head``).

    Bounded: at most 512 entries, and only bytes already in ``head`` are read. Never raises.
    """
    try:
        order = "<" if head[:2] == b"II" else ">"
        if head[2:4] in (b"+\x00", b"\x00+"):  # BigTIFF: 8-byte offsets, not needed for a hint
            return {}
        offset = struct.unpack(order + "I", head[4:8])[0]
        if offset + 2 > len(head):
            return {}
        count = min(struct.unpack(order + "H", head[offset:offset + 2])[0], 512)
        tags: dict[int, object] = {}
        for k in range(count):
            entry = head[offset + 2 + 12 * k: offset + 14 + 12 * k]
            if len(entry) < 12:
                break
            tag, typ, n = struct.unpack(order + "HHI", entry[:8])
            raw = entry[8:12]
            if typ == 3 and n >= 1:
                tags[tag] = struct.unpack(order + "H", raw[:2])[0]
            elif typ == 4 and n >= 1:
                tags[tag] = struct.unpack(order + "I", raw)[0]
            elif typ == 1:
                tags[tag] = raw[0]
            elif typ == 2:
                if n <= 4:
                    text = raw[:n]
                else:
                    at = struct.unpack(order + "I", raw)[0]
                    text = head[at:at + min(n, 256)]
                tags[tag] = text.split(b"\x00", 1)[0].decode("latin-1", "replace")
            else:
                tags[tag] = None
        return tags
    except (struct.error, IndexError):
        return {}
