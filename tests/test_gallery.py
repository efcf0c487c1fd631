"""The gallery (FAISS + versioned Parquet), identify, and their CLI commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from facenet_platform.core.weights import PRETRAINED

from bad_inputs import UNREADABLE, write_bad_inputs, write_good_image
from conftest import requires_lfw

from facenet_platform.core.errors import ConfigError, FaceNetPlatformError
from facenet_platform.index import faiss_index as fx
from facenet_platform.index.gallery import Gallery, GalleryError, Match, UnknownIdentityError
from facenet_platform.index.layout import IndexLayout, read_manifest
from facenet_platform.index.people_engine import PeopleOptions

D = 512


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def people():
    """12 synthetic identities: a unit centre each, 4 faces at ~0.3 squared L2 from it."""
    rng = np.random.default_rng(7)
    centres = unit(rng.normal(size=(12, D)))
    faces = {f"person_{i:02d}": unit(centres[i] + 0.4 / np.sqrt(D) * rng.normal(size=(4, D)))
             for i in range(12)}
    return centres, faces


def near(centre: np.ndarray, seed: int, scale: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return unit(centre + scale * rng.normal(size=D) / np.sqrt(D))


def make_gallery(path, people, **kwargs) -> Gallery:
    _, faces = people
    gallery = Gallery.create(path, **kwargs)
    for name, emb in faces.items():
        gallery.add(name, emb, [f"{name}/{j}.jpg" for j in range(len(emb))])
    return gallery


def brute_force(gallery_faces: dict[str, np.ndarray], query: np.ndarray) -> list[tuple[str, float]]:
    best = {name: float(np.min(np.sum((emb - query) ** 2, axis=1)))
            for name, emb in gallery_faces.items()}
    return sorted(best.items(), key=lambda kv: kv[1])


# ---------------------------------------------------------------------------------------------
# Gallery
# ---------------------------------------------------------------------------------------------

def test_add_search_remove_save_load_round_trip(tmp_path, people):
    centres, faces = people
    gallery = make_gallery(tmp_path / "idx", people)
    assert gallery.identities() == {name: 4 for name in faces}
    assert gallery.version == 0 and gallery.save() == 1
    assert gallery.index_type == "flat"

    loaded = Gallery.load(tmp_path / "idx")
    assert loaded.version == 1 and len(loaded) == 48
    assert loaded.identities() == gallery.identities()
    assert loaded.threshold == pytest.approx(PRETRAINED.threshold)
    query = near(centres[3], seed=1)
    result = loaded.search(query[None], top_k=3)[0]
    expected = brute_force(faces, query)[:3]
    assert [m.name for m in result] == [name for name, _ in expected]
    assert [m.distance for m in result] == pytest.approx([d for _, d in expected], abs=1e-4)
    assert all(isinstance(m, Match) for m in result)
    ids_before = {row["source"]: row["id"] for row in loaded.faces()}

    assert loaded.remove("person_03") == 4
    new_ids = loaded.add("newcomer", near(centres[3], seed=2)[None], ["new.jpg"])
    assert new_ids.tolist() == [48]  # ids are never reused
    assert loaded.save() == 2

    again = Gallery.load(tmp_path / "idx")
    assert "person_03" not in again.identities() and again.identities()["newcomer"] == 1
    top = again.search(query[None], top_k=2)[0]
    assert top[0].name == "newcomer"
    # the other faces kept their ids
    assert {row["source"]: row["id"] for row in again.faces() if row["name"] != "newcomer"} == {
        s: i for s, i in ids_before.items() if not s.startswith("person_03/")}


def test_search_one_match_per_identity_sorted(tmp_path, people):
    centres, faces = people
    gallery = make_gallery(tmp_path / "idx", people)
    # a crowd of faces of one person right around the query must not hide the others
    gallery.add("crowd", np.stack([near(centres[0], seed=s, scale=0.05) for s in range(30)]))
    queries = np.stack([near(centres[0], seed=100), near(centres[5], seed=101)])
    results = gallery.search(queries, top_k=4)
    assert len(results) == 2
    for result, query in zip(results, queries):
        names = [m.name for m in result]
        assert len(names) == len(set(names)) == 4
        distances = [m.distance for m in result]
        assert distances == sorted(distances)
        truth = brute_force({**faces, "crowd": gallery._embeddings[gallery._meta["name"] == "crowd"]},
                            query)[:4]
        assert names == [n for n, _ in truth]
    assert results[0][0].name == "crowd"
    # top_k larger than the number of people: everyone once
    assert len(gallery.search(queries[:1], top_k=50)[0]) == 13


def test_search_edge_cases(tmp_path, people):
    empty = Gallery.create(tmp_path / "empty")
    assert empty.search(np.zeros((2, D), np.float32) + 1, top_k=3) == [[], []]
    gallery = make_gallery(tmp_path / "idx", people)
    assert gallery.search(np.zeros((0, D), np.float32), 3) == []
    with pytest.raises(ConfigError):
        gallery.search(np.ones((1, 128), np.float32), 3)
    with pytest.raises(ConfigError):
        gallery.search(np.ones((1, D), np.float32), 0)
    with pytest.raises(ConfigError):
        gallery.add("unknown", np.ones((1, D)))
    with pytest.raises(UnknownIdentityError) as err:
        gallery.remove("nobody")
    assert isinstance(err.value, ValueError) and "nobody" in str(err.value)


def test_auto_index_type_above_threshold(tmp_path, people):
    centres, faces = people
    gallery = Gallery.create(tmp_path / "idx", auto_threshold=30)
    for name in list(faces)[:6]:
        gallery.add(name, faces[name])
    gallery.save()
    assert gallery.index_type == "flat"  # 24 faces <= 30
    for name in list(faces)[6:]:
        gallery.add(name, faces[name])
    gallery.save()  # 48 faces > 30: the approximate type, with its parameters in the manifest
    section = read_manifest(IndexLayout.open(tmp_path / "idx"))["gallery"]
    assert section["index_type"] == fx.AUTO_APPROXIMATE == gallery.index_type
    assert section["index_params"] == fx.get_index_type(fx.AUTO_APPROXIMATE).params(48)
    assert section["auto_threshold"] == 30 and section["n_faces"] == 48
    loaded = Gallery.load(tmp_path / "idx")
    assert loaded.index_type == fx.AUTO_APPROXIMATE
    assert loaded.search(near(centres[9], seed=3)[None], 1)[0][0].name == "person_09"
    loaded.remove("person_09")
    loaded.save()
    assert "person_09" not in {m.name for m in Gallery.load(tmp_path / "idx").search(
        near(centres[9], seed=3)[None], 5)[0]}


@pytest.mark.parametrize("index_type, params", [("ivf", None), ("ivfpq", {"pq_m": 16, "pq_bits": 4}),
                                                ("hnsw", {"M": 8})])
def test_index_type_override(tmp_path, people, index_type, params):
    centres, _ = people
    gallery = make_gallery(tmp_path / "idx", people, index_type=index_type, index_params=params)
    gallery.save()
    loaded = Gallery.load(tmp_path / "idx")
    assert loaded.index_type == index_type
    if params:
        assert {k: loaded.index_params[k] for k in params} == params
    hits = loaded.search(np.stack([near(c, seed=i) for i, c in enumerate(centres)]), 1)
    assert [h[0].name for h in hits] == [f"person_{i:02d}" for i in range(12)]
    # removal: in place where FAISS supports it, else the index is rebuilt from the table
    loaded.remove("person_05")
    loaded.save()
    again = Gallery.load(tmp_path / "idx")
    assert again.index_type == index_type and len(again) == 44
    assert again.search(near(centres[5], seed=5)[None], 1)[0][0].name != "person_05"
    with pytest.raises(ConfigError):
        Gallery.create(tmp_path / "other", index_type="nope")


def test_registry_has_no_unknown_parameters():
    with pytest.raises(ConfigError):
        fx.get_index_type("hnsw").params(10, {"nprobe": 3})
    assert set(fx.INDEX_TYPES) >= {"flat", "hnsw", "ivfpq"}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
def test_mmap_load_then_change(tmp_path, people):
    centres, _ = people
    make_gallery(tmp_path / "idx", people).save()
    loaded = Gallery.load(tmp_path / "idx")
    index_file = str(tmp_path / "idx" / "gallery" / "faiss-v1.index")
    assert index_file in Path("/proc/self/maps").read_text()  # memory-mapped, not read
    assert loaded.search(near(centres[1], seed=5)[None], 1)[0][0].name == "person_01"
    # a mapped index is read-only inside FAISS: changing it must swap in a writable copy
    loaded.add("late", near(centres[1], seed=6, scale=0.01)[None])
    loaded.remove("person_02")
    loaded.save()
    final = Gallery.load(tmp_path / "idx", mmap=False)
    assert final.search(near(centres[1], seed=6, scale=0.01)[None], 1)[0][0].name == "late"
    assert "person_02" not in final.identities()


def test_failed_save_leaves_previous_version_valid(tmp_path, people, monkeypatch):
    centres, _ = people
    gallery = make_gallery(tmp_path / "idx", people)
    gallery.save()
    gallery.add("intruder", near(centres[4], seed=9, scale=0.01)[None])

    import faiss

    def crash(index, path):  # the disk fills up half way through the index file
        Path(path).write_bytes(b"partial")
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(RuntimeError):
        gallery.save()
    monkeypatch.undo()

    files = sorted(p.name for p in (tmp_path / "idx" / "gallery").iterdir())
    assert "faiss-v2.index" not in files and not any(f.endswith(".tmp") for f in files)
    survivor = Gallery.load(tmp_path / "idx")
    assert survivor.version == 1 and "intruder" not in survivor.identities()
    assert survivor.search(near(centres[4], seed=9)[None], 1)[0][0].name == "person_04"
    # the writer can retry
    assert gallery.save() == 2
    assert Gallery.load(tmp_path / "idx").identities()["intruder"] == 1


def test_save_refuses_a_stale_gallery_and_prunes_old_versions(tmp_path, people):
    centres, _ = people
    make_gallery(tmp_path / "idx", people).save()
    first, second = Gallery.load(tmp_path / "idx"), Gallery.load(tmp_path / "idx")
    first.add("a", near(centres[0], seed=1)[None])
    first.save()
    second.add("b", near(centres[0], seed=2)[None])
    with pytest.raises(GalleryError, match="changed since it was loaded"):
        second.save()
    third = Gallery.load(tmp_path / "idx")
    third.remove("a")
    third.save()
    names = sorted(p.name for p in (tmp_path / "idx" / "gallery").iterdir())
    assert names == ["faces-v2.parquet", "faces-v3.parquet", "faiss-v2.index", "faiss-v3.index"]
    with pytest.raises(GalleryError):
        Gallery.create(tmp_path / "idx")


def test_load_errors(tmp_path, people):
    with pytest.raises(GalleryError, match="no gallery"):
        Gallery.load(tmp_path / "nothing")
    make_gallery(tmp_path / "idx", people).save()
    (tmp_path / "idx" / "gallery" / "faiss-v1.index").write_bytes(b"garbage")
    with pytest.raises(GalleryError, match="cannot read the FAISS index"):
        Gallery.load(tmp_path / "idx")


# ---------------------------------------------------------------------------------------------
# identify
# ---------------------------------------------------------------------------------------------

def test_identified_face_dict_shape():
    from facenet_platform.index.identify import IdentifiedFace, decide

    face = IdentifiedFace(0, np.array([1.04, 2, 3, 4], np.float32),
                          np.arange(10, dtype=np.float32).reshape(5, 2),
                          0.987654321, "Ada", [Match("Ada", 0.5), Match("Bob", 1.5)], 1.1)
    d = face.to_dict()
    assert list(d) == ["box", "score", "landmarks", "decision", "matches", "person", "quality",
                       "reason"]
    assert d["box"] == [1.0, 2.0, 3.0, 4.0] and d["score"] == 0.98765
    assert d["landmarks"] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [8.0, 9.0]]
    assert d["matches"] == [{"name": "Ada", "distance": 0.5, "person": None},
                            {"name": "Bob", "distance": 1.5, "person": None}]
    json.dumps(d)
    assert decide([Match("Ada", 1.1)], 1.1) == "Ada"
    assert decide([Match("Ada", 1.1001)], 1.1) == "unknown"
    assert decide([], 1.1) == "unknown"


@pytest.fixture()
def cli(monkeypatch, capsys):
    """Run the CLI in-process; pipelines come from ``pipeline_factory`` (never built for
    inputs that fail before embedding)."""
    from facenet_platform import cli as cli_module
    from facenet_platform.index import gallery_commands

    def no_pipeline(args):
        raise AssertionError("the command built a pipeline for inputs it should have rejected")

    monkeypatch.setattr(gallery_commands, "build_pipeline", no_pipeline)

    def run(*argv):
        code = cli_module.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    run.use_pipeline = lambda p: monkeypatch.setattr(gallery_commands, "build_pipeline", lambda args: p)
    return run


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_identify_bad_input_one_line_exit_1(cli, tmp_path, people, name):
    make_gallery(tmp_path / "idx", people).save()
    bad = write_bad_inputs(tmp_path / "bad")[name]
    code, out, err = cli("identify", bad, "--index", tmp_path / "idx")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("facenet-platform: error: ")
    assert bad.name in err and "Traceback" not in err


def test_cli_errors_without_gallery_or_identity(cli, tmp_path, people):
    photo = write_good_image(tmp_path / "face.jpg")
    code, out, err = cli("identify", photo, "--index", tmp_path / "none")
    assert code == 1 and "no gallery" in err and err.count("\n") == 1
    make_gallery(tmp_path / "idx", people).save()
    code, _, err = cli("index", "remove-identity", "nobody", "--index", tmp_path / "idx")
    assert code == 1 and "nobody" in err and err.count("\n") == 1
    code, _, err = cli("identify", photo, "--index", tmp_path / "idx", "--top-k", "0")
    assert code == 1 and "--top-k" in err
    code, _, err = cli("index", "enroll", tmp_path / "missing", "--index", tmp_path / "idx2")
    assert code == 1 and "not a directory" in err
    code, _, err = cli("index", "add-identity", "x", tmp_path / "nope.jpg", "--index", tmp_path / "idx")
    assert code == 1 and "nope.jpg" in err
    code, out, err = cli("index", "remove-identity", "person_01", "--index", tmp_path / "idx")
    assert code == 0 and "removed person_01 (4 faces)" in out
    assert code == 0 and "person_01" not in Gallery.load(tmp_path / "idx").identities()


def test_enroll_skips_bad_and_faceless_files(cli, tmp_path, pipeline):
    from PIL import Image

    cli.use_pipeline(pipeline)
    gallery_dir = tmp_path / "gallery"
    (gallery_dir / "astronaut").mkdir(parents=True)
    write_good_image(gallery_dir / "astronaut" / "1.jpg")
    write_good_image(gallery_dir / "astronaut" / "2.png", size=(200, 250))
    bad = write_bad_inputs(tmp_path / "bad")
    os.symlink(bad["truncated"], gallery_dir / "astronaut" / "3.jpg")
    (gallery_dir / "blank").mkdir()
    Image.fromarray(np.full((120, 120, 3), 127, np.uint8)).save(gallery_dir / "blank" / "1.jpg")
    (gallery_dir / "stray.jpg").write_bytes(b"")
    code, out, err = cli("index", "enroll", gallery_dir, "--index", tmp_path / "idx")
    assert code == 1  # files were skipped, the rest enrolled
    assert "enrolled 2 faces of 1 people" in out and "3 files skipped" in out
    assert "3.jpg" in err and "blank/1.jpg: no face found" in err and "stray.jpg" in err
    assert "Traceback" not in err
    gallery = Gallery.load(tmp_path / "idx")
    assert gallery.identities() == {"astronaut": 2}
    assert gallery.model_id == pipeline.embedder.model_id
    assert gallery.spec == pipeline.spec and gallery.flip == "none"
    # enrolling again adds nothing (same photos)
    code, out, _ = cli("index", "enroll", gallery_dir, "--index", tmp_path / "idx")
    assert "enrolled 0 faces" in out and "2 photos already enrolled" in out
    assert Gallery.load(tmp_path / "idx").identities() == {"astronaut": 2}


@requires_lfw
def test_enroll_and_identify_lfw_people(cli, tmp_path, lfw_root, pipeline):
    """Three LFW people, two photos each; a held-out photo is recognised, a stranger is not."""
    cli.use_pipeline(pipeline)
    root = lfw_root / "lfw-deepfunneled"
    enrolled = ["Colin_Powell", "Gloria_Macapagal_Arroyo", "Serena_Williams"]
    gallery_dir = tmp_path / "gallery"
    for name in enrolled:
        (gallery_dir / name).mkdir(parents=True)
        for i in (1, 2):  # symlinks: LFW is never copied
            os.symlink(root / name / f"{name}_{i:04d}.jpg", gallery_dir / name / f"{i}.jpg")
    code, out, err = cli("index", "enroll", gallery_dir, "--index", tmp_path / "idx")
    assert code == 0, err
    assert "enrolled 6 faces of 3 people" in out

    held_out = root / "Serena_Williams" / "Serena_Williams_0005.jpg"
    stranger = root / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    code, out, err = cli("identify", held_out, stranger, "--index", tmp_path / "idx", "--json",
                         "--top-k", "2")
    assert code == 0, err
    result = json.loads(out)
    assert [r["path"] for r in result] == [str(held_out), str(stranger)]
    for image in result:
        assert set(image) == {"path", "faces"} and len(image["faces"]) >= 1
        for face in image["faces"]:
            assert list(face) == ["box", "score", "landmarks", "decision", "matches", "person",
                                  "quality", "reason"]
            assert len(face["box"]) == 4 and len(face["landmarks"]) == 5
            assert 1 <= len(face["matches"]) <= 2
            assert [m["distance"] for m in face["matches"]] == sorted(m["distance"] for m in face["matches"])
    # the enrolled identities are the named people: their templates, the people's distance
    assert result[0]["faces"][0]["decision"] == "Serena_Williams"
    assert result[0]["faces"][0]["reason"] == "match" and result[0]["faces"][0]["quality"] > 0.5
    assert result[0]["faces"][0]["matches"][0]["distance"] <= PeopleOptions().assign_distance
    assert result[1]["faces"][0]["decision"] == "unknown"
    assert result[1]["faces"][0]["reason"] == "too_far"

    code, out, _ = cli("identify", held_out, "--index", tmp_path / "idx")
    assert code == 0 and "->  Serena_Williams" in out and "face 0" in out

    # the stranger joins without a rebuild, then leaves again
    code, out, _ = cli("index", "add-identity", "Aaron_Eckhart",
                       root / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg", "--index", tmp_path / "idx")
    assert code == 0 and "Aaron_Eckhart: 1 faces (+1)" in out
    code, out, _ = cli("identify", stranger, "--index", tmp_path / "idx", "--json")
    assert json.loads(out)[0]["faces"][0]["decision"] == "Aaron_Eckhart"
    code, out, _ = cli("index", "remove-identity", "Aaron_Eckhart", "--index", tmp_path / "idx")
    assert code == 0
    code, out, _ = cli("identify", stranger, "--index", tmp_path / "idx", "--json", "--threshold", "4")
    assert json.loads(out)[0]["faces"][0]["decision"] != "Aaron_Eckhart"


def test_identify_faces_library(tmp_path, pipeline, astronaut):
    from facenet_platform.index.identify import identify_faces

    emb, _ = pipeline.central_faces([astronaut])
    gallery = Gallery.create(tmp_path / "idx")
    gallery.add("astronaut", emb)
    blank = np.full((100, 100, 3), 127, np.uint8)
    result = identify_faces(pipeline, gallery, [astronaut, blank], top_k=3)
    assert len(result) == 2 and result[1] == []
    face = result[0][0]
    assert face.decision == "astronaut" and face.distance < 1e-3 and face.known
    with pytest.raises(ConfigError):
        identify_faces(pipeline, gallery, [astronaut], threshold=-1)
    other = Gallery.create(tmp_path / "other", model_id="another-model")
    with pytest.raises(GalleryError, match="another-model"):
        identify_faces(pipeline, other, [astronaut])
    # same model, other crop standardization: another embedding space
    stale = Gallery.create(tmp_path / "stale",
                           spec=pipeline.spec.replace(standardization="prewhiten"))
    with pytest.raises(GalleryError, match="standardization"):
        identify_faces(pipeline, stale, [astronaut])
    # the same from a manifest written before the spec was recorded
    legacy = Gallery.create(tmp_path / "legacy", legacy_pipeline={
        "model_id": pipeline.embedder.model_id, "standardization": "prewhiten",
        "alignment": "margin", "margin": 32.0, "image_size": 160, "flip": "none"})
    with pytest.raises(GalleryError, match="standardization"):
        identify_faces(pipeline, legacy, [astronaut])
    other_crop = Gallery.create(tmp_path / "crop", spec=pipeline.spec.with_crop(margin=44))
    with pytest.raises(GalleryError, match="margin"):
        identify_faces(pipeline, other_crop, [astronaut])
    same = Gallery.create(tmp_path / "same", spec=pipeline.spec, flip="none")
    same.add("astronaut", emb)
    same.save()
    assert Gallery.load(tmp_path / "same").spec == pipeline.spec
    assert identify_faces(pipeline, Gallery.load(tmp_path / "same"), [astronaut])[0][0].known
    assert isinstance(GalleryError("x"), FaceNetPlatformError)


def test_threshold_follows_the_pretrained_model_unless_fixed(tmp_path, people, monkeypatch):
    import dataclasses

    from facenet_platform.core import weights

    make_gallery(tmp_path / "default", people).save()
    make_gallery(tmp_path / "fixed", people, threshold=0.5).save()
    custom = Gallery.create(tmp_path / "custom", model_id="my-finetuned", threshold=0.8)
    custom.save()
    monkeypatch.setattr(weights, "PRETRAINED", dataclasses.replace(weights.PRETRAINED, threshold=0.9))
    assert Gallery.load(tmp_path / "default").threshold == 0.9  # re-derived model threshold
    assert Gallery.load(tmp_path / "fixed").threshold == 0.5
    assert Gallery.load(tmp_path / "custom").threshold == 0.8


# ---------------------------------------------------------------------------------------------
# The identification (1:N) threshold
# ---------------------------------------------------------------------------------------------

def at_distance(face: np.ndarray, distance: float, seed: int = 0) -> np.ndarray:
    """A unit vector at exactly ``distance`` squared L2 from the unit vector ``face``."""
    rng = np.random.default_rng(seed)
    other = rng.normal(size=face.shape)
    other -= (other @ face) * face
    other /= np.linalg.norm(other)
    cos = 1.0 - distance / 2.0
    return (cos * face + np.sqrt(1.0 - cos ** 2) * other).astype(np.float32)


class FakePipeline:
    """Stands in for FacePipeline: every image holds one face with the given embedding."""

    def __init__(self, embedding: np.ndarray):
        from types import SimpleNamespace

        self.embedding = np.asarray(embedding, np.float32)
        self.spec = PRETRAINED.replace(embedding_size=D)
        self.embedder = SimpleNamespace(model_id=PRETRAINED.model_id, embedding_size=D,
                                        flip="none", spec=self.spec)
        self.threshold = PRETRAINED.threshold

    @staticmethod
    def aligner(image, detections):
        """Sharp (noisy) 160 px crops, one per detection."""
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (len(detections), 160, 160, 3), dtype=np.uint8)

    def __call__(self, images):
        from types import SimpleNamespace

        # a large, frontal, confidently detected face: well above the people's quality floor
        landmarks = np.array([[35, 55], [75, 55], [55, 75], [40, 95], [70, 95]], np.float32)
        return [[SimpleNamespace(index=0, box=np.array([5, 10, 105, 130], np.float32),
                                 landmarks=landmarks, score=0.999,
                                 embedding=self.embedding)] for _ in images]


def template_of(faces: np.ndarray) -> np.ndarray:
    """The people's matching template of these faces (identify compares with it)."""
    from facenet_platform.index.people_engine import person_templates

    _, templates, _ = person_templates(faces, np.ones(len(faces), np.float32),
                                       np.full(len(faces), "x", object), PeopleOptions())
    return templates[0]


#: identify's default threshold: the people's assign distance (what people update decides with)
ASSIGN = PeopleOptions().assign_distance


def test_pretrained_identify_threshold_is_stricter_than_verification():
    assert 0 < PRETRAINED.identify_threshold < PRETRAINED.threshold <= 4


def test_identify_threshold_stored_and_reloaded(tmp_path, people, monkeypatch):
    import dataclasses

    from facenet_platform.core import weights

    default = make_gallery(tmp_path / "default", people)
    assert default.identify_threshold == PRETRAINED.identify_threshold
    default.save()
    fixed = make_gallery(tmp_path / "fixed", people, identify_threshold=0.7)
    fixed.save()
    section = read_manifest(IndexLayout.open(tmp_path / "default"))["gallery"]
    assert section["identify_threshold"] == PRETRAINED.identify_threshold
    assert section["identify_threshold_source"] == "pretrained"
    assert section["threshold"] == PRETRAINED.threshold  # the 1:1 one is kept beside it
    section = read_manifest(IndexLayout.open(tmp_path / "fixed"))["gallery"]
    assert (section["identify_threshold"], section["identify_threshold_source"]) == (0.7, "fixed")

    assert Gallery.load(tmp_path / "default").identify_threshold == PRETRAINED.identify_threshold
    assert Gallery.load(tmp_path / "fixed").identify_threshold == 0.7
    assert Gallery.load(tmp_path / "fixed").threshold == PRETRAINED.threshold
    # a re-calibrated pretrained value reaches the galleries that follow it, not the fixed one
    monkeypatch.setattr(weights, "PRETRAINED",
                        dataclasses.replace(weights.PRETRAINED, identify_threshold=0.6))
    assert Gallery.load(tmp_path / "default").identify_threshold == 0.6
    assert Gallery.load(tmp_path / "fixed").identify_threshold == 0.7


def test_identify_threshold_of_another_model_falls_back_with_a_warning(tmp_path, caplog):
    from facenet_platform.index import gallery as gallery_module

    gallery_module._WARNED_NO_IDENTIFY_THRESHOLD.discard("my-finetuned")
    with caplog.at_level("WARNING", logger="facenet_platform.index.gallery"):
        custom = Gallery.create(tmp_path / "custom", model_id="my-finetuned", threshold=1.1)
    assert custom.identify_threshold == 1.1 and custom.identify_threshold_source == "verification"
    assert "no identification threshold for model 'my-finetuned'" in caplog.text
    custom.save()
    section = read_manifest(IndexLayout.open(tmp_path / "custom"))["gallery"]
    assert section["identify_threshold"] == 1.1
    assert section["identify_threshold_source"] == "verification"
    assert Gallery.load(tmp_path / "custom").identify_threshold == 1.1
    tuned = Gallery.create(tmp_path / "tuned", model_id="my-finetuned", threshold=1.1,
                           identify_threshold=0.75)
    tuned.save()
    assert Gallery.load(tmp_path / "tuned").identify_threshold == 0.75
    for bad in (-0.1, 4.5, float("nan"), "lenient"):
        with pytest.raises(ConfigError, match="identify_threshold"):
            Gallery.create(tmp_path / "bad", identify_threshold=bad)


def test_gallery_saved_before_identify_thresholds_loads(tmp_path, people):
    from facenet_platform.index.layout import update_manifest

    make_gallery(tmp_path / "old", people).save()
    layout = IndexLayout.open(tmp_path / "old")
    section = read_manifest(layout)["gallery"]
    for key in ("identify_threshold", "identify_threshold_source"):
        del section[key]
    update_manifest(layout, "gallery", section)
    assert Gallery.load(tmp_path / "old").identify_threshold == PRETRAINED.identify_threshold


def test_decide_boundaries():
    from facenet_platform.index.identify import UNKNOWN, decide

    t = PRETRAINED.identify_threshold
    assert decide([Match("Ada", t), Match("Bob", t + 0.1)], t) == "Ada"  # at the threshold: a name
    assert decide([Match("Ada", np.nextafter(t, 4.0))], t) == UNKNOWN      # just over: unknown
    assert decide([Match("Ada", 0.0)], 0.0) == "Ada"
    assert decide([Match("Ada", 1e-9)], 0.0) == UNKNOWN
    assert decide([Match("Ada", 4.0)], 4.0) == "Ada"
    assert decide([], 4.0) == UNKNOWN


def test_identify_decides_with_the_identification_threshold(tmp_path, people):
    from facenet_platform.index.identify import identify_faces

    _, faces = people
    gallery = make_gallery(tmp_path / "idx", people)
    # between the two thresholds: the same person for 1:1 verification, unknown for 1:N
    distance = (PRETRAINED.identify_threshold + PRETRAINED.threshold) / 2
    query = at_distance(faces["person_03"][0], distance)
    assert brute_force(faces, query)[0] == ("person_03", pytest.approx(distance, abs=1e-5))
    pipeline = FakePipeline(query)
    [[face]] = identify_faces(pipeline, gallery, [np.zeros((8, 8, 3), np.uint8)])
    assert face.decision == "unknown" and face.threshold == PRETRAINED.identify_threshold
    assert face.matches[0].name == "person_03"
    [[face]] = identify_faces(pipeline, gallery, [np.zeros((8, 8, 3), np.uint8)],
                              threshold=PRETRAINED.threshold)
    assert face.decision == "person_03" and face.threshold == PRETRAINED.threshold
    # a gallery with a fixed identification threshold decides with that one
    lenient = make_gallery(tmp_path / "lenient", people, identify_threshold=distance + 0.01)
    [[face]] = identify_faces(pipeline, lenient, [np.zeros((8, 8, 3), np.uint8)])
    assert face.decision == "person_03" and face.threshold == distance + 0.01


def test_identify_cli_default_threshold_and_override(cli, tmp_path, people):
    _, faces = people
    make_gallery(tmp_path / "idx", people).save()
    # the enrolled identities are people: a face between the people's assign distance and the
    # verification threshold from person_05's template is unknown by default
    distance = (ASSIGN + PRETRAINED.threshold) / 2
    cli.use_pipeline(FakePipeline(at_distance(template_of(faces["person_05"]), distance)))
    photo = write_good_image(tmp_path / "face.jpg")
    code, out, err = cli("identify", photo, "--index", tmp_path / "idx", "--json")
    assert code == 0, err
    face = json.loads(out)[0]["faces"][0]
    assert face["decision"] == "unknown" and face["reason"] == "too_far"
    assert face["matches"][0]["distance"] == pytest.approx(distance, abs=1e-4)
    code, out, _ = cli("identify", photo, "--index", tmp_path / "idx")
    assert code == 0 and "->  unknown" in out
    assert f"threshold {ASSIGN:g})" in out
    code, out, _ = cli("identify", photo, "--index", tmp_path / "idx", "--threshold",
                       str(PRETRAINED.threshold))
    assert code == 0 and "->  person_05" in out and f"threshold {PRETRAINED.threshold:g})" in out


def test_bulk_searcher_uses_the_identification_threshold(tmp_path, people):
    from facenet_platform.index.search import GallerySearcher

    _, faces = people
    make_gallery(tmp_path / "idx", people).save()
    distance = (ASSIGN + PRETRAINED.threshold) / 2
    near_face = at_distance(template_of(faces["person_01"]), distance)
    batch = {"path": np.array(["a.jpg", "b.jpg"], object), "face_index": np.array([0, 0]),
             "embedding": np.stack([faces["person_01"][0], near_face])}
    default = GallerySearcher(str(tmp_path / "idx"), top_k=1)
    assert default.threshold == ASSIGN
    out = default(batch)
    assert list(out["name"]) == ["person_01", "person_01"]
    assert list(out["is_match"]) == [True, False]
    lenient = GallerySearcher(str(tmp_path / "idx"), top_k=1, threshold=PRETRAINED.threshold)
    assert list(lenient(batch)["is_match"]) == [True, True]


def test_check_same_model_names_both_models_and_sizes():
    from facenet_platform.index.gallery import GalleryError, check_same_model

    check_same_model(PRETRAINED, "none", PRETRAINED.model_id, PRETRAINED.embedding_size,
                     "the gallery of x holds", "enroll again")
    with pytest.raises(GalleryError, match=r"holds 1024-d embeddings of model .*produces "
                                           r"512-d embeddings.*; enroll again"):
        check_same_model(PRETRAINED, "none", PRETRAINED.model_id, 1024,
                         "the gallery of x holds", "enroll again")
    check_same_model(PRETRAINED, "concat", PRETRAINED.model_id, 1024, "x holds", "r")
    with pytest.raises(GalleryError, match="other-model"):
        check_same_model(PRETRAINED, "none", "other-model", 512, "x holds", "r")
