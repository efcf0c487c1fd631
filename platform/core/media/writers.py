"""Write an RGB image in each supported container: the fixtures of the tests and benchmarks.

Every function takes ``(H, W, 3) uint8`` RGB and returns the encoded bytes. HEIC needs
pillow-heif, videos need PyAV (both in the ``media`` extra), DNG needs ``tifffile`` (in the
``test`` extra). The DNG is a real one that LibRaw decodes: a linear RGGB Bayer mosaic
(``PhotometricInterpretation`` CFA, ``DNGVersion`` 1.4, ``ColorMatrix1`` = XYZ(D65) -> linear
sRGB so that LibRaw's colour pipeline gives back the source colours), with an optional embedded
RGB preview in IFD0 and the sensor data in a SubIFD, as cameras and Adobe's converter lay it out.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Sequence

import numpy as np

__all__ = ["animated_bytes", "dng_bytes", "encode_pillow", "video_bytes"]

_XYZ_TO_SRGB = np.array([[3.2406, -1.5372, -0.4986],
                         [-0.9689, 1.8758, 0.0415],
                         [0.0557, -0.2040, 1.0570]])


def encode_pillow(rgb: np.ndarray, format: str, *, orientation: int | None = None,
                  quality: int = 90, xmp: bytes | None = None) -> bytes:
    """``rgb`` encoded by Pillow (``"JPEG"``, ``"PNG"``, ``"WEBP"``, ``"AVIF"``, ``"HEIF"``...),
    with an EXIF Orientation tag when ``orientation`` is given (none at all otherwise) and an
    XMP packet when ``xmp`` is given (JPEG, PNG, WebP, TIFF, AVIF/HEIF)."""
    from PIL import Image

    if format.upper() in ("HEIF", "HEIC"):
        from facenet_platform.core.media.heif import ensure_heif

        ensure_heif()
        format = "HEIF"
    kwargs: dict = {}
    if format.upper() in ("JPEG", "WEBP", "AVIF", "HEIF"):
        kwargs["quality"] = quality
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = int(orientation)
        kwargs["exif"] = exif.tobytes()
    if xmp is not None:
        kwargs["xmp"] = xmp
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, format=format, **kwargs)
    return out.getvalue()


def _srational(values: Sequence[float]) -> list[int]:
    return [v for x in values for v in (int(round(x * 10000)), 10000)]


def dng_bytes(rgb: np.ndarray, *, preview: np.ndarray | None = None, orientation: int = 1,
              make: str = "TestCam", model: str = "TestCam One",
              taken_at: str | None = "2024:05:01 12:00:00") -> bytes:
    """A DNG whose sensor data is ``rgb``'s RGGB mosaic (16-bit linear), optionally with an RGB
    ``preview`` (any size) in IFD0 and capture metadata (Make, Model, DateTime)."""
    import tifffile

    h, w = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
    lin = rgb[:h, :w].astype(np.float64) / 255.0
    lin = np.where(lin <= 0.04045, lin / 12.92, ((lin + 0.055) / 1.055) ** 2.4)
    cfa = np.empty((h, w))
    cfa[0::2, 0::2] = lin[0::2, 0::2, 0]
    cfa[0::2, 1::2] = lin[0::2, 1::2, 1]
    cfa[1::2, 0::2] = lin[1::2, 0::2, 1]
    cfa[1::2, 1::2] = lin[1::2, 1::2, 2]
    cfa = np.round(cfa * 65535).astype(np.uint16)
    ifd0 = [
        (50706, "B", 4, (1, 4, 0, 0), True),            # DNGVersion
        (50708, "s", 0, f"{make} {model}", True),       # UniqueCameraModel
        (271, "s", 0, make, True), (272, "s", 0, model, True),
        (274, "H", 1, int(orientation), True),          # Orientation
        (50721, "2i", 9, _srational(_XYZ_TO_SRGB.ravel()), True),  # ColorMatrix1
        (50778, "H", 1, 21, True),                      # CalibrationIlluminant1: D65
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),     # AsShotNeutral
    ]
    if taken_at:
        ifd0.append((306, "s", 0, taken_at, True))      # DateTime
    raw_tags = [
        (33421, "H", 2, (2, 2), True),                  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),            # CFAPattern: RGGB
        (50717, "I", 1, 65535, True),                   # WhiteLevel
    ]
    out = io.BytesIO()
    with tifffile.TiffWriter(out) as tif:
        if preview is not None:
            tif.write(np.ascontiguousarray(preview), photometric="rgb", subfiletype=1, subifds=1,
                      extratags=ifd0, metadata=None)
            tif.write(cfa, photometric=32803, subfiletype=0, extratags=raw_tags, metadata=None)
        else:
            tif.write(cfa, photometric=32803, subfiletype=0, extratags=ifd0 + raw_tags,
                      metadata=None)
    return out.getvalue()


def video_bytes(frames: Sequence[np.ndarray], *, fps: float | Fraction = 10,
                format: str = "mp4", codec: str = "libx264") -> bytes:
    """``frames`` (same size, even width/height) encoded as a video with PyAV."""
    import av

    out = io.BytesIO()
    h, w = frames[0].shape[:2]
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1000)
    with av.open(out, mode="w", format=format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def animated_bytes(frames: Sequence[np.ndarray], *, format: str = "WEBP",
                   duration_ms: int = 500) -> bytes:
    """``frames`` as an animated WebP, GIF or PNG (GIF frames quantised with a fast octree)."""
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    if format.upper() == "GIF":
        images = [im.quantize(256, method=Image.Quantize.FASTOCTREE) for im in images]
    out = io.BytesIO()
    images[0].save(out, format=format, save_all=True, append_images=images[1:],
                   duration=duration_ms, loop=0)
    return out.getvalue()
