"""People figures of the Serve application, run by ``bench_serve.py --people-figures``.

1. **Mixed load** at 16 clients against **identify only** at 16 clients, same service, same
   run: about 90% ``/v1/identify``, 9% people reads and thumbnails (a page of the grid, one
   person, a face thumbnail, a photo thumbnail), 1% decisions (renames, each with its own
   Idempotency-Key). Requests/s, p50/p95/p99 per kind, errors.
2. **People grid of 10k people**: a people store of 10,000 people (30,000 faces) written
   through the people store's own transaction, against one of 100 people; ``GET /v1/people``
   pages at random offsets; server-side latency from the ingress' own window (``/v1/stats``),
   client-side beside it.
3. **Killed writer during decisions**: 8 clients send renames with unique Idempotency-Keys and
   retry a failed one with the same key until answered; the writer replica is killed with
   ``ray.kill`` mid-run. The event log then proves every acknowledged decision is there once,
   and no key is there twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

KINDS = ("identify", "people", "person", "face_thumbnail", "photo_thumbnail", "decision")


@dataclass
class KindStats:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def build_collection(pipeline, index_dir: Path, photos: list[Path]) -> dict:
    """Detect and embed every face of ``photos`` in this process, commit them as a build
    would (tests/serve_collection.write_collection), then ``people update``."""
    from facenet_platform.core.images import read_image
    from facenet_platform.index.people import update_people

    from serve_collection import write_collection

    rows = []
    for start in range(0, len(photos), 16):
        chunk = photos[start:start + 16]
        faces = pipeline([read_image(p) for p in chunk])
        rows += [(p, [f.to_dict(with_embedding=True) for f in fs]) for p, fs in zip(chunk, faces)]
    write_collection(index_dir, rows)
    summary = update_people(index_dir)
    return {"photos": len(photos), "faces": sum(len(f) for _, f in rows),
            "people": summary.to_dict().get("people")}


async def mixed_load(base: str, headers: dict, probes, clients: int, duration: float,
                     mix: tuple[float, float], seed: int = 0) -> tuple[dict[str, KindStats], float, int]:
    """Closed loop; each request is identify with probability mix[0], a people read with
    mix[1], else a decision. Returns (stats per kind, seconds, decisions acknowledged)."""
    import aiohttp

    stats = {k: KindStats() for k in KINDS}
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=clients + 4)
    timeout = aiohttp.ClientTimeout(total=120)
    people: list[dict] = []
    acknowledged = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as session:
        async with session.get(base + "/v1/people", params={"limit": 500}) as r:
            people = (await r.json())["people"]
        faces = [p["cover"] for p in people if p["cover"]]
        photo_ids = sorted({f.split("-")[0] for f in faces})
        t_start = time.perf_counter()
        deadline = t_start + duration
        counter = iter(range(1 << 62))

        async def one(kind: str):
            nonlocal acknowledged
            t0 = time.perf_counter()
            try:
                if kind == "identify":
                    probe = probes[next(counter) % len(probes)]
                    form = aiohttp.FormData()
                    form.add_field("file", probe.data, filename="p.jpg", content_type="image/jpeg")
                    request = session.post(base + "/v1/identify", data=form)
                elif kind == "people":
                    request = session.get(base + "/v1/people", params={
                        "limit": 60, "offset": rng.randrange(0, max(1, len(people) - 10))})
                elif kind == "person":
                    request = session.get(base + f"/v1/people/{rng.choice(people)['id']}",
                                          params={"limit": 60})
                elif kind == "face_thumbnail":
                    request = session.get(base + f"/v1/faces/{rng.choice(faces)}/thumbnail")
                elif kind == "photo_thumbnail":
                    request = session.get(base + f"/v1/photos/{rng.choice(photo_ids)}/thumbnail",
                                          params={"size": 256})
                else:
                    pid = rng.choice(people)["id"]
                    request = session.post(base + f"/v1/people/{pid}/name",
                                           json={"name": f"bench {uuid.uuid4().hex[:12]}"},
                                           headers={"Idempotency-Key": uuid.uuid4().hex})
                async with request as response:
                    await response.read()
                    status = response.status
            except Exception as exc:  # noqa: BLE001 - counted
                status = type(exc).__name__
            s = stats[kind]
            s.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                s.errors += 1
                s.error_kinds[str(status)] = s.error_kinds.get(str(status), 0) + 1
            elif kind == "decision":
                acknowledged += 1

        async def worker():
            while time.perf_counter() < deadline:
                x = rng.random()
                if x < mix[0]:
                    kind = "identify"
                elif x < mix[0] + mix[1]:
                    kind = rng.choice(["people", "person", "face_thumbnail", "photo_thumbnail"])
                else:
                    kind = "decision"
                await one(kind)

        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - t_start
    return stats, seconds, acknowledged


def mixed_table(runs: dict[str, tuple[dict[str, KindStats], float]]) -> str:
    lines = ["| run | kind | requests | req/s | p50 ms | p95 ms | p99 ms | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, (stats, seconds) in runs.items():
        total = sum(len(s.latencies_ms) for s in stats.values())
        errors = sum(s.errors for s in stats.values())
        lines.append(f"| {label} | all | {total} | {total / seconds:.2f} | | | | {errors} |")
        for kind, s in stats.items():
            if s.latencies_ms:
                lines.append(f"| {label} | {kind} | {len(s.latencies_ms)} | "
                             f"{len(s.latencies_ms) / seconds:.2f} | {s.pct(50):.0f} | "
                             f"{s.pct(95):.0f} | {s.pct(99):.0f} | {s.errors} |")
    return "\n".join(lines)


# -- 10k people ----------------------------------------------------------------------------------

def seed_people(index_dir: Path, n_people: int, faces_each: int = 3, seed: int = 0) -> float:
    """A people store of ``n_people`` unnamed people (``faces_each`` faces each) written by one
    transaction of the real store (no collection behind it: the grid lists people only).
    Returns seconds taken."""
    import hashlib

    from facenet_platform.index.face_ids import face_id
    from facenet_platform.index.people_store import FaceTable, PeopleStore, Person

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    store = PeopleStore(index_dir)
    with store.transaction("seed", {"bench": "people grid", "people": n_people}) as tx:
        state = tx.state
        hashes, indexes, owners = [], [], []
        for i in range(n_people):
            pid = state.new_person_id()
            count = int(rng.integers(1, 2 * faces_each))
            digest = hashlib.sha256(f"photo-{seed}-{i}".encode()).hexdigest()
            ids = [face_id(digest, k) for k in range(count)]
            state.people[pid] = Person(pid, None, False, ids[0], (), "2026-01-01T00:00:00Z",
                                       count, 1)
            hashes += [digest] * count
            indexes += list(range(count))
            owners += [pid] * count
        fids = np.asarray([face_id(h, k) for h, k in zip(hashes, indexes)], dtype=object)
        state.faces = FaceTable.build(fids, np.asarray(hashes, object),
                                      np.asarray(indexes, np.int32), np.asarray(owners, object),
                                      np.zeros(len(fids), bool),
                                      np.full(len(fids), 0.9, np.float32))
        state.settings = {**state.settings, "embedding_size": 512}
        tx.summary = f"seeded {n_people} people"
    return time.perf_counter() - t0


def server_ms(response) -> float:
    """The ingress' own time for a request, from its ``Server-Timing`` header."""
    value = response.headers.get("Server-Timing", "")
    return float(value.split("dur=", 1)[1]) if "dur=" in value else float("nan")


async def grid_requests(base: str, headers: dict, total: int, n_people: int, clients: int = 4,
                        seed: int = 0) -> tuple[list[float], list[float]]:
    """``(client ms, server ms)`` of ``total`` grid pages at random offsets."""
    import aiohttp

    rng = random.Random(seed)
    latencies, server = [], []
    async with aiohttp.ClientSession(headers=headers) as session:
        async def worker(n):
            for _ in range(n):
                offset = rng.randrange(0, max(1, n_people - 60))
                t0 = time.perf_counter()
                async with session.get(base + "/v1/people", params={
                        "limit": 60, "offset": offset}) as r:
                    await r.read()
                    assert r.status == 200, r.status
                    server.append(server_ms(r))
                latencies.append((time.perf_counter() - t0) * 1000)
        await asyncio.gather(*(worker(total // clients) for _ in range(clients)))
    return latencies, server


# -- killed writer -------------------------------------------------------------------------------

async def decisions_with_a_kill(base: str, headers: dict, app: str, clients: int,
                                duration: float, kill_at: float) -> dict:
    """Renames with unique keys; a failed one is retried with the same key until answered.
    The writer replica is killed at ``kill_at`` s."""
    import aiohttp
    import ray

    connector = aiohttp.TCPConnector(limit=clients + 4)
    timeout = aiohttp.ClientTimeout(total=120)
    acknowledged: dict[str, int] = {}   # key -> event id
    latency: list[tuple[float, float]] = []  # (completed at s, ms incl. retries)
    attempts = {"sent": 0, "retried": 0, "failed_attempts": {}}
    events = {}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as session:
        async with session.get(base + "/v1/people", params={"limit": 500}) as r:
            people = [p["id"] for p in (await r.json())["people"]]
        t_start = time.perf_counter()
        deadline = t_start + duration

        async def worker(w: int):
            rng = random.Random(w)
            while time.perf_counter() < deadline:
                key = f"kill-{w}-{uuid.uuid4().hex}"
                body = {"name": f"k{w} {uuid.uuid4().hex[:10]}"}
                pid = rng.choice(people)
                attempts["sent"] += 1
                t0 = time.perf_counter()
                for attempt in range(60):
                    try:
                        async with session.post(base + f"/v1/people/{pid}/name", json=body,
                                                headers={"Idempotency-Key": key}) as r:
                            data = await r.json()
                            status = r.status
                    except Exception as exc:  # noqa: BLE001 - retried
                        status, data = type(exc).__name__, None
                    if status == 200:
                        acknowledged[key] = data["event"]["id"] if data["event"] else None
                        latency.append(((time.perf_counter() - t_start),
                                        (time.perf_counter() - t0) * 1000))
                        break
                    attempts["retried"] += 1
                    kinds = attempts["failed_attempts"]
                    kinds[str(status)] = kinds.get(str(status), 0) + 1
                    await asyncio.sleep(0.5)

        async def killer():
            await asyncio.sleep(kill_at)
            prefix = f"SERVE_REPLICA::{app}#GalleryWriter#"
            victims = [a for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["name"].startswith(prefix)]
            assert len(victims) == 1, victims
            handle = ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"])
            events["kill"] = time.perf_counter() - t_start
            ray.kill(handle, no_restart=True)

        await asyncio.gather(killer(), *(worker(w) for w in range(clients)))
        events["end"] = time.perf_counter() - t_start
    kill = events["kill"]
    after = [ms for t, ms in latency if t >= kill]
    before = [ms for t, ms in latency if t < kill]
    events["decision_ms"] = {
        "before_kill_p50": round(float(np.percentile(before, 50)), 1) if before else None,
        "after_kill_p50": round(float(np.percentile(after, 50)), 1) if after else None,
        "max": round(max(ms for _, ms in latency), 1) if latency else None,
        "per_s_before": round(len(before) / kill, 2) if kill else None,
        "per_s_after": round(len(after) / max(1e-9, events["end"] - kill), 2)}
    return {"acknowledged": acknowledged, "attempts": attempts, "events": events}


def check_log(index_dir: Path, acknowledged: dict[str, int]) -> dict:
    """What the event log says about the acknowledged keys."""
    from facenet_platform.index.people_store import PeopleStore

    history = PeopleStore(index_dir).history()
    by_key: dict[str, list[int]] = {}
    for e in history:
        key = e.args.get("request_id")
        if key and str(key).startswith("kill-"):
            by_key.setdefault(str(key), []).append(e.id)
    lost = [k for k in acknowledged if k not in by_key]
    twice = {k: v for k, v in by_key.items() if len(v) > 1}
    mismatched = [k for k, e in acknowledged.items() if e is not None and by_key.get(k) != [e]]
    unacknowledged_in_log = [k for k in by_key if k not in acknowledged]
    return {"acknowledged": len(acknowledged), "keys_in_log": len(by_key), "lost": len(lost),
            "applied_twice": len(twice), "event_id_mismatch": len(mismatched),
            "in_log_but_not_acknowledged": len(unacknowledged_in_log)}


def run(args, pipeline, probes, lfw_people: dict, strangers: list, work: Path, deploy_fn,
        base: str, headers: dict, app: str) -> dict:
    """All three experiments; returns figures and prints markdown tables."""
    from ray import serve

    out: dict = {}
    # 1. collection of the gallery people's other photos (plus strangers): people to browse
    index_dir = work / "index"
    photos = [p for ps in lfw_people.values() for p in ps[1:4]] + list(strangers)
    t0 = time.perf_counter()
    out["collection"] = build_collection(pipeline, index_dir, photos)
    out["collection"]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\ncollection: {out['collection']}", flush=True)

    startup = deploy_fn(index_dir)
    print(f"service (people, thumbnails) ready in {startup:.0f} s", flush=True)
    asyncio.run(mixed_load(base, headers, probes, 4, 5.0, (0.5, 0.45)))  # warm-up
    runs = {}
    rounds = args.mixed_rounds if "mixed" in args.parts else 0
    for k in range(rounds):
        for label, mix in (("identify only", (1.0, 0.0)), ("mixed 90/9/1", (0.90, 0.09))):
            name = label if rounds == 1 else f"{label} #{k + 1}"
            load_avg = __import__("os").getloadavg()[0]
            stats, seconds, _ = asyncio.run(mixed_load(base, headers, probes,
                                                       args.mixed_clients, args.mixed_duration,
                                                       mix, seed=k))
            runs[f"{name} (load {load_avg:.0f})"] = (stats, seconds)
            print(mixed_table({name: runs[f"{name} (load {load_avg:.0f})"]}), flush=True)
    out["mixed_table"] = mixed_table(runs)
    out["mixed"] = {label: {"seconds": round(sec, 1), **{k: {
        "n": len(s.latencies_ms), "rps": round(len(s.latencies_ms) / sec, 3),
        "p50": round(s.pct(50), 1), "p95": round(s.pct(95), 1), "p99": round(s.pct(99), 1),
        "errors": s.errors, "error_kinds": s.error_kinds} for k, s in stats.items()
        if s.latencies_ms}} for label, (stats, sec) in runs.items()}

    # 3. killed writer (on this index: real people)
    if "kill" not in args.parts:
        serve.delete(app)
        return _grid(args, out, work, deploy_fn, base, headers, app)

    def stats():
        import urllib.request

        req = urllib.request.Request(base + "/v1/stats", headers=headers)
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())
    before = stats()
    kill = asyncio.run(decisions_with_a_kill(base, headers, app, 8, args.kill_decisions_s,
                                             args.kill_decisions_s / 3))
    after = stats()
    out["kill"] = {**check_log(index_dir, kill["acknowledged"]), "attempts": kill["attempts"],
                   "events": kill["events"],
                   "ingress_retries": after["ingress"]["backend_retries"]
                   - before["ingress"]["backend_retries"],
                   "writer_replica": [before["writer"]["replica"], after["writer"]["replica"]],
                   "replayed_by_writer": after["writer"]["replayed"]}
    print(f"\nkilled writer: {out['kill']}", flush=True)
    serve.delete(app)
    return _grid(args, out, work, deploy_fn, base, headers, app)


def _grid(args, out: dict, work: Path, deploy_fn, base: str, headers: dict, app: str) -> dict:
    """2. grids of 100 and 10,000 people."""
    from ray import serve

    out["grid"] = {}
    if "grid" not in args.parts:
        return out
    for n in args.grid_sizes:
        grid_index = work / f"grid-{n}"
        seconds = seed_people(grid_index, n)
        deploy_fn(grid_index)
        asyncio.run(grid_requests(base, headers, 40, n))  # warm-up (first load, cache)
        client, server = asyncio.run(grid_requests(base, headers, args.grid_requests, n))
        pct = lambda xs, q: round(float(np.nanpercentile(xs, q)), 1)  # noqa: E731
        out["grid"][n] = {"seed_s": round(seconds, 1), "requests": len(client),
                          "client_p50_ms": pct(client, 50), "client_p99_ms": pct(client, 99),
                          "server_p50_ms": pct(server, 50), "server_p95_ms": pct(server, 95),
                          "server_p99_ms": pct(server, 99), "server_max_ms": pct(server, 100)}
        print(f"grid of {n} people: {out['grid'][n]}", flush=True)
        serve.delete(app)
    return out
