"""Load test of the Serve application: /v1/identify under 1, 4 and 16 concurrent clients.

What it measures, all in one run on one machine (loopback HTTP):

1. **Direct**: the foundation pipeline called in this process, no service:
   ``decode_image`` + ``identify_faces(pipeline, gallery, [image])`` one photo at a time (the
   per-request cost without HTTP, Ray or batching), and 16 photos per call (the best batched
   throughput the same code reaches offline).
2. **Service**: the real application (``build_app``) on a local Ray instance, for each
   ``max_batch_size`` in ``--batch-sizes`` (default 1 and 16: what ``@serve.batch`` gains), and
   each client count in ``--levels``. A closed-loop load generator (asyncio + aiohttp): every
   client posts an LFW photo (multipart field ``file``) and sends the next one when the answer
   arrives, for ``--duration`` seconds. Requests/s, p50/p95/p99 latency, errors (anything but a
   200), and the embedder's mean batch (faces per forward pass, from /v1/stats).
3. **Replica failure**: two embedder replicas, 16 clients; after ``--kill-at`` seconds one
   embedder replica actor is killed with ``ray.kill`` (found by its Serve actor name). Failed
   requests, the ingress' retries, the time until Serve reports two running replicas again, and
   the throughput per second around the kill.

The gallery: the first photo of each of ``--people`` LFW people with at least two photos,
enrolled with the gallery API; probes are their other photos plus as many one-photo strangers.
The fraction of correct decisions is printed as a sanity check.

    FACENET_PLATFORM_CACHE=/tmp/fpcache .venv/bin/python benchmarks/bench_serve.py \\
        --duration 15 --levels 1 4 16 --batch-sizes 1 16 --kill
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

APP = "facenet-bench"
#: Admin key of the benchmark's service (API keys are required; random per run).
BENCH_KEY = __import__("secrets").token_urlsafe(24)
AUTH_HEADERS = {"X-API-Key": BENCH_KEY}


# -- data ----------------------------------------------------------------------------------------

def lfw_people(lfw_dir: Path, n_people: int) -> tuple[dict[str, list[Path]], list[Path]]:
    """``{name: [photo 1, photo 2, ...]}`` of ``n_people`` people with >= 2 photos, and as many
    strangers' single photos."""
    root = lfw_dir / "lfw-deepfunneled"
    multi, single = {}, []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= 2 and len(multi) < n_people:
            multi[person.name] = photos
        elif len(photos) == 1 and len(single) < n_people:
            single.append(photos[0])
        if len(multi) >= n_people and len(single) >= n_people:
            break
    return multi, single


@dataclass
class Probe:
    data: bytes
    expected: str  # a name, or "unknown"


def build_gallery(pipeline, index_dir: Path, people: dict[str, list[Path]]) -> None:
    from facenet_platform.core.images import read_image
    from facenet_platform.index.gallery import Gallery

    gallery = Gallery.create(index_dir)
    names = list(people)
    for start in range(0, len(names), 16):
        chunk = names[start:start + 16]
        embeddings, _ = pipeline.central_faces([read_image(people[n][0]) for n in chunk],
                                               fallback_center=True)
        for name, embedding in zip(chunk, embeddings):
            gallery.add(name, embedding[None], [str(people[name][0])])
    gallery.save()


def probes_of(people: dict[str, list[Path]], strangers: list[Path]) -> list[Probe]:
    out = []
    for name, photos in people.items():
        out += [Probe(p.read_bytes(), name) for p in photos[1:3]]
    out += [Probe(p.read_bytes(), "unknown") for p in strangers]
    rng = np.random.default_rng(0)
    return [out[i] for i in rng.permutation(len(out))]


# -- measurements ----------------------------------------------------------------------------------

@dataclass
class Result:
    label: str
    clients: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    completions: list[float] = field(default_factory=list, repr=False)  # time since start
    correct: int = 0
    answered: int = 0
    mean_batch: float | None = None
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("latencies_ms", "completions")}
        out.update(rps=round(self.rps, 2), p50_ms=round(self.pct(50), 1),
                   p95_ms=round(self.pct(95), 1), p99_ms=round(self.pct(99), 1))
        return out


def run_direct(pipeline, gallery, probes: list[Probe], duration: float, batch: int) -> Result:
    from facenet_platform.core.images import decode_image
    from facenet_platform.index.identify import identify_faces

    result = Result(f"direct, {batch} photo{'s' if batch > 1 else ''} per call", 1)
    i = 0
    t_start = time.perf_counter()
    while time.perf_counter() - t_start < duration:
        chunk = [probes[(i + j) % len(probes)] for j in range(batch)]
        i += batch
        t0 = time.perf_counter()
        images = [decode_image(p.data) for p in chunk]
        found = identify_faces(pipeline, gallery, images, top_k=5)
        dt = (time.perf_counter() - t0) * 1000
        for probe, faces in zip(chunk, found):
            result.requests += 1
            result.latencies_ms.append(dt)
            result.answered += 1
            result.correct += _decision(faces and faces[0].to_dict()) == probe.expected
    result.seconds = time.perf_counter() - t_start
    return result


def _decision(face: dict | None) -> str:
    return face["decision"] if face else "unknown"


async def load(url: str, probes: list[Probe], clients: int, duration: float, label: str,
               on_tick=None) -> Result:
    """Closed loop: ``clients`` workers, each posting the next photo when its answer arrives."""
    import aiohttp

    result = Result(label, clients)
    counter = iter(range(1 << 62))
    connector = aiohttp.TCPConnector(limit=clients + 4)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=AUTH_HEADERS) as session:
        t_start = time.perf_counter()
        deadline = t_start + duration

        async def worker():
            while time.perf_counter() < deadline:
                probe = probes[next(counter) % len(probes)]
                form = aiohttp.FormData()
                form.add_field("file", probe.data, filename="probe.jpg",
                               content_type="image/jpeg")
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=form) as response:
                        body = await response.read()
                        status = response.status
                except Exception as exc:  # noqa: BLE001 - counted, reported
                    status, body = type(exc).__name__, b""
                now = time.perf_counter()
                result.requests += 1
                result.latencies_ms.append((now - t0) * 1000)
                result.completions.append(now - t_start)
                if status != 200:
                    result.errors += 1
                    kind = str(status)
                    result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
                    continue
                faces = json.loads(body)["faces"]
                result.answered += 1
                result.correct += _decision(faces[0] if faces else None) == probe.expected

        tasks = [asyncio.create_task(worker()) for _ in range(clients)]
        if on_tick is not None:
            tasks.append(asyncio.create_task(on_tick(t_start)))
        await asyncio.gather(*tasks)
        result.seconds = time.perf_counter() - t_start
    return result


def get_json(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH_HEADERS),
                                timeout=60) as response:
        return json.loads(response.read())


def embedder_totals(base: str) -> tuple[int, int]:
    stats = get_json(base + "/v1/stats")["embedder"]
    return stats["faces"], stats["batches"]


# -- the service -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(index_dir: Path, max_batch_size: int, embedder_replicas: int = 1) -> float:
    from ray import serve

    from facenet_platform.serve.app import app_args, build_app

    t0 = time.perf_counter()
    args = app_args(str(index_dir), max_batch_size=max_batch_size,
                    embedder={"num_replicas": embedder_replicas},
                    ingress={"env": {"FACENET_ADMIN_KEY": BENCH_KEY}})
    serve.run(build_app(args), name=APP, route_prefix="/")
    return time.perf_counter() - t0


def embedder_replicas() -> list[dict]:
    """The embedder's replica actors, ``{"name", "namespace"}`` (Serve names replicas
    ``SERVE_REPLICA::<app>#<deployment>#<id>``; found without the dashboard's state API)."""
    import ray

    try:
        from ray.serve._private.common import REPLICA_ID_FULL_ID_STR_PREFIX as serve_prefix
    except ImportError:  # private; the value Ray has used since 2.x
        serve_prefix = "SERVE_REPLICA::"
    prefix = f"{serve_prefix}{APP}#Embedder#"
    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)]


def running_embedders() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None:
        return 0
    deployment = app.deployments.get("Embedder")
    return int(deployment.replica_states.get("RUNNING", 0)) if deployment else 0


# -- report ----------------------------------------------------------------------------------------

def table(rows: list[Result], direct_p50: float | None) -> str:
    lines = ["| configuration | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors "
             "| mean embed batch (faces) | p50 over direct |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        over = (f"{r.pct(50) - direct_p50:+.0f} ms" if direct_p50 is not None
                and not r.label.startswith("direct") else "")
        batch = f"{r.mean_batch:.2f}" if r.mean_batch is not None else ""
        lines.append(f"| {r.label} | {r.clients} | {r.requests} | {r.rps:.2f} | {r.pct(50):.0f} "
                     f"| {r.pct(95):.0f} | {r.pct(99):.0f} | {r.errors} | {batch} | {over} |")
    return "\n".join(lines)


def main() -> int:
    from facenet_platform.core.lfw import default_lfw_dir

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--people", type=int, default=50, help="enrolled people (and strangers)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per load level")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="client counts")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16],
                    help="embedder max_batch_size values to compare")
    ap.add_argument("--kill", action="store_true", help="run the replica-failure experiment")
    ap.add_argument("--kill-duration", type=float, default=40.0)
    ap.add_argument("--kill-at", type=float, default=10.0)
    ap.add_argument("--num-cpus", type=float, default=4,
                    help="logical CPUs of the local Ray instance (reservations, not cores)")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    g = ap.add_argument_group("people figures (serve_people_figures.py)")
    g.add_argument("--people-figures", action="store_true",
                   help="mixed load vs identify only, 10k-people grid, killed writer")
    g.add_argument("--only-people", action="store_true",
                   help="skip the direct and batch-size runs (people figures only)")
    g.add_argument("--mixed-duration", type=float, default=120.0, help="seconds per mixed run")
    g.add_argument("--mixed-clients", type=int, default=16)
    g.add_argument("--kill-decisions-s", type=float, default=45.0,
                   help="seconds of decisions around the writer kill")
    g.add_argument("--grid-requests", type=int, default=400,
                   help="GET /v1/people pages per grid size")
    g.add_argument("--grid-sizes", type=int, nargs="+", default=[100, 10_000],
                   help="people in the grid stores (the first is the baseline)")
    g.add_argument("--parts", nargs="+", default=["mixed", "kill", "grid"],
                   choices=["mixed", "kill", "grid"], help="which people figures to run")
    g.add_argument("--mixed-rounds", type=int, default=1,
                   help="identify-only / mixed pairs, alternated (A B A B ...) so that a "
                        "shared machine's drift shows")
    args = ap.parse_args()
    if args.only_people:
        args.people_figures = True

    import ray
    from ray import serve

    from facenet_platform.core.embedding import FaceEmbedder
    from facenet_platform.core.pipeline import FacePipeline
    from facenet_platform.core.weights import PRETRAINED
    from facenet_platform.index.gallery import Gallery

    command = "FACENET_PLATFORM_CACHE=... " + " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_serve.py", *sys.argv[1:]])
    print(f"command: {command}", flush=True)
    print(f"machine: {os.cpu_count()} CPU cores; load average at start "
          f"{os.getloadavg()[0]:.1f}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    index_dir = work / "index"
    people, strangers = lfw_people(args.lfw_dir, args.people)
    probes = probes_of(people, strangers)
    print(f"gallery: {len(people)} people (1 photo each); probes: {len(probes)} photos "
          f"({sum(p.expected != 'unknown' for p in probes)} of enrolled people, "
          f"{sum(p.expected == 'unknown' for p in probes)} strangers)", flush=True)

    # -- direct -----------------------------------------------------------------------------------
    pipeline = FacePipeline(embedder=FaceEmbedder(batch_size=1, model_id=PRETRAINED.model_id))
    build_gallery(pipeline, index_dir, people)
    if args.only_people:
        return people_only(args, pipeline, probes, people, strangers, work, command)
    gallery = Gallery.load(index_dir)
    run_direct(pipeline, gallery, probes[:5], 2.0, 1)  # warm up (trace/compile)
    rows = [run_direct(pipeline, gallery, probes, args.duration, 1)]
    print(table(rows, None), flush=True)
    direct16 = FacePipeline(embedder=FaceEmbedder(pipeline.embedder.model, batch_size=16,
                                                  model_id=PRETRAINED.model_id,
                                                  threshold=PRETRAINED.threshold))
    run_direct(direct16, gallery, probes[:16], 1.0, 16)  # warm up
    rows.append(run_direct(direct16, gallery, probes, args.duration, 16))
    direct_p50 = rows[0].pct(50)
    del direct16

    # -- service ----------------------------------------------------------------------------------
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False,
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    startup = {}
    kill_report = None
    try:
        for size in args.batch_sizes:
            startup[size] = deploy(index_dir, size)
            print(f"\nservice with max_batch_size={size} ready in {startup[size]:.0f} s",
                  flush=True)
            asyncio.run(load(base + "/v1/identify", probes, 2, 3.0, "warm-up"))
            for clients in args.levels:
                faces0, batches0 = embedder_totals(base)
                r = asyncio.run(load(base + "/v1/identify", probes, clients, args.duration,
                                     f"service, max_batch_size {size}"))
                faces1, batches1 = embedder_totals(base)
                r.mean_batch = (faces1 - faces0) / max(1, batches1 - batches0)
                rows.append(r)
                print(table([r], direct_p50).splitlines()[-1], flush=True)

        if args.kill:
            kill_report = kill_experiment(index_dir, base, probes, args)
    finally:
        serve.shutdown()
        ray.shutdown()

    print("\n## /v1/identify on loopback\n")
    print(table(rows, direct_p50))
    for r in rows:
        if r.answered:
            print(f"- {r.label}, {r.clients} client(s): {r.correct}/{r.answered} decisions "
                  f"correct" + (f"; errors {r.error_kinds}" if r.errors else ""))
    print("\nservice start-up (deploy + model load + compile): "
          + ", ".join(f"max_batch_size {k}: {v:.0f} s" for k, v in startup.items()))
    if kill_report:
        print("\n## One embedder replica killed during a 16-client run\n")
        print(kill_report["table"])
        print(f"\nrequests per second around the kill (t = 0 at the kill): "
              f"{kill_report['timeline']}")
    if args.json:
        args.json.write_text(json.dumps({
            "command": command, "rows": [r.summary() for r in rows], "startup_s": startup,
            "kill": {k: v for k, v in (kill_report or {}).items() if k != "table"}}, indent=2))
    return 0


def people_only(args, pipeline, probes, people, strangers, work: Path, command: str) -> int:
    """``--only-people``: the people figures of serve_people_figures.py on one service."""
    import ray
    from ray import serve

    import serve_people_figures as spf

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False,
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        figures = spf.run(args, pipeline, probes, people, strangers, work,
                          lambda index: deploy(index, 16), base, AUTH_HEADERS, APP)
    finally:
        serve.shutdown()
        ray.shutdown()
    print("\n## Mixed load vs identify only (16 clients, same service, same run)\n")
    print(figures["mixed_table"])
    print("\n## People grid: GET /v1/people?limit=60 at random offsets\n")
    print("| people | requests | server p50 ms | server p95 ms | server p99 ms | server max ms "
          "| client p50 ms | client p99 ms |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          "| ---: |")
    for n, g in figures["grid"].items():
        print(f"| {n} | {g['requests']} | {g['server_p50_ms']} | {g['server_p95_ms']} | "
              f"{g['server_p99_ms']} | {g['server_max_ms']} | {g['client_p50_ms']} | "
              f"{g['client_p99_ms']} |")
    k = figures.get("kill")
    if k is None:
        return 0
    print("\n## Writer replica killed during decisions (8 clients, retry with the same key)\n")
    print(f"acknowledged {k['acknowledged']}, keys in the event log {k['keys_in_log']}, lost "
          f"{k['lost']}, applied twice {k['applied_twice']}, event id mismatches "
          f"{k['event_id_mismatch']}, in the log but never acknowledged "
          f"{k['in_log_but_not_acknowledged']}; client attempts {k['attempts']}; retries "
          f"inside the ingress {k['ingress_retries']}; answered from the log (replayed) "
          f"{k['replayed_by_writer']}; writer replica before/after {k['writer_replica']}; "
          f"events {k['events']}")
    if args.json:
        figures.pop("mixed_table", None)
        args.json.write_text(json.dumps({"command": command, **figures}, indent=2,
                                        default=str))
    return 0


def kill_experiment(index_dir: Path, base: str, probes: list[Probe], args) -> dict:
    import ray

    size = max(args.batch_sizes)
    startup = deploy(index_dir, size, embedder_replicas=2)
    print(f"\nservice with 2 embedder replicas ready in {startup:.0f} s", flush=True)
    asyncio.run(load(base + "/v1/identify", probes, 2, 3.0, "warm-up"))
    retries0 = get_json(base + "/v1/stats")["ingress"]["backend_retries"]
    events: dict[str, float] = {}

    async def killer(t_start: float):
        await asyncio.sleep(args.kill_at)
        victims = embedder_replicas()
        assert len(victims) == 2, f"expected 2 embedder replicas, found {len(victims)}"
        victim = victims[0]
        handle = ray.get_actor(victim["name"], namespace=victim["namespace"])
        events["kill"] = time.perf_counter() - t_start
        ray.kill(handle, no_restart=True)
        # Serve notices and starts a replacement: poll its view until 2 run again.
        seen_down = False
        while time.perf_counter() - t_start < args.kill_duration + 120:
            running = await asyncio.to_thread(running_embedders)
            now = time.perf_counter() - t_start
            if running < 2 and not seen_down:
                seen_down = True
                events["serve_saw_death"] = now
            if running >= 2 and seen_down:
                events["replaced"] = now
                return
            await asyncio.sleep(0.25)

    result = asyncio.run(load(base + "/v1/identify", probes, 16, args.kill_duration,
                              "service, 2 embedders, one killed", on_tick=killer))
    retries = get_json(base + "/v1/stats")["ingress"]["backend_retries"] - retries0
    kill_t = events.get("kill", float("nan"))
    completions = np.asarray(result.completions) - kill_t
    lo, hi = int(np.floor(completions.min())), int(np.ceil(completions.max()))
    per_second = {s: int(((completions >= s) & (completions < s + 1)).sum())
                  for s in range(max(lo, -5), hi)}
    def window(a: float, b: float) -> float:
        """Mean completed requests per second between a and b seconds after the kill."""
        b = min(b, float(completions.max()))
        return float(((completions >= a) & (completions < b)).sum() / (b - a)) if b > a else 0.0

    baseline = window(-5, 0)
    replaced = events.get("replaced")
    rows = [
        ("requests during the run", result.requests),
        ("failed requests (non-200)", f"{result.errors} {result.error_kinds or ''}".strip()),
        ("calls retried by the ingress", retries),
        ("Serve saw the replica gone after",
         f"{events['serve_saw_death'] - kill_t:.1f} s" if "serve_saw_death" in events else "n/a"),
        ("replacement replica running after",
         f"{replaced - kill_t:.1f} s" if replaced is not None else "not within the run"),
        ("req/s in the 5 s before the kill", f"{baseline:.1f}"),
        ("req/s in the 5 s after the kill", f"{window(0, 5):.1f}"),
        ("req/s from 5 s after the kill to the end of the run",
         f"{window(5, args.kill_duration):.1f}"),
        ("p99 latency over the run", f"{result.pct(99):.0f} ms"),
    ]
    text = "| | |\n| --- | ---: |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(text, flush=True)
    return {"table": text, "events": events, "requests": result.requests,
            "errors": result.errors, "retries": retries, "timeline": per_second,
            "startup_s": startup, "summary": result.summary()}


if __name__ == "__main__":
    sys.exit(main())
