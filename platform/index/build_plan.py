"""The resource plan of ``index build``: actor pool sizes, CPUs/GPUs per actor and batch sizes,
from what the options leave open and what the Ray cluster has (``ray.cluster_resources()``).

On 2 CPUs: one detection and one embedding actor of 0.75 CPU each and decode tasks of 0.25 CPU,
so both cores stay busy; with GPUs, one embedding actor per GPU with batches of 256 crops and the
CPUs for detection. Pure arithmetic: no Ray import.
"""

from __future__ import annotations

from dataclasses import dataclass

from facenet_platform.core.errors import ConfigError

from .build_options import BuildOptions

__all__ = ["DETECT_SHARE", "ResourcePlan", "plan_resources"]


@dataclass(frozen=True)
class ResourcePlan:
    """Pool sizes and per-actor resources of one build."""

    detect_actors: int
    detect_cpus: float
    detect_threads: int
    embed_actors: int
    embed_cpus: float
    embed_gpus: float
    embed_threads: int
    embed_batch_size: int
    model_batch_size: int
    decode_cpus: float
    cluster_cpus: float
    cluster_gpus: float


#: Fraction of the CPUs left after read+decode that the CPU plan gives to detection actors.
DETECT_SHARE = 2 / 3


def plan_resources(options: BuildOptions, cluster: dict[str, float]) -> ResourcePlan:
    """Defaults for what ``options`` leaves open, from ``ray.cluster_resources()``.

    CPU only: keep ``max(0.5, 10 %)`` of the CPUs for read+decode tasks and give
    :data:`DETECT_SHARE` of the rest to detection, the remainder to embedding (measured per core:
    MTCNN 16-18 ms per photo, bf16 embedding 8.4 ms per face, about 1.2 faces per photo); on
    fewer than 4 CPUs one actor of each with fractional CPUs, so nothing waits for a CPU the
    actors reserved. GPUs: one embedding actor per GPU (batch 256), detection on the
    CPUs (the MTCNN backend is CPU-only).
    """
    cpus = float(cluster.get("CPU", 1.0)) or 1.0
    gpus = float(cluster.get("GPU", 0.0))
    embed_gpus = options.embed_gpus if options.embed_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if embed_gpus > 0 and gpus <= 0:
        raise ConfigError(f"embed_gpus={embed_gpus} but the Ray cluster has no GPU")
    reserve = max(0.5, 0.1 * cpus)
    avail = max(cpus - reserve, 0.5)
    if embed_gpus > 0:
        embed_actors = options.embed_actors or max(1, int(gpus // embed_gpus))
        embed_cpus = options.embed_cpus if options.embed_cpus is not None else min(1.0, avail / 4)
        left = max(avail - embed_actors * embed_cpus, 0.5)
        detect_actors = options.detect_actors or max(1, int(left))
        detect_cpus = options.detect_cpus if options.detect_cpus is not None else \
            min(1.0, left / detect_actors)
        embed_batch = options.embed_batch_size or 256
        model_batch = embed_batch
    else:
        detect_actors = options.detect_actors or max(1, int(avail * DETECT_SHARE))
        embed_actors = options.embed_actors or max(1, int(avail - detect_actors))
        per_actor = min(1.0, avail / (detect_actors + embed_actors))
        detect_cpus = options.detect_cpus if options.detect_cpus is not None else per_actor
        embed_cpus = options.embed_cpus if options.embed_cpus is not None else per_actor
        embed_batch = options.embed_batch_size or 64
        # FaceEmbedder pads every forward pass to its batch size: keep it small on CPU.
        model_batch = min(embed_batch, 32)
    decode_cpus = options.decode_cpus if options.decode_cpus is not None else 0.25
    return ResourcePlan(
        detect_actors=detect_actors, detect_cpus=round(detect_cpus, 3),
        detect_threads=max(1, round(detect_cpus)),
        embed_actors=embed_actors, embed_cpus=round(embed_cpus, 3), embed_gpus=embed_gpus,
        embed_threads=max(1, round(embed_cpus)), embed_batch_size=embed_batch,
        model_batch_size=model_batch, decode_cpus=decode_cpus,
        cluster_cpus=cpus, cluster_gpus=gpus,
    )
