"""core/media decoders on generated files: HEIC, AVIF, DNG, videos, animated images, and the
broken or hostile versions of each. Faces found in every decoded file equal the source's."""

from __future__ import annotations

import io
import time
import zipfile
from fractions import Fraction

import numpy as np
import pytest

from facenet_platform.core.errors import (ImageError, ImageTooLargeError, MissingDecoderError,
                                          UnsupportedMediaError)
from facenet_platform.core.images import decode_image, decode_still, probe_image
from facenet_platform.core.media import SamplingOptions, decode_media, sniff
from facenet_platform.core.media.writers import (animated_bytes, dng_bytes, encode_pillow,
                                                 video_bytes)

pytest.importorskip("pillow_heif")
pytest.importorskip("rawpy")
pytest.importorskip("av")
pytest.importorskip("tifffile")


@pytest.fixture(scope="module")
def detector():
    from facenet_platform.core.detection import FaceDetector

    return FaceDetector(num_threads=1)


@pytest.fixture(scope="module")
def portrait(astronaut) -> np.ndarray:
    """Astronaut cropped to a non-square 512 x 384 so that any wrong rotation shows."""
    return np.ascontiguousarray(astronaut[:, 64:448])


@pytest.fixture(scope="module")
def heic(portrait) -> bytes:
    """The portrait as HEIC (x265 encoding takes seconds on a busy machine: made once)."""
    return encode_pillow(portrait, "HEIF")


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    from skimage import data

    c = data.chelsea()  # 300 x 451, no human face
    out = np.zeros((512, 384, 3), np.uint8)
    out[:300, :384] = c[:, :384]
    return out


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_same_faces(detector, source: np.ndarray, decoded: np.ndarray, scale: float = 1.0,
                      min_iou: float = 0.8) -> None:
    """The decoded image's faces are the source's: same count, boxes overlapping >= min_iou."""
    want, got = detector.detect([source, decoded])
    assert len(want) >= 1
    assert len(got) == len(want), (len(got), len(want))
    for a, b in zip(want.boxes, got.boxes):
        assert _iou(a * scale, b) >= min_iou, (a * scale, b)


# --------------------------------------------------------------------------------------------
# sniffing


def test_sniff_names_containers_by_content(portrait, heic) -> None:
    jpeg = encode_pillow(portrait, "JPEG")
    assert sniff(jpeg, "x.png").format == "JPEG"
    assert sniff(heic, "x.jpg") == sniff(b"\0\0\0\x18ftypheic" + b"\0" * 12)
    assert sniff(encode_pillow(portrait, "AVIF")).format == "AVIF"
    assert sniff(dng_bytes(portrait[:64, :64]), "x.tif").format == "DNG"
    tiff = encode_pillow(portrait, "TIFF")
    assert sniff(tiff, "x.tif").format == "TIFF" and sniff(tiff, "x.tif").kind == "image"
    tiny = [np.ascontiguousarray(portrait[::8, ::8])] * 2
    assert sniff(video_bytes(tiny, format="mp4")).format == "MP4"
    assert sniff(video_bytes(tiny, format="mov")).format == "MOV"
    assert sniff(video_bytes(tiny, format="matroska")).format == "MKV"
    assert sniff(video_bytes(tiny, format="webm", codec="libvpx")).format == "WEBM"
    assert sniff(video_bytes(tiny, format="avi", codec="mpeg4")).format == "AVI"
    assert sniff(b"PK\x03\x04" + b"\0" * 40, "bomb.mp4") .kind == "other"
    assert sniff(b"%PDF-1.7\n", "x.jpg").format == "PDF"
    assert sniff(b"abc").kind == "unknown"


# --------------------------------------------------------------------------------------------
# HEIC / AVIF


@pytest.mark.parametrize("fmt,orientation", [("HEIF", 6), ("AVIF", None), ("AVIF", 6),
                                             ("AVIF", 3), ("AVIF", 8)])
def test_heif_avif_orientation_applied(fmt, orientation, portrait) -> None:
    # store the pixels as a camera would (turned), with the tag that turns them back
    turn = {None: 0, 6: 1, 3: 2, 8: 3}[orientation]  # counter-clockwise quarter turns stored
    stored = np.ascontiguousarray(np.rot90(portrait, turn))
    still = decode_still(encode_pillow(stored, fmt, orientation=orientation, quality=92))
    assert still.format == fmt
    assert still.decoder == ("pillow-heif" if fmt == "HEIF" else "pillow")
    assert still.image.shape == portrait.shape
    assert np.abs(still.image.astype(int) - portrait).mean() < 6
    assert still.orientation == (orientation or 0)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heif_avif_faces_equal_source(fmt, detector, portrait, heic) -> None:
    data = heic if fmt == "HEIF" else encode_pillow(portrait, fmt)
    assert_same_faces(detector, portrait, decode_image(data))


def test_heif_named_jpg_decodes_and_probe_reads_size(portrait, heic) -> None:
    data = heic
    assert decode_image(data, source="IMG_0001.JPG").shape == portrait.shape
    info = probe_image(data)
    assert (info.width, info.height, info.format) == (384, 512, "HEIF")


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heif_avif_truncated_and_corrupt(fmt, portrait, heic) -> None:
    data = heic if fmt == "HEIF" else encode_pillow(portrait, fmt)
    with pytest.raises(ImageError, match="x.heic"):
        decode_image(data[: len(data) // 2], source="x.heic")
    corrupt = bytearray(data)
    corrupt[len(data) // 2: len(data) // 2 + 2000] = b"\xff" * 2000
    try:
        image = decode_image(bytes(corrupt))  # codecs may conceal damage in the pixels...
        assert image.shape == portrait.shape
    except ImageError:  # ...or report it; never another exception
        pass


def test_heif_declaring_a_huge_grid_is_refused_before_decoding(heic) -> None:
    data = bytearray(heic)
    at = data.find(b"ispe")
    assert at > 0
    # ispe: version/flags (4 bytes), width, height (big-endian u32)
    data[at + 8: at + 16] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")
    start = time.monotonic()
    with pytest.raises(ImageError):  # too large (ours), or refused by libheif's own limits
        decode_image(bytes(data), source="grid.heic")
    assert time.monotonic() - start < 5


def test_heif_over_the_pixel_limit(heic) -> None:
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        decode_image(heic, max_pixels=100_000)


def test_missing_heif_decoder_is_a_specific_error(monkeypatch, heic) -> None:
    from facenet_platform.core.media import heif

    data = heic
    monkeypatch.setattr(heif, "heif_available", lambda: False)
    with pytest.raises(MissingDecoderError, match=r"facenet-platform\[media\]"):
        decode_image(data, source="a.heic")


# --------------------------------------------------------------------------------------------
# RAW


def test_dng_with_large_preview_uses_the_preview(detector, portrait) -> None:
    still = decode_still(dng_bytes(portrait, preview=portrait), raw_preview_min_side=256)
    assert (still.format, still.decoder) == ("DNG", "rawpy-preview")
    assert np.array_equal(still.image, portrait)
    assert_same_faces(detector, portrait, still.image)


def test_dng_with_small_preview_is_demosaiced(detector, portrait) -> None:
    data = dng_bytes(portrait, preview=np.ascontiguousarray(portrait[::8, ::8]))
    still = decode_still(data)
    assert (still.format, still.decoder) == ("DNG", "rawpy-half")
    assert still.image.shape == (256, 192, 3)  # half size
    assert np.abs(still.image.astype(int) - portrait[::2, ::2]).mean() < 20
    assert_same_faces(detector, portrait, still.image, scale=0.5, min_iou=0.7)


def test_dng_camera_orientation_applied_to_preview_and_demosaic(portrait) -> None:
    stored = np.ascontiguousarray(np.rot90(portrait, 1))  # camera held sideways
    with_preview = decode_still(dng_bytes(stored, preview=stored, orientation=6),
                                raw_preview_min_side=64)
    assert with_preview.decoder == "rawpy-preview" and with_preview.orientation == 6
    assert np.array_equal(with_preview.image, portrait)
    demosaiced = decode_still(dng_bytes(stored, orientation=6))
    assert demosaiced.decoder == "rawpy-half" and demosaiced.orientation == 6
    assert demosaiced.image.shape == (256, 192, 3)


def test_raw_sensor_over_the_pixel_limit_is_refused_before_unpacking(portrait) -> None:
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        decode_still(dng_bytes(portrait), max_pixels=50_000)
    # a usable preview within the limit still decodes without touching the sensor data
    still = decode_still(dng_bytes(portrait, preview=portrait[::2, ::2].copy()),
                         max_pixels=150_000)
    assert still.decoder == "rawpy-preview"


def test_raw_declaring_200_megapixels_is_refused_before_unpacking() -> None:
    import struct

    import tifffile

    data = bytearray(dng_bytes(np.zeros((64, 64, 3), np.uint8)))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        for code, value in ((256, 16384), (257, 12288)):  # ImageWidth, ImageLength
            tag = tif.pages[0].tags[code]
            fmt = "<I" if tag.dtype == 4 else "<H"
            data[tag.valueoffset: tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    start = time.monotonic()
    with pytest.raises(ImageTooLargeError, match="201,326,592 pixels"):
        decode_still(bytes(data), source="huge.dng")
    assert time.monotonic() - start < 2


def test_raw_truncated_and_garbage(portrait) -> None:
    data = dng_bytes(portrait)
    with pytest.raises(ImageError, match="x.dng"):
        decode_image(data[: len(data) // 3], source="x.dng")
    junk = b"II*\x00" + np.random.default_rng(0).bytes(5000)
    with pytest.raises(ImageError):
        decode_image(junk, source="junk.nef")


# --------------------------------------------------------------------------------------------
# video


@pytest.fixture(scope="module")
def clip(portrait, cat) -> bytes:
    """5 s at 10 fps: 2.5 s astronaut, then a cut to a cat."""
    return video_bytes([portrait] * 25 + [cat] * 25, fps=10)


def test_video_samples_interval_and_scene_change(clip, detector, portrait) -> None:
    media = decode_media(clip, source="clip.mp4", options=SamplingOptions(interval_s=2.0))
    assert (media.kind, media.format, media.decoder, media.complete) == ("video", "MP4", "pyav", True)
    assert media.duration_s == pytest.approx(5.0, abs=0.2)
    got = [(f.time_s, f.index, f.reason) for f in media.frames]
    assert got == [(0.0, 0, "interval"), (2.0, 20, "interval"), (2.5, 25, "scene"),
                   (4.0, 40, "interval")]
    faces = detector.detect([f.image for f in media.frames])
    assert [len(d) for d in faces] == [1, 1, 0, 0]
    assert_same_faces(detector, portrait, media.frames[0].image, min_iou=0.75)


@pytest.mark.parametrize("fmt,codec", [("mov", "libx264"), ("matroska", "libx264"),
                                       ("webm", "libvpx"), ("avi", "mpeg4")])
def test_video_containers(fmt, codec, portrait) -> None:
    small = np.ascontiguousarray(portrait[::4, ::4])
    data = video_bytes([small] * 6, fps=5, format=fmt, codec=codec)
    media = decode_media(data, source=f"v.{fmt}")
    assert media.kind == "video" and media.frames[0].image.shape == small.shape
    assert np.abs(media.frames[0].image.astype(int) - small).mean() < 16


def test_video_frames_are_bounded_and_downscaled(portrait) -> None:
    data = video_bytes([portrait] * 40, fps=10)
    media = decode_media(data, options=SamplingOptions(interval_s=0.1, max_frames=5,
                                                       max_side=200))
    # 4 s at one frame per 0.1 s would be 40: the interval widens to 4 / (0.75 * 5) s
    assert 4 <= len(media.frames) <= 5
    assert max(media.frames[0].image.shape[:2]) == 200


def test_two_hour_video_is_sampled_by_seeking_in_bounded_time(portrait) -> None:
    small = np.ascontiguousarray(portrait[::4, ::4])
    data = video_bytes([small] * 120, fps=Fraction(1, 60))  # one frame a minute, 2 hours
    start = time.monotonic()
    media = decode_media(data, source="long.mp4", options=SamplingOptions(max_frames=12))
    assert time.monotonic() - start < 10
    assert media.duration_s == pytest.approx(7200, rel=0.01)
    assert len(media.frames) == 12 and {f.reason for f in media.frames} == {"seek"}
    times = [f.time_s for f in media.frames]
    assert times == sorted(times) and times[0] < 600 and times[-1] > 6600


def test_video_time_budget(portrait) -> None:
    data = video_bytes([portrait] * 30, fps=10)
    media = decode_media(data, options=SamplingOptions(interval_s=0.1, time_budget_s=1e-6))
    assert not media.complete and len(media.frames) == 1


def test_zip_bomb_named_mp4_is_refused_without_inflating() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.bin", b"\0" * (50 * 1024 * 1024))  # 50 MB of zeros -> ~50 KB
    start = time.monotonic()
    with pytest.raises(UnsupportedMediaError, match="ZIP data"):
        decode_media(out.getvalue(), source="holiday.mp4")
    assert time.monotonic() - start < 1


def test_video_truncated_garbage_and_oversized(portrait) -> None:
    data = video_bytes([portrait] * 10, fps=10)
    with pytest.raises(ImageError, match="cut.mp4"):  # moov atom is at the end
        decode_media(data[: len(data) // 2], source="cut.mp4")
    with pytest.raises(ImageError):
        decode_media(data[:64] + np.random.default_rng(1).bytes(4000), source="junk.mp4")
    with pytest.raises(ImageTooLargeError):
        decode_media(data, max_pixels=10_000)
    with pytest.raises(UnsupportedMediaError, match="video"):
        decode_image(data, source="v.mp4")  # a still-image caller gets a clear refusal


# --------------------------------------------------------------------------------------------
# animated images and stills through decode_media


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_images_are_sampled_like_video(fmt, portrait, cat, detector) -> None:
    data = animated_bytes([portrait, portrait, portrait, cat, cat], format=fmt, duration_ms=1000)
    media = decode_media(data, source=f"a.{fmt.lower()}",
                         options=SamplingOptions(interval_s=2.0))
    assert (media.kind, media.decoder) == ("animation", "pillow-frames")
    assert [f.reason for f in media.frames][0] == "interval"
    assert media.frames[0].image.shape == portrait.shape
    kinds = [len(d) for d in detector.detect([f.image for f in media.frames])]
    assert kinds[0] == 1 and kinds[-1] == 0  # the astronaut first, the cat last
    assert any(f.reason == "scene" or f.time_s >= 3.0 for f in media.frames)
    # decode_image keeps giving the first frame
    assert decode_image(data).shape == portrait.shape


def test_still_image_through_decode_media(portrait) -> None:
    media = decode_media(encode_pillow(portrait, "JPEG", orientation=1))
    assert (media.kind, media.format, media.decoder, media.orientation) == ("image", "JPEG",
                                                                            "pillow", 1)
    assert len(media.frames) == 1 and media.frames[0].time_s is None
    raw = decode_media(dng_bytes(portrait))
    assert (raw.kind, raw.decoder) == ("raw", "rawpy-half")
