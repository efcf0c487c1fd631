"""One call for any supported file: :func:`decode_media` -> :class:`DecodedMedia` (1+ frames).

Still images (JPEG, PNG, HEIF, AVIF, RAW, ...) go through
:func:`facenet_platform.core.images.decode_still`, the entry point for still images; videos
through :func:`facenet_platform.core.media.video.decode_video`; animated GIF/WebP/PNG through
:func:`facenet_platform.core.media.animated.decode_animation`. The type always comes from the
magic bytes.
"""

from __future__ import annotations

from facenet_platform.core.errors import UnsupportedMediaError
from facenet_platform.core.media.frames import DecodedMedia, Frame, SamplingOptions
from facenet_platform.core.media.sniff import sniff

__all__ = ["decode_media"]

_ANIMATABLE = frozenset({"GIF", "WEBP", "PNG"})


def decode_media(data: bytes, *, source: str = "<bytes>", max_pixels: int | None = None,
                 options: SamplingOptions | None = None,
                 raw_preview_min_side: int | None = None) -> DecodedMedia:
    """Decode any supported file into one or more RGB frames.

    Args:
        data: the file's bytes.
        source: name used in error messages (its extension only breaks TIFF/RAW ties).
        max_pixels: limit on one image's or frame's ``width * height``.
        options: frame sampling for videos and animations.
        raw_preview_min_side: see :func:`facenet_platform.core.media.raw.decode_raw`.

    Returns:
        :class:`DecodedMedia`; ``frames`` is never empty.

    Raises:
        ImageError and its subclasses (``ImageTooLargeError``, ``UnsupportedMediaError``,
        ``MissingDecoderError``, ``MediaDecodeTimeoutError``) with a one-line reason.
    """
    from facenet_platform.core.images import (_check_bytes, _open_checked, _resolve_limit,
                                              decode_still)

    limit = _resolve_limit(max_pixels)
    _check_bytes(data, source)
    kind = sniff(data, source)
    if kind.kind == "video":
        from facenet_platform.core.media.video import decode_video

        return decode_video(data, source=source, max_pixels=limit, options=options,
                            format=kind.format)
    if kind.kind == "other":
        raise UnsupportedMediaError(f"{source}: not a photo or a video (the content is "
                                    f"{kind.format} data, whatever the name says)")
    if kind.format in _ANIMATABLE:
        from facenet_platform.core.media.animated import decode_animation, is_animated

        image = _open_checked(data, source, limit)
        try:
            if is_animated(image):
                return decode_animation(image, source=source, format=kind.format,
                                        options=options)
        finally:
            image.close()
    still = decode_still(data, source=source, max_pixels=limit,
                         raw_preview_min_side=raw_preview_min_side)
    return DecodedMedia("raw" if kind.kind == "raw" else "image", still.format, still.decoder,
                        still.orientation, [Frame(still.image, None, None, "still")],
                        width=still.image.shape[1], height=still.image.shape[0])
