"""People over a real library's media (issue 13): XMP names seed named people, named faces go
back to sidecars (and come back in a fresh index), a video and a RAW+JPEG pair count once per
person with the best face as the photo's thumbnail. Files are generated from the scikit-image
astronaut; real Ray builds the indexes."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("rawpy")
pytest.importorskip("av")
pytest.importorskip("tifffile")

from facenet_platform.core.media.writers import dng_bytes, encode_pillow, video_bytes  # noqa: E402
from facenet_platform.core.media.xmp import NamedFace, read_regions, write_sidecar  # noqa: E402
from facenet_platform.index import people as pp  # noqa: E402
from facenet_platform.index.build import BuildOptions, build_index  # noqa: E402
from facenet_platform.index.collection import read_faces  # noqa: E402
from facenet_platform.index.people_read import person_photos  # noqa: E402
from facenet_platform.index.people_store import PeopleStore  # noqa: E402
from facenet_platform.index.people_xmp import SEED_EVENT, export_xmp  # noqa: E402

SMALL = dict(read_batch_size=2, detect_batch_size=3, embed_batch_size=4, commit_every_files=3,
             progress=False)
FACE = (115, 58, 205, 174)  # the astronaut's face in the 384 x 512 crop (px)


@pytest.fixture(scope="module")
def crop(astronaut) -> np.ndarray:
    return np.ascontiguousarray(astronaut[:, 64:448])


@pytest.fixture(scope="module")
def library(tmp_path_factory, crop):
    from skimage import data

    d = tmp_path_factory.mktemp("library")
    cat = np.zeros_like(crop)
    cat[:300] = data.chelsea()[:, :384]
    files = {
        "a.jpg": encode_pillow(crop, "JPEG"),
        "a2.jpg": encode_pillow(crop, "JPEG", quality=70),
        "IMG_1.dng": dng_bytes(crop),
        "IMG_1.jpg": encode_pillow(crop, "JPEG", quality=80),
        "clip.mp4": video_bytes([crop] * 25 + [cat] * 25, fps=10),
    }
    for name, payload in files.items():
        (d / name).write_bytes(payload)
    for name in ("a.jpg", "a2.jpg"):
        write_sidecar(str(d / name), [NamedFace("Astronaut", FACE)], width=384, height=512)
    return d


@pytest.fixture(scope="module")
def built(ray_cluster, library, tmp_path_factory):
    index = tmp_path_factory.mktemp("index")
    build_index([str(library)], index, options=BuildOptions(**SMALL))
    summary = pp.update_people(index)
    return index, summary


def _faces_of(index) -> dict[str, list[str]]:
    from facenet_platform.index.face_ids import face_id

    out: dict[str, list[str]] = {}
    for row in read_faces(index).to_pylist():
        out.setdefault(os.path.basename(row["path"]), []).append(
            face_id(row["content_hash"], row["face_index"]))
    return out


def test_xmp_names_seed_a_named_person(built) -> None:
    index, summary = built
    faces = _faces_of(index)
    assert summary.xmp_seeded == {"Astronaut": 2}
    store = PeopleStore(index)
    state = store.load(templates=False)
    person = state.by_name("Astronaut")
    assert person is not None
    tagged = faces["a.jpg"] + faces["a2.jpg"]
    rows = state.faces.rows(tagged)
    assert set(state.faces.person[rows].tolist()) == {person.id}
    assert state.faces.pinned[rows].all()
    assert [e.kind for e in store.history()][-1] == SEED_EVENT
    # a second update seeds nothing again (no new event)
    version = store.version()
    again = pp.update_people(index)
    assert again.xmp_seeded == {} and store.version() == version


def test_video_and_raw_pair_count_once_with_the_best_face(built) -> None:
    index, _ = built
    faces = _faces_of(index)
    assert len(faces["clip.mp4"]) == 2  # two sampled frames show the face
    others = faces["clip.mp4"] + faces["IMG_1.dng"] + faces["IMG_1.jpg"]
    pp.move_faces(index, others, "Astronaut")
    state = PeopleStore(index).load(templates=False)
    person = state.by_name("Astronaut")
    assert person.n_faces == 6
    assert person.n_photos == 4  # a.jpg, a2.jpg, the IMG_1 shot, the video
    photos = {os.path.basename(p["path"]): p for p in person_photos(PeopleStore(index).layout, state, [person])}
    assert len(photos) == 4
    video = photos["clip.mp4"]
    assert sorted(video["faces"][person.id]) == sorted(faces["clip.mp4"])
    rows = state.faces.rows(faces["clip.mp4"])
    best = state.faces.quality[state.faces.rows([video["best_face"]])][0]
    assert video["best_face"] in faces["clip.mp4"] and best == state.faces.quality[rows].max()
    shot = next(p for p in photos.values() if p["shot_id"] is not None)
    assert {os.path.basename(p) for p in shot["paths"]} == {"IMG_1.dng", "IMG_1.jpg"}
    assert len(shot["faces"][person.id]) == 2
    # the Serve people reader answers the same photos
    from facenet_platform.serve.deployments import PeopleReaderImpl

    served = PeopleReaderImpl(str(index), check_interval_s=0).photos(person.id, [], 0, 50, 0)
    assert served["total"] == 4
    pair = next(p for p in served["photos"] if len(p["photo_ids"]) == 2)
    assert pair["best_face"] in shot["faces"][person.id]
    clip = next(p for p in served["photos"] if p["best_face"] in faces["clip.mp4"])
    assert len(clip["faces"][person.id]) == 2


def test_a_rejection_wins_over_the_xmp_name(built) -> None:
    index, _ = built
    face = _faces_of(index)["a.jpg"][0]
    pid = PeopleStore(index).load(templates=False).by_name("Astronaut").id
    pp.reject_faces(index, [face])
    pp.update_people(index)
    state = PeopleStore(index).load(templates=False)
    assert state.faces.person[state.faces.rows([face])][0] != pid


def test_export_skips_video_frames_and_never_rewrites_photos(built, library, capsys) -> None:
    from facenet_platform.cli import main

    index, _ = built
    before = {p.name: p.read_bytes() for p in library.iterdir() if p.suffix != ".xmp"}
    assert main(["people", "export-xmp", "--index", str(index), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    written = {os.path.basename(p) for p in out["sidecars"]}
    assert written == {"a2.jpg.xmp", "IMG_1.dng.xmp", "IMG_1.jpg.xmp"}
    assert sum(n for why, n in out["skipped"].items() if "video" in why) == 2
    assert {p.name: p.read_bytes() for p in library.iterdir() if p.suffix != ".xmp"} == before


def test_exported_names_come_back_in_a_fresh_index(ray_cluster, crop, tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "x.jpg").write_bytes(encode_pillow(crop, "JPEG"))
    first = tmp_path / "first"
    build_index([str(photos)], first, options=BuildOptions(**SMALL))
    pp.update_people(first)
    face = _faces_of(first)["x.jpg"][0]
    pp.move_faces(first, [face], "new")
    state = PeopleStore(first).load(templates=False)
    pp.name_person(first, str(state.faces.person[state.faces.rows([face])][0]), "Eileen")
    summary = export_xmp(first)
    assert summary.faces == 1 and summary.sidecars == [str(photos / "x.jpg") + ".xmp"]
    assert [r.name for r in read_regions(str(photos / "x.jpg")).regions] == ["Eileen"]
    second = tmp_path / "second"
    build_index([str(photos)], second, options=BuildOptions(**SMALL))
    assert pp.update_people(second).xmp_seeded == {"Eileen": 1}
    state = PeopleStore(second).load(templates=False)
    assert state.faces.person[state.faces.rows([face])][0] == state.by_name("Eileen").id
    shutil.rmtree(first)
