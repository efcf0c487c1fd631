"""Jobs on a local two-node Ray cluster (cluster/local_cluster.py): a head and a worker node.

Both jobs go through the job server (``JobSubmissionClient``, what ``ray job submit`` uses) and
run the real entry points:

- ``python -m facenet_platform.train --config tiny.yaml`` with 2 workers that must land on
  different nodes (each worker asks for one ``train_slot``; each node has exactly one), and
  writes a checkpoint;
- ``facenet-platform index build @list.txt --out INDEX`` over a few dozen LFW images (generated
  variants of the scikit-image astronaut when LFW is absent), whose detection and embedding
  actors need more CPUs than one node has, so they use both nodes; the Parquet faces table
  has one row per (content_hash, face_index), none missing or twice.

Node placement is read back from the state API (actors of the job, with their node ids).
The machine is shared: the cluster is small (2 + 2 logical CPUs) and everything is tiny.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "cluster"))

from local_cluster import LocalCluster, last_json, sample_images  # noqa: E402

pytestmark = pytest.mark.slow

PY = sys.executable
CLI = str(Path(sys.executable).parent / "facenet-platform")


def cluster_env(tmp_path_factory) -> dict[str, str]:
    """What the cluster's processes and jobs need from ours: the weights cache and LFW."""
    cache = os.environ.get("FACENET_PLATFORM_CACHE") or str(tmp_path_factory.mktemp("fpcache"))
    env = {"FACENET_PLATFORM_CACHE": cache}
    for key in ("LFW_DIR", "FACENET_MAX_PIXELS"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = cluster_env(tmp_path_factory)
    with LocalCluster(head_cpus=2, worker_cpus=2, env=env, head_resources={"train_slot": 1},
                      worker_resources={"train_slot": 1}) as c:
        yield c  # RAY_AUTH_MODE set for this process's clients (state API) while it runs


def run_job(cluster: LocalCluster, entrypoint: str, timeout_s: float = 900,
            env_vars: dict[str, str] | None = None) -> tuple[str, str]:
    """Submit through the job server, wait, return (submission_id, logs); fail with the logs."""
    try:
        sid, logs, _ = cluster.run_job(entrypoint, timeout_s, env_vars)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    return sid, logs


def test_cluster_has_two_nodes(cluster):
    assert len(cluster._alive_nodes()) == 2  # asked of the GCS, not of the fixture's records
    assert cluster.nodes["worker"].labels.get("facenet/node-role") == "worker"
    assert cluster.nodes["head"].labels.get("facenet/node-role") == "head"


# ------------------------------------------------------------------------------------------
# training job


def _face_folder(root: Path, people: int = 6, per_person: int = 4, size: int = 48) -> None:
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(people):
        (root / f"p{i}").mkdir(parents=True)
        colour = rng.integers(40, 215, size=3)
        for j in range(per_person):
            stripes = 60 * np.sin((xx * (i + 1) + yy * (j % 2 + 1)) / 6.0 + rng.uniform(0, 1))
            img = colour[None, None, :] + stripes[..., None] + rng.normal(0, 12, (size, size, 3))
            cv2.imwrite(str(root / f"p{i}" / f"p{i}_{j + 1:04d}.jpg"),
                        np.clip(img, 0, 255).astype(np.uint8)[..., ::-1])


TINY_TRAIN = """\
# tiny 2-worker run for the cluster test: one worker per node (train_slot), no validation
model: {architecture: inception_resnet_v1_scaled, pretrained: false, input_size: 32,
        embedding_size: 16, width: 0.125, repeats: [1, 0, 0]}
data: {root: %(root)s, min_images_per_person: 2, people_per_batch: 4, images_per_person: 2,
       resize: 36}
loss: {name: triplet, margin: 0.2, mining: semihard}
optimizer: {learning_rate: 0.001}
train: {epochs: 1, steps_per_epoch: 2}
scaling: {num_workers: 2, resources_per_worker: {CPU: 1, train_slot: 1}}
run: {storage_path: %(runs)s, name: cluster-tiny, max_failures: 0, num_to_keep: 1,
      ray_address: auto}
"""


def test_train_job_spans_both_nodes(cluster, tmp_path):
    _face_folder(tmp_path / "faces")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_TRAIN % {"root": tmp_path / "faces", "runs": tmp_path / "runs"})
    sid, logs = run_job(cluster, f"{PY} -m facenet_platform.train --config {config} --json")
    result = last_json(logs, "latest_checkpoint")
    ckpt = Path(result["latest_checkpoint"])
    assert (ckpt / "model.keras").is_file() and (ckpt / "config.yaml").is_file()
    workers = cluster.job_actors(sid, ("TrainWorker",))
    nodes = {a.node_id for a in workers}
    assert len(workers) == 2, workers
    assert nodes == {cluster.head_node_id, cluster.worker_node_id}, workers


# ------------------------------------------------------------------------------------------
# index build job


def cluster_photos(tmp_path: Path, n: int = 24) -> list[str]:
    from conftest import lfw_available, lfw_dir

    return sample_images(n, tmp_path / "photos", lfw_dir() if lfw_available() else None)[0]


def test_index_build_job_spans_both_nodes(cluster, tmp_path):
    from facenet_platform.index.collection import read_faces, read_files

    images = cluster_photos(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(images) + "\n")
    index = tmp_path / "index"
    # 3 one-CPU actors + decode tasks on 2 + 2 CPUs: both nodes get actors
    entry = (f"{CLI} index build @{listing} --out {index} --detect-actors 1 --embed-actors 2 "
             f"--detect-cpus 1 --embed-cpus 1 --embed-batch-size 16 --no-progress --json")
    sid, logs = run_job(cluster, entry)
    summary = last_json(logs, "files_new")
    assert summary["files_new"] == len(images) and summary["failures"] == 0, summary

    actors = [a for a in cluster.job_actors(sid, ("DetectAlign", "Embed"))
              if a.node_id]  # placed ones (a pool may ask for one more that never starts)
    assert {a.node_id for a in actors} == {cluster.head_node_id, cluster.worker_node_id}, actors

    faces = read_faces(index, columns=["path", "content_hash", "face_index", "embedding"])
    keys = list(zip(faces.column("content_hash").to_pylist(),
                    faces.column("face_index").to_pylist()))
    assert len(keys) == len(set(keys)) == summary["faces"] > 0
    emb = np.stack(faces.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
    files = read_files(index)
    assert set(files.column("path").to_pylist()) == set(images)
    assert list(Path(index, "faces").glob("**/*.parquet"))


# ------------------------------------------------------------------------------------------
# serve deploy of the generated Serve config


def test_serve_deploy_of_the_generated_config_identifies(cluster, tmp_path):
    """`facenet-platform serve-config` -> `serve deploy` to the cluster -> enroll -> identify."""
    import subprocess

    import requests
    import yaml

    from conftest import lfw_available, lfw_dir
    from local_cluster import free_port

    if not lfw_available():
        pytest.skip(f"LFW not found at {lfw_dir()}")
    photos = lfw_dir() / "lfw-deepfunneled"
    people = {n: [photos / n / f"{n}_{i:04d}.jpg" for i in (1, 2)]
              for n in ("Serena_Williams", "Colin_Powell")}
    port = free_port()
    config = tmp_path / "serve.yaml"
    subprocess.run([CLI, "serve-config", "--index", str(tmp_path / "index"), "--no-jit",
                    "--host", "127.0.0.1", "--port", str(port), "-o", str(config)], check=True)
    doc = yaml.safe_load(config.read_text())
    assert doc["applications"][0]["import_path"] == "facenet_platform.serve.app:build_app"
    # one machine: a proxy on each of our two nodes would bind the same port twice
    doc["proxy_location"] = "HeadOnly"
    # API keys are required: the config lists the digest of an admin key, never the key
    from facenet_platform.serve.auth import key_digest, new_key

    key = new_key()
    doc["applications"][0]["args"]["auth"] = {"admin_key_sha256": [key_digest(key)]}
    headers = {"Authorization": f"Bearer {key}"}
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = cluster.process_env()
    serve_bin = str(Path(sys.executable).parent / "serve")
    subprocess.run([serve_bin, "deploy", "-a", cluster.dashboard_url, str(config)],
                   check=True, env=env, timeout=300)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                ready = requests.get(f"{url}/healthz", timeout=10).status_code == 200
            except requests.RequestException:
                pass
            if not ready:
                time.sleep(3)
        assert ready, subprocess.run([serve_bin, "status", "-a", cluster.dashboard_url],
                                     capture_output=True, text=True, env=env).stdout
        for name, (first, _) in people.items():
            r = requests.post(f"{url}/v1/identities/{name}/faces", timeout=300,
                              headers=headers, files=[("file", ("a.jpg", first.read_bytes()))])
            assert r.status_code == 201, r.text
        for name, (_, second) in people.items():
            r = requests.post(f"{url}/v1/identify", timeout=300, headers=headers,
                              files={"file": ("b.jpg", second.read_bytes())})
            assert r.status_code == 200, r.text
            assert r.json()["faces"][0]["decision"] == name, r.json()
    finally:
        subprocess.run([serve_bin, "shutdown", "-y", "-a", cluster.dashboard_url],
                       env=env, timeout=120)
