"""People engine figures (issue 11): clustering, templates, quality floor, labelling, scale.

Sub-commands (each prints Markdown tables for benchmarks/RESULTS.md):

* ``cluster``: LFW clustering through ``people_engine.update_assignments`` against the labels
  (labels only score). Parameters are chosen on the View 1 *DevTrain* people (``--grid``) and
  reported on the *DevTest* people (no person in common) and on all of LFW, for the faces of
  people with >= 2 images and for all faces. Baseline in the same run: ``index cluster``'s
  default (Chinese whispers at 0.7, ``index/people_clusters.py``).
* ``identify``: open-set identification with person templates (nearest single photo vs mean vs
  centroids, quality floor on/off): share of known probes named correctly when the threshold
  names 1% / 5% of strangers (people not in the gallery), on DevTrain (choice) and DevTest.
* ``quality``: the quality floor: per quality band, the share of faces whose nearest other face
  is another person; clustering figures with the floor on and off.
* ``label``: "label the collection": one enrolled (pinned, named) photo per LFW person with >= 5
  images, one ``update_assignments`` over all of LFW; share of those people's other faces named
  correctly, named wrongly, left unnamed; and the faces of everyone else that got a name.
* ``wild``: helper F's in-the-wild check (``wild_set.py``, ``wild_eval.py``'s faces table):
  clustering before (today's ``index cluster``) and after quality gating and the two stages;
  the ten largest people's make-up; identification with templates, floor on and off.
* ``scale``: synthetic collections shaped like the LFW embeddings (identity-centre and
  within-identity spread fitted to them, LFW-like identity sizes, planted junk faces of low
  quality in random directions) at several sizes; each size in its own subprocess (peak RSS of
  that process); full update vs incremental update of ``--incremental`` new faces in the same
  run; pairwise and BCubed scores on the planted labels.

Embeddings: ``benchmarks/lfw_cache.py``'s cache (``--cache``); detections (for quality):
``benchmarks/lfw_faces.py``'s cache (``--faces-cache``).

    .venv/bin/python benchmarks/bench_people.py cluster --grid
    .venv/bin/python benchmarks/bench_people.py identify
    .venv/bin/python benchmarks/bench_people.py quality
    .venv/bin/python benchmarks/bench_people.py label
    .venv/bin/python benchmarks/bench_people.py wild --wild benchmarks/out/wild_faces.parquet
    nice -n 10 .venv/bin/python benchmarks/bench_people.py scale --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lfw_cache import DEFAULT_CACHE, lfw_embeddings, select_people  # noqa: E402

from facenet_platform.core.lfw import default_lfw_dir, image_root, read_people  # noqa: E402
from facenet_platform.index import people_clusters as cl  # noqa: E402
from facenet_platform.index import people_engine as pe  # noqa: E402


# =============================================================================================
# data
# =============================================================================================

class Lfw:
    """LFW embeddings, names, quality and the View 1 split of people."""

    def __init__(self, args):
        lfw_dir = args.lfw_dir
        people = select_people(lfw_dir, None)
        data = lfw_embeddings(lfw_dir, people, args.cache)
        self.x = data.embeddings
        self.names = data.names
        self.paths = data.paths
        counts = {n: len(p) for n, p in people.items()}
        self.count = np.array([counts[n] for n in self.names])
        self.split = np.full(len(self.names), "", object)
        for split, file in (("train", "peopleDevTrain.txt"), ("test", "peopleDevTest.txt")):
            names = {n for n, _ in read_people(lfw_dir / file)}
            self.split[np.isin(self.names, list(names))] = split
        self.quality = np.ones(len(self.names), np.float32)
        self.has_quality = False
        if args.faces_cache and Path(args.faces_cache).is_file():
            from lfw_faces import lfw_faces

            faces = lfw_faces(lfw_dir, list(self.paths), Path(args.faces_cache))
            self.quality = faces.quality()
            self.components = faces.components()
            self.found = faces.found
            self.has_quality = True

    def subset(self, split: str, min_images: int = 1) -> np.ndarray:
        keep = self.count >= min_images
        if split != "all":
            keep &= self.split == split
        return np.flatnonzero(keep)


def scores(labels_true, labels_pred) -> dict[str, float]:
    p = cl.pairwise_scores(labels_true, labels_pred)
    b = cl.bcubed_scores(labels_true, labels_pred)
    return {"P": p["precision"], "R": p["recall"], "F1": p["f1"], "BP": b["precision"],
            "BR": b["recall"], "BF": b["f"]}


def run_update(x, q, options, **kw) -> tuple[np.ndarray, float]:
    """Person id per face -> integer labels (-1: none), and the seconds."""
    n = len(x)
    counter = itertools.count()
    t = time.perf_counter()
    out = pe.update_assignments(x, q, np.full(n, None, object), np.zeros(n, bool), {}, options,
                                lambda: f"p{next(counter)}", **kw)
    seconds = time.perf_counter() - t
    return person_labels(out), seconds


def person_labels(out: np.ndarray) -> np.ndarray:
    has = np.array([v is not None for v in out], bool)
    labels = np.full(len(out), -1, np.int64)
    if has.any():
        _, labels[has] = np.unique(out[has].astype(str), return_inverse=True)
    return labels


def fmt_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def header(cols) -> str:
    return fmt_row(cols) + "\n" + "|---" * len(cols) + "|"


def f4(v) -> str:
    return f"{v:.4f}"


# =============================================================================================
# cluster
# =============================================================================================

def cmd_cluster(args) -> int:
    lfw = Lfw(args)
    base = pe.PeopleOptions(min_quality=0.0 if args.no_quality else pe.PeopleOptions().min_quality)
    print(f"command: {' '.join(sys.argv)}")
    print(f"quality from detections: {lfw.has_quality}; defaults: {base}")
    for min_images in (args.grid_sets if args.grid else []):
        what = "people with >= 2 images" if min_images == 2 else "all faces"
        print(f"\n### Grid on DevTrain ({what}), floor off\n")
        idx = lfw.subset("train", min_images)
        x, y = lfw.x[idx], lfw.names[idx]
        q = np.ones(len(idx), np.float32)
        print(header(["cluster_distance", "merge_distance", "k", "P", "R", "BCubed P", "BCubed R",
                      "BCubed F", "people", "s"]))
        for cd, md, k in itertools.product(args.cluster_distances, args.merge_distances,
                                           args.neighbors):
            opts = replace(base, min_quality=0.0, cluster_distance=cd,
                           merge_distance=None if md <= 0 else md, neighbors=k)
            labels, sec = run_update(x, q, opts)
            s = scores(y, labels)
            print(fmt_row([cd, md if md > 0 else "none", k, f4(s["P"]), f4(s["R"]), f4(s["BP"]),
                           f4(s["BR"]), f4(s["BF"]), int(labels.max()) + 1, f"{sec:.1f}"]),
                  flush=True)
    if args.grid_only:
        return 0
    print("\n### Defaults vs index cluster (Chinese whispers 0.7), by split\n")
    print(header(["split", "faces", "method", "floor", "P", "R", "F1", "BCubed P", "BCubed R",
                  "BCubed F", "unassigned", "s"]))
    for split, min_images in (("train", 2), ("test", 2), ("all", 2), ("train", 1), ("test", 1),
                              ("all", 1)):
        idx = lfw.subset(split, min_images)
        x, y = lfw.x[idx], lfw.names[idx]
        label = f"{split} ({'>=2 images' if min_images == 2 else 'all faces'})"
        t = time.perf_counter()
        old = cl.cluster_embeddings(x, max_distance=0.7, min_faces=2)
        sec = time.perf_counter() - t
        s = scores(y, old)
        print(fmt_row([label, len(idx), "index cluster (CW 0.7)", "-", f4(s["P"]), f4(s["R"]),
                       f4(s["F1"]), f4(s["BP"]), f4(s["BR"]), f4(s["BF"]), int((old < 0).sum()),
                       f"{sec:.1f}"]))
        floors = [0.0] + ([base.min_quality] if lfw.has_quality and base.min_quality > 0 else [])
        for floor in floors:
            q = lfw.quality[idx] if floor > 0 else np.ones(len(idx), np.float32)
            labels, sec = run_update(x, q, replace(base, min_quality=floor))
            s = scores(y, labels)
            print(fmt_row([label, len(idx), "people engine (defaults)", floor, f4(s["P"]),
                           f4(s["R"]), f4(s["F1"]), f4(s["BP"]), f4(s["BR"]), f4(s["BF"]),
                           int((labels < 0).sum()), f"{sec:.1f}"]))
    return 0


# =============================================================================================
# identify
# =============================================================================================

def open_set(genuine_ok: np.ndarray, genuine_d: np.ndarray, stranger_d: np.ndarray,
             fpir: float) -> tuple[float, float]:
    """Share of genuine probes named correctly when the threshold names ``fpir`` of strangers,
    and that threshold. ``genuine_ok``: the nearest candidate is the right person."""
    finite = np.sort(stranger_d[np.isfinite(stranger_d)])
    if len(finite) == 0:
        thr = 4.0
    else:
        k = int(np.floor(fpir * len(stranger_d)))
        if k > len(finite):      # fewer strangers get any distance than the share allows
            thr = 4.0
        else:
            thr = float(finite[k - 1]) if k >= 1 else float(finite[0]) - 1e-6
    dir_ = float(np.mean(genuine_ok & (genuine_d <= thr)))
    return dir_, thr


def gallery_split(lfw: Lfw, split: str, min_images: int, per_person: int | None, seed: int):
    """Gallery rows, genuine probe rows, stranger probe rows of ``split``."""
    rng = np.random.default_rng(seed)
    idx = lfw.subset(split)
    enrolled = lfw.count[idx] >= min_images
    gallery, probes = [], []
    names = lfw.names[idx]
    for name in np.unique(names[enrolled]):
        rows = idx[names == name]
        rows = rows[rng.permutation(len(rows))]
        g = per_person if per_person is not None else len(rows) // 2
        gallery.extend(rows[:g])
        probes.extend(rows[g:])
    strangers = idx[~enrolled]
    return np.array(gallery), np.array(probes), strangers


def identify_methods(lfw: Lfw, gallery, probes, strangers, floor: float, methods):
    """Per method: (genuine correct-nearest flags, genuine distances, stranger distances)."""
    q = lfw.quality if floor > 0 else np.ones(len(lfw.names), np.float32)
    person = lfw.names[gallery].astype(object)
    out = {}
    for method in methods:
        if method == "nearest photo":
            keep = q[gallery] >= floor
            pid = person[keep]
            templates = lfw.x[gallery][keep]
            ids, owner = np.unique(pid, return_inverse=True)
        else:
            kind, _, c = method.partition(" ")
            opts = pe.PeopleOptions(min_quality=floor, template=kind,
                                    max_centroids=int(c) if c else 3)
            ids, templates, owner = pe.person_templates(lfw.x[gallery], q[gallery], person, opts)
        res = {}
        for what, rows in (("genuine", probes), ("stranger", strangers)):
            m = pe.identify_against_templates(lfw.x[rows], ids, templates, owner, 4.0,
                                              quality=q[rows], min_quality=floor)
            d = np.where(m.reason == "low_quality", np.inf, m.distance)
            ok = m.person.astype(object) == lfw.names[rows].astype(object)
            res[what] = (ok, d)
        out[method] = res
    return out


def cmd_identify(args) -> int:
    lfw = Lfw(args)
    floor = pe.PeopleOptions().min_quality
    print(f"command: {' '.join(sys.argv)}")
    methods = ["nearest photo", "mean", "centroids 2", "centroids 3"]
    protocols = [("3 photos per person (people with >= 4)", 4, 3),
                 ("half of each person's photos (people with >= 10)", 10, None)]
    for split in ("train", "test"):
        for title, min_images, per in protocols:
            gallery, probes, strangers = gallery_split(lfw, split, min_images, per, args.seed)
            print(f"\n### {split}: {title}: {len(np.unique(lfw.names[gallery]))} people, "
                  f"gallery {len(gallery)}, genuine probes {len(probes)}, stranger probes "
                  f"{len(strangers)}\n")
            ad = pe.PeopleOptions().assign_distance
            print(header(["templates", "floor", "named correctly @1% strangers", "threshold",
                          "@5% strangers", "threshold", f"at assign_distance {ad}: named correctly",
                          "strangers named"]))
            floors = [0.0] + ([floor] if lfw.has_quality else [])
            for f in floors:
                res = identify_methods(lfw, gallery, probes, strangers, f, methods)
                for method, r in res.items():
                    ok, gd = r["genuine"]
                    _, sd = r["stranger"]
                    d1, t1 = open_set(ok, gd, sd, 0.01)
                    d5, t5 = open_set(ok, gd, sd, 0.05)
                    print(fmt_row([method, f, f4(d1), f"{t1:.3f}", f4(d5), f"{t5:.3f}",
                                   f4(np.mean(ok & (gd <= ad))), f4(np.mean(sd <= ad))]))
    return 0


# =============================================================================================
# quality
# =============================================================================================

def cmd_quality(args) -> int:
    lfw = Lfw(args)
    if not lfw.has_quality:
        print("no detections cache: run benchmarks/lfw_faces.py first", file=sys.stderr)
        return 1
    print(f"command: {' '.join(sys.argv)}")
    for split in ("train", "test"):
        idx = lfw.subset(split, 2)
        x, y, q = lfw.x[idx], lfw.names[idx], lfw.quality[idx]
        # nearest other face
        import faiss

        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        _, nn = index.search(x, 2)
        wrong = y[nn[:, 1]] != y
        print(f"\n### {split} (people with >= 2 images, {len(idx)} faces): nearest other face is "
              f"another person, by quality band\n")
        print(header(["quality", "faces", "share of faces", "nearest is another person"]))
        bands = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.01]
        for lo, hi in zip(bands[:-1], bands[1:]):
            sel = (q >= lo) & (q < hi)
            if sel.any():
                print(fmt_row([f"[{lo}, {min(hi, 1)})", int(sel.sum()), f4(sel.mean()),
                               f4(wrong[sel].mean())]))
        print(fmt_row(["all", len(idx), "1", f4(wrong.mean())]))
        print(f"\n### {split}: clustering by floor (faces under it stay unassigned)\n")
        print(header(["floor", "faces", "gated", "P", "R", "BCubed P", "BCubed R", "BCubed F",
                      "P (kept faces)", "BCubed F (kept faces)"]))
        base = pe.PeopleOptions()
        for floor in args.floors:
            labels, _ = run_update(x, q, replace(base, min_quality=floor))
            s = scores(y, labels)
            kept = q >= floor
            sk = scores(y[kept], labels[kept])
            print(fmt_row([floor, len(idx), int((~kept).sum()), f4(s["P"]), f4(s["R"]),
                           f4(s["BP"]), f4(s["BR"]), f4(s["BF"]), f4(sk["P"]), f4(sk["BF"])]))
    return 0


# =============================================================================================
# label the collection
# =============================================================================================

def cmd_label(args) -> int:
    lfw = Lfw(args)
    print(f"command: {' '.join(sys.argv)}")
    n = len(lfw.names)
    rng = np.random.default_rng(args.seed)
    enrolled_people = np.unique(lfw.names[lfw.count >= 5])
    person = np.full(n, None, object)
    pinned = np.zeros(n, bool)
    for name in enrolled_people:
        rows = np.flatnonzero(lfw.names == name)
        r = rows[rng.integers(len(rows))]
        person[r] = name
        pinned[r] = True
    print(f"{len(enrolled_people)} people with >= 5 images, one photo each enrolled; {n} faces")
    print()
    print(header(["floor", "template", "their other faces", "named correctly", "named wrongly",
                  "unnamed", "other people's faces", "given a name", "s"]))
    floors = [0.0] + ([pe.PeopleOptions().min_quality] if lfw.has_quality else [])
    for floor, template in itertools.product(floors, ("mean",)):
        q = lfw.quality if floor > 0 else np.ones(n, np.float32)
        opts = replace(pe.PeopleOptions(), min_quality=floor, template=template)
        counter = itertools.count()
        t = time.perf_counter()
        out = pe.update_assignments(lfw.x, q, person, pinned, {}, opts,
                                    lambda: f"unnamed-{next(counter)}")
        sec = time.perf_counter() - t
        named = np.isin(out.astype(str), enrolled_people)
        theirs = np.isin(lfw.names, enrolled_people) & ~pinned
        correct = named & (out.astype(str) == lfw.names)
        others = ~np.isin(lfw.names, enrolled_people)
        print(fmt_row([floor, template, int(theirs.sum()), f4(correct[theirs].mean()),
                       f4((named & ~correct)[theirs].mean()),
                       f4((~named)[theirs].mean()), int(others.sum()),
                       f4(named[others].mean()), f"{sec:.1f}"]))
    return 0


# =============================================================================================
# in-the-wild check (helper F's wild_set.py / wild_eval.py faces table)
# =============================================================================================

def load_wild(path: Path) -> dict[str, np.ndarray]:
    """``wild_eval.py``'s faces Parquet: embeddings, quality (same function as the index),
    truth, role, identity, id_split, and today's ``index cluster`` ids."""
    import pyarrow.parquet as pq

    from facenet_platform.core.quality import quality_components

    t = pq.read_table(path)

    def fixed(name, size):
        col = t.column(name).combine_chunks()
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, size)

    x = fixed("embedding", t.schema.field("embedding").type.list_size)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    comps = quality_components(t.column("score").to_numpy(), fixed("box", 4),
                               fixed("landmarks", 10), t.column("sharpness").to_numpy())
    return {"x": x, "quality": comps.score, "components": comps,
            "truth": np.array(t.column("truth").to_pylist(), object),
            "role": np.array(t.column("role").to_pylist(), object),
            "identity": np.array(t.column("identity").to_pylist(), object),
            "id_split": np.array(t.column("id_split").to_pylist(), object),
            "cluster_id": t.column("cluster_id").to_numpy()}


def largest_people(labels, truth, role, top: int = 10) -> list[str]:
    """The ``top`` largest people: size, purity (share of the commonest truth label) and the
    roles of their faces; "junk" (*) when most faces are false detections or no identity makes
    up half of them (a background face repeated in many photos is a real person)."""
    out = []
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    for c in ids[np.argsort(-counts, kind="stable")][:top]:
        members = labels == c
        _, tc = np.unique(truth[members].astype(str), return_counts=True)
        purity = tc.max() / members.sum()
        roles, rc = np.unique(role[members].astype(str), return_counts=True)
        bad = rc[roles == "junk"].sum() / members.sum()
        junk = bad > 0.5 or purity < 0.5
        out.append(f"{int(members.sum())}{'*' if junk else ''} ({purity:.2f}; "
                   + ", ".join(f"{r} {n}" for r, n in zip(roles, rc)) + ")")
    return out


def cmd_wild(args) -> int:
    print(f"command: {' '.join(sys.argv)}")
    for path in args.wild:
        w = load_wild(Path(path))
        x, q, truth, role = w["x"], w["quality"], w["truth"], w["role"]
        n = len(x)
        print(f"\n### {path}: {n} detected faces ("
              + ", ".join(f"{r} {int((role == r).sum())}" for r in ("subject", "stranger",
                                                                     "background", "junk"))
              + ")\n")
        print("quality by role (median; share under the default floor "
              f"{pe.PeopleOptions().min_quality}):",
              ", ".join(f"{r} {np.median(q[role == r]):.2f}/"
                        f"{np.mean(q[role == r] < pe.PeopleOptions().min_quality):.2f}"
                        for r in ("subject", "stranger", "background", "junk") if (role == r).any()))
        print()
        print(header(["method", "floor", "people", "P", "R", "BCubed P", "BCubed R", "BCubed F",
                      "subjects: BCubed P", "subjects: BCubed F", "junk people in 10 largest",
                      "10 largest (purity; roles), * = junk"]))
        subj = role == "subject"
        rows = [("index cluster (CW 0.7), as built", None, None)]
        base = pe.PeopleOptions()
        rows += [("people engine, one stage (CW only)", 0.0, replace(base, merge_distance=None)),
                 ("people engine, one stage (CW only)", base.min_quality,
                  replace(base, merge_distance=None)),
                 ("people engine, two stages", 0.0, replace(base, seed_quality=0.0)),
                 ("people engine, two stages, no seed face", base.min_quality,
                  replace(base, seed_quality=0.0)),
                 ("people engine, two stages (defaults)", base.min_quality, base)]
        for title, floor, opts in rows:
            if opts is None:
                labels = w["cluster_id"].astype(np.int64)
            else:
                labels, _ = run_update(x, q if floor > 0 else np.ones(n, np.float32),
                                       replace(opts, min_quality=floor))
            s = scores(truth, labels)
            ss = scores(truth[subj], labels[subj])
            top = largest_people(labels, truth, role)
            print(fmt_row([title, "-" if floor is None else floor, int(len(np.unique(labels[labels >= 0]))),
                           f4(s["P"]), f4(s["R"]), f4(s["BP"]), f4(s["BR"]), f4(s["BF"]),
                           f4(ss["BP"]), f4(ss["BF"]), sum("*" in t for t in top),
                           "; ".join(top)]))
        if args.sweep:
            print("\nsweep (defaults otherwise): floor x seed_quality\n")
            print(header(["floor", "seed_quality", "P", "BCubed P", "BCubed F",
                          "subjects: BCubed F", "junk people in 10 largest"]))
            for floor, seed in itertools.product(args.floors, args.seed_qualities):
                labels, _ = run_update(x, q, replace(base, min_quality=floor, seed_quality=seed))
                s = scores(truth, labels)
                ss = scores(truth[subj], labels[subj])
                top = largest_people(labels, truth, role)
                print(fmt_row([floor, seed, f4(s["P"]), f4(s["BP"]), f4(s["BF"]), f4(ss["BF"]),
                               sum("*" in t for t in top)]))
        # identification: gallery / probes / impostors as wild_eval.py splits them
        gallery = np.flatnonzero(w["id_split"] == "gallery")
        probes = np.flatnonzero(w["id_split"] == "probe")
        impostors = np.flatnonzero(w["id_split"] == "impostor")
        print(f"\nidentification: gallery {len(gallery)} faces of "
              f"{len(np.unique(w['identity'][gallery]))} people, probes {len(probes)}, "
              f"impostors (strangers) {len(impostors)}\n")
        print(header(["templates", "floor", "named correctly @1% impostors", "@5% impostors"]))
        for floor in (0.0, base.min_quality):
            qq = q if floor > 0 else np.ones(n, np.float32)
            for method in ("nearest photo", "mean", "centroids 3"):
                person = w["identity"][gallery].astype(object)
                if method == "nearest photo":
                    keep = qq[gallery] >= floor
                    ids, owner = np.unique(person[keep], return_inverse=True)
                    templates = x[gallery][keep]
                else:
                    kind, _, c = method.partition(" ")
                    ids, templates, owner = pe.person_templates(
                        x[gallery], qq[gallery], person,
                        replace(base, min_quality=floor, template=kind,
                                max_centroids=int(c) if c else 3))
                res = {}
                for what, rws in (("genuine", probes), ("stranger", impostors)):
                    m = pe.identify_against_templates(x[rws], ids, templates, owner, 4.0,
                                                      quality=qq[rws], min_quality=floor)
                    d = np.where(m.reason == "low_quality", np.inf, m.distance)
                    res[what] = (m.person.astype(object) == w["identity"][rws].astype(object), d)
                d1, _ = open_set(res["genuine"][0], res["genuine"][1], res["stranger"][1], 0.01)
                d5, _ = open_set(res["genuine"][0], res["genuine"][1], res["stranger"][1], 0.05)
                print(fmt_row([method, floor, f4(d1), f4(d5)]))
    return 0


# =============================================================================================
# scale (synthetic)
# =============================================================================================

def fit_lfw_shape(x: np.ndarray, names: np.ndarray, components: int = 128) -> dict[str, np.ndarray]:
    """Low-rank Gaussian models of LFW identity centres and within-identity offsets.

    Identity centres: the mean embedding of each person with >= 2 images (its spread is
    estimated from people with >= 5). Offsets: each face minus its person's mean (people with
    >= 5 images, scaled by sqrt(n / (n - 1)) for the mean's own noise). Each is the top
    ``components`` principal directions plus an isotropic remainder."""
    uniq, inv, cnt = np.unique(names, return_inverse=True, return_counts=True)
    sums = np.zeros((len(uniq), x.shape[1]))
    np.add.at(sums, inv, x)
    means = sums / cnt[:, None]
    many = cnt[inv] >= 5
    offsets = (x - means[inv])[many] * np.sqrt(cnt[inv][many] / (cnt[inv][many] - 1))[:, None]
    centres = means[cnt >= 5]

    def lowrank(samples, center=True):
        mu = samples.mean(axis=0) if center else np.zeros(samples.shape[1])
        z = samples - mu
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        var = s ** 2 / len(z)
        k = min(components, len(var) - 1)
        rest = float(var[k:].sum() / max(1, x.shape[1] - k))
        return {"mu": mu, "basis": vt[:k], "std": np.sqrt(var[:k]), "rest": np.sqrt(rest)}

    return {"centre": lowrank(centres), "offset": lowrank(offsets, center=False),
            "sizes": cnt}


def sample_lowrank(model, n, rng) -> np.ndarray:
    out = np.empty((n, len(model["mu"])), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        z = rng.standard_normal((m, len(model["std"]))).astype(np.float32) * model["std"]
        out[s:s + m] = (model["mu"] + z @ model["basis"]
                        + rng.standard_normal((m, out.shape[1])).astype(np.float32) * model["rest"])
    return out


def synthetic(n: int, shape, seed: int, junk: float = 0.05):
    """``n`` faces: identities with LFW-like sizes and spreads plus ``junk`` low-quality faces
    in random directions. Returns (x, labels (-1-k for junk: each its own), quality)."""
    rng = np.random.default_rng(seed)
    sizes_lfw = shape["sizes"]
    n_junk = int(round(junk * n))
    n_real = n - n_junk
    sizes = []
    total = 0
    while total < n_real:
        s = int(rng.choice(sizes_lfw))
        s = min(s, n_real - total)
        sizes.append(s)
        total += s
    sizes = np.array(sizes)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centres = sample_lowrank(shape["centre"], len(sizes), rng)
    x = np.empty((n, centres.shape[1]), np.float32)
    for s in range(0, n_real, 65536):
        m = min(65536, n_real - s)
        x[s:s + m] = centres[labels[s:s + m]] + sample_lowrank(shape["offset"], m, rng)
    x[n_real:] = rng.standard_normal((n_junk, x.shape[1])).astype(np.float32)
    for s in range(0, n, 65536):
        x[s:s + 65536] /= np.linalg.norm(x[s:s + 65536], axis=1, keepdims=True)
    quality = np.concatenate([rng.uniform(0.5, 1.0, n_real), rng.uniform(0.0, 0.25, n_junk)])
    labels = np.concatenate([labels, -1 - np.arange(n_junk)])
    perm = rng.permutation(n)
    return x[perm], labels[perm], quality[perm].astype(np.float32)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def scale_child(args) -> int:
    """One size, in its own process: full update, then incremental update of the last
    ``--incremental`` faces; prints one JSON line."""
    import faiss

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    faiss.omp_set_num_threads(args.threads)
    shape = dict(np.load(args.shape, allow_pickle=True))
    shape = {k: (v.item() if v.dtype == object and v.shape == () else v) for k, v in shape.items()}
    res = {"size": args.size}
    t = time.perf_counter()
    if args.size_kind == "lfw":
        lfw = Lfw(args)
        x, labels, q = lfw.x, lfw.names, (lfw.quality if lfw.has_quality else
                                          np.ones(len(lfw.names), np.float32))
        _, labels = np.unique(labels, return_inverse=True)
        res["data"] = "LFW (real embeddings)"
    else:
        x, labels, q = synthetic(args.size, shape, args.seed, args.junk)
        res["data"] = f"synthetic, {args.junk:.0%} junk"
    res["generate_s"] = time.perf_counter() - t
    res["rss_data_mb"] = _rss_mb()
    n = len(x)
    inc = min(args.incremental, n // 10)
    old = n - inc
    if args.use_ray:
        import ray

        ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    opts = pe.PeopleOptions(use_ray=args.use_ray or None)
    approximate = opts.use_approximate(n)
    res["approximate"] = approximate

    # full update of the first n - inc faces (keeping a k-NN index over them), then an
    # incremental update of the last inc faces into it
    knn = pe.pk.KnnIndex.empty(x.shape[1], approximate)
    counter = itertools.count()
    t, c = time.perf_counter(), time.process_time()
    base = pe.update_assignments(x[:old], q[:old], np.full(old, None, object),
                                 np.zeros(old, bool), {}, opts, lambda: f"p{next(counter)}",
                                 knn_index=knn)
    res["full_s"] = time.perf_counter() - t
    res["full_cpu_s"] = time.process_time() - c
    res["full_faces"] = old
    res["rss_full_mb"] = _rss_mb()
    labels_pred = person_labels(base)
    res["full"] = scores(labels[:old], labels_pred)
    res["people"] = int(labels_pred.max()) + 1
    res["junk_in_people"] = int(np.sum((labels[:old] < 0) & (labels_pred >= 0)))
    person = np.concatenate([base, np.full(inc, None, object)])
    new = np.r_[np.zeros(old, bool), np.ones(inc, bool)]
    t, c = time.perf_counter(), time.process_time()
    out2 = pe.update_assignments(x, q, person, np.zeros(n, bool), {}, opts,
                                 lambda: f"p{next(counter)}", new=new, knn_index=knn)
    res["incremental_s"] = time.perf_counter() - t
    res["incremental_cpu_s"] = time.process_time() - c
    res["incremental_faces"] = inc
    res["incremental"] = scores(labels, person_labels(out2))
    res["new_faces_named"] = float(np.mean(np.array([v is not None for v in out2[old:]])))
    res["rss_peak_mb"] = _rss_mb()
    # how the incremental update matched its new faces against the existing people, and (not
    # timed above) how often comparing only with their neighbours' people agrees with exact
    ids, templates, owner = pe.person_templates(x, q, person, opts)
    res["people_before_incremental"] = len(ids)
    res["matching"] = ("neighbours" if len(ids) > pe.CANDIDATE_PEOPLE_ABOVE else "exact")
    rows = np.flatnonzero(new & (q >= opts.min_quality))
    t = time.perf_counter()
    exact = pe.identify_against_templates(x[rows], ids, templates, owner, opts.assign_distance)
    res["exact_match_s"] = time.perf_counter() - t
    t = time.perf_counter()
    nb, _ = pe.pk.search_rows(knn, rows, opts.neighbors, use_ray=False)
    fast = pe.match_through_neighbours(x, rows, nb, pe.person_codes(person)[1], ids, templates,
                                       owner, opts.assign_distance)
    res["neighbour_match_s"] = time.perf_counter() - t
    res["neighbour_match_agrees"] = float(np.mean(fast.person == exact.person))
    res["exact_named"] = float(np.mean(exact.person != None))  # noqa: E711 - elementwise
    res["neighbour_named"] = float(np.mean(fast.person != None))  # noqa: E711
    print("RESULT " + json.dumps(res))
    return 0


def cmd_scale(args) -> int:
    print(f"command: {' '.join(sys.argv)}")
    lfw = Lfw(args)
    shape = fit_lfw_shape(lfw.x, lfw.names)
    shape_path = HERE / "out" / "people_shape.npz"
    shape_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(shape_path, centre=np.array(shape["centre"], object),
             offset=np.array(shape["offset"], object), sizes=shape["sizes"])
    # how well the synthetic data matches: same-person and other-person distances
    xs, ls, _ = synthetic(13233, shape, args.seed, 0.0)
    print("\nshape check (squared L2, 20k random pairs): same person mean / other person mean")
    for name, (xx, ll) in {"LFW": (lfw.x, lfw.names), "synthetic": (xs, ls)}.items():
        rng = np.random.default_rng(0)
        i, j = rng.integers(len(xx), size=(2, 200_000))
        d = np.sum((xx[i] - xx[j]) ** 2, axis=1)
        same = ll[i] == ll[j]
        same &= i != j
        # same-person pairs are rare at random: draw them within identities
        _, inv = np.unique(ll, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        a = order[:-1][inv[order][1:] == inv[order][:-1]]
        b = order[1:][inv[order][1:] == inv[order][:-1]]
        ds = np.sum((xx[a] - xx[b]) ** 2, axis=1)
        print(f"  {name}: {ds.mean():.3f} (sd {ds.std():.3f}) / {d[~same].mean():.3f} "
              f"(sd {d[~same].std():.3f}); within 0.7: same {np.mean(ds <= 0.7):.3f}, "
              f"other {np.mean(d[~same] <= 0.7):.5f}")
    rows = []
    for size in args.sizes:
        kind = "lfw" if size == 0 else "synthetic"
        cmd = [sys.executable, __file__, "scale-child", "--size", str(size), "--size-kind", kind,
               "--shape", str(shape_path), "--incremental", str(args.incremental),
               "--threads", str(args.threads), "--seed", str(args.seed), "--junk", str(args.junk),
               "--cache", str(args.cache), "--faces-cache", str(args.faces_cache or "")]
        if args.use_ray:
            cmd.append("--use-ray")
        t = time.perf_counter()
        # the child's log (its progress through a long size) goes straight to our stderr
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"size {size}: failed ({proc.returncode}); its log is above", file=sys.stderr)
            continue
        res = json.loads(line[0][7:])
        res["wall_s"] = wall
        rows.append(res)
        print(json.dumps(res), flush=True)
    print()
    print(header(["faces (full update)", "data", "k-NN", "Ray", "full update s (CPU s)",
                  "peak RSS MB (full)", "people", "P", "R", "BCubed P", "BCubed R", "BCubed F",
                  "junk in people", "then new faces", "incremental s (CPU s)",
                  "ratio full/incr (CPU)", "BCubed F after", "peak RSS MB",
                  "people before the new faces", "matching", "exact matching s",
                  "through neighbours s (k-NN query included)", "same answer",
                  "named: exact / through neighbours"]))
    for r in rows:
        f = r["full"]
        print(fmt_row([r["full_faces"], r["data"],
                       "HNSW" if r["approximate"] else "exact", "yes" if args.use_ray else "no",
                       f"{r['full_s']:.1f} ({r['full_cpu_s']:.1f})",
                       f"{r['rss_full_mb']:.0f}", r["people"], f4(f["P"]), f4(f["R"]),
                       f4(f["BP"]), f4(f["BR"]), f4(f["BF"]), r["junk_in_people"],
                       r["incremental_faces"],
                       f"{r['incremental_s']:.1f} ({r['incremental_cpu_s']:.1f})",
                       f"{r['full_s'] / max(r['incremental_s'], 1e-9):.1f} "
                       f"({r['full_cpu_s'] / max(r['incremental_cpu_s'], 1e-9):.1f})",
                       f4(r["incremental"]["BF"]), f"{r['rss_peak_mb']:.0f}",
                       r["people_before_incremental"], r["matching"],
                       f"{r['exact_match_s']:.1f}", f"{r['neighbour_match_s']:.1f}",
                       f4(r["neighbour_match_agrees"]),
                       f"{r['exact_named']:.4f} / {r['neighbour_named']:.4f}"]))
    return 0


# =============================================================================================

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["cluster", "identify", "quality", "label", "wild",
                                        "scale", "scale-child"])
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--faces-cache", type=str, default=str(HERE / "out" / "lfw_faces.npz"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    # cluster
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--grid-sets", type=int, nargs="+", default=[2, 1],
                    help="grid on DevTrain: 2 = people with >= 2 images, 1 = all faces")
    ap.add_argument("--grid-only", action="store_true")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--cluster-distances", type=float, nargs="+", default=[0.6, 0.7, 0.8])
    ap.add_argument("--merge-distances", type=float, nargs="+", default=[0, 0.9, 1.0, 1.1])
    ap.add_argument("--neighbors", type=int, nargs="+", default=[16])
    # wild
    ap.add_argument("--wild", nargs="+", default=[str(HERE / "out" / "wild_faces.parquet")],
                    help="wild_eval.py faces tables")
    ap.add_argument("--sweep", action="store_true", help="wild: floor x seed_quality sweep")
    ap.add_argument("--seed-qualities", type=float, nargs="+", default=[0.0, 0.2, 0.3, 0.4, 0.5])
    # quality
    ap.add_argument("--floors", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    # scale
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 100_000],
                    help="faces per synthetic collection; 0 = the real LFW embeddings")
    ap.add_argument("--incremental", type=int, default=10_000)
    ap.add_argument("--junk", type=float, default=0.05)
    ap.add_argument("--use-ray", action="store_true")
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--size-kind", default="synthetic")
    ap.add_argument("--shape", type=Path, default=None)
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    return {"cluster": cmd_cluster, "identify": cmd_identify, "quality": cmd_quality,
            "label": cmd_label, "wild": cmd_wild, "scale": cmd_scale, "scale-child": scale_child}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
