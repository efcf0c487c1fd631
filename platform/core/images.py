"""Read and decode any image file into an ``(H, W, 3) uint8`` RGB array, safely.

This is the single entry point of the data path for pixels: every other module receives
``(H, W, 3) uint8`` RGB arrays (rows, columns, channels in R, G, B order; C-contiguous) and never
opens a file itself.

Why Pillow and not ``cv2.imdecode``
-----------------------------------
* **Lazy header.** ``PIL.Image.open`` parses only the header, so the declared size can be checked
  against a pixel limit (decompression-bomb guard) *before* any pixel is decompressed, and
  :func:`probe_image` can report a size without decoding. ``cv2.imdecode`` always decodes
  everything; its only guard is a process-wide environment variable read once at load.
* **EXIF orientation.** Phone cameras store the pixels sideways plus an Orientation tag. Pillow
  exposes the tag for every format that carries it (JPEG, PNG ``eXIf``, WebP, TIFF) and
  :func:`PIL.ImageOps.exif_transpose` applies it explicitly; OpenCV applies it only in some
  decoders and versions.
* **Colour modes.** CMYK/YCCK JPEGs (including Adobe's inverted CMYK), palette images with a
  transparent index, grey+alpha, RGBA, 16-bit and float greyscale all come out of Pillow with their
  mode named, so each gets a deliberate conversion (alpha is composited over white instead of being
  dropped, which would turn transparent backgrounds black). GIF and animated WebP decode to their
  first frame.
* **Errors with reasons.** ``cv2.imdecode`` returns ``None`` without saying why; Pillow raises,
  which lets us tell the user "empty", "truncated", "not an image" or "too large".

Every failure is raised as :class:`~facenet_platform.core.errors.ImageError` (or its subclass
:class:`~facenet_platform.core.errors.ImageTooLargeError`) with a one-line message that starts with
the source name; no raw ``OSError``/``SyntaxError``/Pillow exception escapes.

Pixel limit
-----------
``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, overridable with the environment variable
``FACENET_MAX_PIXELS``, read at call time) bounds ``width * height`` as declared by the header.
Pillow has its own global guard (``PIL.Image.MAX_IMAGE_PIXELS``: warning above it, error above twice
it). This module keeps the two consistent: Pillow's warning and error during header parsing are
caught and reported as :class:`ImageTooLargeError`, and when a caller asks for a limit larger than
Pillow's, ``PIL.Image.MAX_IMAGE_PIXELS`` is raised to that limit (never lowered, never disabled).

``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left at ``False`` (this module never sets it) so that a
truncated file raises instead of silently decoding grey rows.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from facenet_platform.core.errors import ConfigError, ImageError, ImageTooLargeError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "HEIF_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MEDIA_EXTENSIONS",
    "PILLOW_EXTENSIONS",
    "RAW_EXTENSIONS",
    "SUPPORTED_TYPES",
    "StillImage",
    "VIDEO_EXTENSIONS",
    "decode_still",
    "is_media_path",
    "MAX_PIXELS_ENV",
    "ImageInfo",
    "decode_image",
    "is_image_path",
    "max_pixels_from_env",
    "probe_image",
    "read_image",
    "read_image_bytes",
]

logger = logging.getLogger(__name__)

# The one list of supported file types. Scanning a folder picks files by these extensions; decoding
# never trusts them (core/media/sniff.py reads the magic bytes), so a HEIC named .jpg still decodes
# and a ZIP named .mp4 is refused with its real type.

#: Still images that Pillow decodes with no optional package (AVIF: Pillow >= 11.3 wheels).
PILLOW_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}
)
#: HEIC/HEIF photos (iPhone default): the ``media`` extra (pillow-heif).
HEIF_EXTENSIONS: frozenset[str] = frozenset({".heic", ".heif", ".hif"})
#: Camera RAW files: the ``media`` extra (rawpy/LibRaw).
RAW_EXTENSIONS: frozenset[str] = frozenset(
    {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf",
     ".rw2", ".pef", ".srw", ".x3f", ".rwl", ".3fr", ".erf", ".kdc", ".dcr", ".mef", ".mos",
     ".iiq"}
)
#: Videos: the ``media`` extra (PyAV/FFmpeg); frames are sampled (core/media/video.py).
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".qt", ".mkv", ".webm", ".avi", ".3gp"}
)
#: File extensions (lower case, with the dot) of still images: what :func:`decode_image` reads.
IMAGE_EXTENSIONS: frozenset[str] = PILLOW_EXTENSIONS | HEIF_EXTENSIONS | RAW_EXTENSIONS
#: Everything ``index build`` picks up in a folder: still images and videos.
MEDIA_EXTENSIONS: frozenset[str] = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS

#: ``(type, extensions, decoder, extra)`` rows of the README's supported-types table.
SUPPORTED_TYPES: tuple[tuple[str, str, str, str], ...] = (
    ("JPEG, PNG, WebP, GIF, BMP, TIFF", ".jpg .jpeg .jpe .png .webp .gif .bmp .tif .tiff",
     "Pillow", "(default)"),
    ("AVIF", ".avif", "Pillow's own AVIF (Pillow >= 11.3 wheels)", "(default)"),
    ("animated GIF / WebP / PNG", ".gif .webp .png", "Pillow, frames sampled", "(default)"),
    ("HEIC / HEIF", ".heic .heif .hif", "pillow-heif (libheif)", "media"),
    ("camera RAW", " ".join(sorted(RAW_EXTENSIONS)), "rawpy (LibRaw): embedded preview or "
     "half-size demosaic", "media"),
    ("video", " ".join(sorted(VIDEO_EXTENSIONS)), "PyAV (FFmpeg), frames sampled", "media"),
)

#: Default upper bound on ``width * height`` (pixels) declared by an image header.
DEFAULT_MAX_PIXELS: int = 40_000_000

#: Environment variable that overrides :data:`DEFAULT_MAX_PIXELS` (a positive integer).
MAX_PIXELS_ENV: str = "FACENET_MAX_PIXELS"

# Serialises the ``warnings.catch_warnings`` block around ``Image.open`` (header parsing only, so
# the lock is held for microseconds): ``catch_warnings`` swaps process-global state and is not
# thread-safe when two threads enter it at once. Pixel decoding runs outside the lock.
_OPEN_LOCK = threading.Lock()

_PILLOW_PIXELS_RE = re.compile(r"\((\d+) pixels\)")

# Modes that carry an alpha channel (composited over white).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Modes whose optional ``info["transparency"]`` (a transparent index or colour) is honoured.
_TRANSPARENCY_MODES = frozenset({"P", "L", "RGB", "1"})
_WHITE = (255, 255, 255, 255)


@dataclass(frozen=True)
class ImageInfo:
    """What an image header declares, read without decoding any pixel.

    Attributes:
        width: stored width in pixels (before any EXIF rotation).
        height: stored height in pixels (before any EXIF rotation).
        format: Pillow's format name, e.g. ``"JPEG"``, ``"PNG"``, ``"GIF"``, ``"WEBP"``.
    """

    width: int
    height: int
    format: str

    @property
    def pixels(self) -> int:
        """``width * height``, the number the pixel limit is compared against."""
        return self.width * self.height


def max_pixels_from_env() -> int:
    """Return the pixel limit: ``$FACENET_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`.

    Read at every call, so a changed environment takes effect without a re-import.

    Raises:
        ConfigError: the variable is set but is not a positive integer.
    """
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.strip().replace(",", ""))
    except ValueError:
        raise ConfigError(
            f"{MAX_PIXELS_ENV} must be a positive integer number of pixels, got {raw!r}"
        ) from None
    if value <= 0:
        raise ConfigError(f"{MAX_PIXELS_ENV} must be a positive integer number of pixels, got {raw!r}")
    return value


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive). No I/O."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def is_media_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has one of :data:`MEDIA_EXTENSIONS` (images and videos). No I/O."""
    return os.path.splitext(os.fspath(path))[1].lower() in MEDIA_EXTENSIONS


def read_image_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a whole file into memory.

    Args:
        path: file to read.

    Returns:
        The file's bytes (possibly empty; :func:`decode_image` reports empty files).

    Raises:
        ImageError: ``"<path>: no such file"``, ``"<path>: is a directory"``,
            ``"<path>: permission denied"``, ``"<path>: not a regular file"`` or
            ``"<path>: cannot read file (<reason>)"``.
    """
    source = os.fspath(path)
    try:
        st = os.stat(source)
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"{source}: no such file") from None
    except PermissionError:
        raise ImageError(f"{source}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{source}: cannot read file ({_one_line(exc.strerror or exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{source}: is a directory")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block or never end.
        raise ImageError(f"{source}: not a regular file")
    try:
        with open(source, "rb") as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{source}: is a directory") from None
    except PermissionError:
        raise ImageError(f"{source}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{source}: cannot read file ({_one_line(exc.strerror or exc)})") from None


def probe_image(
    data: bytes, *, source: str = "<bytes>", max_pixels: int | None = None
) -> ImageInfo:
    """Read an image's size and format from its header, without decompressing any pixel.

    Args:
        data: the encoded file contents.
        source: name used in error messages (usually the file path).
        max_pixels: limit on ``width * height``; ``None`` means :func:`max_pixels_from_env`.

    Returns:
        :class:`ImageInfo` with the stored (un-rotated) width and height in pixels.

    Raises:
        ImageError: empty data, or not a readable image.
        ImageTooLargeError: the header declares more than ``max_pixels`` pixels.
    """
    limit = _resolve_limit(max_pixels)
    _check_bytes(data, source)
    from facenet_platform.core.media.sniff import sniff

    fmt = sniff(data, source).format
    if fmt in ("HEIF", "AVIF"):
        from facenet_platform.core.media import heif

        (heif.ensure_heif if fmt == "HEIF" else heif.ensure_avif)(source)
    image = _open_checked(data, source, limit)
    try:
        return ImageInfo(width=image.width, height=image.height, format=image.format or "UNKNOWN")
    finally:
        image.close()


@dataclass(frozen=True)
class StillImage:
    """A decoded still image and how it was decoded.

    Attributes:
        image: ``(H, W, 3) uint8`` RGB, C-contiguous, orientation applied.
        format: the container from the magic bytes (``"JPEG"``, ``"HEIF"``, ``"AVIF"``,
            ``"DNG"``, ...).
        decoder: ``"pillow"``, ``"pillow-heif"``, ``"rawpy-preview"`` (the RAW's embedded
            preview) or ``"rawpy-half"`` (half-size demosaic of the sensor data).
        orientation: the orientation the file declared (EXIF 1-8; for HEIF the transform
            libheif applied, for RAW LibRaw's flip), 0 when it declared none. The sideways
            retry (core/media/rotation.py) only tries rotations when this is 0.
    """

    image: np.ndarray
    format: str
    decoder: str
    orientation: int


def decode_image(
    data: bytes, *, source: str = "<bytes>", max_pixels: int | None = None
) -> np.ndarray:
    """Decode an encoded image into RGB pixels.

    The header size is checked against the limit before anything is decompressed. The EXIF
    orientation is applied; animated images give their first frame; every colour mode becomes RGB
    (alpha composited over white; 16-bit greyscale scaled by 1/257; float greyscale scaled by 255
    when it lies in [0, 1], else clipped to [0, 255]). HEIC/HEIF (pillow-heif), AVIF and camera
    RAW files (rawpy) decode too, told apart by their magic bytes; see :func:`decode_still`.

    Args:
        data: the encoded file contents (bytes or any bytes-like object).
        source: name used in error messages (usually the file path).
        max_pixels: limit on ``width * height``; ``None`` means :func:`max_pixels_from_env`.

    Returns:
        ``(H, W, 3) uint8`` array, RGB channel order, C-contiguous and writable, where ``H, W`` are the height
        and width in pixels as displayed (after EXIF rotation).

    Raises:
        ImageError: empty, not an image, truncated, corrupt, or an unsupported colour mode.
        ImageTooLargeError: the header declares more than ``max_pixels`` pixels.
        UnsupportedMediaError: the content is a video, or a known non-image (ZIP, PDF, ...).
        MissingDecoderError: a HEIC or RAW file without the ``media`` extra installed.
    """
    return decode_still(data, source=source, max_pixels=max_pixels).image


def decode_still(
    data: bytes, *, source: str = "<bytes>", max_pixels: int | None = None,
    raw_preview_min_side: int | None = None,
) -> StillImage:
    """Decode a still image of any supported type and say how (see :class:`StillImage`).

    The type comes from the magic bytes (:func:`facenet_platform.core.media.sniff.sniff`), not
    the name. Pillow formats as :func:`decode_image` describes; HEIF through pillow-heif (libheif
    applies the file's rotation); AVIF through Pillow's own plugin; camera RAW through
    :func:`facenet_platform.core.media.raw.decode_raw` (embedded preview when it is at least
    ``raw_preview_min_side`` px on its long side, else a half-size demosaic).

    Args:
        data: the encoded file contents.
        source: name used in error messages (usually the file path).
        max_pixels: limit on ``width * height``; ``None`` means :func:`max_pixels_from_env`.
        raw_preview_min_side: see :func:`facenet_platform.core.media.raw.decode_raw`.

    Returns:
        A :class:`StillImage`.

    Raises:
        The errors of :func:`decode_image`.
    """
    from facenet_platform.core.errors import UnsupportedMediaError
    from facenet_platform.core.media.sniff import sniff

    limit = _resolve_limit(max_pixels)
    _check_bytes(data, source)
    kind = sniff(data, source)
    if kind.kind == "raw":
        from facenet_platform.core.media.raw import decode_raw

        return decode_raw(data, source=source, max_pixels=limit, format=kind.format,
                          preview_min_side=raw_preview_min_side)
    if kind.kind == "video":
        raise UnsupportedMediaError(
            f"{source}: is a {kind.format} video, not a still image (index build samples "
            "its frames)")
    if kind.kind == "other":
        raise UnsupportedMediaError(f"{source}: not a photo or a video (the content is "
                                    f"{kind.format} data, whatever the name says)")
    decoder = "pillow"
    if kind.format == "HEIF":
        from facenet_platform.core.media.heif import ensure_heif

        ensure_heif(source)
        decoder = "pillow-heif"
    elif kind.format == "AVIF":
        from facenet_platform.core.media.heif import ensure_avif

        ensure_avif(source)
    image = _open_checked(data, source, limit)
    try:
        _load(image, source)
        orientation = _declared_orientation(image)
        oriented = _apply_exif_orientation(image, source)
        try:
            rgb = _to_rgb_array(oriented, source)
        finally:
            if oriented is not image:
                oriented.close()
    finally:
        image.close()
    logger.debug("decoded %s: %s %s -> %dx%d RGB", source, image.format, image.mode,
                 rgb.shape[1], rgb.shape[0])
    return StillImage(rgb, kind.format or (image.format or "UNKNOWN"), decoder, orientation)


def _declared_orientation(image: Image.Image) -> int:
    """EXIF Orientation (1-8) the file declares, or the HEIF transform libheif applied; 0 if none."""
    heif = image.info.get("original_orientation")
    if heif:
        return int(heif)
    try:
        value = image.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a broken EXIF block reads as "no tag"
        return 0
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 0
    return value if 1 <= value <= 8 else 0


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> np.ndarray:
    """Read and decode an image file: :func:`read_image_bytes` then :func:`decode_image`.

    Returns:
        ``(H, W, 3) uint8`` RGB array, C-contiguous.

    Raises:
        ImageError / ImageTooLargeError: see :func:`read_image_bytes` and :func:`decode_image`;
            messages start with ``str(path)``.
    """
    source = os.fspath(path)
    return decode_image(read_image_bytes(source), source=str(source), max_pixels=max_pixels)


# --------------------------------------------------------------------------------------------
# internals


def _resolve_limit(max_pixels: int | None) -> int:
    if max_pixels is None:
        return max_pixels_from_env()
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise TypeError(f"max_pixels must be an int or None, got {type(max_pixels).__name__}")
    if max_pixels <= 0:
        raise ConfigError(f"max_pixels must be a positive number of pixels, got {max_pixels}")
    return int(max_pixels)


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _too_large(source: str, width: int, height: int, limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{source}: {width}x{height} = {width * height:,} pixels exceeds the limit of {limit:,} "
        f"(set {MAX_PIXELS_ENV} to raise it)"
    )


def _sync_pillow_limit(limit: int) -> None:
    """Make sure Pillow's own guard never refuses (or warns about) an image within ``limit``."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < limit:
        logger.info("raising PIL.Image.MAX_IMAGE_PIXELS from %d to %d to match max_pixels",
                    current, limit)
        Image.MAX_IMAGE_PIXELS = limit


def _check_bytes(data: bytes, source: str) -> None:
    if isinstance(data, (str, os.PathLike)):
        raise TypeError(f"expected the encoded image bytes, got a path ({data!r}); use read_image")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError(f"{source}: file is empty (0 bytes)")


def _open_checked(data: bytes, source: str, limit: int) -> ImageFile.ImageFile:
    """``Image.open`` (header only) with every failure mapped, then the pixel-limit check."""
    _check_bytes(data, source)
    _sync_pillow_limit(limit)
    try:
        with _OPEN_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Above twice PIL.Image.MAX_IMAGE_PIXELS, hence above our limit too.
        raise _bomb_error(data, source, limit, exc) from None
    except UnidentifiedImageError:
        raise ImageError(f"{source}: not a readable image (cannot identify image file)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise SyntaxError, OSError, struct.error...
        if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
            raise ImageError(f"{source}: image data is truncated") from None
        raise ImageError(f"{source}: not a readable image ({_describe(exc)})") from None
    for warning in caught:
        if not issubclass(warning.category, Image.DecompressionBombWarning):
            logger.debug("%s: Pillow warning while reading the header: %s", source, warning.message)
    width, height = image.size
    if width * height > limit:
        image.close()
        raise _too_large(source, width, height, limit)
    if width <= 0 or height <= 0:
        image.close()
        raise ImageError(f"{source}: not a readable image (declares a {width}x{height} size)")
    return image


def _bomb_error(data: bytes, source: str, limit: int, exc: Exception) -> ImageTooLargeError:
    """Build the too-large error after Pillow refused the header, naming the size if possible."""
    size = _header_size_without_pillow_guard(data)
    if size is not None:
        return _too_large(source, size[0], size[1], limit)
    match = _PILLOW_PIXELS_RE.search(str(exc))
    declared = f"{int(match.group(1)):,} pixels" if match else "more pixels than Pillow allows"
    return ImageTooLargeError(
        f"{source}: {declared} exceeds the limit of {limit:,} (set {MAX_PIXELS_ENV} to raise it)"
    )


def _header_size_without_pillow_guard(data: bytes) -> tuple[int, int] | None:
    """Declared ``(width, height)`` via Pillow's registered format openers (header only).

    Used only for the error message when ``Image.open`` refused the file as a decompression bomb;
    it mirrors what ``Image.open`` does, minus the bomb check. Never raises.
    """
    prefix = bytes(data[:16])
    try:
        Image.init()
        for name in list(Image.ID):
            factory, accept = Image.OPEN[name]
            try:
                if accept is not None and accept(prefix) is not True:
                    continue
                candidate = factory(io.BytesIO(data), "")
            except Exception:  # noqa: BLE001 - try the next format, exactly like Image.open
                continue
            try:
                return tuple(candidate.size)  # type: ignore[return-value]
            finally:
                candidate.close()
    except Exception:  # noqa: BLE001 - only a nicer message is at stake
        logger.debug("could not read the declared size of a refused image", exc_info=True)
    return None


def _describe(exc: BaseException) -> str:
    text = _one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load(image: ImageFile.ImageFile, source: str) -> None:
    """Decompress the pixels of the current (first) frame, mapping failures to ImageError."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:  # a frame larger than the header said (GIF)
        raise ImageTooLargeError(f"{source}: {_one_line(exc)}") from None
    except MemoryError:
        raise ImageError(f"{source}: not enough memory to decode the image") from None
    except EOFError:
        raise ImageError(f"{source}: image data is truncated") from None
    except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, ValueError, struct.error...
        if "truncated" in str(exc).lower():
            raise ImageError(f"{source}: image data is truncated") from None
        raise ImageError(f"{source}: corrupt image data ({_describe(exc)})") from None


def _apply_exif_orientation(image: Image.Image, source: str) -> Image.Image:
    """Return the image rotated/flipped as its EXIF Orientation says (or ``image`` itself)."""
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not lose a good image
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", source, _describe(exc))
        return image
    return image if oriented is None else oriented


def _to_rgb_array(image: Image.Image, source: str) -> np.ndarray:
    """Convert any Pillow mode to a C-contiguous ``(H, W, 3) uint8`` RGB array."""
    mode = image.mode
    try:
        if mode in _ALPHA_MODES or (mode in _TRANSPARENCY_MODES and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, _WHITE)
            rgb = np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
        elif mode.startswith("I;16") or mode == "I":
            grey = np.asarray(image).astype(np.int64)
            grey = (np.clip(grey, 0, 65535) + 128) // 257  # 0..65535 -> 0..255, rounded
            rgb = np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
        elif mode == "F":
            grey = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0,
                                 neginf=0.0)
            if grey.size and grey.min() >= 0.0 and grey.max() <= 1.0:
                grey = grey * 255.0
            grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
            rgb = np.repeat(grey[:, :, None], 3, axis=2)
        elif mode == "RGB":
            rgb = np.asarray(image)
        else:  # L, 1, P, CMYK, YCbCr, LAB, HSV, ...
            rgb = np.asarray(image.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - Pillow raises ValueError for unsupported conversions
        raise ImageError(f"{source}: unsupported colour mode {mode!r} ({_describe(exc)})") from None
    if rgb.dtype != np.uint8 or not rgb.flags.c_contiguous or not rgb.flags.writeable:
        # np.asarray(PIL image) is read-only; callers may draw on or normalise the result in place.
        rgb = np.array(rgb, dtype=np.uint8, order="C")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"{source}: unsupported colour mode {mode!r} (decoded shape {rgb.shape})")
    return rgb
