"""Settings of the Serve application: what ``build_app`` takes, and the Serve config YAML.

:class:`AppArgs` is the typed argument of :func:`facenet_platform.serve.app.build_app` (Ray Serve
validates a config file's ``args:`` into it). :class:`DeploymentOptions` sets how one deployment
scales (replicas or autoscaling, CPUs/GPUs per replica, concurrency); the CLI fills them from
``--replicas``/``--cpus``/``--gpus``. A Serve config's own ``deployments:`` section overrides
them too (Serve's usual precedence: config file over code), which is what KubeRay users edit.

No Ray import here: the CLI parses and validates settings before starting anything.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from facenet_platform.core.errors import ConfigError

from .auth import ADMIN_KEY_ENV, LEGACY_KEY_ENV, READ_KEY_ENV, AuthOptions

#: Names of the deployments, as Serve shows them (and as a config's ``deployments:`` names them).
INGRESS, DETECTOR, EMBEDDER, SEARCHER, WRITER, THUMBNAILER, PEOPLE = (
    "FaceAPI", "Detector", "Embedder", "Searcher", "GalleryWriter", "Thumbnailer",
    "PeopleReader")
#: Short names accepted by ``--replicas``/``--cpus``/``--gpus`` -> AppArgs field.
ROLES: dict[str, str] = {"ingress": INGRESS, "detector": DETECTOR, "embedder": EMBEDDER,
                         "searcher": SEARCHER, "thumbnailer": THUMBNAILER, "people": PEOPLE}

#: The single API key of earlier versions (an admin key); see :mod:`.auth` for the roles.
API_KEY_ENV = LEGACY_KEY_ENV
KEY_ENVS = (READ_KEY_ENV, ADMIN_KEY_ENV, LEGACY_KEY_ENV)
DEFAULT_APP_NAME = "facenet"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

# Default logical CPUs per replica. They add up to 1.75 so that the whole application fits on a
# 2-CPU machine with one replica each; give the model deployments more where there are cores.
_DEFAULT_CPUS = {INGRESS: 0.1, DETECTOR: 0.5, EMBEDDER: 1.0, SEARCHER: 0.1, WRITER: 0.05,
                 THUMBNAILER: 0.1, PEOPLE: 0.1}
# Requests a replica takes at once. The embedder needs at least a batch's worth to fill one.
_DEFAULT_ONGOING = {INGRESS: 64, DETECTOR: 8, SEARCHER: 32, WRITER: 64, THUMBNAILER: 16,
                    PEOPLE: 32}


class DeploymentOptions(BaseModel):
    """How one deployment runs and scales.

    Attributes:
        num_replicas: fixed number of replicas (ignored when ``autoscaling`` is set).
        autoscaling: Serve ``autoscaling_config`` (``min_replicas``, ``max_replicas``,
            ``target_ongoing_requests``, ...); replaces ``num_replicas``.
        num_cpus: logical CPUs reserved per replica (also the default thread count of the
            model deployments when it is >= 1).
        num_gpus: GPUs per replica (the embedder is the one that can use one).
        max_ongoing_requests: requests one replica works on at once.
        threads: compute threads per replica (onnxruntime for the detector, TensorFlow intra-op
            for the embedder); None: the library default (all cores).
        env: environment variables of the replicas (a ``runtime_env``).
    """

    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(1, ge=1)
    autoscaling: Optional[dict[str, Any]] = None
    num_cpus: Optional[float] = Field(None, ge=0)
    num_gpus: Optional[float] = Field(None, ge=0)
    max_ongoing_requests: Optional[int] = Field(None, ge=1)
    threads: Optional[int] = Field(None, ge=1)
    env: dict[str, str] = Field(default_factory=dict)

    def serve_options(self, name: str, default_ongoing: int) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options()``."""
        actor: dict[str, Any] = {"num_cpus": _DEFAULT_CPUS[name] if self.num_cpus is None
                                 else self.num_cpus}
        if self.num_gpus:
            actor["num_gpus"] = self.num_gpus
        if self.env:
            actor["runtime_env"] = {"env_vars": dict(self.env)}
        out: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests or default_ongoing,
        }
        if self.autoscaling:
            out["autoscaling_config"] = dict(self.autoscaling)
        else:
            out["num_replicas"] = self.num_replicas
        return out

    def thread_count(self) -> Optional[int]:
        if self.threads:
            return self.threads
        if self.num_cpus is not None and self.num_cpus >= 1:
            return int(self.num_cpus)
        return None


class AppArgs(BaseModel):
    """Arguments of ``facenet_platform.serve.app:build_app`` (the ``args:`` of a Serve config).

    Attributes:
        index_dir: index directory (local path, or a URI every node can reach such as
            ``s3://bucket/index``); its gallery is searched and enrolled into. An index without
            a gallery starts empty.
        max_body_bytes: largest request body accepted (413 above it).
        max_pixels: largest ``width * height`` an image header may declare (413 above it);
            None: ``$FACENET_MAX_PIXELS`` or the library default (40 Mpx).
        max_faces: default of the ``max_faces`` parameter (faces per image, highest score first).
        max_faces_limit: largest ``max_faces`` a request may ask for.
        top_k: default number of identities listed per face.
        min_face_size: smallest face the detector looks for, in pixels.
        max_batch_size: ``@serve.batch`` limit of the embedder, counted in faces.
        batch_wait_timeout_s: how long the embedder waits to fill a batch.
        batch_buckets: model batch sizes compiled by the embedder (a batch runs at the smallest
            bucket that holds it); None: 1, 4 and ``max_batch_size``.
        backend: embedding backend (``auto``: keras-bf16 on CPUs with native bf16, else
            keras-fp32; or ``keras-fp32``, ``keras-bf16``, ``onnx-fp32``, ``onnx-int8``).
        model: a trained model (checkpoint folder, ``.keras``, SavedModel, ``.tflite``) whose
            spec sets both the detector's crop and the embedder; None: the pretrained network.
        jit_compile: compile the Keras forward pass with XLA (None: the backend's default, off
            for both Keras backends on CPU).
        call_retries: times the ingress retries a call whose replica died (the calls are
            idempotent); 0 disables.
        thumbnail_cache_mb: encoded JPEG thumbnails each thumbnailer replica keeps (LRU), MiB.
        auth: API keys (digests) and whether to serve without keys; see
            :mod:`facenet_platform.serve.auth`.
        ingress, detector, embedder, searcher, thumbnailer, people: scaling of each deployment
            (``people``: the PeopleReader replicas that answer browsing). The gallery writer
            always runs exactly one replica: every change (enrollment, people decision) is
            serialised there.
    """

    model_config = ConfigDict(extra="forbid")

    index_dir: str
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)
    max_pixels: Optional[int] = Field(None, ge=1)
    max_faces: int = Field(20, ge=1)
    max_faces_limit: int = Field(100, ge=1)
    top_k: int = Field(5, ge=1)
    min_face_size: int = Field(20, ge=8)
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    batch_buckets: Optional[list[int]] = None
    backend: str = "auto"
    model: Optional[str] = None
    jit_compile: Optional[bool] = None
    call_retries: int = Field(1, ge=0, le=5)
    thumbnail_cache_mb: float = Field(64.0, ge=0)
    auth: AuthOptions = Field(default_factory=AuthOptions)
    ingress: DeploymentOptions = Field(default_factory=DeploymentOptions)
    detector: DeploymentOptions = Field(default_factory=DeploymentOptions)
    embedder: DeploymentOptions = Field(default_factory=DeploymentOptions)
    searcher: DeploymentOptions = Field(default_factory=DeploymentOptions)
    thumbnailer: DeploymentOptions = Field(default_factory=DeploymentOptions)
    people: DeploymentOptions = Field(default_factory=DeploymentOptions)

    @field_validator("index_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # Replicas may run in another working directory: pin relative paths now.
        if "://" in value or not value:
            return value
        return os.path.abspath(os.path.expanduser(value))

    def buckets(self) -> list[int]:
        """Model batch sizes the embedder compiles, ascending, the largest = max_batch_size."""
        raw = self.batch_buckets or [1, 4, self.max_batch_size]
        sizes = sorted({int(b) for b in raw if 1 <= int(b) <= self.max_batch_size}
                       | {self.max_batch_size})
        return sizes

    def max_faces_default(self) -> int:
        return min(self.max_faces, self.max_faces_limit)

    def total_cpus(self) -> float:
        """Logical CPUs all replicas reserve (the fixed or minimum replica counts)."""
        total = _DEFAULT_CPUS[WRITER]
        for name, opts in self.deployments().items():
            n = opts.num_replicas
            if opts.autoscaling:
                n = int(opts.autoscaling.get("min_replicas", 1) or 0)
            total += n * (_DEFAULT_CPUS[name] if opts.num_cpus is None else opts.num_cpus)
        return total

    def deployments(self) -> dict[str, DeploymentOptions]:
        return {INGRESS: self.ingress, DETECTOR: self.detector, EMBEDDER: self.embedder,
                SEARCHER: self.searcher, THUMBNAILER: self.thumbnailer, PEOPLE: self.people}

    def serve_options(self) -> dict[str, dict[str, Any]]:
        """``Deployment.options()`` of every deployment, the writer's included."""
        out = {}
        for name, opts in self.deployments().items():
            default_ongoing = (max(32, 2 * self.max_batch_size) if name == EMBEDDER
                               else _DEFAULT_ONGOING[name])
            out[name] = opts.serve_options(name, default_ongoing)
        out[WRITER] = {"num_replicas": 1, "max_ongoing_requests": _DEFAULT_ONGOING[WRITER],
                       "ray_actor_options": {"num_cpus": _DEFAULT_CPUS[WRITER]}}
        return out


# -- the CLI's compact forms ----------------------------------------------------------------------

def parse_role_values(spec: str | None, what: str, *, allow_range: bool = False
                      ) -> dict[str, Any]:
    """``"2"`` (every model deployment) or ``"detector=2,embedder=1:4"`` -> ``{role: value}``.

    With ``allow_range``, ``MIN:MAX`` means autoscaling between the two and is returned as a
    ``(min, max)`` tuple. Roles: ingress, detector, embedder, searcher, thumbnailer, people.
    """
    if spec is None or not spec.strip():
        return {}
    items = [s.strip() for s in spec.split(",") if s.strip()]
    out: dict[str, Any] = {}
    for item in items:
        if "=" in item:
            role, value = (s.strip() for s in item.split("=", 1))
        elif len(items) == 1:
            role, value = "*", item
        else:
            raise ConfigError(f"--{what}: expected ROLE=VALUE items separated by commas, got "
                              f"{item!r} (roles: {', '.join(ROLES)})")
        if role != "*" and role not in ROLES:
            raise ConfigError(f"--{what}: unknown deployment {role!r}; choose from "
                              f"{', '.join(ROLES)}")
        out[role] = _parse_value(value, what, allow_range)
    if "*" in out:
        value = out.pop("*")
        out = {**{r: value for r in ("detector", "embedder", "searcher")}, **out}
    return out


def _parse_value(value: str, what: str, allow_range: bool):
    try:
        if allow_range and ":" in value:
            low, high = (int(v) for v in value.split(":", 1))
            if low < 0 or high < max(low, 1):
                raise ValueError
            return (low, high)
        number = float(value) if what in ("cpus", "gpus") else int(value)
    except ValueError:
        form = "N or MIN:MAX" if allow_range else "a number"
        raise ConfigError(f"--{what}: {value!r} is not {form}") from None
    if number < 0 or (what == "replicas" and number < 1):
        raise ConfigError(f"--{what}: {value!r} must be {'>= 1' if what == 'replicas' else '>= 0'}")
    return number


def apply_cli_scaling(args: AppArgs, replicas: str | None, cpus: str | None,
                      gpus: str | None, target_ongoing: float | None = None) -> AppArgs:
    """A copy of ``args`` with the ``--replicas``, ``--cpus`` and ``--gpus`` specs applied."""
    data = args.model_dump()
    for role, value in parse_role_values(replicas, "replicas", allow_range=True).items():
        if isinstance(value, tuple):
            target = target_ongoing or (max(2, args.max_batch_size // 2) if role == "embedder"
                                        else 2)
            data[role]["autoscaling"] = {"min_replicas": value[0], "max_replicas": value[1],
                                         "target_ongoing_requests": target}
        else:
            data[role]["num_replicas"] = value
            data[role]["autoscaling"] = None
    for role, value in parse_role_values(cpus, "cpus").items():
        data[role]["num_cpus"] = value
    for role, value in parse_role_values(gpus, "gpus").items():
        data[role]["num_gpus"] = value
    return AppArgs.model_validate(data)


def serve_config(args: AppArgs, *, host: str = "0.0.0.0", port: int = 8000,
                 app_name: str = DEFAULT_APP_NAME, route_prefix: str = "/") -> dict[str, Any]:
    """A Serve config (``serve run`` / ``serve deploy`` / KubeRay ``serveConfigV2``) for ``args``.

    Application-level settings go to ``args:``; how each deployment scales goes to
    ``deployments:`` where operators expect to edit it. No API key is ever written here: list
    key digests under ``args.auth`` or set ``FACENET_READ_KEY`` / ``FACENET_ADMIN_KEY`` in the
    application's ``runtime_env`` (or the pods' environment).
    """
    app_args = args.model_dump(exclude_defaults=True, exclude=set(ROLES))
    app_args["index_dir"] = args.index_dir
    for role in ROLES:  # thread counts are constructor arguments, not Serve options
        threads = getattr(args, role).threads
        if threads:
            app_args[role] = {"threads": threads}
    deployments = []
    for name, options in args.serve_options().items():
        entry: dict[str, Any] = {"name": name}
        entry.update({k: v for k, v in options.items() if v is not None})
        deployments.append(entry)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": int(port)},
        "applications": [{
            "name": app_name,
            "route_prefix": route_prefix,
            "import_path": "facenet_platform.serve.app:build_app",
            "args": app_args,
            "deployments": deployments,
        }],
    }


def serve_config_yaml(args: AppArgs, **kwargs) -> str:
    import yaml

    header = (
        "# Ray Serve config of the facenet-platform application (generated by\n"
        "# `facenet-platform serve-config`). Run it with `serve run THIS.yaml`, deploy it to a\n"
        "# running cluster with `serve deploy THIS.yaml`, or paste `applications:` into a KubeRay\n"
        "# RayService's serveConfigV2. Every node needs `facenet-platform` installed and\n"
        "# index_dir reachable (a shared path or an s3:// / gs:// URI).\n"
        "# API keys (required): list sha256 digests of keys under args.auth.read_key_sha256 /\n"
        "# admin_key_sha256 (`facenet-platform serve-key` makes a key and its digest), or set\n"
        f"# `runtime_env: {{env_vars: {{{READ_KEY_ENV}: ..., {ADMIN_KEY_ENV}: ...}}}}` on the\n"
        "# application (or the pods' environment); no key is ever written here.\n"
    )
    return header + yaml.safe_dump(serve_config(args, **kwargs), sort_keys=False)
