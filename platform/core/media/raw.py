"""Camera RAW files (DNG, CR2/CR3, NEF, ARW, RAF, ORF, ...) -> RGB, through rawpy (LibRaw).

Which pixels are used
---------------------
A RAW holds the sensor data and, usually, an embedded preview the camera rendered (a JPEG or
an RGB bitmap). The preview is what the photographer saw on the camera, costs no demosaicing
and, on most cameras, is full-size or at least 1-2 MP. :func:`decode_raw` therefore:

1. opens the container (header only) and reads the sensor size;
2. extracts the preview and uses it when its long side is at least
   ``min(preview_min_side, sensor long side / 2)`` px, i.e. when it is at least as large as
   the half-size demosaic would be, or large enough for faces anyway
   (:data:`DEFAULT_PREVIEW_MIN_SIDE`); decoder ``"rawpy-preview"``;
3. otherwise demosaics the sensor data at half size (LibRaw ``half_size``: each 2x2 Bayer cell
   becomes one pixel, no interpolation, 4x less memory than full size) with the camera's white
   balance; decoder ``"rawpy-half"``.

Which one was used is returned (:class:`facenet_platform.core.images.StillImage`\\ ``.decoder``)
and lands in the faces table.

Bounds
------
The sensor is unpacked only on the demosaic path, and only when ``width * height`` of the
sensor is within ``max_pixels`` (the same limit as every other image; a 200-megapixel RAW with
a usable preview still decodes, from the preview, without unpacking 400 MB of sensor data). A
JPEG preview goes through :func:`facenet_platform.core.images.decode_still` with the same
limit. LibRaw's own allocation limit stays on.

Orientation: the preview gets LibRaw's ``flip`` (the camera's orientation) unless the preview
JPEG carries its own EXIF orientation; LibRaw applies ``flip`` to the demosaiced image itself.
"""

from __future__ import annotations

import io
import logging

import numpy as np

from facenet_platform.core.errors import (ImageError, ImageTooLargeError, MissingDecoderError)

__all__ = ["DEFAULT_PREVIEW_MIN_SIDE", "decode_raw", "raw_available"]

logger = logging.getLogger(__name__)

#: An embedded preview whose long side reaches this (px) is always large enough.
DEFAULT_PREVIEW_MIN_SIDE: int = 1024

# LibRaw flip -> EXIF orientation (0: none declared).
_FLIP_TO_EXIF = {0: 0, 3: 3, 5: 8, 6: 6}


def raw_available() -> bool:
    """Whether rawpy is importable."""
    try:
        import rawpy  # noqa: F401
    except ImportError:
        return False
    return True


def _apply_flip(image: np.ndarray, flip: int) -> np.ndarray:
    if flip == 3:
        image = image[::-1, ::-1]
    elif flip == 6:  # rotate 90 degrees clockwise to display
        image = np.rot90(image, -1)
    elif flip == 5:  # rotate 90 degrees counter-clockwise to display
        image = np.rot90(image, 1)
    return np.ascontiguousarray(image)


def _libraw_error(exc: Exception, source: str, fmt: str) -> ImageError:
    import rawpy

    name = type(exc).__name__
    text = " ".join(str(exc).split()).strip("b'\"")
    if isinstance(exc, MemoryError) or name == "LibRawTooBigError":
        return ImageTooLargeError(f"{source}: {fmt} RAW too large to decode ({text or name})")
    if isinstance(exc, rawpy.LibRawFileUnsupportedError):
        return ImageError(f"{source}: not a RAW file LibRaw can read ({fmt}: {text or name})")
    if isinstance(exc, (rawpy.LibRawIOError, EOFError)) or "eof" in text.lower() or \
            "truncat" in text.lower():
        return ImageError(f"{source}: {fmt} RAW data is truncated ({text or name})")
    return ImageError(f"{source}: corrupt {fmt} RAW data ({name}: {text})")


def decode_raw(data: bytes, *, source: str = "<bytes>", max_pixels: int | None = None,
               format: str = "RAW", preview_min_side: int | None = None):
    """Decode a camera RAW file into ``(H, W, 3) uint8`` RGB (see the module docstring).

    Args:
        data: the file's bytes.
        source: name used in error messages.
        max_pixels: pixel limit (``None``: :func:`facenet_platform.core.images.max_pixels_from_env`).
        format: the container name from :func:`facenet_platform.core.media.sniff.sniff`.
        preview_min_side: long side (px) from which the embedded preview is always used;
            ``None`` means :data:`DEFAULT_PREVIEW_MIN_SIDE`.

    Returns:
        :class:`facenet_platform.core.images.StillImage` with decoder ``"rawpy-preview"`` or
        ``"rawpy-half"`` and the camera's orientation.

    Raises:
        MissingDecoderError: rawpy is not installed (``media`` extra).
        ImageTooLargeError: the sensor (demosaic path) or the preview exceeds ``max_pixels``.
        ImageError: not a RAW LibRaw reads, truncated or corrupt.
    """
    from facenet_platform.core.images import StillImage, _resolve_limit, _too_large

    try:
        import rawpy
    except ImportError:
        raise MissingDecoderError(
            f"{source}: {format} RAW needs rawpy: pip install 'facenet-platform[media]'") from None
    limit = _resolve_limit(max_pixels)
    min_side = DEFAULT_PREVIEW_MIN_SIDE if preview_min_side is None else int(preview_min_side)
    raw = rawpy.RawPy()
    try:
        try:
            raw.open_buffer(io.BytesIO(bytes(data)))
            sizes = raw.sizes
        except Exception as exc:  # noqa: BLE001 - LibRawError subclasses, MemoryError
            raise _libraw_error(exc, source, format) from None
        flip = int(sizes.flip)
        width, height = int(sizes.width), int(sizes.height)
        if width <= 0 or height <= 0:
            raise ImageError(f"{source}: not a readable {format} RAW (declares {width}x{height})")
        wanted = min(min_side, max(width, height) // 2)

        preview = _preview(raw, source, limit)
        if preview is not None:
            image, has_own_orientation = preview
            if max(image.shape[:2]) >= wanted:
                orientation = _FLIP_TO_EXIF.get(flip, 0)
                if not has_own_orientation:
                    image = _apply_flip(image, flip)
                else:
                    orientation = has_own_orientation
                logger.debug("%s: %s preview %dx%d used (sensor %dx%d)", source, format,
                             image.shape[1], image.shape[0], width, height)
                return StillImage(np.ascontiguousarray(image, np.uint8), format,
                                  "rawpy-preview", orientation)
            logger.debug("%s: %s preview %dx%d smaller than %d px; demosaicing", source, format,
                         image.shape[1], image.shape[0], wanted)

        raw_w, raw_h = int(sizes.raw_width), int(sizes.raw_height)
        if max(width * height, raw_w * raw_h) > limit:
            raise _too_large(source, max(width, raw_w), max(height, raw_h), limit)
        try:
            raw.unpack()
            rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
        except Exception as exc:  # noqa: BLE001
            raise _libraw_error(exc, source, format) from None
        rgb = np.ascontiguousarray(rgb, np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ImageError(f"{source}: {format} RAW demosaiced to shape {rgb.shape}, not RGB")
        return StillImage(rgb, format, "rawpy-half", _FLIP_TO_EXIF.get(flip, 0))
    finally:
        raw.close()


def _preview(raw, source: str, limit: int) -> tuple[np.ndarray, int] | None:
    """The embedded preview as RGB and the EXIF orientation its JPEG declares (0: none), or
    None when the file has no usable preview."""
    import rawpy

    from facenet_platform.core.images import decode_still

    try:
        thumb = raw.extract_thumb()
    except Exception as exc:  # noqa: BLE001 - no preview, or an unsupported preview format
        logger.debug("%s: no usable RAW preview (%s)", source, type(exc).__name__)
        return None
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:
            still = decode_still(bytes(thumb.data), source=f"{source} (preview)", max_pixels=limit)
            return still.image, still.orientation if still.orientation > 1 else 0
        image = np.asarray(thumb.data)
        if image.size > 3 * limit:
            raise ImageTooLargeError(f"{source}: RAW preview of {image.shape} exceeds "
                                     f"the limit of {limit:,} pixels")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            return None
        if image.dtype != np.uint8:
            image = (image.astype(np.float64) / max(float(image.max()), 1.0) * 255).astype(np.uint8)
        return image, 0
    except ImageTooLargeError:
        raise
    except ImageError as exc:
        logger.debug("%s: unreadable RAW preview, demosaicing instead (%s)", source, exc)
        return None
