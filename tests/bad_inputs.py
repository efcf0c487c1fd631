"""Generator of bad and odd image inputs, shared by the image, index and CLI tests.

    from bad_inputs import write_bad_inputs   # pytest puts tests/ on sys.path

    paths = write_bad_inputs(tmp_path)
    paths["truncated"]  # -> tmp_path / "truncated.jpg"

Every real image is a crop of ``skimage.data.astronaut()`` (a real face photo shipped with
scikit-image) scaled to :data:`GOOD_SIZE`, so the decodable ones still contain one face. Those that
decode are expected to give an array of shape ``(GOOD_SIZE[1], GOOD_SIZE[0], 3)``, the EXIF-rotated
one included (it is stored sideways).

Keys of :func:`write_bad_inputs` and what a correct reader does with them:

================  =============================================  ===================================
key               file                                           expected
================  =============================================  ===================================
zero_byte         empty ``zero_byte.jpg``                        ``ImageError`` (file is empty)
truncated         real JPEG cut in half                          ``ImageError`` (truncated)
corrupt           JPEG SOI/APP0 header, then random bytes        ``ImageError``
text_as_jpg       a text file named ``.jpg``                     ``ImageError``
non_image         a ``.txt`` file                                ``ImageError``; not an image path
png_alpha         RGBA PNG, transparent border over black RGB    decodes; border white, not black
grayscale         ``L`` mode JPEG                                decodes, R == G == B
cmyk              CMYK JPEG                                      decodes close to the RGB source
palette           ``P`` mode GIF                                 decodes close to the RGB source
png16             16-bit greyscale PNG (``I;16``)                decodes, values / 257
exif_rotated      JPEG stored sideways with EXIF Orientation=6   decodes upright, red marker top-left
huge_header       ~100-byte PNG whose IHDR says 20000x20000      ``ImageTooLargeError``, no decoding
================  =============================================  ===================================
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

#: (width, height) in pixels of every decodable image written here (portrait, like a face photo).
GOOD_SIZE: tuple[int, int] = (160, 200)

#: (width, height) declared by the ``huge_header`` PNG.
HUGE_SIZE: tuple[int, int] = (20000, 20000)

#: Width in pixels of the transparent border of ``png_alpha``.
ALPHA_BORDER: int = 16

#: Side in pixels of the pure red square in the top-left corner of the upright ``exif_rotated``.
EXIF_MARKER: int = 32

#: EXIF tag number of Orientation.
ORIENTATION_TAG: int = 0x0112

BAD_INPUT_NAMES: tuple[str, ...] = (
    "zero_byte",
    "truncated",
    "corrupt",
    "text_as_jpg",
    "non_image",
    "png_alpha",
    "grayscale",
    "cmyk",
    "palette",
    "png16",
    "exif_rotated",
    "huge_header",
)

#: Keys whose files must decode to ``(GOOD_SIZE[1], GOOD_SIZE[0], 3) uint8``.
DECODABLE: tuple[str, ...] = (
    "png_alpha", "grayscale", "cmyk", "palette", "png16", "exif_rotated",
)

#: Keys whose files must raise ``ImageError`` (not the too-large subclass).
UNREADABLE: tuple[str, ...] = ("zero_byte", "truncated", "corrupt", "text_as_jpg", "non_image")


def face_image(size: int | tuple[int, int] = GOOD_SIZE) -> Image.Image:
    """A portrait crop of ``skimage.data.astronaut()`` around the face, as an RGB Pillow image.

    Args:
        size: ``(width, height)`` in pixels, or one int for a square.
    """
    from skimage import data  # imported lazily: only the tests need scikit-image

    width, height = (size, size) if isinstance(size, int) else size
    full = Image.fromarray(data.astronaut())  # 512x512 RGB, face around x 170..290, y 40..200
    # Crop a box of the requested aspect ratio centred on the face, then scale.
    box_h = 400
    box_w = min(512, round(box_h * width / height))
    cx, top = 235, 0
    left = int(np.clip(cx - box_w // 2, 0, 512 - box_w))
    crop = full.crop((left, top, left + box_w, top + box_h))
    return crop.resize((width, height), Image.Resampling.LANCZOS)


def write_good_image(path: Path | str, size: int | tuple[int, int] = GOOD_SIZE) -> Path:
    """Write a plain RGB face photo; the format follows the extension (``.jpg``, ``.png``...).

    Args:
        path: destination file.
        size: ``(width, height)`` in pixels, or one int for a square.

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    image = face_image(size)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=92)
    else:
        image.save(path)
    return path


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def huge_header_png(width: int = HUGE_SIZE[0], height: int = HUGE_SIZE[1]) -> bytes:
    """A valid-looking 8-bit greyscale PNG declaring ``width x height`` with a tiny IDAT.

    Built chunk by chunk (correct CRCs) so that nothing ever allocates ``width * height`` pixels;
    the result is about a hundred bytes.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    idat = zlib.compress(b"\x00" * 64)  # a few filter bytes and zeros, far less than one row
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def write_bad_inputs(directory: Path | str) -> dict[str, Path]:
    """Write one file per kind of bad or odd input into ``directory`` (created if missing).

    Returns:
        ``{key: path}`` for every key of :data:`BAD_INPUT_NAMES`, in that order.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240611)
    face = face_image(GOOD_SIZE)
    width, height = GOOD_SIZE

    jpeg_path = directory / "_good_source.jpg"
    face.save(jpeg_path, quality=92)
    jpeg = jpeg_path.read_bytes()
    jpeg_path.unlink()

    paths: dict[str, Path] = {}

    def put(key: str, name: str, payload: bytes) -> None:
        path = directory / name
        path.write_bytes(payload)
        paths[key] = path

    put("zero_byte", "zero_byte.jpg", b"")
    put("truncated", "truncated.jpg", jpeg[: len(jpeg) // 2])
    # SOI + APP0/JFIF segment (20 bytes), then noise where the next marker should be.
    garbage = rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes().replace(b"\xff", b"\x00")
    put("corrupt", "corrupt.jpg", jpeg[:20] + garbage)
    put("text_as_jpg", "text_as_jpg.jpg",
        b"This is a text file that only pretends to be a JPEG photo.\n" * 8)
    put("non_image", "non_image.txt", b"name,label\nalice,1\nbob,2\n")

    # RGBA: a fully transparent border whose RGB is black, so dropping alpha shows black.
    rgba = np.dstack([np.asarray(face), np.full((height, width), 255, np.uint8)])
    b = ALPHA_BORDER
    for region in (np.s_[:b, :], np.s_[-b:, :], np.s_[:, :b], np.s_[:, -b:]):
        rgba[region] = 0
    path = directory / "png_alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    paths["png_alpha"] = path

    path = directory / "grayscale.jpg"
    face.convert("L").save(path, quality=92)
    paths["grayscale"] = path

    path = directory / "cmyk.jpg"
    face.convert("CMYK").save(path, quality=92)
    paths["cmyk"] = path

    path = directory / "palette.gif"
    face.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path)
    paths["palette"] = path

    grey16 = np.asarray(face.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
    path = directory / "png16.png"
    Image.fromarray(grey16).save(path)  # mode I;16 -> 16-bit greyscale PNG
    paths["png16"] = path

    # Upright portrait with a red square top-left, stored rotated 90 degrees counter-clockwise;
    # Orientation=6 tells the viewer to rotate it 90 degrees clockwise to display it upright.
    upright = np.array(face)
    upright[:EXIF_MARKER, :EXIF_MARKER] = (255, 0, 0)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # (height, width) wide
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    path = directory / "exif_rotated.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    paths["exif_rotated"] = path

    put("huge_header", "huge_header.png", huge_header_png())

    assert tuple(paths) == BAD_INPUT_NAMES
    return paths
