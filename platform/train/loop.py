"""``train_loop_per_worker``: what every Ray Train worker runs.

One process per worker, one replica each, ``tf.distribute.MultiWorkerMirroredStrategy`` across
them (Ray's TensorflowTrainer sets ``TF_CONFIG``). The training step is a custom one:
``strategy.run`` inside a ``tf.function`` with a Keras 3 optimizer (``model.fit`` under MWMS
fails on NumPy input with Keras 3, and online mining needs the step anyway):

    local batch (P/W people x K images) -> model -> local embeddings
    -> all_gather (embeddings, labels) -> mine triplets for the local anchors in the global batch
    -> local share of the global mean loss -> gradients (summed over workers by the optimizer)

Per epoch: BN moving statistics are averaged over workers (Keras keeps one copy per worker),
the validation pairs are embedded (each worker a slice, all-gathered), and every worker calls
``ray.train.report``; rank 0 attaches the checkpoint:

    model.keras        the embedding network (what index/serve/export load)
    config.yaml        the resolved configuration
    train_state.npz    optimizer variables, softmax head, centers (to resume exactly)
    state.json         epoch, step, per-epoch and per-step history, restarts
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .config import CONFIG_FILE, TrainConfig, config_from_dict

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
STATE_FILE = "state.json"
TRAIN_STATE_FILE = "train_state.npz"


# ------------------------------------------------------------------------------------------
# helpers


def build_optimizer(cfg: TrainConfig, steps_per_epoch: int):
    import keras

    o = cfg.optimizer
    if o.schedule == "constant":
        lr = o.learning_rate
    elif o.schedule == "exponential":
        lr = keras.optimizers.schedules.ExponentialDecay(
            o.learning_rate, decay_steps=max(1, int(round(o.decay_epochs * steps_per_epoch))),
            decay_rate=o.decay_factor, staircase=True)
    else:
        lr = keras.optimizers.schedules.CosineDecay(
            o.learning_rate, decay_steps=max(1, cfg.train.epochs * steps_per_epoch))
    if o.name == "adam":
        return keras.optimizers.Adam(lr, beta_1=0.9, beta_2=0.999, epsilon=o.epsilon)
    if o.name == "rmsprop":
        return keras.optimizers.RMSprop(lr, rho=0.9, momentum=o.momentum, epsilon=o.epsilon)
    if o.name == "sgd":
        return keras.optimizers.SGD(lr, momentum=o.momentum, nesterov=True)
    return keras.optimizers.Adagrad(lr, initial_accumulator_value=0.1)


def make_summary_writer(logdir: str | None):
    """A TensorBoard event writer (tensorboardX, which ships with Ray Train/Tune; TensorFlow
    2.21 no longer brings the ``tensorboard`` package), or None."""
    if not logdir:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        logger.warning("tensorboardX is not installed: no TensorBoard logs")
        return None
    Path(logdir).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(logdir)


def current_lr(optimizer) -> float:
    return float(np.asarray(optimizer.learning_rate))


def _np(v) -> np.ndarray:
    """A Keras or tf.Variable's value as a NumPy array (tf.Variable.value is a method)."""
    return np.asarray(v.numpy())


def _opt_name(v) -> str:
    """``adam_1/Bottleneck_kernel_momentum`` -> ``Bottleneck_kernel_momentum``."""
    return v.path.split("/", 1)[-1]


def save_checkpoint(directory: Path, cfg: TrainConfig, model, optimizer, head, centers,
                    state: dict) -> None:
    """Write a checkpoint directory (rank 0)."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / MODEL_FILE)
    cfg.save(directory / CONFIG_FILE)
    # optimizer variables in order, named without the optimizer's own (uniquified) prefix
    arrays = {f"opt/{i:05d}/{_opt_name(v)}": _np(v) for i, v in enumerate(optimizer.variables)}
    if head is not None:
        arrays["head/kernel"] = _np(head.kernel)
        arrays["head/bias"] = _np(head.bias)
    if centers is not None:
        arrays["centers"] = _np(centers)
    np.savez(directory / TRAIN_STATE_FILE, **arrays)
    (directory / STATE_FILE).write_text(json.dumps(state, indent=1))


def restore_checkpoint(directory: Path, model, optimizer, head, centers) -> dict:
    """Load a checkpoint directory into the live objects; returns its state.json."""
    model.load_weights(directory / MODEL_FILE)
    state = json.loads((directory / STATE_FILE).read_text())
    path = directory / TRAIN_STATE_FILE
    if path.is_file():
        arrays = np.load(path)
        saved = sorted(k for k in arrays.files if k.startswith("opt/"))
        live = list(optimizer.variables)
        if ([k.split("/", 2)[2] for k in saved] == [_opt_name(v) for v in live]
                and all(arrays[k].shape == tuple(v.shape) for k, v in zip(saved, live))):
            for k, v in zip(saved, live):
                v.assign(arrays[k])
        else:
            logger.warning("optimizer state in %s does not match this run's trainable variables; "
                           "starting the optimizer afresh", directory)
        if head is not None and "head/kernel" in arrays.files:
            if arrays["head/kernel"].shape == tuple(head.kernel.shape):
                head.kernel.assign(arrays["head/kernel"])
                head.bias.assign(arrays["head/bias"])
            else:
                logger.warning("softmax head in %s has another number of classes; new head", directory)
        if centers is not None and "centers" in arrays.files:
            if arrays["centers"].shape == tuple(centers.shape):
                centers.assign(arrays["centers"])
    return state


# ------------------------------------------------------------------------------------------


def train_loop_per_worker(loop_config: dict) -> None:
    """The Ray Train worker function (``TensorflowTrainer(train_loop_per_worker, ...)``).

    ``loop_config``: ``{"config": resolved config dict, "num_classes": int, "num_images": int,
    "validation": ValidationSet dict or None}``.
    """
    import ray.train

    cfg = config_from_dict(loop_config["config"], "resolved config")
    threads = cfg.scaling.threads_per_worker
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel(logging.WARNING)  # MWMS logs every collective at INFO
    logging.getLogger("facenet_platform").setLevel(logging.INFO)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
    if not cfg.scaling.use_gpu:
        tf.config.set_visible_devices([], "GPU")

    import keras

    from facenet_platform.core.evaluation import evaluate_verification, squared_distances
    from facenet_platform.core.model import prelogits as prelogits_model

    from .data import IdentitySampler, ValidationSet, augment, collect_rows, standardize
    from .losses import softmax_center_loss_global, sum_global, triplet_loss_global
    from .models import build_model

    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    t_start = time.perf_counter()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    logger.info("worker %d/%d: MultiWorkerMirroredStrategy up in %.1f s", rank, world,
                time.perf_counter() - t_start)
    assert strategy.num_replicas_in_sync == world, (strategy.num_replicas_in_sync, world)

    # -- data --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    shard = ray.train.get_dataset_shard("train")
    pool = collect_rows(shard, ("image", "label"),
                        keep=lambda b: np.asarray(b["label"]) % world == rank)
    if len(pool["label"]) == 0:
        raise RuntimeError(f"worker {rank}: no training identities (label % {world} == {rank})")
    sampler = IdentitySampler(pool["label"], cfg.local_people, cfg.data.images_per_person)
    logger.info("worker %d/%d: %d images of %d identities in %.1f s", rank, world,
                len(pool["label"]), len(sampler.labels), time.perf_counter() - t0)
    val = None
    if loop_config.get("validation"):
        val = ValidationSet.from_dict(loop_config["validation"])
        rows = collect_rows(ray.train.get_dataset_shard("val"), ("image", "index"))
        val_images = np.empty((len(val.paths), *rows["image"].shape[1:]), np.uint8)
        val_images[rows["index"]] = rows["image"]

    steps_per_epoch = cfg.train.steps_per_epoch or max(
        1, int(np.ceil(loop_config["num_images"] / cfg.global_batch_size)))
    num_classes = int(loop_config["num_classes"])
    softmax = cfg.loss.name == "softmax_center"

    # -- model, head, optimizer --------------------------------------------------------------
    checkpoint = ray.train.get_checkpoint()
    resume_dir = None if checkpoint is not None else cfg.run.resume_from
    fresh = checkpoint is None and resume_dir is None
    with strategy.scope():
        model = build_model(cfg.model, load_pretrained=fresh)
        pre_model = prelogits_model(model) if softmax else None
        head = None
        if softmax:
            reg = keras.regularizers.L2(cfg.model.weight_decay) if cfg.model.weight_decay else None
            head = keras.layers.Dense(num_classes, kernel_regularizer=reg, name="Logits")
            head.build((None, cfg.model.embedding_size))
        optimizer = build_optimizer(cfg, steps_per_epoch)
        trainable = list(model.trainable_variables) + (list(head.trainable_variables) if head else [])
        optimizer.build(trainable)
    centers = (tf.Variable(tf.zeros((num_classes, cfg.model.embedding_size)), trainable=False,
                           name="centers") if softmax else None)

    state = {"epoch": 0, "step": 0, "history": [], "steps": [], "restarts": 0,
             "resumed_from_epoch": None}
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = restore_checkpoint(Path(d), model, optimizer, head, centers)
        state["restarts"] = int(state.get("restarts", 0)) + 1
        state["resumed_from_epoch"] = state["epoch"]
        logger.warning("worker %d: restored checkpoint of epoch %d (restart %d)", rank,
                       state["epoch"], state["restarts"])
    elif resume_dir is not None:
        state = restore_checkpoint(Path(resume_dir), model, optimizer, head, centers)
        state["resumed_from_epoch"] = state["epoch"]
        logger.info("worker %d: resuming from %s (epoch %d)", rank, resume_dir, state["epoch"])

    logger.info("worker %d: model and optimizer ready at %.1f s", rank, time.perf_counter() - t_start)

    # -- compiled functions ------------------------------------------------------------------
    loss_cfg = cfg.loss

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            if softmax:
                pre = pre_model(x, training=True)
                logits = head(pre)
                loss, metrics, new_centers = softmax_center_loss_global(
                    pre, logits, y, centers, center_factor=loss_cfg.center_loss_factor,
                    center_alpha=loss_cfg.center_alpha, norm_factor=loss_cfg.prelogits_norm_factor,
                    norm_p=loss_cfg.prelogits_norm_p)
            else:
                emb = model(x, training=True)
                loss, metrics = triplet_loss_global(emb, y, loss_cfg.margin, loss_cfg.mining)
            reg_losses = list(model.losses) + (list(head.losses) if head is not None else [])
            reg = tf.add_n(reg_losses) if reg_losses else tf.constant(0.0)
            total = loss + reg / world
        grads = tape.gradient(total, trainable)
        optimizer.apply_gradients(zip(grads, trainable))
        if softmax:
            centers.assign(new_centers)
        metrics["loss"] = sum_global(tf.stop_gradient(loss)) + reg
        metrics["regularization"] = reg
        return metrics

    @tf.function
    def train_step(x, y):
        out = strategy.run(replica_step, args=(x, y))
        return {k: strategy.experimental_local_results(v)[0] for k, v in out.items()}

    @tf.function
    def embed_step(x):
        def fn(x):
            emb = model(x, training=False)
            return tf.distribute.get_replica_context().all_gather(emb, axis=0)
        return strategy.experimental_local_results(strategy.run(fn, args=(x,)))[0]

    @tf.function
    def sync_statistics():
        def fn():
            rctx = tf.distribute.get_replica_context()
            for v in model.non_trainable_variables:
                v.assign(rctx.all_reduce(tf.distribute.ReduceOp.MEAN, tf.identity(v.value)))
        strategy.run(fn)

    def validate() -> dict:
        b = cfg.validation.batch_size
        m = len(val.paths)
        per_round = b * world
        gathered, order = [], []
        for start in range(0, m, per_round):
            part = val_images[start + rank * b:start + (rank + 1) * b]
            x = (standardize(part, cfg.data.standardization) if len(part)
                 else np.zeros((0, *val_images.shape[1:]), np.float32))
            if len(x) < b:  # every worker runs the same batch shape; padding rows are dropped
                x = np.concatenate([x, np.zeros((b - len(x), *x.shape[1:]), np.float32)])
            gathered.append(np.asarray(embed_step(tf.constant(x))))  # (world * b, D)
            order.append(np.arange(start, start + per_round))
        full, order = np.concatenate(gathered), np.concatenate(order)
        keep = order < m
        emb = np.empty((m, full.shape[1]), np.float32)
        emb[order[keep]] = full[keep]
        d = squared_distances(emb[val.idx1], emb[val.idx2])
        rep = evaluate_verification(d, val.issame, val.folds)
        return {"val_accuracy": rep.accuracy, "val_accuracy_std": rep.accuracy_std,
                "val_pairs": len(val),
                "val_auc": rep.auc, "val_threshold": rep.threshold}

    # -- TensorBoard (rank 0) ------------------------------------------------------------------
    writer = make_summary_writer(cfg.run.tensorboard_dir) if rank == 0 else None

    def scalars(values: dict, step: int, prefix: str):
        if writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                writer.add_scalar(f"{prefix}/{k}", float(v), step)
        writer.flush()

    # -- batches -----------------------------------------------------------------------------
    d_cfg = cfg.data

    def make_batch(epoch: int, step: int):
        rng = np.random.default_rng([cfg.train.seed, epoch, step, rank])
        idx, labels = sampler.sample(rng)
        crops = augment(pool["image"][idx], cfg.model.input_size, rng,
                        random_crop=d_cfg.random_crop, random_flip=d_cfg.random_flip,
                        random_rotate=d_cfg.random_rotate)
        return standardize(crops, d_cfg.standardization), labels.astype(np.int32)

    initial = {}
    if val is not None and cfg.validation.before_training and fresh:
        initial = {f"{k}_initial": v for k, v in validate().items()}
        logger.info("worker %d: before training %s", rank, initial)
        scalars({k[:-8]: v for k, v in initial.items()}, 0, "epoch")

    # -- epochs ------------------------------------------------------------------------------
    start_epoch = int(state["epoch"]) + 1
    executor = ThreadPoolExecutor(max_workers=1)
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        t_epoch = time.perf_counter()
        sums: dict[str, float] = {}
        step_times = []
        future = executor.submit(make_batch, epoch, 0)
        for step in range(steps_per_epoch):
            x, y = future.result()
            if step + 1 < steps_per_epoch:
                future = executor.submit(make_batch, epoch, step + 1)
            t = time.perf_counter()
            out = train_step(tf.constant(x), tf.constant(y))
            out = {k: float(np.asarray(v)) for k, v in out.items()}
            step_times.append(time.perf_counter() - t)
            if len(step_times) == 1 and epoch == start_epoch:
                logger.info("worker %d: first step (traced) took %.1f s, at %.1f s", rank,
                            step_times[-1], time.perf_counter() - t_start)
            state["step"] += 1
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
            record = {"step": state["step"], "epoch": epoch, **out, "learning_rate": current_lr(optimizer)}
            state["steps"].append(record)
            if cfg.train.log_every_steps and state["step"] % cfg.train.log_every_steps == 0:
                scalars(out, state["step"], "step")
        train_s = time.perf_counter() - t_epoch
        sync_statistics()
        metrics = {k: v / steps_per_epoch for k, v in sums.items()}
        steady = step_times[1:] if len(step_times) > 1 else step_times
        metrics.update({
            "epoch": epoch,
            "step": state["step"],
            "learning_rate": current_lr(optimizer),
            "train_time_s": train_s,
            "step_time_s": float(np.median(steady)),
            "images_per_s_per_worker": cfg.local_batch_size / float(np.median(steady)),
            "num_workers": world,
            "restarts": state["restarts"],
            "resumed_from_epoch": state["resumed_from_epoch"],
        })
        if val is not None:
            t = time.perf_counter()
            metrics.update(validate())
            metrics["val_time_s"] = time.perf_counter() - t
        if epoch == start_epoch:
            metrics.update(initial)
        state["epoch"] = epoch
        state["history"].append(metrics)
        scalars({k: v for k, v in metrics.items() if k not in ("epoch", "step")}, epoch, "epoch")
        logger.info("worker %d epoch %d: %s", rank, epoch,
                    {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
        report_metrics = {k: v for k, v in metrics.items() if v is not None}
        if rank == 0:
            with tempfile.TemporaryDirectory(prefix="facenet-ckpt-") as tmp:
                save_checkpoint(Path(tmp), cfg, model, optimizer, head, centers, state)
                ray.train.report(report_metrics,
                                 checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(report_metrics)
    executor.shutdown()
    if writer is not None:
        writer.close()
