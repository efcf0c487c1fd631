"""Animated GIF, WebP and PNG (APNG) -> sampled RGB frames, through Pillow.

Pillow composites each frame onto the canvas (GIF disposal, WebP/APNG blending), so every frame
it yields is a whole picture. Frames are walked in order (``seek``), each frame's ``duration``
(ms) advances the clock, and :class:`~facenet_platform.core.media.frames.FrameSelector` picks
them like video frames. The canvas size was checked against the pixel limit when the header was
read; at most ``max_animation_frames`` frames are looked at and the walk stops at
``time_budget_s`` (a GIF with 100,000 one-pixel frames ends there).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from PIL import Image

from facenet_platform.core.errors import ImageError, MediaDecodeTimeoutError
from facenet_platform.core.media.frames import (DecodedMedia, Frame, FrameSelector,
                                                SamplingOptions, downscale, signature)

__all__ = ["decode_animation", "is_animated"]

logger = logging.getLogger(__name__)

#: Frame duration (ms) assumed when a frame declares none or 0 (browsers use ~100 ms).
DEFAULT_FRAME_MS: int = 100


def is_animated(image: Image.Image) -> bool:
    """Whether a Pillow image (header opened) has more than one frame. Never raises."""
    try:
        return bool(getattr(image, "is_animated", False))
    except Exception:  # noqa: BLE001 - a broken second frame: treat as still
        return False


def decode_animation(image: Image.Image, *, source: str, format: str,
                     options: SamplingOptions | None = None) -> DecodedMedia:
    """Sample the frames of an animated image opened by Pillow (header checked by the caller).

    Args:
        image: the opened image (its frame pointer is moved; the caller closes it).
        source: name used in error messages.
        format: ``"GIF"``, ``"WEBP"`` or ``"PNG"``.
        options: sampling options.

    Returns:
        :class:`DecodedMedia` with ``kind="animation"``, ``decoder="pillow-frames"``.

    Raises:
        ImageError: the first frame cannot be decoded (truncated, corrupt).
        MediaDecodeTimeoutError: no frame within the time budget.
    """
    from facenet_platform.core.images import _load, _to_rgb_array

    options = options or SamplingOptions()
    deadline = time.monotonic() + options.time_budget_s
    selector = FrameSelector(options, None)
    frames: list[Frame] = []
    clock_ms = 0.0
    complete = True
    notes: list[str] = []
    for index in range(options.max_animation_frames):
        try:
            if index:
                image.seek(index)
            _load(image, source)
        except EOFError:
            break
        except ImageError as exc:
            if not frames:
                raise
            complete = False
            notes.append(f"stopped at frame {index}: {exc}")
            break
        except Exception as exc:  # noqa: BLE001 - seek of a corrupt frame
            if not frames:
                raise ImageError(f"{source}: corrupt {format} animation ({exc})") from None
            complete = False
            notes.append(f"stopped at frame {index}: {type(exc).__name__}")
            break
        t = clock_ms / 1000.0
        grey = np.asarray(image.convert("L"))
        reason = selector.offer(t, signature(grey))
        if reason is not None:
            rgb = _to_rgb_array(image if image.mode != "P" else image.convert("RGBA"), source)
            frames.append(Frame(downscale(rgb, options.max_side), round(t, 6), index, reason))
        duration = image.info.get("duration") or DEFAULT_FRAME_MS
        clock_ms += float(duration)
        if selector.full:
            break
        if time.monotonic() >= deadline:
            complete = False
            notes.append(f"time budget of {options.time_budget_s:g} s reached")
            break
    else:
        complete = False
        notes.append(f"looked at the first {options.max_animation_frames} frames only")
    if not frames:
        raise MediaDecodeTimeoutError(f"{source}: no frame decoded within "
                                      f"{options.time_budget_s:g} s")
    return DecodedMedia("animation", format, "pillow-frames", 0, frames, clock_ms / 1000.0,
                        complete, image.width, image.height, notes)
