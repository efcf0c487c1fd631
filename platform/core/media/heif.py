"""HEIC/HEIF and AVIF support for Pillow, registered once per process on first use.

* **HEIF** (the iPhone default) decodes through ``pillow-heif`` (libheif + libde265), part of the
  ``media`` extra. Its opener reads only the container at ``Image.open``, so the pixel limit of
  :mod:`facenet_platform.core.images` is checked on the declared size (for a grid image: the whole
  grid) before any tile is decoded; libheif's own security limits (tile count, image size) stay
  on. libheif applies the file's rotation/mirror (``irot``/``imir``) while decoding and
  ``pillow-heif`` reports it as ``info["original_orientation"]``. Thumbnails, depth and auxiliary
  images are not loaded.
* **AVIF** decodes through Pillow's own plugin (Pillow >= 11.3 wheels ship libavif); when a Pillow
  built without it is installed, ``pillow-avif-plugin`` is used if present.
"""

from __future__ import annotations

import logging
import threading

from facenet_platform.core.errors import MissingDecoderError

__all__ = ["ensure_avif", "ensure_heif", "heif_available", "avif_available"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, bool] = {}


def heif_available() -> bool:
    """Whether HEIF files can be decoded here (pillow-heif importable). Registers it."""
    with _lock:
        if "heif" not in _state:
            try:
                import pillow_heif
            except ImportError:
                _state["heif"] = False
            else:
                pillow_heif.register_heif_opener(thumbnails=False, depth_images=False,
                                                 aux_images=False)
                _state["heif"] = True
                logger.debug("pillow-heif %s registered (libheif %s)", pillow_heif.__version__,
                             pillow_heif.libheif_version())
        return _state["heif"]


def avif_available() -> bool:
    """Whether AVIF files can be decoded here (Pillow's own plugin, else pillow-avif-plugin)."""
    with _lock:
        if "avif" not in _state:
            from PIL import features

            ok = bool(features.check("avif"))
            if not ok:
                try:
                    import pillow_avif  # noqa: F401 - registers itself with Pillow
                except ImportError:
                    pass
                else:
                    ok = True
            _state["avif"] = ok
        return _state["avif"]


def ensure_heif(source: str = "<bytes>") -> None:
    """Make Pillow open HEIF files.

    Raises:
        MissingDecoderError: pillow-heif is not installed.
    """
    if not heif_available():
        raise MissingDecoderError(
            f"{source}: HEIC/HEIF needs pillow-heif: pip install 'facenet-platform[media]'")


def ensure_avif(source: str = "<bytes>") -> None:
    """Make Pillow open AVIF files.

    Raises:
        MissingDecoderError: neither Pillow's AVIF plugin nor pillow-avif-plugin is available.
    """
    if not avif_available():
        raise MissingDecoderError(
            f"{source}: AVIF needs Pillow >= 11.3 (with libavif) or pillow-avif-plugin")
