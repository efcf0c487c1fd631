"""Driver side of a training run: datasets, ``TensorflowTrainer``, result.

    cfg = load_config("configs/finetune_lfw_triplet.yaml", ["loss.margin=0.3"])
    result = run_training(cfg)
    print(result.best_checkpoint)

- Ray: joins ``run.ray_address`` (``auto`` on a cluster, e.g. under ``ray job submit``) or
  starts a local Ray with at least ``num_workers + 1`` logical CPUs.
- Datasets: the training images and the validation pair images are read with Ray Data and
  materialised once in the object store before the workers start (so that Ray Data's tasks do
  not wait for the CPUs the workers hold); workers read them with ``get_dataset_shard``.
- ``TensorflowTrainer(train_loop_per_worker, ScalingConfig(num_workers, use_gpu,
  resources_per_worker), RunConfig(name, storage_path, FailureConfig(max_failures),
  CheckpointConfig(num_to_keep, "val_accuracy", "max")))``. ``storage_path`` is a local
  directory or any pyarrow filesystem URI.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facenet_platform.core.errors import ConfigError
from facenet_platform.ray_connection import connect_ray, resolve_address

from .config import TrainConfig

logger = logging.getLogger(__name__)

#: environment variables handed to the workers when set on the driver
PROPAGATED_ENV = ("FACENET_PLATFORM_CACHE", "LFW_DIR", "TF_CPP_MIN_LOG_LEVEL",
                  "TF_ENABLE_ONEDNN_OPTS")


@dataclass
class TrainResult:
    """What a finished run left behind."""

    path: str  # the run's folder in storage
    metrics: dict[str, Any]  # the last reported metrics
    history: list[dict[str, Any]]  # every epoch's metrics (from the latest checkpoint)
    latest_checkpoint: str | None
    best_checkpoint: str | None
    best_metrics: dict[str, Any] | None
    wall_s: float


def default_storage_path() -> str:
    return str(Path("~/ray_results").expanduser())


def connect_for_training(cfg: TrainConfig) -> None:
    """Join ``run.ray_address`` (or ``$RAY_ADDRESS``), or start a local Ray with a logical CPU
    for every worker plus one for Ray Data, even on a 2-core box (the workers' TensorFlow
    threads are capped by ``scaling.threads_per_worker``)."""
    cpus_needed = cfg.scaling.num_workers * cfg.scaling.resources_per_worker.get("CPU", 1.0) + 1
    num_cpus = max(os.cpu_count() or 1, int(cpus_needed + 0.999))
    address = resolve_address(cfg.run.ray_address)
    connect_ray(address, num_cpus=None if address else num_cpus)


def resolve_run(cfg: TrainConfig) -> TrainConfig:
    """Fill in run.name, storage_path and tensorboard_dir (the values saved with checkpoints)."""
    def absolute(p):
        if p is None or "://" in p:
            return p
        return str(Path(os.path.expandvars(p)).expanduser().resolve())

    # relative paths are relative to where the command runs; workers get absolute ones
    cfg.data.root = absolute(cfg.data.root)
    cfg.data.people_file = absolute(cfg.data.people_file)
    cfg.validation.pairs = absolute(cfg.validation.pairs)
    cfg.validation.lfw_dir = absolute(cfg.validation.lfw_dir)
    r = cfg.run
    if r.name is None:
        r.name = f"facenet-{cfg.loss.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if r.storage_path is None:
        r.storage_path = default_storage_path()
    elif "://" not in r.storage_path:
        r.storage_path = str(Path(r.storage_path).expanduser().resolve())
    if r.tensorboard_dir is None:
        if "://" in r.storage_path:
            import tempfile

            r.tensorboard_dir = str(Path(tempfile.gettempdir()) / "facenet-tensorboard" / r.name)
            logger.info("storage is remote; TensorBoard logs go to %s", r.tensorboard_dir)
        else:
            r.tensorboard_dir = str(Path(r.storage_path) / r.name / "tensorboard")
    if r.resume_from is not None:
        path = Path(r.resume_from).expanduser()
        if not (path / "model.keras").is_file() or not (path / "state.json").is_file():
            raise ConfigError(f"run.resume_from: {path} is not a checkpoint directory "
                              "(expected model.keras and state.json)")
        r.resume_from = str(path.resolve())
    return cfg


def prepare_datasets(cfg: TrainConfig):
    """Index the image folder and build (and materialise) the Ray datasets."""
    from .data import (build_train_dataset, build_val_dataset, index_image_folder,
                       load_validation_pairs)

    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    d = cfg.data
    index = index_image_folder(d.root, people_file=d.people_file,
                               min_images=d.min_images_per_person, max_people=d.max_people)
    if index.num_classes < cfg.data.people_per_batch:
        logger.warning("%d people but %d people per batch: people repeat within a batch",
                       index.num_classes, cfg.data.people_per_batch)
    logger.info("training data: %s", index.summary())
    t = time.perf_counter()
    train_ds = build_train_dataset(index, d.center_crop, d.resize).materialize()
    datasets = {"train": train_ds}
    val = None
    if cfg.validation.pairs:
        val = load_validation_pairs(cfg.validation.pairs, cfg.validation.lfw_dir,
                                    max_pairs=cfg.validation.max_pairs,
                                    n_folds=cfg.validation.n_folds)
        datasets["val"] = build_val_dataset(val, d.center_crop, d.resize,
                                            cfg.model.input_size).materialize()
    logger.info("datasets read and preprocessed in %.1f s", time.perf_counter() - t)
    return index, val, datasets


def build_trainer(cfg: TrainConfig, index, val, datasets):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from .loop import train_loop_per_worker

    s, r = cfg.scaling, cfg.run
    resources = dict(s.resources_per_worker)
    if s.use_gpu:
        resources.setdefault("GPU", 1.0)
    scaling = ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                            resources_per_worker=resources)
    score = "val_accuracy" if val is not None else None
    storage_path, storage_fs = r.storage_path, None
    if "://" in storage_path:
        import pyarrow.fs

        storage_fs, storage_path = pyarrow.fs.FileSystem.from_uri(storage_path)
    env = {k: os.environ[k] for k in PROPAGATED_ENV if os.environ.get(k)}
    run_config = RunConfig(
        name=r.name,
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        failure_config=FailureConfig(max_failures=r.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=r.num_to_keep,
                                           checkpoint_score_attribute=score,
                                           checkpoint_score_order="max"),
        worker_runtime_env={"env_vars": env} if env else None,
    )
    loop_config = {
        "config": cfg.to_dict(),
        "num_classes": index.num_classes,
        "num_images": len(index),
        "validation": val.to_dict() if val is not None else None,
    }
    return TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling,
        run_config=run_config,
        datasets=datasets,
        # identity sharding happens on the workers (label % world_size == rank)
        dataset_config=DataConfig(datasets_to_split=[]),
    )


def _checkpoint_path(ckpt) -> str | None:
    if ckpt is None:
        return None
    fs = getattr(ckpt, "filesystem", None)
    if fs is not None and getattr(fs, "type_name", "local") != "local":
        return f"{fs.type_name}://{ckpt.path}"
    return ckpt.path


def run_training(cfg: TrainConfig) -> TrainResult:
    """Run a configured training to the end; returns where the checkpoints are."""
    import json

    resolve_run(cfg)
    connect_for_training(cfg)
    t0 = time.perf_counter()
    index, val, datasets = prepare_datasets(cfg)
    trainer = build_trainer(cfg, index, val, datasets)
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if result.error:
        raise result.error
    best, best_metrics = None, None
    if result.best_checkpoints:
        key = "val_accuracy" if val is not None else "epoch"
        best, best_metrics = max(result.best_checkpoints,
                                 key=lambda cm: (cm[1].get(key, float("-inf")), cm[1].get("epoch", 0)))
    history: list = []
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            state_file = Path(d) / "state.json"
            if state_file.is_file():
                history = json.loads(state_file.read_text()).get("history", [])
    return TrainResult(
        path=str(result.path),
        metrics=dict(result.metrics or {}),
        history=history,
        latest_checkpoint=_checkpoint_path(result.checkpoint),
        best_checkpoint=_checkpoint_path(best),
        best_metrics=dict(best_metrics) if best_metrics else None,
        wall_s=wall,
    )
