"""Videos (MP4, MOV, MKV, WebM, AVI, ...) -> sampled RGB frames, through PyAV (FFmpeg).

Frames are picked by :class:`facenet_platform.core.media.frames.FrameSelector` (every N seconds
plus scene changes, at most ``max_frames``). Two modes bound the work:

* **scan** (videos up to ``max_scan_s`` long, or of unknown length): every frame is decoded in
  order; each gets a 32x32 grey thumbnail for scene detection (scaled by swscale, not converted
  at full size); only kept frames are converted to RGB at full size (then capped at
  ``max_side``).
* **seek** (longer videos): ``max_frames`` evenly spaced times are visited by keyframe seeks and
  decoding forward to the target; a 2-hour video costs ``max_frames`` short decodes, not 2 hours.

Both stop at ``time_budget_s`` of wall-clock time with the frames they have (``complete=False``;
with none, :class:`~facenet_platform.core.errors.MediaDecodeTimeoutError`). A stream declaring
more than ``max_pixels`` per frame is refused before decoding. The display matrix (phones record
portrait video as rotated landscape) is applied to each kept frame.
"""

from __future__ import annotations

import io
import logging
import time
from typing import BinaryIO

import numpy as np

from facenet_platform.core.errors import (ImageError, ImageTooLargeError, MediaDecodeTimeoutError,
                                          MissingDecoderError)
from facenet_platform.core.media.frames import (DecodedMedia, Frame, FrameSelector,
                                                SamplingOptions)

__all__ = ["decode_video", "video_available"]

logger = logging.getLogger(__name__)


def video_available() -> bool:
    """Whether PyAV is importable."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _rgb(frame, max_side: int) -> np.ndarray:
    """A decoded frame as ``(H, W, 3) uint8`` RGB, display rotation applied, long side capped."""
    w, h = frame.width, frame.height
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:
        image = frame.to_ndarray(format="rgb24", width=max(2, round(w * scale)),
                                 height=max(2, round(h * scale)), interpolation="AREA")
    else:
        image = frame.to_ndarray(format="rgb24")
    turns = _quarter_turns(frame)
    if turns:
        image = np.rot90(image, turns)
    return np.ascontiguousarray(image, np.uint8)


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that display the frame upright (display matrix)."""
    try:
        rotation = frame.rotation
    except Exception:  # noqa: BLE001 - no display matrix
        return 0
    if not rotation:
        return 0
    return int(round(float(rotation) / 90.0)) % 4


def _grey_signature(frame) -> np.ndarray:
    grey = frame.to_ndarray(format="gray", width=32, height=32, interpolation="AREA")
    return grey.astype(np.float32) / 255.0


def decode_video(data: bytes | BinaryIO, *, source: str = "<bytes>",
                 max_pixels: int | None = None, options: SamplingOptions | None = None,
                 format: str = "VIDEO") -> DecodedMedia:
    """Sample frames of a video (see the module docstring).

    Args:
        data: the file's bytes, or a seekable binary file object (read as FFmpeg needs it:
            a 4 GB video is never held in memory).
        source: name used in error messages.
        max_pixels: limit on one frame's ``width * height`` (``None``: ``$FACENET_MAX_PIXELS``).
        options: sampling options (defaults: :class:`SamplingOptions`).
        format: container name from the sniffer (for messages and the result).

    Returns:
        :class:`DecodedMedia` with ``kind="video"``, ``decoder="pyav"`` and 1..``max_frames``
        frames in time order.

    Raises:
        MissingDecoderError: PyAV is not installed (``media`` extra).
        ImageTooLargeError: the stream's frames exceed ``max_pixels``.
        MediaDecodeTimeoutError: no frame within ``time_budget_s``.
        ImageError: no video stream, truncated or corrupt, or not a video FFmpeg reads.
    """
    from facenet_platform.core.images import _resolve_limit, _too_large

    try:
        import av
    except ImportError:
        raise MissingDecoderError(
            f"{source}: {format} video needs PyAV: pip install 'facenet-platform[media]'") from None
    options = options or SamplingOptions()
    limit = _resolve_limit(max_pixels)
    started = time.monotonic()
    deadline = started + options.time_budget_s
    try:
        handle = data if hasattr(data, "read") else io.BytesIO(bytes(data))
        container = av.open(handle, mode="r", metadata_errors="ignore")
    except Exception as exc:  # noqa: BLE001 - av.error.* (InvalidDataError, EOFError, ...)
        text = _reason(exc)
        if "moov atom not found" in text or "EOF" in text or "truncat" in text.lower():
            raise ImageError(f"{source}: {format} video is truncated or incomplete ({text})") from None
        raise ImageError(f"{source}: not a readable {format} video ({text})") from None
    try:
        if not container.streams.video:
            raise ImageError(f"{source}: {format} file has no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise ImageError(f"{source}: {format} video declares a {width}x{height} frame size")
        if width * height > limit:
            raise _too_large(source, width, height, limit)
        ctx.thread_count = max(1, int(options.threads))
        duration = _duration(container, stream)
        seek_mode = duration is not None and duration > options.max_scan_s
        frames: list[Frame] = []
        complete = True
        notes: list[str] = []
        meta: dict = {}
        try:
            if seek_mode:
                complete = _sample_by_seeking(container, stream, duration, options, deadline,
                                              frames, meta)
            else:
                complete = _sample_by_scanning(container, stream, duration, options, deadline,
                                               frames, meta)
        except (ImageError, MediaDecodeTimeoutError):
            raise
        except MemoryError:
            raise ImageTooLargeError(f"{source}: not enough memory to decode the video") from None
        except Exception as exc:  # noqa: BLE001 - a decode error mid-stream
            if not frames:
                raise ImageError(f"{source}: corrupt {format} video data ({_reason(exc)})") from None
            complete = False
            notes.append(f"stopped at a decode error: {_reason(exc)}")
            logger.warning("%s: keeping %d frames before a decode error (%s)", source,
                           len(frames), _reason(exc))
        if not frames:
            if time.monotonic() >= deadline:
                raise MediaDecodeTimeoutError(
                    f"{source}: no frame decoded within {options.time_budget_s:g} s")
            raise ImageError(f"{source}: {format} video has no decodable frame (truncated?)")
        if not complete and time.monotonic() >= deadline:
            notes.append(f"time budget of {options.time_budget_s:g} s reached")
        # EXIF value of the display rotation that was applied (1: none; never retried sideways)
        orientation = {0: 1, 1: 8, 2: 3, 3: 6}.get(meta.get("turns", 0), 1)
        logger.debug("%s: %d frames from a %s s %s video (%s mode) in %.2f s", source,
                     len(frames), f"{duration:.1f}" if duration else "?", format,
                     "seek" if seek_mode else "scan", time.monotonic() - started)
        return DecodedMedia("video", format, "pyav", orientation, frames, duration, complete,
                            width, height, notes)
    finally:
        container.close()


def _keep(frames: list[Frame], meta: dict, frame, t: float, index: int, reason: str,
          max_side: int) -> None:
    if not frames:
        meta["turns"] = _quarter_turns(frame)
    frames.append(Frame(_rgb(frame, max_side), round(t, 6), index, reason))


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        value = float(stream.duration * stream.time_base)
        if value > 0:
            return value
    if container.duration is not None and container.duration > 0:
        return float(container.duration) / 1_000_000.0
    return None


def _frame_time(frame, index: int, rate: float) -> float:
    if frame.time is not None:
        return float(frame.time)
    return index / rate if rate > 0 else float(index)


def _rate(stream) -> float:
    for value in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if value:
            return float(value)
    return 0.0


def _sample_by_scanning(container, stream, duration, options, deadline, frames, meta) -> bool:
    selector = FrameSelector(options, duration)
    rate = _rate(stream)
    first_time: float | None = None
    for index, frame in enumerate(container.decode(stream)):
        t = _frame_time(frame, index, rate)
        if first_time is None:
            first_time = t
        t -= first_time
        reason = selector.offer(t, _grey_signature(frame))
        if reason is not None:
            _keep(frames, meta, frame, t, index, reason, options.max_side)
        if selector.full:
            return True
        if time.monotonic() >= deadline:
            return False
    return True


def _sample_by_seeking(container, stream, duration, options, deadline, frames, meta) -> bool:
    """Visit ``max_frames`` evenly spaced times: seek (keyframe at or before the target) when the
    target is more than ``_SEEK_AHEAD_S`` past the decoder's position, else decode forward."""
    rate = _rate(stream)
    n = options.max_frames
    time_base = float(stream.time_base) if stream.time_base else 1e-6
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    half_frame = 0.5 / rate if rate > 0 else 0.0
    decoder = None
    position = -1.0  # time of the last decoded frame
    for k in range(n):
        target = (k + 0.5) * duration / n
        if decoder is None or target - position > _SEEK_AHEAD_S:
            container.seek(int((start + target) / time_base), stream=stream, backward=True,
                           any_frame=False)
            decoder = container.decode(stream)
        for frame in decoder:
            t = (float(frame.time) - start) if frame.time is not None else target
            position = t
            if t + half_frame >= target:
                if not frames or t > frames[-1].time_s:
                    index = int(round(t * rate)) if rate > 0 else k
                    _keep(frames, meta, frame, t, index, "seek", options.max_side)
                break
            if time.monotonic() >= deadline:
                return False
        else:
            return True  # end of stream
        if time.monotonic() >= deadline:
            return k == n - 1
    return True


#: A target this many seconds past the decoder's position is reached by seeking.
_SEEK_AHEAD_S: float = 10.0
