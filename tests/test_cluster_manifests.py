"""cluster/: Dockerfiles, the ray-up launcher config and the KubeRay manifests (fast, no cluster).

Nothing here starts Ray or a container: the files are parsed and checked against the code they
run — the CLI's subcommands and options, the train module, the Serve config generator, and the
per-actor resource defaults of the index build, Serve and training.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
MANIFESTS = ["raycluster.yaml", "rayjob-train.yaml", "rayjob-index.yaml", "rayservice.yaml"]


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), path
    return doc


def dockerfile_info(name: str) -> dict:
    text = (CLUSTER / name).read_text()
    image = re.search(r'org\.opencontainers\.image\.ref\.name="([^"]+)"', text).group(1)
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    cache = re.search(r"FACENET_PLATFORM_CACHE=(\S+)", text).group(1)
    return {"text": text, "image": image, "base": base, "cache": cache}


CPU_IMAGE = dockerfile_info("Dockerfile")["image"]
GPU_IMAGE = dockerfile_info("Dockerfile.gpu")["image"]


def cluster_spec(name: str) -> dict:
    doc = load(KUBERAY / name)
    spec = doc["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
            "RayService": spec.get("rayClusterConfig")}[doc["kind"]]


def k8s_cpu(value) -> float:
    value = str(value)
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def groups(spec: dict) -> dict[str, dict]:
    """groupName -> {cpus, gpus, image, max, min, replicas} of each worker group."""
    out = {}
    for g in spec["workerGroupSpecs"]:
        c = g["template"]["spec"]["containers"][0]
        limits = c["resources"]["limits"]
        cpus = float(g["rayStartParams"].get("num-cpus", k8s_cpu(limits["cpu"])))
        out[g["groupName"]] = {"cpus": cpus, "gpus": float(limits.get("nvidia.com/gpu", 0)),
                               "image": c["image"], "max": g["maxReplicas"],
                               "min": g.get("minReplicas", 0), "replicas": g.get("replicas", 0)}
    return out


# ------------------------------------------------------------------------------------------
# parsing and required fields


@pytest.mark.parametrize("name", MANIFESTS)
def test_kuberay_manifests_parse_with_required_fields(name):
    doc = load(KUBERAY / name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] in ("RayCluster", "RayJob", "RayService")
    assert doc["metadata"]["name"]
    spec = cluster_spec(name)
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # nothing heavy on the head
    assert head["template"]["spec"]["containers"][0]["image"]
    assert spec["workerGroupSpecs"], name
    for g in spec["workerGroupSpecs"]:
        assert g["groupName"] and g["template"]["spec"]["containers"][0]["image"]
        assert 0 <= g.get("minReplicas", 0) <= g.get("replicas", 0) <= g["maxReplicas"], g["groupName"]
        res = g["template"]["spec"]["containers"][0]["resources"]
        assert res["requests"] == res["limits"], "requests == limits: Ray sees what K8s reserved"
    if doc["kind"] == "RayJob":
        assert doc["spec"]["entrypoint"].strip()
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
    if doc["kind"] == "RayService":
        serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
        apps = serve["applications"]
        assert [a["import_path"] for a in apps] == ["facenet_platform.serve.app:build_app"]
        assert apps[0]["args"]["index_dir"].startswith("s3://")  # shared storage


def test_ray_up_config_parses_with_node_types():
    cfg = load(CLUSTER / "ray-up" / "cluster.yaml")
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["resources"]["CPU"] == 0
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    for name, t in types.items():
        assert t["node_config"]["InstanceType"]
        if name != cfg["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert cfg["docker"]["image"] == CPU_IMAGE and cfg["docker"]["container_name"]
    assert types["gpu_worker"]["docker"]["worker_image"] == GPU_IMAGE
    assert cfg["setup_commands"] == []  # the image has everything
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--head" in head_start and "--num-cpus=0" in head_start


# ------------------------------------------------------------------------------------------
# images


def test_dockerfiles_install_the_package_and_bake_the_weights():
    cpu, gpu = dockerfile_info("Dockerfile"), dockerfile_info("Dockerfile.gpu")
    assert cpu["base"] == "rayproject/ray:2.60.0-py311"
    assert gpu["base"] == "rayproject/ray:2.60.0-py311-gpu"
    import ray

    for info in (cpu, gpu):
        assert info["base"].split(":")[1].startswith(ray.__version__)  # image Ray == our Ray
        text = info["text"]
        assert re.search(r'pip install [^\n]*\s"\.\[media\]"(\s|$)', text), \
            "installs the package with its media decoders: pip install \".[media]\""
        assert "facenet-platform weights" in text  # converted at build time
        assert cpu["cache"] == info["cache"]
        for src in ("pyproject.toml", "platform", "configs"):
            assert re.search(rf"^COPY .*\b{src}\b", text, re.M), src
    assert "tensorflow[and-cuda]" in gpu["text"]
    assert CPU_IMAGE != GPU_IMAGE and CPU_IMAGE.endswith("-cpu") and GPU_IMAGE.endswith("-gpu")
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_images_match_the_dockerfiles(name):
    spec = cluster_spec(name)
    cache = dockerfile_info("Dockerfile")["cache"]
    pods = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for group, g in pods:
        c = g["template"]["spec"]["containers"][0]
        gpus = float(c["resources"]["limits"].get("nvidia.com/gpu", 0))
        assert c["image"] == (GPU_IMAGE if gpus else CPU_IMAGE), (name, group)
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env.get("FACENET_PLATFORM_CACHE") == cache, (name, group)  # the baked weights


# ------------------------------------------------------------------------------------------
# entrypoints use the real CLI / module


def cli_subcommands(parser) -> dict:
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_index_job_entrypoint_is_a_valid_cli_call():
    from facenet_platform.cli import build_parser

    entry = load(KUBERAY / "rayjob-index.yaml")["spec"]["entrypoint"]
    argv = shlex.split(entry)
    assert argv[0] == "facenet-platform"
    parser = build_parser()
    assert {"index", "serve", "serve-config", "train", "export"} <= set(cli_subcommands(parser))
    args = parser.parse_args(argv[1:])  # SystemExit(2) on any unknown option
    assert argv[1:3] == ["index", "build"]
    assert args.address == "auto"
    assert args.sources == ["s3://my-bucket/photos"] and args.out == "s3://my-bucket/index"
    # the Serve application searches the index this job writes
    serve = yaml.safe_load(load(KUBERAY / "rayservice.yaml")["spec"]["serveConfigV2"])
    assert serve["applications"][0]["args"]["index_dir"] == args.out


def test_train_job_entrypoint_is_the_train_module_with_a_valid_config():
    import importlib.util

    from facenet_platform.train.config import load_config

    entry = load(KUBERAY / "rayjob-train.yaml")["spec"]["entrypoint"]
    argv = shlex.split(entry)
    assert argv[:3] == ["python", "-m", "facenet_platform.train"]
    assert importlib.util.find_spec("facenet_platform.train.__main__") is not None
    config = argv[argv.index("--config") + 1]
    prefix = "/home/ray/facenet-platform/"  # WORKDIR of the image, where configs/ is copied
    assert config.startswith(prefix) and f"WORKDIR {prefix.rstrip('/')}" in \
        dockerfile_info("Dockerfile")["text"]
    local = REPO / config[len(prefix):]
    assert local.is_file(), local
    from facenet_platform.train.__main__ import main  # noqa: F401  (importable)
    from facenet_platform.train.commands import add_train_arguments
    import argparse

    p = argparse.ArgumentParser()
    add_train_arguments(p)
    p.parse_args(argv[3:])  # every flag exists
    cfg = load_config(local)
    assert cfg.run.storage_path.startswith("s3://") and cfg.run.ray_address == "auto"


def test_rayservice_config_is_the_serve_config_generator_output(capsys):
    """serveConfigV2 == `facenet-platform serve-config ...` (the command in the header)."""
    from facenet_platform.cli import main

    text = (KUBERAY / "rayservice.yaml").read_text()
    cmd = re.search(r"^#\s+(facenet-platform serve-config .*)$", text, re.M).group(1)
    assert main(shlex.split(cmd)[1:]) == 0
    generated = yaml.safe_load(capsys.readouterr().out)
    manifest = yaml.safe_load(load(KUBERAY / "rayservice.yaml")["spec"]["serveConfigV2"])
    assert manifest == generated


# ------------------------------------------------------------------------------------------
# resource requests vs the actors' options


def test_index_job_pools_fit_the_worker_pods_and_match_the_default_plan():
    from facenet_platform.cli import build_parser
    from facenet_platform.index.build_options import BuildOptions
    from facenet_platform.index.build_plan import plan_resources

    doc = load(KUBERAY / "rayjob-index.yaml")
    args = build_parser().parse_args(shlex.split(doc["spec"]["entrypoint"])[1:])
    g = groups(doc["spec"]["rayClusterSpec"])
    assert set(g) == {"cpu-workers"} and g["cpu-workers"]["gpus"] == 0
    pod_cpus = g["cpu-workers"]["cpus"]
    total = pod_cpus * g["cpu-workers"]["replicas"]
    # each actor fits one pod; all actors fit and leave CPUs for read+decode tasks
    assert args.detect_cpus <= pod_cpus and args.embed_cpus <= pod_cpus
    reserved = args.detect_actors * args.detect_cpus + args.embed_actors * args.embed_cpus
    defaults = BuildOptions()
    # the explicit pools are what the platform's own plan picks for this cluster's CPUs
    plan = plan_resources(defaults, {"CPU": total})
    assert reserved + plan.decode_cpus <= total
    assert (args.detect_actors, args.embed_actors) == (plan.detect_actors, plan.embed_actors)
    assert (args.detect_cpus, args.embed_cpus) == (plan.detect_cpus, plan.embed_cpus)
    assert args.embed_batch_size == plan.embed_batch_size
    assert args.detect_batch_size == defaults.detect_batch_size
    assert args.read_batch_size == defaults.read_batch_size


def test_train_job_workers_fit_the_gpu_pods():
    from facenet_platform.train.config import load_config

    doc = load(KUBERAY / "rayjob-train.yaml")
    argv = shlex.split(doc["spec"]["entrypoint"])
    cfg = load_config(REPO / argv[argv.index("--config") + 1].split("facenet-platform/", 1)[1])
    s = cfg.scaling
    g = groups(doc["spec"]["rayClusterSpec"])
    fits = [n for n, v in g.items()
            if v["cpus"] >= s.resources_per_worker.get("CPU", 1)
            and v["gpus"] >= (s.resources_per_worker.get("GPU", 1) if s.use_gpu else 0)]
    assert fits, (s.resources_per_worker, g)
    slots = sum(min(int(v["cpus"] // s.resources_per_worker.get("CPU", 1)),
                    int(v["gpus"] // s.resources_per_worker.get("GPU", 1)) if s.use_gpu else 10**6)
                * v["replicas"] for n, v in g.items() if n in fits)
    assert slots >= s.num_workers, f"{s.num_workers} workers need {s.resources_per_worker} each"
    # the general RayCluster can autoscale to the same size
    rc = groups(cluster_spec("raycluster.yaml"))
    assert rc["gpu-workers"]["max"] >= s.num_workers and rc["gpu-workers"]["cpus"] >= \
        s.resources_per_worker["CPU"]


@pytest.mark.parametrize("name", ["rayservice.yaml", "raycluster.yaml"])
def test_serve_replicas_fit_the_cpu_workers(name):
    from facenet_platform.serve.config import AppArgs

    serve = yaml.safe_load(load(KUBERAY / "rayservice.yaml")["spec"]["serveConfigV2"])
    deployments = serve["applications"][0]["deployments"]
    defaults = AppArgs(index_dir="s3://x").serve_options()
    assert {d["name"] for d in deployments} == set(defaults)
    g = groups(cluster_spec(name))["cpu-workers"]
    at_min = at_max = 0.0
    for d in deployments:
        cpus = d["ray_actor_options"]["num_cpus"]
        assert cpus <= g["cpus"], d["name"]  # one replica fits one pod
        auto = d.get("autoscaling_config")
        at_min += cpus * (auto["min_replicas"] if auto else d["num_replicas"])
        at_max += cpus * (auto["max_replicas"] if auto else d["num_replicas"])
    assert at_min <= g["cpus"] * max(g["min"], 1)  # the minimum fits the minimum pods
    assert at_max <= g["cpus"] * g["max"]  # the autoscaler can place the maximum


# ------------------------------------------------------------------------------------------
# cluster/local_cluster.py: it must stop only its own processes (no Ray started here)


def test_local_cluster_stops_only_its_own_processes(tmp_path):
    import subprocess
    import sys

    sys.path.insert(0, str(CLUSTER))
    from local_cluster import LocalCluster

    mine_dir = tmp_path / "fpr_mine"
    # a "raylet" naming our temp dir, with a renamed child (as Ray workers are), and a stranger
    mine = subprocess.Popen(["bash", "-c", f"(exec -a ray::IDLE sleep 60) & sleep 60; : {mine_dir}/x"])
    # the stranger's temp dir starts with ours: only the path boundary tells them apart
    other = subprocess.Popen(["bash", "-c", f"sleep 60; : {mine_dir}_other/x"])
    try:
        c = LocalCluster(temp_dir=str(mine_dir), port=1)  # port 1: matches no real GCS
        c._started = True
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(c.own_pids()) < 3:
            time.sleep(0.1)
        pids = c.own_pids()
        names = [Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0] for p in pids]
        assert mine.pid in pids and other.pid not in pids
        assert b"ray::IDLE" in names  # the renamed child, found as a descendant
        c.stop(grace_s=5)
        mine.wait(timeout=10)  # raises TimeoutExpired if stop() left it running
        assert other.poll() is None  # untouched
    finally:
        for p in (mine, other):
            if p.poll() is None:
                p.kill()
                p.wait()
