"""Detection, people clustering and identification on the in-the-wild check (wild_set.py).

Steps (each on the real platform code):

1. ``index build`` of the set's photos (real local Ray, :func:`facenet_platform.index.build.
   build_index`, incremental: a second run only reads what changed);
2. every detected face is matched to a planted face of ``labels.parquet`` by IoU (>= 0.4, one to
   one, greedy by IoU) and labelled ``subject``, ``stranger``, ``background`` or ``junk`` (no
   planted face: a false detection, or a face the generator did not know of);
3. today's ``index cluster`` with its defaults (:func:`cluster_index`, ``--recluster``) and its
   metrics (pairwise P/R/F1, BCubed P/R/F; unassigned faces are singletons) over all detected
   faces and over the subjects' faces; clusters vs people; the ten largest clusters' make-up;
4. identification: per person a gallery of 3 photos (seeded), the person's other detected faces
   are probes, the detected strangers are impostors (and, as a second line, every non-subject
   detection: strangers, background faces and junk). A probe is named by its nearest person,
   either by the nearest single gallery face or by the person's mean template (unit mean of its
   gallery embeddings); the threshold is set so that 1% (5%) of impostors get a name, and the
   figure is the share of probes named correctly at that threshold;
5. the baseline, in the same run: the same subject and stranger faces from their clean LFW
   originals (``index build`` of a list of those images into ``<set>_lfw_index``, the central
   face of each as in the LFW protocol), clustered with the same function and defaults and
   identified with the same gallery and probe images (``--no-lfw-baseline`` skips it).

Outputs (default names follow the set folder's name, ``wild`` -> ``benchmarks/out/wild_*``):

* ``<set>_eval.json``: every figure; the markdown tables are printed;
* ``<set>_faces.parquet``: one row per detected face, for reuse without running MTCNN again:

  - ``photo`` (str, relative to the set folder), ``path`` (str, as indexed), ``content_hash``
    (str), ``face_index`` (int32): the face's key in the index;
  - ``image_width``, ``image_height`` (int32, px);
  - ``box`` (list<float32>[4], x1 y1 x2 y2 px), ``landmarks`` (list<float32>[10], x1 y1 ... x5 y5
    px), ``score`` (float32, MTCNN), ``sharpness`` (float32, variance of the Laplacian of the
    aligned 160 px crop), ``face_px`` (float32, sqrt(box w x h));
  - ``embedding`` (list<float32>[512], unit, as the index stores it), ``model_id`` (str);
  - ``role`` (str: subject | stranger | background | junk), ``identity`` (str, null for junk),
    ``face_id`` (str, the planted face of labels.parquet, null for junk), ``iou`` (float32, with
    that planted face, 0 for junk), ``planted_face_px``, ``planted_blur_sigma`` (float32, NaN for
    junk);
  - ``truth`` (str): the label clustering is scored on: identity, or ``junk:<row>`` (every junk
    face its own person);
  - ``cluster_id`` (int64): today's ``index cluster`` (defaults), -1 unassigned;
  - ``id_split`` (str): gallery | probe (subjects), impostor (strangers), other.

    nice -n 10 .venv/bin/python benchmarks/wild_eval.py --set benchmarks/out/wild60
    nice -n 10 .venv/bin/python benchmarks/wild_eval.py            # benchmarks/out/wild
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

logger = logging.getLogger("wild_eval")

HERE = Path(__file__).resolve().parent
IOU_MATCH = 0.4
GALLERY_PHOTOS = 3
ROLES = ("subject", "stranger", "background", "junk")


def _clusters_module():
    """The people clustering module (imported late: it pulls in pyarrow and FAISS)."""
    from facenet_platform.index import people_clusters as cl

    return cl


# =============================================================================================
# matching detections to planted faces
# =============================================================================================

def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a (N, 4)`` and ``b (M, 4)`` (x1, y1, x2, y2) -> ``(N, M)``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return (inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)).astype(np.float32)


def match_boxes(detected: np.ndarray, planted: np.ndarray, threshold: float = IOU_MATCH
                ) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one greedy matching by IoU: per detection the planted index (-1: none) and IoU."""
    iou = iou_matrix(detected, planted)
    match = np.full(len(detected), -1, np.int64)
    best = np.zeros(len(detected), np.float32)
    if iou.size == 0:
        return match, best
    pairs = np.argwhere(iou >= threshold)
    order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_d, used_p = set(), set()
    for d, p in pairs[order]:
        if d in used_d or p in used_p:
            continue
        used_d.add(d)
        used_p.add(p)
        match[d], best[d] = p, iou[d, p]
    return match, best


# =============================================================================================
# identification
# =============================================================================================

def split_gallery(identity: np.ndarray, photo: np.ndarray, subject: np.ndarray, seed: int,
                  per_person: int = GALLERY_PHOTOS) -> np.ndarray:
    """``gallery`` / ``probe`` / ``""`` per face: per person ``per_person`` photos (seeded) are
    the gallery, the person's faces in other photos are probes."""
    rng = np.random.default_rng(seed)
    split = np.full(len(identity), "", object)
    for person in sorted(set(identity[subject].tolist())):
        idx = np.flatnonzero(subject & (identity == person))
        photos = sorted(set(photo[idx].tolist()))
        chosen = set(rng.choice(photos, size=min(per_person, len(photos)), replace=False).tolist())
        for i in idx:
            split[i] = "gallery" if photo[i] in chosen else "probe"
    return split


def nearest_person(queries: np.ndarray, gallery: np.ndarray, gallery_ids: np.ndarray,
                   method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per query the nearest person and its squared L2 distance; ``method``: ``single`` (nearest
    gallery face) or ``mean`` (unit mean template per person)."""
    people, inverse = np.unique(gallery_ids, return_inverse=True)
    if method == "mean":
        templates = np.zeros((len(people), gallery.shape[1]), np.float64)
        np.add.at(templates, inverse, gallery)
        templates /= np.linalg.norm(templates, axis=1, keepdims=True)
        d = np.maximum(2.0 - 2.0 * queries @ templates.T.astype(np.float32), 0)
    elif method == "single":
        dg = np.maximum(2.0 - 2.0 * queries @ gallery.T, 0)
        d = np.full((len(queries), len(people)), np.inf, np.float32)
        for k in range(len(people)):
            d[:, k] = dg[:, inverse == k].min(axis=1)
    else:
        raise ValueError(method)
    best = np.argmin(d, axis=1)
    return people[best], d[np.arange(len(queries)), best]


def open_set_scores(probe_person, probe_d, probe_true, impostor_d, rates=(0.01, 0.05),
                    fixed: float | None = None) -> dict[str, Any]:
    """Share of probes named correctly when ``rate`` of the impostors get a name (threshold:
    the ``rate`` quantile of the impostors' nearest distances), and at ``fixed``."""
    correct = probe_person == probe_true
    out: dict[str, Any] = {"rank1": float(np.mean(correct)) if len(correct) else float("nan")}
    imp = np.sort(impostor_d)
    for rate in rates:
        k = int(np.floor(rate * len(imp)))  # at most k impostors named
        t = float(imp[k] - 1e-6) if k < len(imp) else float("inf")
        t = float(imp[0] - 1e-6) if k == 0 else t
        out[f"at_{rate:g}"] = {"threshold": t,
                               "named_correctly": float(np.mean(correct & (probe_d <= t))),
                               "named_wrongly": float(np.mean(~correct & (probe_d <= t))),
                               "impostors_named": float(np.mean(impostor_d <= t))}
    if fixed is not None:
        out["at_threshold"] = {"threshold": fixed,
                               "named_correctly": float(np.mean(correct & (probe_d <= fixed))),
                               "named_wrongly": float(np.mean(~correct & (probe_d <= fixed))),
                               "impostors_named": float(np.mean(impostor_d <= fixed))}
    return out


def identification_scores(emb: np.ndarray, identity: np.ndarray, gallery: np.ndarray,
                          probes: np.ndarray, impostor_sets: dict[str, np.ndarray],
                          fixed: float | None) -> dict[str, Any]:
    """Open-set scores of both templates (``single``, ``mean``) for each impostor set."""
    out: dict[str, Any] = {}
    if not (gallery.any() and probes.any()):
        return out
    gids = identity[gallery].astype(str)
    truth = identity[probes].astype(str)
    for method in ("single", "mean"):
        pp, pd = nearest_person(emb[probes], emb[gallery], gids, method)
        res = {}
        for name, sel in impostor_sets.items():
            if sel.any():
                _, idd = nearest_person(emb[sel], emb[gallery], gids, method)
                res[name] = open_set_scores(pp, pd, truth, idd, fixed=fixed)
        out[method] = res
    return out


def _identify_threshold() -> float | None:
    try:
        from facenet_platform.core.weights import PRETRAINED

        return float(PRETRAINED.identify_threshold)
    except (ImportError, AttributeError):
        return None


def _central(boxes: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """``select_central_face``'s score per face (larger: more central and larger)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    dx = (boxes[:, 0] + boxes[:, 2]) / 2 - width / 2
    dy = (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2
    return area - 2 * (dx * dx + dy * dy)


def lfw_baseline(set_dir: Path, index_dir: Path, num_cpus: int, wild: dict[str, Any],
                 build: bool = True) -> dict[str, Any]:
    """The same subjects and strangers from their clean LFW originals (250 px, the central face
    of each, as the LFW protocol): ``index build`` of those images, the same clustering (the
    defaults of ``index cluster``, over the central faces) and the same identification split
    (gallery: the source images of the wild gallery faces; probes: those of the wild probes)."""
    import pyarrow.parquet as pq

    from facenet_platform.index.build import BuildOptions, build_index
    from facenet_platform.index.collection import read_faces

    cl = _clusters_module()
    manifest = json.loads((set_dir / "manifest.json").read_text())
    root = Path(manifest["params"]["lfw_dir"]).resolve() / "lfw-deepfunneled"
    labels = pq.read_table(set_dir / "labels.parquet",
                           columns=["role", "identity", "source"]).to_pylist()
    planted = {r["source"]: r for r in labels if r["role"] in ("subject", "stranger")}
    info = None
    if build:
        listing = Path(f"{index_dir}.txt")
        listing.write_text("".join(f"{root / s}\n" for s in sorted(planted)))
        t = time.perf_counter()
        summary = build_index([f"@{listing}"], str(index_dir),
                              options=BuildOptions(num_cpus=num_cpus, progress=False))
        info = summary.to_dict()
        info["wall_s"] = round(time.perf_counter() - t, 1)
    faces = read_faces(str(index_dir), ["path", "box", "embedding", "image_width", "image_height"])
    src = np.array([Path(p).resolve().relative_to(root).as_posix()
                    for p in faces.column("path").to_pylist()], object)
    box = _fixed(faces.column("box"), 4)
    emb = _fixed(faces.column("embedding"), faces.schema.field("embedding").type.list_size)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    score = _central(box, faces.column("image_width").to_numpy(),
                     faces.column("image_height").to_numpy())
    best: dict[str, int] = {}
    for i, s in enumerate(src):
        if s in planted and (s not in best or score[i] > score[best[s]]):
            best[s] = i
    keep = np.array(sorted(best.values()), np.int64)
    src, emb = src[keep], emb[keep]
    role = np.array([planted[s]["role"] for s in src], object)
    identity = np.array([planted[s]["identity"] for s in src], object)
    subj = role == "subject"
    labels_pred = cl.cluster_embeddings(emb)
    gallery_sources, probe_sources = set(wild["gallery_sources"]), set(wild["probe_sources"])
    gal = np.array([s in gallery_sources for s in src])
    prb = np.array([s in probe_sources for s in src])
    return {
        "build": info, "images": len(planted), "with_face": int(len(keep)),
        "clustering": {
            "clusters": int(len(np.unique(labels_pred[labels_pred >= 0]))),
            "unassigned": int(np.sum(labels_pred < 0)),
            "subjects_and_strangers": {"pairwise": cl.pairwise_scores(identity, labels_pred),
                                       "bcubed": cl.bcubed_scores(identity, labels_pred)},
            "subject_faces": {"pairwise": cl.pairwise_scores(identity[subj], labels_pred[subj]),
                              "bcubed": cl.bcubed_scores(identity[subj], labels_pred[subj])},
        },
        "identification": {"gallery_faces": int(gal.sum()), "probes": int(prb.sum()),
                           "impostors_strangers": int(np.sum(role == "stranger")),
                           **identification_scores(emb, identity, gal, prb,
                                                   {"strangers": role == "stranger"},
                                                   _identify_threshold())},
    }


# =============================================================================================
# the run
# =============================================================================================

def build(set_dir: Path, index_dir: Path, num_cpus: int, detect_batch_size: int = 4
          ) -> dict[str, Any]:
    from facenet_platform.index.build import BuildOptions, build_index

    t = time.perf_counter()
    summary = build_index([str(set_dir / "photos")], str(index_dir),
                          options=BuildOptions(num_cpus=num_cpus, progress=False,
                                               detect_batch_size=detect_batch_size))
    out = summary.to_dict()
    out["wall_s"] = round(time.perf_counter() - t, 1)
    logger.info("index build: %s", summary.format())
    return out


def read_detected(set_dir: Path, index_dir: Path):
    import pyarrow as pa

    from facenet_platform.index.collection import read_faces

    cols = ["path", "content_hash", "face_index", "image_width", "image_height", "box",
            "landmarks", "score", "sharpness", "embedding", "model_id"]
    table = read_faces(str(index_dir), cols)
    photos_root = (set_dir / "photos").resolve()
    photo = []
    for p in table.column("path").to_pylist():
        photo.append("photos/" + Path(p).resolve().relative_to(photos_root).as_posix())
    return table.append_column("photo", pa.array(photo, pa.string()))


def _fixed(column, size: int) -> np.ndarray:
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, size)


def evaluate(set_dir: Path, index_dir: Path, out_parquet: Path, *, seed: int = 0,
             sheets: bool = False, build_info: dict | None = None) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cl = _clusters_module()
    labels = pq.read_table(set_dir / "labels.parquet")
    lab_photo = np.array(labels.column("photo").to_pylist(), object)
    lab_role = np.array(labels.column("role").to_pylist(), object)
    lab_ident = np.array(labels.column("identity").to_pylist(), object)
    lab_fid = np.array(labels.column("face_id").to_pylist(), object)
    lab_source = np.array(labels.column("source").to_pylist(), object)
    lab_box = _fixed(labels.column("box"), 4)
    lab_px = labels.column("face_px").to_numpy()
    lab_blur = labels.column("blur_sigma").to_numpy()

    faces = read_detected(set_dir, index_dir)
    n = faces.num_rows
    photo = np.array(faces.column("photo").to_pylist(), object)
    box = _fixed(faces.column("box"), 4)
    emb = _fixed(faces.column("embedding"), faces.schema.field("embedding").type.list_size)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)

    # -- match ---------------------------------------------------------------------------------
    matched = np.full(n, -1, np.int64)
    iou = np.zeros(n, np.float32)
    lab_by_photo: dict[str, np.ndarray] = {}
    for p in np.unique(lab_photo):
        lab_by_photo[p] = np.flatnonzero(lab_photo == p)
    for p in np.unique(photo):
        d_idx = np.flatnonzero(photo == p)
        l_idx = lab_by_photo.get(p, np.zeros(0, np.int64))
        m, v = match_boxes(box[d_idx], lab_box[l_idx])
        matched[d_idx] = np.where(m >= 0, l_idx[np.clip(m, 0, None)] if len(l_idx) else -1, -1)
        iou[d_idx] = v
    has = matched >= 0
    role = np.where(has, lab_role[np.clip(matched, 0, None)], "junk").astype(object)
    identity = np.where(has, lab_ident[np.clip(matched, 0, None)], None).astype(object)
    face_id = np.where(has, lab_fid[np.clip(matched, 0, None)], None).astype(object)
    truth = np.array([identity[i] if has[i] else f"junk:{i}" for i in range(n)], object)

    detected_labels = np.zeros(len(labels), bool)
    detected_labels[matched[has]] = True
    det_px = np.sqrt(np.clip((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]), 0, None))
    detection = {"detected_faces": n, "photos_with_faces": int(len(np.unique(photo))),
                 "by_role": {r: int(np.sum(role == r)) for r in ROLES}}
    edges = [0, 20, 30, 40, 60, 100, 10_000]
    for r in ("subject", "stranger", "background"):
        sel = lab_role == r
        recall_by_size = {}
        for lo, hi in zip(edges[:-1], edges[1:]):
            s = sel & (lab_px >= lo) & (lab_px < hi)
            if s.any():
                recall_by_size[f"{lo}-{hi}" if hi < 10_000 else f"{lo}+"] = [
                    int(detected_labels[s].sum()), int(s.sum())]
        detection[f"{r}_recall"] = float(detected_labels[sel].mean()) if sel.any() else None
        detection[f"{r}_planted"] = int(sel.sum())
        detection[f"{r}_recall_by_face_px"] = recall_by_size
    junk_px = det_px[role == "junk"]
    detection["junk_face_px_median"] = float(np.median(junk_px)) if len(junk_px) else None
    detection["junk_score_median"] = (float(np.median(faces.column("score").to_numpy()[role == "junk"]))
                                      if len(junk_px) else None)

    # -- cluster (today's index cluster, defaults) ---------------------------------------------
    t = time.perf_counter()
    summary = cl.cluster_index(str(index_dir), recluster=True, sheets=sheets)
    cluster_s = time.perf_counter() - t
    ct = pq.read_table(summary.table)
    key = {(h, int(i)): int(c) for h, i, c in zip(ct.column("content_hash").to_pylist(),
                                                  ct.column("face_index").to_pylist(),
                                                  ct.column("cluster_id").to_pylist())}
    hashes = faces.column("content_hash").to_pylist()
    findex = faces.column("face_index").to_pylist()
    cluster_id = np.array([key.get((h, int(i)), -1) for h, i in zip(hashes, findex)], np.int64)
    subj = role == "subject"
    planted = subj | (role == "stranger")
    people = int(len(np.unique(identity[subj].astype(str)))) if subj.any() else 0
    clustering = {
        "params": summary.params, "seconds": round(cluster_s, 2),
        "clusters": int(summary.n_clusters), "people": people,
        "assigned": int(summary.assigned), "unassigned": int(summary.unassigned),
        "all_faces": {"pairwise": cl.pairwise_scores(truth, cluster_id),
                      "bcubed": cl.bcubed_scores(truth, cluster_id)},
        "subjects_and_strangers": {
            "pairwise": cl.pairwise_scores(truth[planted], cluster_id[planted]),
            "bcubed": cl.bcubed_scores(truth[planted], cluster_id[planted])},
        "subject_faces": {"pairwise": cl.pairwise_scores(truth[subj], cluster_id[subj]),
                          "bcubed": cl.bcubed_scores(truth[subj], cluster_id[subj])},
    }
    ids, sizes = np.unique(cluster_id[cluster_id >= 0], return_counts=True)
    top = []
    for c in ids[np.argsort(-sizes, kind="stable")][:10]:
        members = np.flatnonzero(cluster_id == c)
        roles = {r: int(np.sum(role[members] == r)) for r in ROLES}
        people_in = np.unique(truth[members].astype(str), return_counts=True)
        main = int(np.argmax(people_in[1]))
        top.append({"cluster_id": int(c), "size": len(members), **roles,
                    "main_identity": str(people_in[0][main]),
                    "main_share": round(float(people_in[1][main] / len(members)), 3),
                    "main_role": str(role[members][truth[members] == people_in[0][main]][0]),
                    "face_px_median": round(float(np.median(det_px[members])), 1)})
    clustering["largest"] = top
    # a "junk person": no one real identity holds half its faces (a recurring background face,
    # such as the astronaut, is a real person and does not count)
    clustering["junk_in_top10"] = sum(
        1 for c in top if c["main_share"] < 0.5 or c["main_role"] == "junk")
    clustering["non_subject_majority_in_top10"] = sum(
        1 for c in top if c["junk"] + c["stranger"] + c["background"] > c["size"] / 2)

    # -- identification ------------------------------------------------------------------------
    split = split_gallery(identity.astype(str), photo, subj, seed)
    gal, prb = split == "gallery", split == "probe"
    imp = role == "stranger"
    nonsub = ~subj
    split = np.where(imp & (split == ""), "impostor", split)
    split = np.where(split == "", "other", split).astype(object)
    identification: dict[str, Any] = {"gallery_faces": int(gal.sum()), "probes": int(prb.sum()),
                                      "impostors_strangers": int(imp.sum()),
                                      "impostors_all_non_subjects": int(nonsub.sum()),
                                      "people_in_gallery": int(len(np.unique(identity[gal].astype(str))))}
    identification.update(identification_scores(
        emb, identity, gal, prb, {"strangers": imp, "all_non_subjects": nonsub},
        _identify_threshold()))
    if gal.any() and prb.any():
        by_size = {}
        for method in ("single", "mean"):
            pp, _ = nearest_person(emb[prb], emb[gal], identity[gal].astype(str), method)
            ok = pp == identity[prb].astype(str)
            cells = {}
            for lo, hi in zip(edges[:-1], edges[1:]):
                sel = (det_px[prb] >= lo) & (det_px[prb] < hi)
                if sel.any():
                    cells[f"{lo}-{hi}" if hi < 10_000 else f"{lo}+"] = [
                        round(float(ok[sel].mean()), 3), int(sel.sum())]
            by_size[method] = cells
        identification["rank1_by_probe_face_px"] = by_size
    source = np.where(has, lab_source[np.clip(matched, 0, None)], None).astype(object)
    identification["gallery_sources"] = sorted(set(source[gal].tolist()))
    identification["probe_sources"] = sorted(set(source[prb].tolist()))

    # -- the faces table -----------------------------------------------------------------------
    def f32(values):
        return pa.array(np.asarray(values, np.float32), pa.float32())

    cols = {name: faces.column(name) for name in
            ("photo", "path", "content_hash", "face_index", "image_width", "image_height",
             "box", "landmarks", "score", "sharpness")}
    out = pa.table({
        **cols,
        "face_px": f32(det_px),
        "embedding": faces.column("embedding"),
        "model_id": faces.column("model_id"),
        "role": pa.array(role.tolist(), pa.string()),
        "identity": pa.array(identity.tolist(), pa.string()),
        "face_id": pa.array(face_id.tolist(), pa.string()),
        "iou": f32(iou),
        "planted_face_px": f32(np.where(has, lab_px[np.clip(matched, 0, None)], np.nan)),
        "planted_blur_sigma": f32(np.where(has, lab_blur[np.clip(matched, 0, None)], np.nan)),
        "truth": pa.array(truth.tolist(), pa.string()),
        "cluster_id": pa.array(cluster_id, pa.int64()),
        "id_split": pa.array(split.tolist(), pa.string()),
    })
    out_parquet.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_parquet.with_suffix(".tmp")
    pq.write_table(out, tmp)
    os.replace(tmp, out_parquet)

    manifest = json.loads((set_dir / "manifest.json").read_text())
    return {"set": str(set_dir), "set_manifest": manifest, "index": str(index_dir),
            "build": build_info, "detection": detection, "clustering": clustering,
            "identification": identification, "faces_parquet": str(out_parquet),
            "iou_match": IOU_MATCH, "gallery_photos_per_person": GALLERY_PHOTOS, "seed": seed}


# =============================================================================================
# report
# =============================================================================================

def _row(name: str, scores: dict[str, Any]) -> str:
    p, b = scores["pairwise"], scores["bcubed"]
    return (f"| {name} | {p['precision']:.3f} | {p['recall']:.3f} | {p['f1']:.3f} | "
            f"{b['precision']:.3f} | {b['recall']:.3f} | {b['f']:.3f} |")


def _id_row(name: str, template: str, s: dict[str, Any]) -> str:
    fx = s.get("at_threshold")
    fxt = (f"{fx['named_correctly']:.3f} / {fx['named_wrongly']:.3f} / {fx['impostors_named']:.3f}"
           if fx else "-")
    return (f"| {name} | {template} | {s['rank1']:.3f} | {s['at_0.01']['named_correctly']:.3f} | "
            f"{s['at_0.05']['named_correctly']:.3f} | {fxt} |")


def markdown(result: dict[str, Any]) -> str:
    """The figures as markdown tables (wild, and the LFW originals of the same faces)."""
    d, c, i = result["detection"], result["clustering"], result["identification"]
    base = result.get("lfw_baseline")
    m = result["set_manifest"]
    lines = [
        f"Set: {m['photos']} photos, {m['people']} people, {m['subject_faces']} subject faces, "
        f"{m['stranger_faces']} strangers, {m['background_faces']} background faces planted.",
        "",
        "| detection | planted | detected | recall |",
        "|---|---|---|---|",
    ]
    for r in ("subject", "stranger", "background"):
        if d.get(f"{r}_planted"):
            det = sum(v[0] for v in d[f"{r}_recall_by_face_px"].values())
            lines.append(f"| {r} | {d[f'{r}_planted']} | {det} | {d[f'{r}_recall']:.3f} |")
    lines.append(f"| junk (no planted face) | - | {d['by_role']['junk']} | - |")
    lines += ["", "Subject recall by planted face size (px): " + ", ".join(
        f"{k}: {a}/{b}" for k, (a, b) in d["subject_recall_by_face_px"].items()),
        "Stranger recall by planted face size (px): " + ", ".join(
        f"{k}: {a}/{b}" for k, (a, b) in d["stranger_recall_by_face_px"].items()), ""]
    params = ", ".join(f"{k}={v}" for k, v in c["params"].items() if k != "model_id")
    lines += [
        f"`index cluster` defaults ({params}): {c['clusters']} clusters for {c['people']} people "
        f"in the wild ({c['assigned']} faces assigned, {c['unassigned']} unassigned)"
        + (f"; LFW originals: {base['clustering']['clusters']} clusters, "
           f"{base['clustering']['unassigned']} unassigned." if base else "."),
        "",
        "| faces (unassigned = singletons) | pairwise P | pairwise R | pairwise F1 | BCubed P "
        "| BCubed R | BCubed F |",
        "|---|---|---|---|---|---|---|",
        _row("wild: all detected faces", c["all_faces"]),
        _row("wild: subjects + strangers", c["subjects_and_strangers"]),
    ]
    if base:
        lines.append(_row("LFW originals: subjects + strangers",
                          base["clustering"]["subjects_and_strangers"]))
    lines.append(_row("wild: subjects", c["subject_faces"]))
    if base:
        lines.append(_row("LFW originals: subjects", base["clustering"]["subject_faces"]))
    lines += ["", "| largest clusters (wild) | size | subject | stranger | background | junk "
              "| main identity: role, share | median face px |",
              "|---|---|---|---|---|---|---|---|"]
    for k, t in enumerate(c["largest"], start=1):
        lines.append(f"| {k} | {t['size']} | {t['subject']} | {t['stranger']} | {t['background']} "
                     f"| {t['junk']} | {t['main_role']} {t['main_share']:.2f} "
                     f"| {t['face_px_median']:.0f} |")
    lines.append(f"\nJunk people among the ten largest clusters (no one identity holds half the "
                 f"faces): {c['junk_in_top10']}; mostly non-subject faces: "
                 f"{c['non_subject_majority_in_top10']}.")
    if "single" in i:
        lines += ["", f"Identification: {i['people_in_gallery']} people, {i['gallery_faces']} "
                  f"gallery faces ({GALLERY_PHOTOS} photos each), {i['probes']} probes; "
                  f"impostors: {i['impostors_strangers']} strangers "
                  f"({i['impostors_all_non_subjects']} non-subject detections in all)"
                  + (f"; LFW originals: {base['identification']['gallery_faces']} gallery, "
                     f"{base['identification']['probes']} probes, "
                     f"{base['identification']['impostors_strangers']} strangers." if base else "."),
                  "",
                  "| set, impostors | template | rank-1 | named correctly @1% impostors named "
                  "| @5% | at the platform threshold 0.845: named correctly / wrongly / "
                  "impostors named |",
                  "|---|---|---|---|---|---|"]
        rows = [("wild, strangers", i, "strangers"),
                ("wild, all non-subjects", i, "all_non_subjects")]
        if base and "single" in base["identification"]:
            rows.append(("LFW originals, strangers", base["identification"], "strangers"))
        for name, block, imp in rows:
            for method, label in (("single", "nearest single photo"), ("mean", "mean template")):
                lines.append(_id_row(name, label, block[method][imp]))
        for method, label in (("single", "nearest single photo"), ("mean", "mean template")):
            cells = i.get("rank1_by_probe_face_px", {}).get(method, {})
            lines.append(f"\nWild rank-1 by probe face size (px), {label}: " + ", ".join(
                f"{k}: {v[0]:.3f} (n={v[1]})" for k, v in cells.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, default=HERE / "out" / "wild",
                    help="the set folder written by wild_set.py")
    ap.add_argument("--index", type=Path, default=None, help="index folder (default <set>_index)")
    ap.add_argument("--faces", type=Path, default=None,
                    help="output faces Parquet (default <set>_faces.parquet)")
    ap.add_argument("--json", type=Path, default=None, help="output JSON (default <set>_eval.json)")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--detect-batch-size", type=int, default=4,
                    help="photos per detection batch (phone-sized photos: 16 take ~3.5 GB)")
    ap.add_argument("--no-build", action="store_true", help="use the index as it is")
    ap.add_argument("--sheets", action="store_true", help="write the clusters' contact sheets")
    ap.add_argument("--no-lfw-baseline", action="store_true",
                    help="skip the baseline: the same faces from their LFW originals")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    set_dir = args.set.resolve()
    stem = set_dir.parent / set_dir.name
    index_dir = args.index or Path(f"{stem}_index")
    faces = args.faces or Path(f"{stem}_faces.parquet")
    out_json = args.json or Path(f"{stem}_eval.json")
    build_info = None if args.no_build else build(set_dir, index_dir, args.num_cpus,
                                                         args.detect_batch_size)
    result = evaluate(set_dir, index_dir, faces, seed=args.seed, sheets=args.sheets,
                      build_info=build_info)
    if not args.no_lfw_baseline:
        result["lfw_baseline"] = lfw_baseline(set_dir, Path(f"{stem}_lfw_index"), args.num_cpus,
                                              result["identification"],
                                              build=not (args.no_build and Path(f"{stem}_lfw_index").exists()))
    result["command"] = " ".join(sys.argv)
    out_json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"command: {' '.join(sys.argv)}")
    print(markdown(result))
    print(f"\nJSON: {out_json}\nfaces: {faces}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
