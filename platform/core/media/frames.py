"""Frames sampled from a video or an animated image, and the rule that picks them.

A frame is kept when it is

* the first frame at or after each multiple of the sampling interval (``"interval"``), or
* the first frame of a new shot (``"scene"``): the mean absolute difference between 32x32 grey
  thumbnails of this frame and the previous decoded frame is above ``scene_threshold``
  (0..1 of the grey range), at least ``min_scene_gap_s`` after the last kept frame;

and at most ``max_frames`` are kept per file. When ``duration / interval_s`` would need more than
three quarters of ``max_frames``, the interval widens to ``duration / (0.75 * max_frames)`` so
that regular samples cover the whole file and a quarter of the budget stays for scene changes.
Frames whose long side exceeds ``max_side`` are downscaled (area filter) before they are kept,
which bounds the memory a file can take: ``max_frames * max_side**2 * 3`` bytes at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DecodedMedia", "Frame", "FrameSelector", "SamplingOptions", "signature",
           "downscale"]


@dataclass(frozen=True)
class SamplingOptions:
    """How frames are sampled from a video or an animated image.

    Attributes:
        interval_s: one frame per this many seconds (widened for long files, see module doc).
        max_frames: frames kept per file at most.
        scene_threshold: mean absolute grey difference (0..1) between consecutive frames' 32x32
            thumbnails that counts as a new shot.
        min_scene_gap_s: seconds between a kept frame and a scene-change frame, at least.
        max_side: kept frames are downscaled so that their long side is at most this (px).
        time_budget_s: wall-clock seconds one file may take; sampling stops there with what it
            has (``complete=False``); with nothing yet, the file fails.
        max_scan_s: videos up to this long are decoded frame by frame (scene changes seen);
            longer ones are sampled by seeking to ``max_frames`` evenly spaced times (keyframe
            seeks, no scene detection), so a 2-hour video costs ``max_frames`` short decodes.
        max_animation_frames: frames of an animated GIF/WebP/PNG looked at, at most.
        threads: decoder threads per video (1 in Ray tasks that hold one CPU).
    """

    interval_s: float = 2.0
    max_frames: int = 24
    scene_threshold: float = 0.25
    min_scene_gap_s: float = 0.5
    max_side: int = 1920
    time_budget_s: float = 60.0
    max_scan_s: float = 600.0
    max_animation_frames: int = 2000
    threads: int = 1

    def __post_init__(self) -> None:
        from facenet_platform.core.errors import ConfigError

        if self.interval_s <= 0 or self.max_frames < 1 or self.max_side < 16:
            raise ConfigError(f"bad sampling options: {self}")
        if self.time_budget_s <= 0 or self.max_scan_s < 0 or self.max_animation_frames < 1:
            raise ConfigError(f"bad sampling options: {self}")


@dataclass(frozen=True)
class Frame:
    """One image taken from a file.

    Attributes:
        image: ``(H, W, 3) uint8`` RGB, C-contiguous, orientation applied.
        time_s: presentation time in seconds (None for a still image).
        index: frame number in the stream, counted from 0 in decode order (seek mode: estimated
            from the time and the frame rate); None for a still image.
        reason: why it was kept: ``"still"``, ``"interval"``, ``"scene"`` or ``"seek"``.
    """

    image: np.ndarray
    time_s: float | None
    index: int | None
    reason: str


@dataclass
class DecodedMedia:
    """What :func:`facenet_platform.core.media.decode_media` returns for one file.

    Attributes:
        kind: ``"image"``, ``"raw"``, ``"video"`` or ``"animation"``.
        format: container from the magic bytes (``"JPEG"``, ``"HEIF"``, ``"DNG"``, ``"MP4"``...).
        decoder: ``"pillow"``, ``"pillow-heif"``, ``"rawpy-preview"``, ``"rawpy-half"``,
            ``"pyav"`` or ``"pillow-frames"``.
        orientation: orientation the file declared (EXIF 1-8; a video's display matrix as the
            EXIF value, 1 when it has none: videos are never retried sideways), 0 when none.
        frames: one frame for a still image, the sampled frames otherwise (never empty).
        duration_s: length of a video/animation in seconds (None for a still image or unknown).
        complete: False when the time budget or a decode error stopped sampling early.
        width, height: size of the stream/canvas before any downscaling (px).
    """

    kind: str
    format: str
    decoder: str
    orientation: int
    frames: list[Frame]
    duration_s: float | None = None
    complete: bool = True
    width: int = 0
    height: int = 0
    notes: list[str] = field(default_factory=list)


def signature(grey: np.ndarray) -> np.ndarray:
    """A frame's 32x32 grey thumbnail as float32 in 0..1 (input: any ``(h, w)`` uint8 grey)."""
    import cv2

    small = cv2.resize(np.ascontiguousarray(grey), (32, 32), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` resized (area filter) so that its long side is at most ``max_side`` px."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return np.ascontiguousarray(image)
    import cv2

    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))


class FrameSelector:
    """Decides, frame by frame in time order, which frames to keep (see the module docstring).

    Args:
        options: the sampling options.
        duration_s: the file's length when known (widens the interval for long files).
    """

    def __init__(self, options: SamplingOptions, duration_s: float | None):
        self.options = options
        interval = options.interval_s
        if duration_s and duration_s > 0:
            interval = max(interval, duration_s / max(1.0, 0.75 * options.max_frames))
        self.interval = float(interval)
        self.kept = 0
        self._next_t = 0.0
        self._prev: np.ndarray | None = None
        self._last_kept = -math.inf

    @property
    def full(self) -> bool:
        """Whether ``max_frames`` frames have been kept."""
        return self.kept >= self.options.max_frames

    def offer(self, time_s: float, sig: np.ndarray | None) -> str | None:
        """Offer the next decoded frame; returns why to keep it, or None to drop it."""
        reason = None
        if time_s + 1e-6 >= self._next_t:
            reason = "interval"
            self._next_t = (math.floor(time_s / self.interval + 1e-9) + 1) * self.interval
        elif (sig is not None and self._prev is not None
              and time_s - self._last_kept >= self.options.min_scene_gap_s
              and float(np.mean(np.abs(sig - self._prev))) > self.options.scene_threshold):
            reason = "scene"
        if sig is not None:
            self._prev = sig
        if reason is not None and not self.full:
            self.kept += 1
            self._last_kept = time_s
            return reason
        return None
