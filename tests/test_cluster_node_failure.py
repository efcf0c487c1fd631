"""A node dies during an index build on the local two-node cluster (cluster/local_cluster.py).

One ``facenet-platform index build`` job over 200 images (LFW when present, else astronaut
variants) runs with two detection and two embedding actors of 0.5 CPU. While they are placed, a
detached placeholder actor holds 2 of the head's 3 CPUs, so at least two of them must start on the
worker; the placeholder is released before the kill, so the head has room for all of them
after it. Every embedding
batch slowed down by 4 s (test-only fault injection ``delay_embed``, so the build is still busy
after its first commit). Once the build has committed some files, every process
of the worker node is SIGKILLed (:meth:`LocalCluster.kill_worker`: raylet, agents, the actors'
and tasks' worker processes). The same job invocation must still succeed: Ray Data restarts the
lost actors (``max_restarts=-1``) and retries their tasks and the lost tasks (``max_retries=-1``,
lineage reconstruction of blocks that lived in the dead node's object store) on the head. Its
faces must equal those of a clean build of the same images on the same cluster: the same set of
``(content_hash, face_index)`` keys, each once, the same boxes and embeddings, and every file
recorded once with the same status.

Why it can finish on the head alone: the pools ask for CPUs only (no custom resource, no node
label), and the head has room for all of them plus decode tasks (3 logical CPUs for 4 actors of
0.5 CPU and tasks of 0.25). An actor that needed a resource only the dead node had could not be
restarted anywhere and the job would wait for it (see cluster/README.md, "Node failure").

The recovery timeline (kill, node declared dead, commits after the kill, job end) and the
face counts are printed as one JSON line (``pytest -s`` shows it); nothing is asserted on times.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "cluster"))

from facenet_platform.index.faults import FAULTS_ENV  # noqa: E402
from local_cluster import LocalCluster  # noqa: E402
from local_cluster import last_json  # noqa: E402
from test_cluster_local import cluster_env, cluster_photos, run_job  # noqa: E402

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).parent / "facenet-platform")
N_IMAGES = 200
HEAD_CPUS, WORKER_CPUS = 3, 2
#: 2 detection + 2 embedding actors of 0.5 CPU: 2 CPUs, so all of them fit on the head alone
#: with a CPU left for the 0.25-CPU decode tasks once the worker is gone.
BUILD_ARGS = ("--detect-actors 2 --embed-actors 2 --detect-cpus 0.5 --embed-cpus 0.5 "
              "--decode-cpus 0.25 --embed-batch-size 16 --commit-every-files 20 "
              "--no-progress --json")
PIPELINE_CLASSES = ("DetectAlign", "Embed")
DELAY_EMBED_S = 4.0
#: head CPUs held while the pipeline's actors are placed (forces some onto the worker)
HOLD_HEAD_CPUS = 2
HOLD_START = (
    "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as N\n"
    "@ray.remote(num_cpus={cpus})\nclass Hold:\n    def ready(self):\n        return True\n"
    "h = Hold.options(name='hold-head', namespace='facenet-test', lifetime='detached', "
    "scheduling_strategy=N('{node}', soft=False)).remote()\nray.get(h.ready.remote())\n")
HOLD_RELEASE = "ray.kill(ray.get_actor('hold-head', namespace='facenet-test'))"


def python_job(cluster: LocalCluster, code: str) -> None:
    """Run ``code`` as a small Ray job on the cluster (a driver of its own)."""
    script = Path(cluster.temp_dir or "/tmp") / f"job-{time.monotonic_ns()}.py"
    script.write_text("import ray\nray.init()\n" + code)
    run_job(cluster, f"{sys.executable} {script}", timeout_s=120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = cluster_env(tmp_path_factory)
    with LocalCluster(head_cpus=HEAD_CPUS, worker_cpus=WORKER_CPUS, env=env) as c:
        yield c  # RAY_AUTH_MODE set for this process's clients while it runs


def pipeline_actors(cluster: LocalCluster, job_id: str) -> list:
    return cluster.job_actors(job_id, PIPELINE_CLASSES)


def committed(index: Path) -> tuple[int, int, int]:
    """(commits, files, faces) of the commit records written so far."""
    commits = files = faces = 0
    for record in sorted((index / "_collection" / "commits").glob("*.json")):
        try:
            counts = json.loads(record.read_text())["counts"]
        except (OSError, ValueError, KeyError):
            continue  # being written
        commits += 1
        files += counts.get("files", 0)
        faces += counts.get("faces", 0)
    return commits, files, faces


def index_rows(index: Path) -> tuple[dict, dict]:
    """(content_hash, face_index) -> (box, embedding) and path -> (status, faces)."""
    from facenet_platform.index.collection import latest_per_path, read_faces, read_files

    faces = read_faces(index, columns=["content_hash", "face_index", "box", "embedding"])
    faces = faces.to_pydict()
    keys = list(zip(faces["content_hash"], faces["face_index"]))
    assert len(keys) == len(set(keys)), "a face is in the index twice"
    by_key = {k: (np.asarray(b, np.float32), np.asarray(e, np.float32))
              for k, b, e in zip(keys, faces["box"], faces["embedding"])}
    files_log = read_files(index, latest=False)
    paths = files_log.column("path").to_pylist()
    assert len(paths) == len(set(paths)), "a file is recorded twice"
    latest = latest_per_path(files_log).to_pydict()
    by_path = {p: (s, n) for p, s, n in zip(latest["path"], latest["status"], latest["faces"])}
    return by_key, by_path


def test_killed_worker_node_build_completes_with_the_clean_faces(cluster, tmp_path):
    from ray.job_submission import JobStatus

    images = cluster_photos(tmp_path, N_IMAGES)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(images) + "\n")

    # the reference: a clean build of the same images, same options, on the same two nodes
    clean = tmp_path / "clean"
    _, logs = run_job(cluster, f"{CLI} index build @{listing} --out {clean} {BUILD_ARGS}")
    clean_summary = last_json(logs, "files_new")
    assert clean_summary["files_new"] == len(images) and clean_summary["failures"] == 0

    # the same build again into a new index; the worker node dies part-way through. Every
    # embedding batch sleeps DELAY_EMBED_S (test-only fault injection) so that the build is
    # still busy for a while after its first commit; without it the 200 images finish within
    # seconds of the embedding actors' start-up.
    index = tmp_path / "killed"
    client = cluster.job_client()
    python_job(cluster, HOLD_START.format(cpus=HOLD_HEAD_CPUS, node=cluster.head_node_id))
    t0 = time.monotonic()
    env = {**cluster.env, FAULTS_ENV: f"delay_embed={DELAY_EMBED_S}"}
    sid = client.submit_job(entrypoint=f"{CLI} index build @{listing} --out {index} {BUILD_ARGS}",
                            runtime_env={"env_vars": env})

    def running() -> None:
        status = client.get_job_status(sid)
        assert status in (JobStatus.PENDING, JobStatus.RUNNING), (
            f"the build ended ({status}) before the worker node could be killed: "
            f"{client.get_job_logs(sid)[-3000:]}")

    # 1. pipeline actors running on the worker (the head's CPUs are held), then the head freed
    job_id = None
    on_worker: list = []
    deadline = t0 + 600
    try:
        while time.monotonic() < deadline:
            running()
            job_id = job_id or client.get_job_info(sid).job_id
            if job_id:
                alive = [a for a in pipeline_actors(cluster, job_id) if a.state == "ALIVE"]
                on_worker = [a for a in alive if a.node_id == cluster.worker_node_id]
                if on_worker:
                    break
            time.sleep(1)
        else:
            pytest.fail("no pipeline actor was running on the worker within 600 s")
    finally:
        python_job(cluster, HOLD_RELEASE)
    # 2. the first commit: then the worker node dies
    while committed(index)[0] < 1:
        running()
        time.sleep(0.2)
        assert time.monotonic() < deadline, "no commit within 600 s"
    at_kill = committed(index)
    t_kill, wall_kill = time.monotonic(), time.time()
    killed = cluster.kill_worker()
    assert at_kill[1] < len(images), "everything was committed before the kill"
    running()
    alive = [a for a in pipeline_actors(cluster, job_id) if a.state == "ALIVE"]
    on_worker = [a for a in alive if a.node_id == cluster.worker_node_id] or on_worker
    # no pool actor asks for a resource only the worker node has (it could not come back)
    for a in pipeline_actors(cluster, job_id):
        assert set(a.required_resources) <= {"CPU", "GPU", "memory"}, a.required_resources

    dead_after = cluster.wait_worker_dead()
    while time.monotonic() < t_kill + 900:
        status = client.get_job_status(sid)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(1)
    t_end = time.monotonic()
    logs = client.get_job_logs(sid)
    if status != JobStatus.SUCCEEDED:
        client.stop_job(sid)
        pytest.fail(f"the build did not survive the node loss ({status}):\n{logs[-6000:]}")
    summary = last_json(logs, "files_new")

    # what happened to the worker's actors: restarted (same actor id) on the head
    actors = pipeline_actors(cluster, job_id)
    restarted = {a.actor_id: a for a in actors}
    moved = [restarted[a.actor_id] for a in on_worker if a.actor_id in restarted]
    # commits after the kill, in seconds after it (record mtimes): the head's actors go on
    # while the node is being declared dead; the worker's batches are redone after that
    after = sorted(f.stat().st_mtime - wall_kill
                   for f in (index / "_collection" / "commits").glob("*.json"))[at_kill[0]:]
    report = {
        "images": len(images), "processes_killed": len(killed),
        "kill_at_s": round(t_kill - t0, 1),
        "committed_at_kill": {"commits": at_kill[0], "files": at_kill[1], "faces": at_kill[2]},
        "actors_on_worker_at_kill": sorted(a.class_name for a in on_worker),
        "their_restarts": [getattr(a, "num_restarts", None) for a in moved],
        "their_final_node": ["head" if a.node_id == cluster.head_node_id else a.node_id
                             for a in moved],
        "node_dead_after_s": round(dead_after, 1),
        "commits_after_kill_s": [round(x, 1) for x in after],
        "job_end_after_kill_s": round(t_end - t_kill, 1),
        "faces": summary["faces"], "faces_clean": clean_summary["faces"],
        "pipeline_s": summary["pipeline_seconds"],
        "pipeline_s_clean": clean_summary["pipeline_seconds"],
    }
    print("\nnode-failure build:", json.dumps(report))

    # one invocation, everything processed once, the faces of the clean build
    assert summary["files_new"] == len(images) and summary["failures"] == 0, summary
    faces, files = index_rows(index)
    clean_faces, clean_files = index_rows(clean)
    assert files == clean_files
    assert set(files) == set(images)
    assert set(faces) == set(clean_faces) and len(faces) == clean_summary["faces"] > 0
    for key, (box, emb) in clean_faces.items():
        np.testing.assert_allclose(faces[key][0], box, atol=1e-3, err_msg=str(key))
        np.testing.assert_allclose(faces[key][1], emb, atol=1e-3, err_msg=str(key))
    # the worker's actors came back on the head (Ray restarts them in place of the lost ones)
    assert moved and all(a.node_id == cluster.head_node_id for a in moved), report
