"""CLI of the Serve application: ``serve`` and ``serve-config``.

    facenet-platform serve --index INDEX_DIR [--host 127.0.0.1] [--port 8000]
        [--replicas 2 | detector=2,embedder=1:4] [--cpus embedder=2] [--gpus embedder=1]
        [--max-batch-size 16] [--batch-wait-ms 10] [--address ray://head:10001 | auto]
    facenet-platform serve-config --index INDEX_DIR [same options] [-o serve_config.yaml]

``serve`` starts a local Ray instance and runs the application until Ctrl-C; with ``--address``
it deploys to that running cluster and returns (``--block`` to stay in the foreground).
``serve-config`` writes the equivalent Serve config for ``serve run`` / ``serve deploy`` /
KubeRay. ``--replicas``: one number for every model deployment, or ``ROLE=N`` / ``ROLE=MIN:MAX``
(autoscaling) items for ingress, detector, embedder, searcher, thumbnailer.

API keys: ``serve`` passes ``FACENET_READ_KEY`` / ``FACENET_ADMIN_KEY`` (and the older
``FACENET_API_KEY``, an admin key) of its environment to the ingress. With none of them set it
makes an admin key for this run and prints it once (enter it on the page), unless
``--insecure-no-auth`` turns keys off. ``serve-key`` prints a new key and the sha256 digest a
Serve config lists under ``args.auth``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` and ``serve-config`` to the ``facenet-platform`` parser."""
    p = subparsers.add_parser("serve", help="run the HTTP service (Ray Serve) with a web page")
    _app_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--address", default=None,
                   help="deploy to this running Ray cluster (auto, HOST:PORT or "
                        "ray://HOST:10001) instead of starting a local one")
    p.add_argument("--num-cpus", type=float, default=None,
                   help="logical CPUs of the local Ray instance (default: the machine's, or "
                        "what the replicas reserve if more)")
    p.add_argument("--block", action="store_true",
                   help="with --address: stay in the foreground until Ctrl-C (the default "
                        "returns once deployed)")
    p.set_defaults(handler=cmd_serve)

    p = subparsers.add_parser("serve-config",
                              help="write a Serve config YAML (serve run / serve deploy / KubeRay)")
    _app_options(p)
    p.add_argument("--host", default="0.0.0.0", help="http_options.host (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000, help="http_options.port (default 8000)")
    p.add_argument("-o", "--output", type=Path, default=None, help="file to write (default stdout)")
    p.set_defaults(handler=cmd_serve_config)

    p = subparsers.add_parser("serve-key",
                              help="make an API key and print it with its sha256 digest")
    p.add_argument("--role", choices=("read", "admin"), default="read",
                   help="where the digest goes in a Serve config (default read)")
    p.set_defaults(handler=cmd_serve_key)


def _app_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", dest="index_dir", required=True, metavar="INDEX_DIR",
                   help="index directory whose gallery is searched and enrolled into (local "
                        "path or s3://, gs:// URI; created empty if it has no gallery)")
    p.add_argument("--name", default="facenet", help="Serve application name (default facenet)")
    p.add_argument("--route-prefix", default="/", help="URL prefix of the application")
    g = p.add_argument_group("scaling")
    g.add_argument("--replicas", default=None, metavar="SPEC",
                   help="N for every model deployment, or e.g. detector=2,embedder=1:4 "
                        "(MIN:MAX = autoscaling); roles: ingress, detector, embedder, searcher, "
                        "thumbnailer")
    g.add_argument("--cpus", default=None, metavar="SPEC",
                   help="logical CPUs per replica, e.g. detector=1,embedder=2 (defaults: "
                        "ingress 0.1, detector 0.5, embedder 1, searcher 0.1)")
    g.add_argument("--gpus", default=None, metavar="SPEC", help="GPUs per replica, e.g. embedder=1")
    g.add_argument("--target-ongoing", type=float, default=None,
                   help="autoscaling target of ongoing requests per replica")
    g = p.add_argument_group("model and batching")
    g.add_argument("--max-batch-size", type=int, default=16,
                   help="faces per embedder batch (@serve.batch; default 16)")
    g.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long the embedder waits to fill a batch (default 10 ms)")
    g.add_argument("--backend", default="auto",
                   help="embedding backend (default auto: keras-bf16 on CPUs with native bf16, "
                        "else keras-fp32)")
    g.add_argument("--model", default=None,
                   help="a trained model: checkpoint folder, .keras, SavedModel or .tflite "
                        "(default: pretrained)")
    g.add_argument("--no-jit", action="store_true",
                   help="never XLA-compile the Keras model (default: the backend's choice)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-mb", type=float, default=16.0,
                   help="largest request body in MiB (413 above; default 16)")
    g.add_argument("--max-pixels", type=int, default=None,
                   help="largest image in pixels (413 above; default $FACENET_MAX_PIXELS or 40M)")
    g.add_argument("--max-faces", type=int, default=20, help="default faces per photo (20)")
    g = p.add_argument_group("API keys")
    g.add_argument("--insecure-no-auth", action="store_true",
                   help="serve without API keys (a private machine only: anyone who reaches "
                        "the port sees every face and may change every person)")


def build_args(ns: argparse.Namespace):
    """AppArgs from the parsed options (validated; ConfigError on a bad spec)."""
    from pydantic import ValidationError

    from facenet_platform.core.errors import ConfigError

    from .config import AppArgs, apply_cli_scaling

    try:
        args = AppArgs(index_dir=ns.index_dir, max_batch_size=ns.max_batch_size,
                       batch_wait_timeout_s=ns.batch_wait_ms / 1000.0, backend=ns.backend,
                       model=ns.model, jit_compile=False if ns.no_jit else None,
                       max_body_bytes=int(ns.max_body_mb * 1024 * 1024),
                       max_pixels=ns.max_pixels, max_faces=ns.max_faces,
                       auth={"insecure_no_auth": bool(getattr(ns, "insecure_no_auth", False))})
    except ValidationError as exc:
        raise ConfigError(_pydantic_message(exc)) from None
    return apply_cli_scaling(args, ns.replicas, ns.cpus, ns.gpus, ns.target_ongoing)


def _pydantic_message(exc) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def cmd_serve_config(ns: argparse.Namespace) -> int:
    from .config import serve_config_yaml

    text = serve_config_yaml(build_args(ns), host=ns.host, port=ns.port, app_name=ns.name,
                             route_prefix=ns.route_prefix)
    if ns.output:
        ns.output.write_text(text)
        print(f"wrote {ns.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_serve_key(ns: argparse.Namespace) -> int:
    from .auth import key_digest, new_key

    key = new_key()
    print(f"key:    {key}")
    print(f"sha256: {key_digest(key)}")
    print(f"# Serve config: args.auth.{ns.role}_key_sha256: [{key_digest(key)}]", file=sys.stderr)
    return 0


def _api_keys(args, ns: argparse.Namespace) -> str | None:
    """Pass this shell's API keys to the ingress; make an admin key when there is none.

    Returns the generated key (None when keys came from the environment or are off)."""
    from .auth import ADMIN_KEY_ENV, KeyRing, new_key
    from .config import KEY_ENVS

    found = {name: os.environ[name] for name in KEY_ENVS if os.environ.get(name)}
    KeyRing.from_config(args.auth, found)  # ConfigError on a key too short to be safe
    generated = None
    if not found and not args.auth.insecure_no_auth and not (
            args.auth.read_key_sha256 or args.auth.admin_key_sha256):
        generated = found[ADMIN_KEY_ENV] = new_key()
    # Replicas get them explicitly: a remote cluster's workers do not inherit this environment.
    args.ingress.env.update(found)
    return generated


def cmd_serve(ns: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from facenet_platform.ray_connection import connect_ray

    from .app import build_app

    args = build_args(ns)
    local = ns.address is None
    generated = _api_keys(args, ns)
    if args.auth.insecure_no_auth:
        logger.warning("serving WITHOUT API keys (--insecure-no-auth)")
    try:
        if local:
            needed = math.ceil(args.total_cpus())
            num_cpus = ns.num_cpus or max(os.cpu_count() or 1, needed)
            connect_ray("local", num_cpus=num_cpus, log_to_driver=ns.verbose > 0)
            # `kill PID` must stop the local Ray instance too, not orphan it. Installed after
            # ray.init, which sets a handler of its own that would exit without cleaning up.
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        else:
            connect_ray(ns.address, log_to_driver=ns.verbose > 0)
        serve.start(http_options={"host": ns.host, "port": ns.port})
        t0 = time.perf_counter()
        print(f"deploying {ns.name} (index {args.index_dir}); loading the models...",
              file=sys.stderr, flush=True)
        serve.run(build_app(args), name=ns.name, route_prefix=ns.route_prefix, blocking=False)
        host = "127.0.0.1" if ns.host in ("0.0.0.0", "::") else ns.host
        prefix = ns.route_prefix.rstrip("/")
        print(f"serving on http://{host}:{ns.port}{prefix}/  (API docs http://{host}:{ns.port}"
              f"{prefix}/docs; ready in {time.perf_counter() - t0:.0f} s"
              + ("; NO API keys" if args.auth.insecure_no_auth else "; API keys required")
              + ")", flush=True)
        if generated:
            print(f"admin API key for this run (set FACENET_ADMIN_KEY / FACENET_READ_KEY to "
                  f"choose keys): {generated}", flush=True)
        if not local and not ns.block:
            return 0
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", file=sys.stderr)
        return 0
    finally:
        if local and ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
