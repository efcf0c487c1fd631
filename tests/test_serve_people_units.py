"""The people side of the Serve application without a Ray cluster: the PeopleReader and the
writer's decisions run in-process on a synthetic collection (planted identities written through
the real collection commit path, then ``people update``)."""

from __future__ import annotations

import numpy as np
import pytest

from facenet_platform.index import people as pp
from facenet_platform.index.people_store import PeopleStore
from facenet_platform.serve.deployments import Failure, GalleryWriterImpl, PeopleReaderImpl

from people_data import World, commit_photos


@pytest.fixture()
def index(tmp_path):
    world = World(seed=3)
    for k in range(6):
        world.photo(f"/photos/a{k}.jpg", ["alice"])
        world.photo(f"/photos/b{k}.jpg", ["bob"])
    for k in range(3):
        world.photo(f"/photos/ab{k}.jpg", ["alice", "bob"])
        world.photo(f"/photos/c{k}.jpg", ["carol"])
    path = tmp_path / "index"
    commit_photos(path, world.photos)
    pp.update_people(path)
    return path, world


def people_of(reader, which="visible", min_version=0):
    return reader.list_people(which, 0, 0, 100, None, min_version)["people"]


def person_of(reader, world, identity):
    fid = world.faces_of(identity)[0]
    state = reader.view().state
    return state.faces.person[state.faces.rows([fid])[0]]


def test_reader_lists_pages_and_people(index):
    path, world = index
    reader = PeopleReaderImpl(str(path), check_interval_s=0)
    people = people_of(reader)
    assert [p["faces"] for p in people] == sorted((p["faces"] for p in people), reverse=True)
    assert people[0]["faces"] == 9 and all(p["name"] is None for p in people)
    page = reader.list_people("visible", 0, 1, 1, None)
    assert page["total"] == len(people) and page["people"] == people[1:2]
    assert reader.list_people("visible", 4, 0, 100, None)["total"] == 2  # carol has 3
    alice = person_of(reader, world, "alice")
    detail = reader.person(alice, 0, 4, 0)
    assert detail["faces"] == 9 and detail["face_page"]["total"] == 9
    faces = detail["face_page"]["faces"]
    assert len(faces) == 4 and [f["quality"] for f in faces] == sorted(
        (f["quality"] for f in faces), reverse=True)
    assert {"face_id", "photo_id", "box", "quality", "pinned"} <= set(faces[0])
    assert "path" not in str(detail)
    bob = person_of(reader, world, "bob")
    together = reader.photos(alice, [bob], 0, 50, 0)
    assert together["total"] == 3 and all(set(p["faces"]) == {alice, bob}
                                          for p in together["photos"])
    assert reader.photos(alice, [], 0, 50, 0)["total"] == 9
    for failure in (reader.person("p999", 0, 10, 0), reader.person("nobody", 0, 10, 0),
                    reader.photos(alice, ["p999"], 0, 10, 0)):
        assert isinstance(failure, Failure) and failure.status == 404
    assert reader.photos(alice, [alice], 0, 10, 0).status == 400


def test_decisions_once_each_and_seen_by_readers(index):
    path, world = index
    reader = PeopleReaderImpl(str(path), check_interval_s=3600)  # only min_version reloads
    writer = GalleryWriterImpl(str(path))
    alice = person_of(reader, world, "alice")
    named = writer.decide_sync("name", {"person": alice, "name": "Alice"}, "req-name-0001")
    assert named["event"]["kind"] == "name" and not named["replayed"]
    assert named["event"]["args"]["request_id"] == "req-name-0001"
    version = named["people_version"]
    # a retry with the same key (the writer died after committing) changes nothing
    again = writer.decide_sync("name", {"person": alice, "name": "Alice"}, "req-name-0001")
    assert again["replayed"] and again["event"]["id"] == named["event"]["id"]
    # ... and so does a fresh writer (a restarted replica) reading the log
    fresh = GalleryWriterImpl(str(path))
    assert fresh.decide_sync("name", {"person": alice, "name": "Alice"}, "req-name-0001")[
        "replayed"]
    assert PeopleStore(path).version() == version
    # the reader polls rarely here, but a caller's min_version makes it reload
    assert reader.person(alice, 0, 1, 0)["name"] is None
    assert reader.person(alice, 0, 1, version)["name"] == "Alice"
    assert reader.person("alice", 0, 1, version)["id"] == alice  # names work as references

    bob = person_of(reader, world, "bob")
    carol = person_of(reader, world, "carol")
    taken = writer.decide_sync("name", {"person": bob, "name": "alice"}, "req-name-0002")
    assert isinstance(taken, Failure) and (taken.status, taken.code) == (409, "conflict")
    assert "merge" in taken.message
    merged = writer.decide_sync("merge", {"person": alice, "others": [carol]}, "req-merge-001")
    assert merged["event"]["kind"] == "merge"
    view = reader.person(alice, 0, 100, merged["people_version"])
    assert view["faces"] == 12
    wrong = world.faces_of("carol")[0]
    rejected = writer.decide_sync("reject", {"faces": [wrong]}, "req-reject-01")
    after = reader.person(alice, 0, 100, rejected["people_version"])
    assert after["faces"] == 11 and after["rejected_faces"] == 1
    assert wrong not in {f["face_id"] for f in after["face_page"]["faces"]}
    moved = writer.decide_sync("move", {"faces": world.faces_of("carol")[1:], "to": "new"},
                               "req-move-0001")
    assert moved["event"]["kind"] == "move"
    hidden = writer.decide_sync("hide", {"person": bob}, "req-hide-0001")
    assert [p["id"] for p in people_of(reader, "hidden", hidden["people_version"])] == [bob]
    undone = writer.decide_sync("undo", {}, "req-undo-0001")
    assert undone["event"]["undoes"] == hidden["event"]["id"]
    history = reader.history(20, undone["people_version"])["events"]
    assert [e["kind"] for e in history[:3]] == ["undo", "hide", "move"]
    assert history[1]["undone_by"] == undone["event"]["id"]
    # every decision is in the log exactly once, with its key
    keys = [e.args.get("request_id") for e in PeopleStore(path).history()]
    keys = [k for k in keys if k]
    assert len(keys) == len(set(keys)) == 6

    bad = [
        (writer.decide_sync("name", {"person": "p999", "name": "X"}, "req-bad-00001"), 404),
        (writer.decide_sync("name", {"person": alice, "name": "a/b"}, "req-bad-00002"), 400),
        (writer.decide_sync("name", {"person": alice, "name": "  "}, "req-bad-00003"), 400),
        (writer.decide_sync("merge", {"person": alice, "others": [alice]}, "req-bad-0004"), 409),
        (writer.decide_sync("reject", {"faces": ["../../etc"]}, "req-bad-00005"), 400),
        (writer.decide_sync("reject", {"faces": ["0000000000000000-0"]}, "req-bad-06"), 404),
        (writer.decide_sync("move", {"faces": [wrong], "to": "p999"}, "req-bad-00007"), 404),
        (writer.decide_sync("undo", {"event": 999}, "req-bad-00008"), 409),
    ]
    for failure, status in bad:
        assert isinstance(failure, Failure) and failure.status == status, failure
    assert PeopleStore(path).version() == undone["people_version"]  # nothing changed
