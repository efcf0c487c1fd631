"""Every file a photo library holds: HEIC/HEIF, AVIF, camera RAW, video, animated images,
sideways photos and XMP face regions.

| module | job |
| --- | --- |
| ``sniff`` | what a file is, from its magic bytes |
| ``heif`` | HEIF (pillow-heif) and AVIF registration with Pillow |
| ``raw`` | camera RAW: embedded preview or half-size demosaic (rawpy) |
| ``frames`` | sampled frames, the sampling rule, :class:`DecodedMedia` |
| ``video`` | videos through PyAV: scan or seek, bounded frames, memory and time |
| ``animated`` | animated GIF/WebP/PNG frames |
| ``decode`` | :func:`decode_media`: any file -> 1+ frames |
| ``rotation`` | sideways photos: retry detection on rotated copies |
| ``xmp`` | MWG face regions: read (in-file packet, sidecar), match to faces, write sidecars |
| ``pairing`` | RAW + JPEG of the same shot |

Still images keep :func:`facenet_platform.core.images.decode_image` as their entry point; the
list of supported types lives in :mod:`facenet_platform.core.images`.
"""

from facenet_platform.core.media.decode import decode_media
from facenet_platform.core.media.frames import DecodedMedia, Frame, SamplingOptions
from facenet_platform.core.media.sniff import MediaType, sniff

__all__ = ["DecodedMedia", "Frame", "MediaType", "SamplingOptions", "decode_media", "sniff"]
