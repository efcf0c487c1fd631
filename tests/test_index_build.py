"""``index build`` / ``index search``: sources, stages, commits, incremental and resumed builds.

The Ray tests share one local Ray (``num_cpus=2``) and one small photo folder: real faces (a few
LFW photos when LFW is present, else the scikit-image astronaut as JPEG and PNG) in nested
folders, every file of ``write_bad_inputs``, a junk ``.txt``, a copy of one photo, and a list file
naming a missing file. The interrupted build runs the CLI in a subprocess attached to that Ray
(``--address``) with a fault that kills the process right after its second commit point, then
resumes it in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from bad_inputs import UNREADABLE, write_bad_inputs
from conftest import REPO_ROOT, lfw_available, lfw_dir

from facenet_platform.core.errors import DatasetError
from facenet_platform.core.facetable import face_schema
from facenet_platform.index.build import BuildOptions, build_index
from facenet_platform.index.build_plan import plan_resources
from facenet_platform.index.faults import FAULTS_ENV
from facenet_platform.ray_connection import RayConnectionError, check_reachable
from facenet_platform.index.collection import (CollectionStore, FILES_SCHEMA, faces_table_schema,
                                               read_failures, read_faces, read_files)
from facenet_platform.index.layout import IndexLayout, read_manifest
from facenet_platform.index.sources import list_sources

# Faults of the builds that are compared: one detection and one embedding failure, by path.
FAULTS = "fail_detect_path=palette,fail_embed_path=grayscale"
# Small batches and commits, so that a build of ~25 files commits several times.
SMALL = dict(read_batch_size=2, detect_batch_size=4, embed_batch_size=4, commit_every_files=3)
SMALL_ARGS = ["--read-batch-size", "2", "--detect-batch-size", "4", "--embed-batch-size", "4",
              "--commit-every-files", "3"]


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut) -> dict:
    """The mixed photo folder and a list file; returns paths and what to expect."""
    root = tmp_path_factory.mktemp("collection")
    src = root / "photos"
    (src / "people" / "nested" / "deeper").mkdir(parents=True)
    (src / "more").mkdir()
    faces: list[Path] = []
    if lfw_available():
        base = lfw_dir() / "lfw-deepfunneled"
        for i, name in enumerate(["Abel_Pacheco", "AJ_Cook", "Aaron_Eckhart"]):
            for photo in sorted((base / name).glob("*.jpg"))[:2]:
                dest = src / ("people" if i == 0 else "people/nested/deeper" if i == 1 else "more")
                faces.append(Path(shutil.copy(photo, dest / photo.name)))
    else:
        Image.fromarray(astronaut).save(src / "people" / "astronaut.jpg", quality=92)
        Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(
            src / "people" / "nested" / "deeper" / "mirrored.png")
        Image.fromarray(astronaut).save(src / "more" / "astronaut.webp")
        faces = [src / "people" / "astronaut.jpg", src / "people" / "nested" / "deeper" /
                 "mirrored.png", src / "more" / "astronaut.webp"]
    Image.fromarray(np.full((120, 160, 3), 127, np.uint8)).save(src / "more" / "blank.png")
    duplicate = Path(shutil.copy(faces[0], src / "more" / ("copy-of-" + faces[0].name)))
    bad = write_bad_inputs(src / "bad")
    (src / "notes.txt").write_text("not a photo\n")
    (src / ".hidden.jpg").write_bytes(b"junk")
    listing = root / "extra.txt"
    listing.write_text(f"# explicitly listed\n{bad['non_image']}\nmissing/photo.jpg\n")
    return {"src": src, "list": listing, "faces": faces, "bad": bad, "duplicate": duplicate,
            "missing": str(root / "missing" / "photo.jpg")}


def _sources(photos) -> list[str]:
    return [str(photos["src"]), "@" + str(photos["list"])]


@pytest.fixture(scope="module")
def built(ray_cluster, photos, tmp_path_factory):
    """The reference build (with FAULTS, and the detection worker killed mid-job: Ray
    restarts the actor and retries its batch)."""
    index = tmp_path_factory.mktemp("index-reference")
    marker = tmp_path_factory.mktemp("marker")
    os.environ[FAULTS_ENV] = f"{FAULTS},kill_detect_worker={marker}:2"
    try:
        summary = build_index(_sources(photos), index, options=BuildOptions(**SMALL))
    finally:
        del os.environ[FAULTS_ENV]
    assert (marker / "kill_detect_worker.done").exists(), "the worker-kill fault did not fire"
    return index, summary


def _face_keys(index) -> list[tuple[str, int]]:
    table = read_faces(index, columns=["content_hash", "face_index"])
    return sorted(zip(table.column("content_hash").to_pylist(),
                      table.column("face_index").to_pylist()))


# --------------------------------------------------------------------------------------------
# no Ray


def test_list_sources_folders_globs_lists(photos, tmp_path):
    src = photos["src"]
    listing = list_sources([str(src)])
    paths = {Path(f.path) for f in listing.files}
    assert set(photos["faces"]) <= paths and photos["duplicate"] in paths
    assert photos["bad"]["truncated"] in paths and photos["bad"]["huge_header"] in paths
    assert photos["bad"]["non_image"] not in paths and src / "notes.txt" not in paths
    assert src / ".hidden.jpg" not in paths
    assert listing.ignored == 2  # notes.txt + the bad .txt
    assert all(f.size >= 0 and f.mtime_ns > 0 for f in listing.files)

    globbed = list_sources([str(src / "**" / "*.png")])
    assert {Path(f.path).suffix for f in globbed.files} == {".png"}
    assert len(globbed.files) >= 3

    # @list and .txt lists: relative lines, comments, explicit non-images kept, missing kept
    rel = tmp_path / "rel.lst"
    rel.write_text(f"{os.path.relpath(photos['faces'][0], tmp_path)}\n\n# comment\n")
    assert [Path(f.path) for f in list_sources([str(rel)]).files] == [photos["faces"][0]]
    from_list = list_sources(["@" + str(photos["list"])])
    assert [f.path for f in from_list.files] == [str(photos["bad"]["non_image"]), photos["missing"]]

    # duplicates across sources listed once; the index folder itself is excluded
    both = list_sources([str(src), str(photos["faces"][0])], exclude=str(src / "people"))
    assert len(both.files) == len(listing.files) - sum(
        1 for f in listing.files if f.path.startswith(str(src / "people") + "/"))
    with pytest.raises(DatasetError, match="no such file or directory"):
        list_sources([str(tmp_path / "nope")])


def test_uri_sources_go_through_pyarrow_filesystems(photos, tmp_path):
    """``file://`` URIs take the same code path as s3:// or gs:// (pyarrow filesystems)."""
    from facenet_platform.index.stages import hash_files, read_decode

    src = photos["src"]
    uri = f"file://{src}"
    listing = list_sources([uri])
    local = list_sources([str(src)])
    assert [f.path for f in listing.files] == [f"file://{f.path}" for f in local.files]
    assert listing.ignored == local.ignored
    assert [f.size for f in listing.files] == [f.size for f in local.files]
    globbed = list_sources([f"{uri}/**/*.png"])
    assert globbed.files and all(f.path.startswith("file://") and f.path.endswith(".png")
                                 for f in globbed.files)

    spaced = tmp_path / "with space.jpg"
    shutil.copy(photos["faces"][0], spaced)
    batch = {"path": np.array([f"file://{spaced}", f"file://{tmp_path}/gone.jpg"], dtype=object),
             "size": np.zeros(2, np.int64), "mtime_ns": np.zeros(2, np.int64)}
    hashed = hash_files({"path": batch["path"]})
    assert len(hashed["content_hash"][0]) == 64 and hashed["error"][0] == ""
    assert hashed["content_hash"][1] == "" and "no such file" in hashed["error"][1]
    decoded = read_decode(batch)
    assert list(decoded["status"]) == ["ok", "failed"] and decoded["stage"][1] == "read"
    assert decoded["image"][0].ndim == 3


def test_faces_schema_extends_the_core_schema():
    core, ours = face_schema(512), faces_table_schema(512)
    assert list(ours)[:len(core)] == list(core)
    for name in ("content_hash", "image_width", "image_height", "sharpness", "indexed_at"):
        assert name in ours.names


def test_plan_resources():
    plan = plan_resources(BuildOptions(), {"CPU": 2.0})
    assert (plan.detect_actors, plan.embed_actors, plan.embed_gpus) == (1, 1, 0.0)
    assert plan.detect_cpus + plan.embed_cpus + plan.decode_cpus <= 2.0
    plan = plan_resources(BuildOptions(), {"CPU": 16.0})  # detection costs ~2x embedding per photo
    assert (plan.detect_actors, plan.embed_actors) == (9, 5) and plan.detect_cpus == 1.0
    plan = plan_resources(BuildOptions(), {"CPU": 16.0, "GPU": 2.0})
    assert plan.embed_actors == 2 and plan.embed_gpus == 1.0 and plan.embed_batch_size == 256
    assert plan.detect_actors >= 10
    plan = plan_resources(BuildOptions(detect_actors=2, embed_actors=2, embed_cpus=0.5),
                          {"CPU": 2.0})
    assert (plan.detect_actors, plan.embed_actors, plan.embed_cpus) == (2, 2, 0.5)
    from facenet_platform.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no GPU"):
        plan_resources(BuildOptions(embed_gpus=1), {"CPU": 2.0})


def test_commit_is_atomic_and_recoverable(tmp_path):
    """Killed between the commit point and the moves: readers see the commit, recovery finishes
    the moves; killed before the commit point: nothing is visible and staging is cleaned."""
    store = CollectionStore(IndexLayout.open(tmp_path / "idx"))
    row = {"path": "/p.jpg", "content_hash": "ab", "size": 1, "mtime_ns": 1, "status": "no_face",
           "faces": 0, "image_width": 3, "image_height": 4, "indexed_at": 0, "run_id": "r"}
    files = pa.Table.from_pylist([row], schema=FILES_SCHEMA)

    class Died(Exception):
        pass

    def die(_):
        raise Died

    with pytest.raises(Died):
        store.commit(1, "run-a", {"files": [files]}, {}, before_moves=die)
    assert not list((tmp_path / "idx").glob("files/*.parquet"))  # not moved yet
    assert read_files(tmp_path / "idx").num_rows == 1  # visible through the commit log
    with pytest.raises(Died):
        store.commit(2, "run-a", {"files": [files]}, {}, before_record=die)
    assert read_files(tmp_path / "idx", latest=False).num_rows == 1  # not committed: invisible
    store.recover()
    assert len(list((tmp_path / "idx" / "files").glob("*.parquet"))) == 1
    assert not (tmp_path / "idx" / "_collection" / "staging").exists()
    assert read_files(tmp_path / "idx", latest=False).num_rows == 1


def _output_batch(rows: list[dict]) -> dict:
    """An Embed-stage output batch (see stages.py) from a few rows."""
    dim = 512
    base = {"path": "", "content_hash": "", "size": 1, "mtime_ns": 1, "status": "face",
            "stage": "", "reason": "", "width": 10, "height": 20, "n_faces": 0,
            "face_index": -1, "score": 0.9, "sharpness": 50.0, "model_id": "facenet-20180408-102900"}
    rows = [{**base, **r} for r in rows]
    batch = {k: np.array([r[k] for r in rows], dtype=object if isinstance(base[k], str) else None)
             for k in base}
    batch["box"] = np.zeros((len(rows), 4), np.float32)
    batch["landmarks"] = np.zeros((len(rows), 10), np.float32)
    emb = np.zeros((len(rows), dim), np.float32)
    emb[:, 0] = 1.0
    batch["embedding"] = emb
    return batch


def test_committer_assembles_files_across_batches(tmp_path):
    """Faces of one file split over two batches, a batch delivered twice (task retry), failed,
    face-less and unreadable files: each file committed once, whole."""
    from facenet_platform.index.committer import Committer

    store = CollectionStore(IndexLayout.open(tmp_path / "idx"))
    committer = Committer(store, "20260101T000000Z-abcdef12", 1, BuildOptions(), {}, {},
                           None, None)
    split_a = [{"path": "/a.jpg", "content_hash": "a", "n_faces": 3, "face_index": i}
               for i in (2, 0)]
    split_b = [{"path": "/a.jpg", "content_hash": "a", "n_faces": 3, "face_index": 1}]
    whole = [{"path": "/b.jpg", "content_hash": "b", "n_faces": 1, "face_index": 0}]
    others = [{"path": "/c.jpg", "content_hash": "c", "status": "no_face"},
              {"path": "/d.jpg", "content_hash": "d", "status": "failed", "stage": "decode",
               "reason": "truncated", "width": 0, "height": 0},
              {"path": "/e.jpg", "status": "failed", "stage": "read", "reason": "gone"},
              {"path": "/f.jpg", "status": "failed", "stage": "read", "reason": "gone too"}]
    committer.add_output(_output_batch(split_a + whole + others))
    assert "a" in committer.partial and committer.counts["faces"] == 1
    committer.add_output(_output_batch(whole + split_b))  # b again: a retried task
    committer.maybe_commit(force=True)

    faces = read_faces(tmp_path / "idx")
    assert list(zip(faces.column("content_hash").to_pylist(),
                    faces.column("face_index").to_pylist())) == [("a", 0), ("a", 1), ("a", 2),
                                                                 ("b", 0)]
    files = read_files(tmp_path / "idx").to_pandas().set_index("path")
    assert files["status"].to_dict() == {"/a.jpg": "indexed", "/b.jpg": "indexed",
                                         "/c.jpg": "no_face", "/d.jpg": "failed"}
    assert files.loc["/a.jpg", "faces"] == 3 and np.isnan(files.loc["/d.jpg", "image_width"])
    failures = read_failures(tmp_path / "idx").to_pandas()
    assert sorted(zip(failures["path"], failures["stage"])) == [
        ("/d.jpg", "decode"), ("/e.jpg", "read"), ("/f.jpg", "read")]
    assert committer.counts["failed_read"] == 2 and committer.counts["with_faces"] == 2


def test_check_reachable_fails_fast():
    with pytest.raises(RayConnectionError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        check_reachable("127.0.0.1:1", timeout=2)
    with pytest.raises(RayConnectionError, match="not host:port"):
        check_reachable("nonsense")


def test_address_comes_from_the_option_then_ray_address(monkeypatch):
    from facenet_platform.ray_connection import resolve_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_address(None) == "10.0.0.1:6379"
    assert resolve_address("auto") == "auto"


def test_cli_usage_and_missing_source(tmp_path, capsys):
    from facenet_platform.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["index", "build", str(tmp_path)])  # no --out
    assert exc.value.code == 2
    capsys.readouterr()
    code = main(["index", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "idx")])
    err = capsys.readouterr().err
    assert code == 1 and "no such file or directory" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# stages called on batches directly (as ds.take_batch would give them)


@pytest.mark.slow
def test_stages_on_batches(photos, weights_cache):
    from facenet_platform.index.stages import DetectAlign, Embed, read_decode

    paths = [str(photos["faces"][0]), str(photos["bad"]["truncated"]), str(photos["src"] / "more" / "blank.png")]
    batch = {"path": np.array(paths, dtype=object), "size": np.zeros(3, np.int64),
             "mtime_ns": np.zeros(3, np.int64)}
    decoded = read_decode(batch)
    assert list(decoded["status"]) == ["ok", "failed", "ok"]
    assert decoded["stage"][1] == "decode" and "truncated" in decoded["reason"][1]
    assert len(decoded["content_hash"][0]) == 64

    from facenet_platform.core.weights import PRETRAINED

    spec = PRETRAINED.to_metadata()  # what the build hands every actor
    detected = DetectAlign(spec=spec, num_threads=1)(decoded)
    status = list(detected["status"])
    assert status.count("failed") == 1 and status.count("no_face") == 1 and "face" in status
    faces = np.flatnonzero(detected["status"] == "face")
    assert detected["crop"].shape[1:] == (160, 160, 3)
    assert (detected["score"][faces] > 0.9).all() and (detected["sharpness"][faces] > 0).all()

    embedded = Embed(spec=spec, batch_size=4, num_threads=1)(detected)
    assert "crop" not in embedded and embedded["embedding"].shape == (len(status), 512)
    norms = np.linalg.norm(embedded["embedding"][faces], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    assert set(embedded["model_id"]) == {"facenet-20180408-102900"}


# --------------------------------------------------------------------------------------------
# real builds


@pytest.mark.slow
def test_build_records_faces_failures_and_no_faces(built, photos):
    index, summary = built
    listed = list_sources(_sources(photos))
    assert summary.files_seen == len(listed.files)
    assert summary.files_duplicate == 1
    assert summary.files_new == summary.files_seen - 1 - 1  # the copy, the missing file
    assert summary.files_skipped_known == 0
    assert summary.failures_by_stage == {"read": 1, "decode": len(UNREADABLE) + 1,  # + huge
                                         "detect": 1, "embed": 1}
    assert summary.failures == sum(summary.failures_by_stage.values())
    assert summary.files_no_face >= 1  # blank.png
    assert summary.faces >= len(photos["faces"])
    assert summary.images_per_second > 0

    failures = read_failures(index).to_pandas().set_index("path")
    bad = photos["bad"]
    for name in UNREADABLE:
        assert failures.loc[str(bad[name]), "stage"] == "decode"
    assert "exceeds the limit" in failures.loc[str(bad["huge_header"]), "reason"]
    assert failures.loc[photos["missing"], "stage"] == "read"
    assert "no such file" in failures.loc[photos["missing"], "reason"]
    assert failures.loc[str(bad["palette"]), "stage"] == "detect"
    assert failures.loc[str(bad["grayscale"]), "stage"] == "embed"

    files = read_files(index).to_pandas().set_index("path")
    assert files.loc[str(photos["src"] / "more" / "blank.png"), "status"] == "no_face"
    assert files.loc[str(bad["exif_rotated"]), "status"] == "indexed"
    dup = files.loc[str(photos["duplicate"])]
    assert dup["content_hash"] == files.loc[str(photos["faces"][0]), "content_hash"]

    faces = read_faces(index)
    keys = _face_keys(index)
    assert len(keys) == len(set(keys)) == summary.faces == faces.num_rows
    assert faces.schema.equals(faces_table_schema(512))
    emb = np.stack(faces.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert set(faces.column("model_id").to_pylist()) == {"facenet-20180408-102900"}
    # same content at two paths: processed once, under the path listed first
    face_paths = set(faces.column("path").to_pylist())
    assert len({str(photos["duplicate"]), str(photos["faces"][0])} & face_paths) == 1

    section = read_manifest(IndexLayout.open(index))["collection"]
    assert section["faces"] == summary.faces and section["model_id"] == "facenet-20180408-102900"
    assert section["commits"] == summary.commits >= 2 and section["embedding_size"] == 512
    # only committed, final part files; no staging left behind
    assert not (Path(index) / "_collection" / "staging").exists()
    assert not (Path(index) / "_collection" / "LOCK").exists()


@pytest.mark.slow
def test_rerun_adds_nothing(built, photos):
    index, first = built
    before = _face_keys(index)
    commits = sorted((Path(index) / "_collection" / "commits").glob("*.json"))
    summary = build_index(_sources(photos), index, options=BuildOptions(**SMALL))
    assert summary.files_new == 0 and summary.faces == 0 and summary.commits == 0
    assert summary.files_skipped_known == first.files_seen - 1  # all but the missing file
    assert summary.failures_by_stage == {"read": 1}  # tried again, not logged twice
    assert _face_keys(index) == before
    assert sorted((Path(index) / "_collection" / "commits").glob("*.json")) == commits
    assert read_failures(index).num_rows == first.failures


def _cli(args, env_extra=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "facenet_platform", *map(str, args)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_index(built, photos, ray_cluster, tmp_path):
    reference, ref_summary = built
    index = tmp_path / "index"
    args = ["index", "build", *_sources(photos), "--out", index, "--address", ray_cluster,
            "--no-progress", *SMALL_ARGS]
    killed = _cli(args, {FAULTS_ENV: f"{FAULTS},exit_after_commit=2"})
    assert killed.returncode == 75, killed.stderr[-2000:]
    # died between its 2nd commit point and the moves: the record is there, the parts staged
    commits = sorted((index / "_collection" / "commits").glob("*.json"))
    assert len(commits) == 2
    record = json.loads(commits[-1].read_text())
    assert all((index / p["staged"]).exists() and not (index / p["final"]).exists()
               for p in record["parts"])
    partial = _face_keys(index)
    assert len(partial) == len(set(partial)) < ref_summary.faces

    # started again (in this process, same options): takes over the stale lock, finishes the
    # interrupted moves, and processes only what was not committed
    os.environ[FAULTS_ENV] = FAULTS
    try:
        summary = build_index(_sources(photos), index, options=BuildOptions(**SMALL))
    finally:
        del os.environ[FAULTS_ENV]
    assert 0 < summary.files_new < ref_summary.files_new
    assert summary.files_skipped_known > 0

    keys = _face_keys(index)
    assert keys == _face_keys(reference)  # same (content_hash, face_index) set, no duplicate
    assert len(keys) == len(set(keys))
    a, b = (read_faces(i).sort_by([("content_hash", "ascending"), ("face_index", "ascending")])
            for i in (index, reference))
    assert a.column("path").to_pylist() == b.column("path").to_pylist()
    np.testing.assert_allclose(np.stack(a.column("embedding").to_numpy(zero_copy_only=False)),
                               np.stack(b.column("embedding").to_numpy(zero_copy_only=False)),
                               atol=1e-3)
    fa, fb = (read_files(i).to_pandas().set_index("path").sort_index()[["content_hash", "status",
                                                                       "faces"]]
              for i in (index, reference))
    assert fa.equals(fb)
    ga, gb = (sorted(zip(*read_failures(i).select(["path", "stage"]).to_pydict().values()))
              for i in (index, reference))
    assert ga == gb
    assert not (index / "_collection" / "staging").exists()


def test_job_failure_is_one_clear_line():
    """What killed a Ray job, from the exception chain Ray Data raises (an actor's creation
    error only survives as the traceback text inside ActorDiedError)."""
    from facenet_platform.ray_errors import job_error_text

    class SystemException(Exception):
        pass

    def chain():
        try:
            raise RuntimeError("The actor died because of an error raised in its creation task\n"
                               "  File \"stages.py\", line 220, in __init__\n"
                               "facenet_platform.core.errors.WeightsError: cannot load the nets")
        except RuntimeError as exc:
            raise SystemException() from exc

    with pytest.raises(SystemException) as info:
        chain()
    assert job_error_text(info.value) == "WeightsError: cannot load the nets"


@pytest.mark.slow
def test_cli_unreachable_address_and_summary(photos, tmp_path):
    proc = _cli(["index", "build", photos["src"], "--out", tmp_path / "idx", "--address",
                 "127.0.0.1:1"], timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "facenet-platform: error: cannot reach the Ray cluster at 127.0.0.1:1")


@pytest.mark.slow
def test_cli_rerun_summary(built, photos, ray_cluster, capsys):
    from facenet_platform.cli import main

    index, first = built
    code = main(["index", "build", str(photos["src"]), "--out", str(index)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{first.files_seen - 2} seen: 0 new, {first.files_seen - 2} already indexed" in out
    assert f"index now holds {first.faces} faces" in out
    assert "images/s" in out and "failures: 0" in out


@pytest.mark.slow
def test_search_against_the_gallery(built, ray_cluster, tmp_path):
    from facenet_platform.index.gallery import Gallery
    from facenet_platform.index.search import SearchOptions, search_index

    built_index, summary = built
    # a copy without the people other tests' `index build` runs made: one enrolled identity
    index = tmp_path / "index"
    shutil.copytree(built_index, index, ignore=shutil.ignore_patterns("people"))
    faces = read_faces(index).sort_by("path")
    emb = np.stack(faces.column("embedding").to_numpy(zero_copy_only=False))
    gallery = Gallery.open(str(index))
    gallery.add("first", emb[:1], [faces.column("path")[0].as_py()])
    gallery.save()

    out = tmp_path / "matches.parquet"
    result = search_index(index, output=out, options=SearchOptions(top_k=3, progress=False))
    assert result.faces == summary.faces and result.rows == summary.faces  # 1 identity
    import pyarrow.parquet as pq

    matches = pq.read_table(out).to_pandas()
    assert set(matches["name"]) == {"first"} and (matches["rank"] == 0).all()
    own = matches[matches["path"] == faces.column("path")[0].as_py()]
    assert own["distance"].min() < 1e-3 and own["is_match"].any()
    assert result.matched == int(matches["is_match"].sum()) >= 1
    # is_match is identify's decision: the people's assign distance (recorded in the file), for
    # faces at or above the quality floor
    from facenet_platform.index.people_engine import PeopleOptions

    assign, floor = PeopleOptions().assign_distance, PeopleOptions().min_quality
    assert result.threshold == assign
    assert pq.read_schema(out).metadata[b"threshold"] == str(assign).encode()
    good = ~(matches["quality"] < floor)
    assert (matches["is_match"] == ((matches["distance"] <= assign) & good)).all()
    # an explicit threshold overrides it: 4 accepts every good face
    lenient = search_index(index, output=tmp_path / "all.parquet",
                           options=SearchOptions(top_k=3, threshold=4.0, progress=False))
    assert lenient.threshold == 4.0 and lenient.matched == int(good.sum())


# --------------------------------------------------------------------------------------------
# deleted and changed files


def test_listing_covers_what_its_folders_and_globs_would_list(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "b" / "x.png")
    listing = list_sources([str(tmp_path / "a"), str(tmp_path / "g" / "*.jpg")])
    root = str(tmp_path)
    assert listing.covers(f"{root}/a/b/gone.jpg")            # under a listed folder
    assert listing.covers(f"{root}/g/gone.jpg")              # matches a listed glob
    assert not listing.covers(f"{root}/g/sub/gone.jpg")      # * stays inside one folder
    assert not listing.covers(f"{root}/a/.hidden/gone.jpg")  # hidden: never listed
    assert not listing.covers(f"{root}/a/notes.txt")         # not an image name
    assert not listing.covers(f"{root}/elsewhere/gone.jpg")  # another SOURCE's file
    explicit = list_sources([str(tmp_path / "a" / "b" / "x.png")])
    assert not explicit.covers(f"{root}/a/b/gone.jpg")       # a file SOURCE covers nothing else


def _live_rows(index) -> list[tuple[str, int, str]]:
    table = read_faces(index, columns=["content_hash", "face_index", "path"])
    return sorted(zip(table.column("content_hash").to_pylist(),
                      table.column("face_index").to_pylist(), table.column("path").to_pylist()))


def test_deleted_and_changed_files_leave_the_index(ray_cluster, photos, tmp_path):
    """After deleting one photo and overwriting another, a re-run equals a fresh build; a
    photo that comes back is live again without being processed."""
    src = tmp_path / "photos"
    src.mkdir()
    faces = [Path(shutil.copy(f, src / f"{i}-{f.name}")) for i, f in enumerate(photos["faces"][:3])]
    copy = Path(shutil.copy(faces[1], src / "copy.jpg"))  # same content as faces[1]
    index = tmp_path / "index"
    first = build_index([str(src)], index, options=BuildOptions(**SMALL))
    assert first.files_removed == 0 and first.total_files == 4

    deleted_bytes = faces[0].read_bytes()
    faces[0].unlink()                                       # deleted
    faces[1].unlink()                                       # deleted, but copy.jpg keeps its content
    Image.fromarray(np.full((90, 120, 3), 60, np.uint8)).save(faces[2], format="JPEG")  # changed
    second = build_index([str(src)], index, options=BuildOptions(**SMALL))
    assert second.files_removed == 2 and second.files_new == 1  # the changed file is re-read
    fresh = tmp_path / "fresh"
    reference = build_index([str(src)], fresh, options=BuildOptions(**SMALL))
    assert _live_rows(index) == _live_rows(fresh)
    assert all(path == str(copy) for _, _, path in _live_rows(index))  # renamed to the live copy
    assert (second.total_faces, second.total_files) == (reference.total_faces, reference.total_files)
    files = read_files(index)
    assert dict(zip(files.column("path").to_pylist(), files.column("status").to_pylist()))[
        str(faces[0])] == "removed"
    assert read_faces(index, include_removed=True).num_rows > read_faces(index).num_rows

    faces[0].write_bytes(deleted_bytes)                     # it comes back
    third = build_index([str(src)], index, options=BuildOptions(**SMALL))
    assert third.files_new == 0 and third.files_skipped_known == 3 and third.files_removed == 0
    assert str(faces[0]) in {path for _, _, path in _live_rows(index)}
