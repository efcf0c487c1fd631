"""The Serve application: ``build_app`` wires the deployments together with ``.bind()``.

    FaceAPI (HTTP ingress, FastAPI)
      |-- Detector        DeploymentHandle
      |-- Embedder        DeploymentHandle (@serve.batch)
      |-- Searcher        DeploymentHandle
      |-- GalleryWriter   DeploymentHandle (one replica: every change, people decisions too)
      |-- Thumbnailer     DeploymentHandle
      `-- PeopleReader    DeploymentHandle

``facenet_platform.serve.app:build_app`` is the import path for ``serve run`` / ``serve deploy``
and KubeRay's RayService; its ``args`` are :class:`~facenet_platform.serve.config.AppArgs`
(Ray Serve validates a config's ``args:`` into it)::

    serve run facenet_platform.serve.app:build_app index_dir=/data/index
    serve run platform/serve/serve_config.yaml
"""

# No `from __future__ import annotations` here: Ray Serve inspects build_app's annotation at run
# time to validate the config's args into AppArgs.

from typing import Any, Union

from ray.serve import Application

from .config import (
    DETECTOR,
    EMBEDDER,
    INGRESS,
    PEOPLE,
    SEARCHER,
    THUMBNAILER,
    WRITER,
    AppArgs,
)


def build_app(args: AppArgs) -> Application:
    """The bound application for ``args`` (an :class:`AppArgs` or a plain dict of its fields)."""
    from facenet_platform.core.factory import resolve_spec

    from .api import FaceAPI
    from .deployments import (
        Detector,
        Embedder,
        GalleryWriter,
        PeopleReader,
        Searcher,
        Thumbnailer,
    )

    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(dict(args or {}))
    options = args.serve_options()
    # One spec for both sides: the detector cuts the crops the embedder's model takes.
    spec = resolve_spec(args.model).to_metadata()
    detector = Detector.options(**options[DETECTOR]).bind(
        spec, min_face_size=args.min_face_size, threads=args.detector.thread_count())
    embedder = Embedder.options(**options[EMBEDDER]).bind(
        spec, max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout_s,
        buckets=args.buckets(), backend=args.backend, jit_compile=args.jit_compile,
        threads=args.embedder.thread_count())
    searcher = Searcher.options(**options[SEARCHER]).bind(args.index_dir)
    writer = GalleryWriter.options(**options[WRITER]).bind(args.index_dir)
    thumbnailer = Thumbnailer.options(**options[THUMBNAILER]).bind(
        args.index_dir, cache_mb=args.thumbnail_cache_mb)
    people = PeopleReader.options(**options[PEOPLE]).bind(args.index_dir)
    return FaceAPI.options(**options[INGRESS]).bind(
        detector, embedder, searcher, writer, thumbnailer, people, args.model_dump())


def app_args(index_dir: str, **kwargs: Any) -> AppArgs:
    """Shorthand for tests and scripts: ``AppArgs(index_dir=..., **kwargs)``."""
    return AppArgs.model_validate({"index_dir": index_dir, **kwargs})


AppArgsLike = Union[AppArgs, dict]
