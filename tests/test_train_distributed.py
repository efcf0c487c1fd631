"""Ray Train on 2 local workers: global triplet mining equals one worker's; a tiny end-to-end
run writes checkpoints, resumes from one, and its export loads and embeds.

Both tests share one local Ray instance; each ``fit`` starts 2 TensorFlow worker processes
(MultiWorkerMirroredStrategy over localhost), so the module takes a minute or two.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.train")
tf = pytest.importorskip("tensorflow")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


# ------------------------------------------------------------------------------------------
# mining equivalence


def _mining_worker(config: dict) -> None:
    """Each worker holds half of a fixed global batch; mines, computes the loss and the
    gradient w.r.t. its local embeddings; writes them for the driver to compare."""
    import numpy as np
    import ray.train
    import tensorflow as tf

    from facenet_platform.train.losses import gather_global, replica_id, triplet_loss_global
    from facenet_platform.train.mining import select_triplets

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    emb_all = np.asarray(config["emb"], np.float32)
    labels_all = np.asarray(config["labels"], np.int32)
    n = len(emb_all) // world
    local = tf.Variable(emb_all[rank * n:(rank + 1) * n])
    labels = tf.constant(labels_all[rank * n:(rank + 1) * n])
    out = {}
    for mining_name in ("semihard", "hard"):
        @tf.function
        def step():
            def fn():
                with tf.GradientTape() as tape:
                    loss, metrics = triplet_loss_global(tf.identity(local), labels,
                                                        config["margin"], mining_name)
                grad = tape.gradient(loss, local)
                a, p, neg = select_triplets(gather_global(tf.identity(local)),
                                            gather_global(labels), replica_id() * n, n, mining_name)
                return a, p, neg, loss, grad, metrics["triplet_loss"], metrics["active_fraction"]
            res = strategy.run(fn)
            return [strategy.experimental_local_results(r)[0] for r in res]

        a, p, neg, loss, grad, total, active = [np.asarray(v) for v in step()]
        out.update({f"{mining_name}_{k}": v for k, v in dict(
            a=a, p=p, n=neg, loss=loss, grad=grad, total=total, active=active).items()})
    np.savez(Path(config["out"]) / f"rank{rank}.npz", **out)
    ray.train.report({"done": 1})


def test_two_worker_mining_selects_the_same_triplets_as_one(ray_local, tmp_path):
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from facenet_platform.train.losses import triplet_loss_global
    from facenet_platform.train.mining import select_triplets, select_triplets_reference

    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(6), 4)
    rng.shuffle(labels)  # people straddle the two workers: positives/negatives are remote too
    emb = rng.normal(size=(24, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    margin = 0.8  # most triplets active, so that gradients are non-trivial

    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    trainer = TensorflowTrainer(
        _mining_worker,
        train_loop_config={"emb": emb.tolist(), "labels": labels.tolist(), "margin": margin,
                           "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="mining", storage_path=str(tmp_path / "runs")),
    )
    trainer.fit()
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]

    for mining_name in ("semihard", "hard"):
        # one worker, the whole global batch
        a, p, n = select_triplets(tf.constant(emb), tf.constant(labels), 0, 24, mining_name)
        single = sorted(zip(a.numpy().tolist(), p.numpy().tolist(), n.numpy().tolist()))
        assert single == sorted(select_triplets_reference(emb, labels, mining_name))
        both = sorted(t for r in ranks for t in zip(r[f"{mining_name}_a"].tolist(),
                                                    r[f"{mining_name}_p"].tolist(),
                                                    r[f"{mining_name}_n"].tolist()))
        assert both == single, mining_name
        # worker 0 anchors on rows 0-11, worker 1 on 12-23
        assert (ranks[0][f"{mining_name}_a"] < 12).all()
        assert (ranks[1][f"{mining_name}_a"] >= 12).all()

        # loss: the workers' shares add up to one worker's loss; global metrics agree
        var = tf.Variable(emb)
        with tf.GradientTape() as tape:
            loss, metrics = triplet_loss_global(tf.identity(var), tf.constant(labels), margin,
                                                mining_name)
        grad = tf.convert_to_tensor(tape.gradient(loss, var)).numpy()
        shares = sum(float(r[f"{mining_name}_loss"]) for r in ranks)
        np.testing.assert_allclose(shares, loss.numpy(), rtol=1e-5)
        for r in ranks:
            np.testing.assert_allclose(r[f"{mining_name}_total"], loss.numpy(), rtol=1e-5)
            np.testing.assert_allclose(r[f"{mining_name}_active"],
                                       metrics["active_fraction"].numpy(), rtol=1e-6)
        # gradient: through the differentiable all_gather each worker gets the gradient of
        # the *global* loss w.r.t. its own rows (remote anchors' terms included)
        dist_grad = np.concatenate([ranks[0][f"{mining_name}_grad"], ranks[1][f"{mining_name}_grad"]])
        assert np.abs(grad).max() > 0
        np.testing.assert_allclose(dist_grad, grad, atol=1e-6)


# ------------------------------------------------------------------------------------------
# end to end


def make_face_folder(root: Path, people: int = 6, per_person: int = 5, size: int = 48) -> list[str]:
    """A labelled image folder LFW-style (``Name/Name_0001.jpg``): each person a colour and
    stripe pattern, each image with its own noise and shift."""
    import cv2

    rng = np.random.default_rng(0)
    names = [f"Person_{chr(ord('A') + i)}" for i in range(people)]
    yy, xx = np.mgrid[0:size, 0:size]
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        colour = rng.integers(40, 215, size=3)
        for j in range(per_person):
            stripes = 60 * np.sin((xx * (i + 1) + yy * (j % 2 + 1)) / 6.0 + rng.uniform(0, 1))
            img = colour[None, None, :] + stripes[..., None] + rng.normal(0, 12, (size, size, 3))
            img = np.clip(img, 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{name}_{j + 1:04d}.jpg"), img[..., ::-1])
    return names


def make_pairs_file(path: Path, names: list[str], n: int = 6) -> None:
    lines = [str(n)]
    for k in range(n):
        lines.append(f"{names[k % len(names)]}\t1\t{2 + k % 3}")
    for k in range(n):
        lines.append(f"{names[k % len(names)]}\t{1 + k % 4}\t{names[(k + 1) % len(names)]}\t{2 + k % 3}")
    path.write_text("\n".join(lines) + "\n")


def tiny_config(tmp_path: Path, **overrides):
    from facenet_platform.train.config import config_from_dict

    data = {
        "model": {"architecture": "inception_resnet_v1_scaled", "pretrained": False,
                  "input_size": 32, "embedding_size": 16, "width": 0.125, "repeats": [1, 0, 0]},
        "data": {"root": str(tmp_path / "faces"), "min_images_per_person": 2,
                 "people_per_batch": 4, "images_per_person": 2, "resize": 36},
        "loss": {"name": "triplet", "margin": 0.2, "mining": "semihard"},
        "optimizer": {"learning_rate": 0.001},
        "train": {"epochs": 1, "steps_per_epoch": 2},
        "validation": {"pairs": str(tmp_path / "pairs.txt"), "lfw_dir": str(tmp_path / "faces"),
                       "n_folds": 2, "batch_size": 8},
        "scaling": {"num_workers": 2},
        "run": {"storage_path": str(tmp_path / "runs"), "name": "tiny-a", "max_failures": 0,
                "num_to_keep": 1},
    }
    return config_from_dict(data, "tiny", list(overrides.items()))


def test_tiny_run_checkpoints_resumes_and_exports(ray_local, tmp_path):
    from facenet_platform.core.model_io import load_exported, load_model
    from facenet_platform.train.config import load_config
    from facenet_platform.train.export import export_checkpoint
    from facenet_platform.train.trainer import run_training

    names = make_face_folder(tmp_path / "faces")
    make_pairs_file(tmp_path / "pairs.txt", names)

    # run A: 1 epoch x 2 steps on 2 workers
    cfg = tiny_config(tmp_path)
    a = run_training(cfg)
    assert [h["epoch"] for h in a.history] == [1]
    h = a.history[0]
    assert h["num_workers"] == 2 and h["triplets"] > 0 and h["step"] == 2
    assert 0.0 <= h["active_fraction"] <= 1.0 and np.isfinite(h["loss"])
    assert 0.0 <= h["val_accuracy"] <= 1.0 and h["learning_rate"] == pytest.approx(0.001)
    latest = Path(a.latest_checkpoint)
    assert {"model.keras", "config.yaml", "state.json", "train_state.npz"} <= {
        p.name for p in latest.iterdir()}
    assert load_config(latest) == cfg  # the resolved config travels with the checkpoint
    assert a.best_checkpoint == a.latest_checkpoint and "val_accuracy" in a.best_metrics
    assert list(Path(cfg.run.tensorboard_dir).glob("events.out.tfevents.*"))
    state = json.loads((latest / "state.json").read_text())
    assert state["epoch"] == 1 and len(state["steps"]) == 2

    # run B: resume from A's checkpoint (model, optimizer, epoch) and train epoch 2
    cfg_b = tiny_config(tmp_path, **{"train.epochs": 2, "run.name": "tiny-b",
                                     "run.resume_from": str(latest)})
    b = run_training(cfg_b)
    assert [h["epoch"] for h in b.history] == [1, 2]
    assert b.history[:1] == a.history  # carried over, not re-run
    assert b.history[1]["resumed_from_epoch"] == 1 and b.history[1]["step"] == 4

    # export the result as TFLite; it loads by path and embeds like the Keras model
    out = tmp_path / "tiny.tflite"
    report = export_checkpoint(b.latest_checkpoint, "tflite", out, num_images=4)
    assert out.is_file() and report["difference"]["l2_max"] < 1e-4
    tflite = load_exported(out)
    keras_model = load_model(b.latest_checkpoint)
    x = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32)
    emb = tflite(x)
    assert emb.shape == (3, 16) and tflite.input_shape == (None, 32, 32, 3)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(emb, np.asarray(keras_model(x, training=False)), atol=1e-4)

    # ... and the index and serve sides load it by path through FaceEmbedder
    from facenet_platform.core.embedding import FaceEmbedder

    crops = np.random.default_rng(2).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    from_tflite = FaceEmbedder(out)(crops)
    from_checkpoint = FaceEmbedder(b.latest_checkpoint, backend="keras-fp32")(crops)
    assert from_tflite.shape == (3, 16)
    np.testing.assert_allclose(from_tflite, from_checkpoint, atol=1e-4)
