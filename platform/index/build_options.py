"""The options of ``index build`` (:func:`facenet_platform.index.build.build_index`)."""

from __future__ import annotations

from dataclasses import dataclass

from facenet_platform.core.errors import ConfigError

__all__ = ["BuildOptions"]


@dataclass
class BuildOptions:
    """Options of :func:`build_index` (``None`` means: from the resource plan).

    Attributes:
        address: Ray cluster address (``host:port``, ``ray://host:port``, ``auto``); default
            ``$RAY_ADDRESS``, else a local Ray.
        num_cpus: CPUs of the local Ray this call starts (ignored with ``address``).
        detect_actors, embed_actors: actor pool sizes.
        detect_cpus, embed_cpus: logical CPUs per actor (also their thread counts, rounded).
        embed_gpus: GPUs per embedding actor (0 for CPU; default 1 when the cluster has GPUs).
        decode_cpus: logical CPUs per read+decode task.
        read_batch_size: files per read+decode batch; detect_batch_size: images per detection
            batch; embed_batch_size: face crops per embedding batch (64 on CPU, 256 on GPU).
        model: a trained model path (checkpoint folder, ``.keras``, SavedModel, ``.tflite``);
            its spec sets the crop of every actor (default: the pretrained 20180408-102900).
        backend: embedding numerics (``facenet_platform.core.backends``: keras-fp32,
            keras-bf16, onnx-fp32, onnx-int8); recorded in the manifest.
        min_face_size: smallest face, pixels (MTCNN).
        max_pixels: decompression-bomb limit per image (default ``$FACENET_MAX_PIXELS`` or 40 MP).
        commit_every_files, commit_every_seconds: how often finished files are committed
            (what a killed build can lose and redo).
        max_rows_per_file: faces per Parquet part file at most.
        rehash: read and hash every file, even those whose (path, size, mtime) is known.
        retry_failed: process again files whose content failed before.
        progress: Ray Data progress bars.
        log_to_driver: stream the Ray workers' logs to this process (when starting Ray).
        video_interval_s, video_max_frames: frame sampling of videos and animated images
            (every N seconds plus scene changes, at most this many frames per file; see
            :class:`facenet_platform.core.media.SamplingOptions`).
        rotation_retry: when a still photo declares no orientation and no face is found, try
            it turned by 90, 270 and 180 degrees (:mod:`facenet_platform.core.media.rotation`).
        rotation_retry_below: also retry orientation-less photos whose best face scores below
            this (MTCNN finds a third of 90-degree-turned LFW faces at ~0.98 and would embed
            them sideways; on rotated LFW 0.99 sets 147/150 upright instead of 99/150, at no
            cost on upright photos; 0 or None: only faceless photos; benchmarks/RESULTS.md).
        read_xmp: read XMP face regions (in-file and ``.xmp`` sidecars) and name the matching
            faces (``xmp_name``).
    """

    address: str | None = None
    num_cpus: int | None = None
    detect_actors: int | None = None
    embed_actors: int | None = None
    detect_cpus: float | None = None
    embed_cpus: float | None = None
    embed_gpus: float | None = None
    decode_cpus: float | None = None
    read_batch_size: int = 8
    detect_batch_size: int = 16
    embed_batch_size: int | None = None
    model: str | None = None
    backend: str | None = None
    min_face_size: int = 20
    max_pixels: int | None = None
    commit_every_files: int = 1000
    commit_every_seconds: float = 60.0
    max_rows_per_file: int = 20_000
    rehash: bool = False
    retry_failed: bool = False
    progress: bool = True
    log_to_driver: bool = True
    video_interval_s: float = 2.0
    video_max_frames: int = 24
    rotation_retry: bool = True
    rotation_retry_below: float | None = 0.99
    read_xmp: bool = True

    def sampling(self):
        """The :class:`~facenet_platform.core.media.SamplingOptions` of videos/animations."""
        from facenet_platform.core.media.frames import SamplingOptions

        return SamplingOptions(interval_s=self.video_interval_s, max_frames=self.video_max_frames)

    def validate(self) -> None:
        """Raise :class:`ConfigError` on a count under 1 or a negative resource."""
        for name in ("detect_actors", "embed_actors", "num_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        for name in ("read_batch_size", "detect_batch_size", "commit_every_files",
                     "max_rows_per_file", "min_face_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_batch_size is not None and self.embed_batch_size < 1:
            raise ConfigError(f"embed_batch_size must be >= 1, got {self.embed_batch_size}")
        for name in ("detect_cpus", "embed_cpus", "decode_cpus", "embed_gpus"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if self.video_interval_s <= 0 or self.video_max_frames < 1:
            raise ConfigError("video_interval_s must be > 0 and video_max_frames >= 1, got "
                              f"{self.video_interval_s} and {self.video_max_frames}")
        if self.commit_every_seconds <= 0:
            raise ConfigError(f"commit_every_seconds must be > 0, got {self.commit_every_seconds}")
