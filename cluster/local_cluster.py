"""A local multi-node Ray cluster on one machine: a head node and one worker node.

It is a real two-raylet cluster (two ``ray start`` calls sharing one GCS), with the job server
(dashboard) on the head, so ``ray job submit`` / :class:`ray.job_submission.JobSubmissionClient`,
``serve deploy`` and actor placement across nodes behave as on a real cluster. Both nodes share
this machine's cores: it shows placement and overheads, never a speedup.

Other people's Ray instances may run on the same machine. This module therefore

- picks free ports for everything Ray would otherwise open at a fixed default (GCS, dashboard,
  Ray client server, dashboard agent, node manager, object manager, metrics, runtime env agent),
- keeps all its state in its own ``--temp-dir`` (a short path: Ray's Unix sockets live there),
- and stops **only its own processes**: those whose command line names its temp dir or its GCS
  address (SIGTERM, then SIGKILL after a grace period). It never runs ``ray stop``, which
  would stop every Ray of this user on the machine.

Command line::

    python cluster/local_cluster.py up --head-cpus 2 --worker-cpus 2   # prints the addresses
    python cluster/local_cluster.py down --temp-dir /tmp/fpr_XXXXX      # stops that cluster
    python cluster/local_cluster.py check                               # up, show nodes, down

In Python (tests)::

    with LocalCluster(head_cpus=2, worker_cpus=2) as c:
        c.job_client().submit_job(entrypoint="python -m facenet_platform.train --config ...")

The worker node has the custom resource ``{"worker_node": 1}`` and the label
``facenet/node-role=worker``; the head has ``{"head_node": 1}`` and ``facenet/node-role=head``.

Node failure (tests): :meth:`LocalCluster.kill_worker` SIGKILLs every process of the worker node
at once (each node's ``ray start`` runs in a session of its own, so its processes are told apart
by session id), and :meth:`LocalCluster.wait_worker_dead` waits until the GCS has declared the
node dead. The cluster keeps running on the head; :meth:`LocalCluster.stop` still cleans up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
LABEL_KEY = "facenet/node-role"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


@dataclass
class NodeInfo:
    role: str
    node_id: str
    resources: dict[str, float]
    labels: dict[str, str]


@dataclass
class LocalCluster:
    """Start a head and one worker node on this machine; stop exactly those processes.

    Args:
        head_cpus, worker_cpus: logical CPUs of each node (``--num-cpus``).
        worker_cpus: 0 starts the head only (a one-node cluster, for comparisons).
        head_resources, worker_resources: extra custom resources (added to the role markers
            ``head_node`` / ``worker_node``).
        env: extra environment variables of the Ray processes (inherited by every worker
            process and job, e.g. ``FACENET_PLATFORM_CACHE``).
        object_store_mb: object store size per node (small: the machine is shared).
        temp_dir: Ray's root temp dir (default: a fresh short ``/tmp/fpr_*``).
        keep_temp: leave the temp dir (logs) after :meth:`stop`.
    """

    head_cpus: int = 2
    worker_cpus: int = 2
    head_resources: dict[str, float] = field(default_factory=dict)
    worker_resources: dict[str, float] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    object_store_mb: int = 300
    temp_dir: str | None = None
    keep_temp: bool = False
    start_timeout_s: float = 120.0
    #: RAY_AUTH_MODE of the cluster and its jobs ("disabled": a local test cluster)
    auth_mode: str = "disabled"

    # filled by start()
    port: int = 0
    dashboard_port: int = 0
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    _started: bool = False
    _made_temp: bool = False
    #: role -> session id (pid of that node's `ray start`)
    _sessions: dict[str, int] = field(default_factory=dict)

    # -- addresses --------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """GCS address (``ray.init(address=...)``, ``--address`` of the CLI)."""
        return f"{HOST}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """Job server / dashboard / Serve REST API (``ray job submit --address``, ``serve deploy -a``)."""
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def head_node_id(self) -> str:  # noqa: D102
        return self.nodes["head"].node_id

    @property
    def worker_node_id(self) -> str:
        return self.nodes["worker"].node_id

    def process_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env.update(self.env)
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Ray 2.5x+ turns token auth on for a new head when ~/.ray/auth_token exists (other
        # clusters on this machine may have made one) and a joining node may then not present
        # it: pick one mode explicitly for all our processes and their clients.
        env["RAY_AUTH_MODE"] = self.auth_mode
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # ray start's own CLI and the processes it launches must use this venv's Python.
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        return env

    # -- start / stop ---------------------------------------------------------------------------

    def _common_args(self) -> list[str]:
        return [
            "--node-ip-address", HOST,
            "--object-store-memory", str(self.object_store_mb * 1024 * 1024),
            "--node-manager-port", str(free_port()),
            "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--disable-usage-stats",
        ]

    def _run(self, role: str, args: list[str]) -> str:
        # Each node's `ray start` leads a session of its own: every process it starts (GCS,
        # raylet, agents, log monitor) and the Ray workers those start share its session id,
        # which is how kill_worker() finds exactly one node's processes.
        proc = subprocess.Popen([_ray_bin(), "start", *args], env=self.process_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self._sessions[role] = proc.pid
        try:
            stdout, stderr = proc.communicate(timeout=self.start_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            raise RuntimeError(f"ray start {' '.join(args)} did not finish in "
                               f"{self.start_timeout_s:.0f} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
        if proc.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed (exit {proc.returncode}):\n"
                               f"{stdout[-3000:]}\n{stderr[-3000:]}")
        return stdout + stderr

    def start(self) -> "LocalCluster":
        if self._started:
            return self
        if self.temp_dir is None:
            self.temp_dir = tempfile.mkdtemp(prefix="fpr_", dir="/tmp")
            self._made_temp = True
        self.port = self.port or free_port()
        self.dashboard_port = self.dashboard_port or free_port()
        self._started = True  # from here on, stop() cleans up whatever did start
        try:
            head_res = {"head_node": 1, **self.head_resources}
            self._run("head", ["--head", "--port", str(self.port),
                               "--dashboard-port", str(self.dashboard_port),
                               "--dashboard-host", HOST, "--include-dashboard=true",
                               "--ray-client-server-port", str(free_port()),
                               "--temp-dir", self.temp_dir,
                               "--num-cpus", str(self.head_cpus), "--num-gpus", "0",
                               "--resources", json.dumps(head_res),
                               "--labels", f"{LABEL_KEY}=head",
                               *self._common_args()])
            worker_res = {"worker_node": 1, **self.worker_resources}
            if self.worker_cpus > 0:
                self._run("worker", ["--address", self.address,
                                     "--num-cpus", str(self.worker_cpus), "--num-gpus", "0",
                                     "--resources", json.dumps(worker_res),
                                     "--labels", f"{LABEL_KEY}=worker",
                                     *self._common_args()])
            self._wait_nodes()
            self._wait_job_server()
        except BaseException:
            self.stop()
            raise
        return self

    def _alive_nodes(self) -> list[dict[str, Any]]:
        from ray._raylet import GcsClient

        client = GcsClient(address=self.address)
        out = []
        for node_id, info in client.get_all_node_info(timeout=10).items():
            if info.state == 0:  # ALIVE
                out.append({"node_id": node_id.hex(),
                            "resources": dict(info.resources_total),
                            "labels": dict(info.labels)})
        return out

    def _wait_nodes(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                nodes = self._alive_nodes()
            except Exception as exc:  # GCS not ready yet
                last = exc
                time.sleep(1)
                continue
            found: dict[str, NodeInfo] = {}
            for n in nodes:
                for role in ("head", "worker"):
                    if n["resources"].get(f"{role}_node"):
                        found[role] = NodeInfo(role, n["node_id"], n["resources"], n["labels"])
            if len(found) == (2 if self.worker_cpus > 0 else 1):
                self.nodes = found
                return
            last = nodes
            time.sleep(1)
        raise TimeoutError(f"the two nodes did not register in {self.start_timeout_s:.0f} s: {last}")

    def _wait_job_server(self) -> None:
        import urllib.request

        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the job server at {self.dashboard_url} did not answer")

    def own_pids(self) -> list[int]:
        """PIDs of this cluster's processes (command line names our temp dir or GCS address)."""
        marks = []
        if self.temp_dir:
            marks.append(re.compile(re.escape(self.temp_dir.encode()) + rb"(/|\s|$)"))
        if self.port:  # the GCS address may be spelled with the machine's IP, not 127.0.0.1
            marks += [re.compile(rb"gcs[-_]address[= ][^ ]*:%d\b" % self.port),
                      re.compile(rb"gcs_server_port=%d\b" % self.port)]
        me = os.getpid()
        roots, parent = set(), {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            pid = int(entry.name)
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                parent[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if any(m.search(cmdline) for m in marks):
                roots.add(pid)
        # Ray's workers and agents rename themselves (ray::IDLE, ray::RayTrainWorker, ...):
        # they are found as descendants of the processes that name our temp dir / GCS.
        children: dict[int, list[int]] = {}
        for pid, ppid in parent.items():
            children.setdefault(ppid, []).append(pid)
        found, stack = set(), list(roots)
        while stack:
            pid = stack.pop()
            if pid in found or pid == me:
                continue
            found.add(pid)
            stack.extend(children.get(pid, []))
        return sorted(found)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop only this cluster's processes: SIGTERM, then SIGKILL what is left."""
        if not self._started:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            pids = self.own_pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
                time.sleep(0.2)
            if not pids:
                break
        self._started = False
        if self._made_temp and not self.keep_temp and self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    # -- node failure -------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """PIDs of the worker node's processes: its raylet, agents and log monitor, and the Ray
        workers running its tasks and actors (the session of its `ray start`, and their
        descendants), among this cluster's own processes."""
        session = self._sessions.get("worker")
        if session is None:
            return []
        own = self.own_pids()
        ours, parent = set(), {}
        for pid in own:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parent[pid] = int(fields[1])
            if int(fields[3]) == session:
                ours.add(pid)
        changed = True
        while changed:  # descendants that left the session (none expected; cheap to be sure)
            changed = False
            for pid, ppid in parent.items():
                if ppid in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        return sorted(ours)

    def kill_worker(self) -> list[int]:
        """Kill the worker node as a machine failure would: SIGKILL, at once, to every process
        of that node (:meth:`worker_pids`); the head and its processes are untouched.

        The GCS declares the node dead after its health checks fail (:meth:`wait_worker_dead`);
        Ray then restarts the node's actors that allow restarts, and retries its tasks, on the
        nodes left (where their resource demands fit: an actor that needs a resource only the
        dead node had stays pending). Returns the PIDs signalled.
        """
        pids = self.worker_pids()
        if not pids:
            raise RuntimeError("no worker node processes found (not started, or already dead)")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def node_alive(self, role: str) -> bool:
        """Whether the GCS still lists the node of ``role`` as ALIVE."""
        node_id = self.nodes[role].node_id
        return any(n["node_id"] == node_id for n in self._alive_nodes())

    def wait_worker_dead(self, timeout_s: float = 120.0) -> float:
        """Wait until the GCS marks the worker node dead; return the seconds waited."""
        t = time.monotonic()
        while time.monotonic() - t < timeout_s:
            if not self.node_alive("worker"):
                return time.monotonic() - t
            time.sleep(0.5)
        raise TimeoutError(f"the worker node was still ALIVE after {timeout_s:.0f} s")

    # -- helpers ----------------------------------------------------------------------------

    def job_client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url)

    def run_job(self, entrypoint: str, timeout_s: float = 900,
                env_vars: dict[str, str] | None = None) -> tuple[str, str, float]:
        """Submit ``entrypoint`` through the job server and wait: ``(submission id, logs, wall
        seconds)``. Raises ``RuntimeError`` with the end of the logs unless it SUCCEEDED."""
        from ray.job_submission import JobStatus

        client = self.job_client()
        t = time.monotonic()
        sid = client.submit_job(entrypoint=entrypoint,
                                runtime_env={"env_vars": env_vars} if env_vars else None)
        status = None
        while time.monotonic() < t + timeout_s:
            status = client.get_job_status(sid)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            time.sleep(1)
        wall = time.monotonic() - t
        logs = client.get_job_logs(sid)
        if status != JobStatus.SUCCEEDED:
            client.stop_job(sid)
            raise RuntimeError(f"job {sid} ended {status}:\n{logs[-6000:]}")
        return sid, logs, wall

    def job_actors(self, job_id: str, classes: tuple[str, ...] = ()) -> list:
        """The actors (alive or dead; ``ray.util.state`` records) of a job id (or a submission
        id), only those whose class name contains one of ``classes`` when given."""
        from ray.util.state import list_actors

        if not re.fullmatch(r"[0-9a-f]+", job_id):  # a submission id
            job_id = self.job_client().get_job_info(job_id).job_id
        actors = list_actors(address=self.dashboard_url, filters=[("job_id", "=", job_id)],
                             limit=10_000, detail=True, raise_on_missing_output=False)
        return [a for a in actors if not classes or any(c in a.class_name for c in classes)]

    def describe(self) -> dict[str, Any]:
        return {"address": self.address, "dashboard": self.dashboard_url,
                "temp_dir": self.temp_dir,
                "nodes": {r: {"node_id": n.node_id, "resources": n.resources,
                              "labels": {k: v for k, v in n.labels.items()
                                         if k.startswith("facenet/")}}
                          for r, n in self.nodes.items()}}

    def __enter__(self) -> "LocalCluster":
        """Start the cluster; this process's Ray clients (job and state APIs) then speak its
        auth mode until the block ends."""
        self.start()
        self._saved_auth_mode = os.environ.get("RAY_AUTH_MODE")
        os.environ["RAY_AUTH_MODE"] = self.auth_mode
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            if self._saved_auth_mode is None:
                os.environ.pop("RAY_AUTH_MODE", None)
            else:
                os.environ["RAY_AUTH_MODE"] = self._saved_auth_mode


def last_json(logs: str, key: str) -> dict:
    """The last JSON object printed at the start of a line of ``logs`` that has ``key`` (worker
    log lines streamed to the driver may follow it). Raises ``ValueError`` when there is none."""
    decoder = json.JSONDecoder()
    starts = [m.start() + 1 for m in re.finditer(r"\n\{", logs)] + [0]
    for pos in sorted(starts, reverse=True):
        try:
            obj, _ = decoder.raw_decode(logs, pos)
        except ValueError:
            continue
        if isinstance(obj, dict) and key in obj:
            return obj
    raise ValueError(f"no JSON with {key!r} in the job's output:\n{logs[-3000:]}")


def sample_images(n: int, folder: Path, lfw_dir: Path | None = None) -> tuple[list[str], str]:
    """``n`` photos for a test or benchmark job and what they are: the first LFW images by
    person when ``lfw_dir`` holds LFW, else shifted, re-lit crops of scikit-image's astronaut
    (distinct content) written into ``folder``."""
    root = lfw_dir / "lfw-deepfunneled" if lfw_dir else None
    if root is not None and root.is_dir():
        out: list[str] = []
        for person in sorted(root.iterdir()):
            out += sorted(str(p) for p in person.glob("*.jpg"))
            if len(out) >= n:
                break
        return out[:n], f"LFW (first {n} images by person)"
    import cv2
    import numpy as np
    from skimage import data

    img = data.astronaut()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        crop = img[i:i + 400, i:i + 400].astype(np.int16) + (i % 7) - 3
        path = folder / f"astro_{i:03d}.jpg"
        cv2.imwrite(str(path), np.clip(crop, 0, 255).astype(np.uint8)[..., ::-1])
        out.append(str(path))
    return out, f"{n} astronaut variants"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["up", "down", "check"])
    ap.add_argument("--head-cpus", type=int, default=2)
    ap.add_argument("--worker-cpus", type=int, default=2)
    ap.add_argument("--temp-dir", default=None, help="for down: the temp dir printed by up")
    ap.add_argument("--port", type=int, default=0, help="for down: the GCS port printed by up")
    args = ap.parse_args(argv)
    if args.action == "down":
        if not args.temp_dir:
            ap.error("down needs --temp-dir (printed by up)")
        c = LocalCluster(temp_dir=args.temp_dir, port=args.port)
        c._started = True
        pids = c.own_pids()
        c.stop()
        print(f"stopped {len(pids)} processes of {args.temp_dir}")
        return 0
    c = LocalCluster(head_cpus=args.head_cpus, worker_cpus=args.worker_cpus,
                     env={k: v for k, v in os.environ.items()
                          if k.startswith("FACENET_")},
                     keep_temp=args.action == "up")
    t = time.perf_counter()
    c.start()
    info = c.describe()
    info["start_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(info, indent=2))
    if args.action == "up":
        print(f"\nexport RAY_ADDRESS={c.address}   # ray job submit --address {c.dashboard_url}")
        print(f"stop it: python {sys.argv[0]} down --temp-dir {c.temp_dir} --port {c.port}")
        return 0
    t = time.perf_counter()
    c.stop()
    left = c.own_pids()
    print(f"stopped in {time.perf_counter() - t:.1f} s; processes left: {len(left)}")
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
