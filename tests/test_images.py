"""Tests of facenet_platform.core.images: decoding every mode to RGB uint8, and bad inputs."""

from __future__ import annotations

import io
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from bad_inputs import (
    ALPHA_BORDER,
    BAD_INPUT_NAMES,
    DECODABLE,
    EXIF_MARKER,
    GOOD_SIZE,
    HUGE_SIZE,
    ORIENTATION_TAG,
    UNREADABLE,
    face_image,
    huge_header_png,
    write_bad_inputs,
    write_good_image,
)
from facenet_platform.core import images
from facenet_platform.core.errors import ConfigError, ImageError, ImageTooLargeError
from facenet_platform.core.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageInfo,
    decode_image,
    is_image_path,
    max_pixels_from_env,
    probe_image,
    read_image,
    read_image_bytes,
)

WIDTH, HEIGHT = GOOD_SIZE
GOOD_SHAPE = (HEIGHT, WIDTH, 3)


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_bad_inputs(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """The RGB source every generated image was made from, ``(HEIGHT, WIDTH, 3) uint8``."""
    return np.asarray(face_image(GOOD_SIZE))


@pytest.fixture(autouse=True)
def _isolated_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """No inherited FACENET_MAX_PIXELS; Pillow's global limit restored after each test."""
    monkeypatch.delenv(images.MAX_PIXELS_ENV, raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def _assert_rgb(array: np.ndarray, shape: tuple[int, int, int] = GOOD_SHAPE) -> None:
    assert isinstance(array, np.ndarray)
    assert array.shape == shape
    assert array.dtype == np.uint8
    assert array.flags.c_contiguous
    assert array.flags.writeable


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# the generator itself


def test_write_bad_inputs_writes_every_key(bad: dict[str, Path]) -> None:
    assert tuple(bad) == BAD_INPUT_NAMES
    assert all(path.is_file() for path in bad.values())
    assert bad["zero_byte"].stat().st_size == 0
    assert bad["non_image"].suffix == ".txt"
    assert bad["text_as_jpg"].suffix == ".jpg"


def test_huge_header_file_is_tiny_and_valid_png(bad: dict[str, Path]) -> None:
    data = bad["huge_header"].read_bytes()
    assert data == huge_header_png()
    assert len(data) < 1000
    assert data.startswith(b"\x89PNG\r\n\x1a\n")


def test_write_good_image(tmp_path: Path, face: np.ndarray) -> None:
    path = write_good_image(tmp_path / "good.png")
    np.testing.assert_array_equal(read_image(path), face)
    square = read_image(write_good_image(tmp_path / "square.jpg", size=96))
    _assert_rgb(square, (96, 96, 3))


# --------------------------------------------------------------------------------------------
# extensions and the pixel limit setting


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", True), ("a.JPEG", True), ("dir/a.png", True), ("a.webp", True),
        ("a.gif", True), ("a.bmp", True), ("a.tif", True), ("a.TIFF", True),
        ("a.txt", False), ("a.jpg.txt", False), ("jpg", False), ("a", False), (".png/a", False),
    ],
)
def test_is_image_path(name: str, expected: bool) -> None:
    assert is_image_path(name) is expected
    assert is_image_path(Path(name)) is expected


def test_image_extensions_are_lowercase_with_dot() -> None:
    from facenet_platform.core.images import MEDIA_EXTENSIONS, VIDEO_EXTENSIONS

    assert isinstance(IMAGE_EXTENSIONS, frozenset)
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".avif",
            ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf"} <= IMAGE_EXTENSIONS
    assert not IMAGE_EXTENSIONS & VIDEO_EXTENSIONS
    assert MEDIA_EXTENSIONS == IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in MEDIA_EXTENSIONS)


def test_max_pixels_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DEFAULT_MAX_PIXELS == 40_000_000
    assert max_pixels_from_env() == DEFAULT_MAX_PIXELS
    monkeypatch.setenv("FACENET_MAX_PIXELS", "123456")
    assert max_pixels_from_env() == 123456  # read at call time, not at import


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "1.5e6"])
def test_max_pixels_env_invalid(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("FACENET_MAX_PIXELS", raw)
    with pytest.raises(ConfigError, match="FACENET_MAX_PIXELS"):
        max_pixels_from_env()
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("max_pixels", [0, -1])
def test_invalid_max_pixels_argument(max_pixels: int) -> None:
    with pytest.raises(ConfigError, match="max_pixels"):
        decode_image(b"x", max_pixels=max_pixels)


# --------------------------------------------------------------------------------------------
# unreadable inputs


@pytest.mark.parametrize("key", UNREADABLE)
def test_unreadable_inputs_raise_image_error(bad: dict[str, Path], key: str) -> None:
    path = bad[key]
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert type(info.value) is ImageError
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    # The same through the bytes API, with the name given as source.
    with pytest.raises(ImageError, match=f"^{path.name}: "):
        decode_image(path.read_bytes(), source=path.name)


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("zero_byte", "file is empty (0 bytes)"),
        ("truncated", "image data is truncated"),
        ("corrupt", "not a readable image (cannot identify image file)"),
        ("text_as_jpg", "not a readable image (cannot identify image file)"),
        ("non_image", "not a readable image (cannot identify image file)"),
    ],
)
def test_unreadable_input_messages(bad: dict[str, Path], key: str, fragment: str) -> None:
    with pytest.raises(ImageError) as info:
        read_image(bad[key])
    assert str(info.value) == f"{bad[key]}: {fragment}"


@pytest.mark.parametrize("key", ["zero_byte", "corrupt", "text_as_jpg", "non_image"])
def test_probe_rejects_non_images(bad: dict[str, Path], key: str) -> None:
    with pytest.raises(ImageError, match=f"^{bad[key].name}: "):
        probe_image(bad[key].read_bytes(), source=bad[key].name)


def test_probe_reads_only_the_header_of_a_truncated_file(bad: dict[str, Path]) -> None:
    # The header survives the cut; only decoding notices the missing data.
    info = probe_image(bad["truncated"].read_bytes())
    assert info == ImageInfo(width=WIDTH, height=HEIGHT, format="JPEG")


@pytest.mark.parametrize("key", DECODABLE)
def test_probe_never_decodes_pixels(
    bad: dict[str, Path], key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    info = probe_image(bad[key].read_bytes(), source=key)
    assert info.pixels == WIDTH * HEIGHT
    assert info.format in {"PNG", "JPEG", "GIF"}


def test_truncated_images_are_not_loaded_leniently() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.95])
def test_cut_files_raise_only_image_error(fmt: str, fraction: float) -> None:
    """A file cut anywhere gives ImageError; never a raw Pillow/OS error, nor grey rows."""
    image = face_image((64, 80))
    if fmt == "GIF":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    data = _encode(image, fmt)
    cut = data[: max(1, int(len(data) * fraction))]
    with pytest.raises(ImageError) as info:
        decode_image(cut, source="cut")
    assert type(info.value) is ImageError
    assert str(info.value).startswith("cut: ")
    assert "\n" not in str(info.value)


def test_garbage_after_valid_png_header_raises_image_error() -> None:
    data = _encode(face_image((64, 80)), "PNG")
    corrupt = data[:60] + bytes(range(256)) * 8
    with pytest.raises(ImageError, match="^x.png: "):
        decode_image(corrupt, source="x.png")


@pytest.mark.parametrize("value", ["photo.jpg", Path("photo.jpg"), 42])
def test_decode_image_wants_bytes(value: object) -> None:
    with pytest.raises(TypeError):
        decode_image(value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# decodable odd inputs


@pytest.mark.parametrize("key", DECODABLE)
def test_decodable_inputs_give_rgb_uint8(bad: dict[str, Path], key: str, face: np.ndarray) -> None:
    rgb = read_image(bad[key])
    _assert_rgb(rgb)
    inner = np.s_[ALPHA_BORDER:-ALPHA_BORDER, EXIF_MARKER:-ALPHA_BORDER]
    if key in ("grayscale", "png16"):
        reference = np.asarray(Image.fromarray(face).convert("L").convert("RGB"))
    else:
        reference = face
    assert _mean_abs_diff(rgb[inner], reference[inner]) < 6.0, key


@pytest.mark.parametrize("key", DECODABLE)
def test_bytes_and_path_apis_agree(bad: dict[str, Path], key: str) -> None:
    np.testing.assert_array_equal(
        decode_image(bad[key].read_bytes(), source=key), read_image(bad[key])
    )


def test_alpha_is_composited_over_white(bad: dict[str, Path], face: np.ndarray) -> None:
    rgb = read_image(bad["png_alpha"])
    b = ALPHA_BORDER
    for border in (rgb[:b], rgb[-b:], rgb[:, :b], rgb[:, -b:]):
        assert (border == 255).all()  # the stored RGB there is black
    np.testing.assert_array_equal(rgb[b:-b, b:-b], face[b:-b, b:-b])


@pytest.mark.parametrize("alpha", [0, 128, 255])
def test_partial_alpha_blends_with_white(alpha: int) -> None:
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = alpha
    rgb = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    expected = np.array([200, 0, 0]) * alpha / 255 + 255 * (1 - alpha / 255)
    assert np.abs(rgb.astype(float) - expected).max() <= 1.0


def test_grayscale_has_equal_channels(bad: dict[str, Path]) -> None:
    rgb = read_image(bad["grayscale"])
    assert probe_image(bad["grayscale"].read_bytes()).format == "JPEG"
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 1], rgb[..., 2])


def test_png16_is_scaled_to_8_bit(bad: dict[str, Path], face: np.ndarray) -> None:
    with Image.open(bad["png16"]) as image:
        assert image.mode.startswith("I")  # really 16-bit on disk
        raw16 = np.asarray(image).astype(np.int64)
    assert raw16.max() > 255
    rgb = read_image(bad["png16"])
    grey = np.asarray(Image.fromarray(face).convert("L"))
    np.testing.assert_array_equal(rgb[..., 0], grey)  # written as grey * 257
    np.testing.assert_array_equal(rgb[..., 2], grey)


def test_cmyk_jpeg_is_converted(bad: dict[str, Path]) -> None:
    with Image.open(bad["cmyk"]) as image:
        assert image.mode == "CMYK"
    _assert_rgb(read_image(bad["cmyk"]))


def test_palette_gif_is_converted(bad: dict[str, Path]) -> None:
    with Image.open(bad["palette"]) as image:
        assert image.mode == "P"
    assert probe_image(bad["palette"].read_bytes()).format == "GIF"


def test_exif_rotation_is_applied(bad: dict[str, Path], face: np.ndarray) -> None:
    data = bad["exif_rotated"].read_bytes()
    stored = probe_image(data)
    assert (stored.width, stored.height) == (HEIGHT, WIDTH)  # stored sideways
    rgb = decode_image(data)
    assert rgb.shape[:2] == (stored.width, stored.height)  # width and height swapped
    _assert_rgb(rgb)
    marker = rgb[4 : EXIF_MARKER - 4, 4 : EXIF_MARKER - 4].reshape(-1, 3).mean(axis=0)
    assert marker[0] > 200 and marker[1] < 50 and marker[2] < 50  # red square top-left
    assert _mean_abs_diff(rgb[EXIF_MARKER:], face[EXIF_MARKER:]) < 6.0


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_every_exif_orientation(orientation: int, face: np.ndarray) -> None:
    """Store the face as a camera would for each orientation; decoding must undo it."""
    upright = Image.fromarray(face)
    # The inverse of what exif_transpose applies for each orientation.
    to_stored = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = upright if to_stored is None else upright.transpose(to_stored)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    rgb = decode_image(_encode(stored, "PNG", exif=exif.tobytes()))
    np.testing.assert_array_equal(rgb, face)


def test_invalid_exif_orientation_is_ignored(face: np.ndarray) -> None:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 42
    rgb = decode_image(_encode(Image.fromarray(face), "PNG", exif=exif.tobytes()))
    np.testing.assert_array_equal(rgb, face)


def _odd_image(kind: str) -> tuple[bytes, np.ndarray]:
    """(encoded bytes, expected RGB) for modes and formats beyond the generator's files."""
    grey = np.tile(np.arange(0, 240, 4, dtype=np.uint8), (10, 1))  # 10 x 60 ramp
    rgb = np.dstack([grey, grey[:, ::-1], np.full_like(grey, 90)])
    as_rgb = lambda g: np.repeat(g[..., None], 3, axis=2)  # noqa: E731
    if kind == "L-png":
        return _encode(Image.fromarray(grey), "PNG"), as_rgb(grey)
    if kind == "1-png":
        bits = grey > 100
        return _encode(Image.fromarray(bits), "PNG"), as_rgb(bits.astype(np.uint8) * 255)
    if kind == "LA-png":
        la = np.dstack([grey, np.where(np.arange(60) < 30, 0, 255).astype(np.uint8)[None].repeat(10, 0)])
        expected = as_rgb(np.where(la[..., 1] == 0, 255, grey).astype(np.uint8))
        return _encode(Image.fromarray(la, "LA"), "PNG"), expected
    if kind in ("P-transparent-png", "P-transparent-gif"):
        indices = (np.arange(60)[None].repeat(10, 0) // 20).astype(np.uint8)  # 0, 1, 2 bands
        image = Image.fromarray(indices, "P")
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (253 * 3))
        expected = np.zeros((10, 60, 3), np.uint8)
        expected[:, :20] = 255  # index 0 is transparent -> white (its colour is black)
        expected[:, 20:40] = (255, 0, 0)
        expected[:, 40:] = (0, 0, 255)
        fmt = "PNG" if kind.endswith("png") else "GIF"
        return _encode(image, fmt, transparency=0), expected
    if kind == "RGB-transparent-png":
        image = Image.fromarray(rgb)
        expected = rgb.copy()
        expected[:, 0] = 255  # column 0 is (0, 236, 90): the transparent colour
        return _encode(image, "PNG", transparency=(0, 236, 90)), expected
    if kind == "I-tiff":
        values = grey.astype(np.int32) * 257
        return _encode(Image.fromarray(values, "I"), "TIFF"), as_rgb(grey)
    if kind == "F-unit-tiff":
        values = grey.astype(np.float32) / 255.0
        return _encode(Image.fromarray(values, "F"), "TIFF"), as_rgb(grey)
    if kind == "F-255-tiff":
        values = grey.astype(np.float32) + 0.2
        return _encode(Image.fromarray(values, "F"), "TIFF"), as_rgb(grey)
    if kind == "RGB-bmp":
        return _encode(Image.fromarray(rgb), "BMP"), rgb
    if kind == "RGB-tiff":
        return _encode(Image.fromarray(rgb), "TIFF"), rgb
    if kind == "RGBA-webp-lossless":
        rgba = np.dstack([rgb, np.full_like(grey, 255)])
        rgba[:, :8, 3] = 0
        expected = rgb.copy()
        expected[:, :8] = 255
        return _encode(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True, exact=True), expected
    if kind == "YCbCr-tiff":
        ycc = Image.fromarray(rgb).convert("YCbCr")
        return _encode(ycc, "TIFF"), np.asarray(ycc.convert("RGB"))
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "L-png", "1-png", "LA-png", "P-transparent-png", "P-transparent-gif",
        "RGB-transparent-png", "I-tiff", "F-unit-tiff", "F-255-tiff", "RGB-bmp", "RGB-tiff",
        "RGBA-webp-lossless", "YCbCr-tiff",
    ],
)
def test_every_mode_becomes_rgb(kind: str) -> None:
    data, expected = _odd_image(kind)
    rgb = decode_image(data, source=kind)
    _assert_rgb(rgb, expected.shape)
    assert np.abs(rgb.astype(int) - expected.astype(int)).max() <= 1, kind


def _frames(count: int = 3) -> list[Image.Image]:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    return [Image.new("RGB", (40, 30), colours[i % 3]) for i in range(count)]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])  # GIF, animated WebP, APNG
def test_animated_images_give_the_first_frame(fmt: str) -> None:
    first, *rest = _frames()
    params: dict[str, object] = {"save_all": True, "append_images": rest, "duration": 100}
    if fmt == "WEBP":
        params["lossless"] = True
    data = _encode(first, fmt, **params)
    with Image.open(io.BytesIO(data)) as image:
        assert getattr(image, "n_frames", 1) == 3
    rgb = decode_image(data)
    _assert_rgb(rgb, (30, 40, 3))
    assert (np.abs(rgb.astype(int) - [255, 0, 0]) <= 2).all()


# --------------------------------------------------------------------------------------------
# the pixel limit (decompression-bomb guard)


@pytest.mark.parametrize("api", ["probe", "decode", "read"])
def test_huge_header_raises_quickly_without_decoding(
    bad: dict[str, Path], api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    path = bad["huge_header"]
    call = {
        "probe": lambda: probe_image(path.read_bytes(), source=str(path)),
        "decode": lambda: decode_image(path.read_bytes(), source=str(path)),
        "read": lambda: read_image(path),
    }[api]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape either
        with pytest.raises(ImageTooLargeError) as info:
            call()
    assert time.perf_counter() - start < 2.0
    width, height = HUGE_SIZE
    assert str(info.value) == (
        f"{path}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
        f"{DEFAULT_MAX_PIXELS:,} (set FACENET_MAX_PIXELS to raise it)"
    )
    assert isinstance(info.value, ImageError) and isinstance(info.value, ValueError)


def test_huge_header_uses_little_memory(bad: dict[str, Path]) -> None:
    resource = pytest.importorskip("resource")
    data = bad["huge_header"].read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for _ in range(20):
        with pytest.raises(ImageTooLargeError):
            decode_image(data)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 50  # one decoded 20000x20000 frame would be 381 MiB


def test_huge_header_within_a_raised_limit_probes(
    bad: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACENET_MAX_PIXELS", "400000000")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = probe_image(bad["huge_header"].read_bytes())
    assert info == ImageInfo(width=20000, height=20000, format="PNG")
    assert info.pixels == 400_000_000


@pytest.mark.parametrize("how", ["env", "argument"])
def test_limit_below_image_size_raises(
    bad: dict[str, Path], how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = bad["grayscale"]
    kwargs: dict[str, int] = {}
    if how == "env":
        monkeypatch.setenv("FACENET_MAX_PIXELS", "1000")
    else:
        kwargs["max_pixels"] = 1000
    for call in (lambda: read_image(path, **kwargs),
                 lambda: probe_image(path.read_bytes(), source=str(path), **kwargs)):
        with pytest.raises(ImageTooLargeError) as info:
            call()
        assert str(info.value) == (
            f"{path}: {WIDTH}x{HEIGHT} = {WIDTH * HEIGHT:,} pixels exceeds the limit of 1,000 "
            "(set FACENET_MAX_PIXELS to raise it)"
        )


def test_argument_overrides_env(bad: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACENET_MAX_PIXELS", "1000")
    _assert_rgb(read_image(bad["grayscale"], max_pixels=WIDTH * HEIGHT))  # limit is inclusive
    with pytest.raises(ImageTooLargeError):
        read_image(bad["grayscale"], max_pixels=WIDTH * HEIGHT - 1)


@pytest.mark.parametrize(
    ("pillow_limit", "our_limit"),
    [
        (20_000, 10_000),  # image between Pillow's warning and error thresholds
        (10_000, 5_000),  # image above Pillow's error threshold (2 x its limit)
    ],
)
def test_pillow_bomb_guard_becomes_image_too_large(
    bad: dict[str, Path], monkeypatch: pytest.MonkeyPatch, pillow_limit: int, our_limit: int
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLargeError, match=f"{WIDTH}x{HEIGHT} = 32,000 pixels"):
            read_image(bad["grayscale"], max_pixels=our_limit)


def test_pillow_limit_below_ours_does_not_refuse(
    bad: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_rgb(read_image(bad["palette"]))


# --------------------------------------------------------------------------------------------
# reading files


def test_read_image_bytes_round_trip(bad: dict[str, Path]) -> None:
    assert read_image_bytes(bad["cmyk"]) == bad["cmyk"].read_bytes()
    assert read_image_bytes(str(bad["zero_byte"])) == b""


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda tmp: tmp / "missing.jpg", "no such file"),
        (lambda tmp: tmp / "no_dir" / "missing.jpg", "no such file"),
        (lambda tmp: tmp, "is a directory"),
    ],
    ids=["missing", "missing-parent", "directory"],
)
@pytest.mark.parametrize("reader", [read_image, read_image_bytes])
def test_read_errors(tmp_path: Path, make, fragment: str, reader) -> None:  # noqa: ANN001
    path = make(tmp_path)
    with pytest.raises(ImageError) as info:
        reader(path)
    assert str(info.value) == f"{path}: {fragment}"
    # No OSError chained into the traceback a user sees.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_parent_is_a_file(tmp_path: Path) -> None:
    parent = write_good_image(tmp_path / "a.jpg")
    with pytest.raises(ImageError, match="no such file"):
        read_image(parent / "b.jpg")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(fifo)  # would block forever if opened


def test_permission_denied_is_image_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_good_image(tmp_path / "locked.jpg")

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images, "open", denied, raising=False)  # shadows the builtin there
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert str(info.value) == f"{path}: permission denied"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions"
)
def test_permission_denied_on_disk(tmp_path: Path) -> None:
    path = write_good_image(tmp_path / "locked.jpg")
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            read_image(path)
    finally:
        path.chmod(0o644)
