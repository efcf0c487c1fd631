"""The people store, decisions, people update, reading, the people as identify's gallery, and
their CLI -- on synthetic collections written through the real commit path (no model, no Ray;
the LFW curation story with real Ray is in test_people_lfw.py).

Covers: versions and the atomic HEAD, the event log and undo, every bad input changing nothing,
the busy writer, a writer killed (SIGKILL) before and after its commit point, update keeping
every decision across new and removed photos, enrolled identities becoming named people.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT
from people_data import World, commit_photos

from facenet_platform.core.errors import ConfigError
from facenet_platform.index import people as pp
from facenet_platform.index.face_ids import FaceIdError, check_face_id, face_id, face_ids
from facenet_platform.index.locking import IndexBusyError
from facenet_platform.index.people_engine import PeopleOptions
from facenet_platform.index.people_store import (
    FAULTS_ENV, PeopleBusyError, PeopleError, PeopleStore, UndoConflictError, UnknownFaceError,
    UnknownPersonError, check_person_name,
)


# --------------------------------------------------------------------------------------------
# fixtures


def _world(seed: int = 3) -> World:
    """Alice (6 photos, 3 with Bob), Bob (4 more), Carol (3), one blurred stranger."""
    w = World(seed=seed)
    for k in range(6):
        w.photo(f"/photos/alice/{k}.jpg", ["alice", "bob"] if k % 2 else ["alice"])
    for k in range(4):
        w.photo(f"/photos/bob/{k}.jpg", ["bob"])
    for k in range(3):
        w.photo(f"/photos/carol/{k}.jpg", ["carol"])
    w.photo("/photos/crowd.jpg", ["stranger"], good=[False])
    return w


@pytest.fixture
def world(tmp_path):
    w = _world()
    index = tmp_path / "index"
    commit_photos(index, w.photos)
    pp.update_people(index)
    return w, index


def person_of(index, fid: str) -> str | None:
    state = PeopleStore(index).load()
    return state.faces.person[state.faces.rows([fid])[0]]


def people_by_identity(w: World, index) -> dict[str, str]:
    """Planted identity -> the person most of its faces are in."""
    state = PeopleStore(index).load()
    out = {}
    for identity in ("alice", "bob", "carol"):
        rows = state.faces.rows(w.faces_of(identity))
        values, counts = np.unique(state.faces.person[rows].astype(str), return_counts=True)
        out[identity] = str(values[np.argmax(counts)])
    return out


def snapshot(index) -> tuple[int, bytes]:
    store = PeopleStore(index)
    return store.version(), Path(store.head_path).read_bytes()


# --------------------------------------------------------------------------------------------
# ids and names


def test_face_ids_are_validated():
    h = "ab" * 32
    assert face_id(h, 3) == "abababababababab-3"
    assert face_ids(np.array([h, "cd" * 32]), np.array([0, 12])).tolist() == [
        "abababababababab-0", "cdcdcdcdcdcdcdcd-12"]
    assert check_face_id("ABABABABABABABAB-0") == "abababababababab-0"
    for bad, why in [("../etc/passwd", "path characters"), ("a\\b", "path characters"),
                     ("abababababababab-0\n", "control characters"), ("", "empty"),
                     ("abababababababab", "not a face id"), ("p12", "not a face id"),
                     ("abababababababab-01", "not a face id")]:
        with pytest.raises(FaceIdError, match=why):
            check_face_id(bad)


def test_person_names_are_validated():
    assert check_person_name("  Ada Lovelace ") == "Ada Lovelace"
    assert check_person_name("Zoë d'Arc-Ñandú") == "Zoë d'Arc-Ñandú"
    for bad, why in [("", "empty"), ("   ", "empty"), ("a/b", "path separator"),
                     ("a\\b", "path separator"), ("a\nb", "control"), ("a\x00b", "control"),
                     ("x" * 201, "at most"), ("unknown", "reserved"), ("New", "reserved"),
                     ("p12", "person id"), ("abababababababab-0", "face id")]:
        with pytest.raises(ConfigError, match=why):
            check_person_name(bad)


# --------------------------------------------------------------------------------------------
# people update


def test_update_groups_faces_and_keeps_low_quality_out(world):
    w, index = world
    store = PeopleStore(index)
    state = store.load()
    who = people_by_identity(w, index)
    assert len(set(who.values())) == 3
    for identity, pid in who.items():
        assert [person_of(index, f) for f in w.faces_of(identity)] == [pid] * len(
            w.faces_of(identity))
    stranger = w.faces_of("stranger")[0]
    assert person_of(index, stranger) is None  # under the quality floor: nobody
    assert state.faces.quality[state.faces.rows([stranger])[0]] < PeopleOptions().min_quality
    assert {p.n_faces for p in state.people.values()} == {6, 7, 3}
    assert all(p.cover and p.cover in state.faces.face_id for p in state.people.values())
    assert len(state.templates) == 3 and state.search_index["type"] == "flat"
    assert [e.kind for e in store.history()] == ["update"]
    # nothing new: no new version
    assert pp.update_people(index).version == 1 and store.version() == 1


def test_curation_survives_new_and_removed_photos(world):
    w, index = world
    who = people_by_identity(w, index)
    pp.name_person(index, who["alice"], "Alice")
    pp.name_person(index, who["bob"], "Bob")
    rejected = w.faces_of("alice")[0]
    pp.reject_faces(index, [rejected])
    moved = w.faces_of("carol")[0]
    pp.move_faces(index, [moved], "Bob")         # a (wrong, but deliberate) move: pinned
    # new photos of everyone, and one of Alice's photos deleted
    new = [w.photo("/photos/new/alice.jpg", ["alice"]), w.photo("/photos/new/bob.jpg", ["bob"]),
           w.photo("/photos/new/carol.jpg", ["carol"])]
    gone = w.photos[2]
    commit_photos(index, new, removed=[gone])
    summary = pp.update_people(index)
    assert summary.new_faces == 3 and summary.joined == 3 and summary.new_people == 0
    state = PeopleStore(index).load()
    assert state.person("Alice").id == who["alice"] and state.person("Bob").id == who["bob"]
    assert person_of(index, new[0].face_ids()[0]) == who["alice"]
    assert person_of(index, new[1].face_ids()[0]) == who["bob"]
    assert person_of(index, rejected) is None               # never back to Alice
    row = state.faces.rows([moved])[0]
    assert state.faces.person[row] == who["bob"] and state.faces.pinned[row]
    with pytest.raises(UnknownFaceError):                   # the deleted photo's face is gone
        state.faces.rows([gone.face_ids()[0]])
    # --recluster starts over and still keeps every decision
    pp.update_people(index, recluster=True)
    state = PeopleStore(index).load()
    assert state.person("Alice").id == who["alice"] and state.person("Bob").id == who["bob"]
    assert person_of(index, rejected) != who["alice"]
    assert person_of(index, moved) == who["bob"]
    assert person_of(index, new[0].face_ids()[0]) == who["alice"]


def test_enrolled_identities_become_named_people(world, tmp_path):
    from facenet_platform.index.gallery import Gallery

    w, index = world
    who = people_by_identity(w, index)
    gallery = Gallery.open(str(index))
    gallery.add("Carol", np.stack([w.face("carol")]), ["carol.jpg"])   # a known face
    gallery.add("Dave", np.stack([w.face("dave"), w.face("dave")]), ["d1.jpg", "d2.jpg"])
    gallery.save()
    summary = pp.update_people(index)
    assert summary.enrolled_linked == 2
    state = PeopleStore(index).load()
    carol = state.person("Carol")
    assert carol.id == who["carol"] and carol.enrolled_as == ("Carol",)  # named the cluster
    dave = state.person("Dave")
    assert dave.enrolled_as == ("Dave",) and dave.n_faces == 0
    # a new photo of Dave is given to him: a few labelled photos name the collection
    photo = w.photo("/photos/new/dave.jpg", ["dave"])
    commit_photos(index, [photo])
    pp.update_people(index)
    assert person_of(index, photo.face_ids()[0]) == dave.id


# --------------------------------------------------------------------------------------------
# decisions, history, undo


def test_decisions_history_and_undo(world):
    w, index = world
    who = people_by_identity(w, index)
    store = PeopleStore(index)
    pp.name_person(index, who["alice"], "Alice")
    e = pp.merge_people(index, ["Alice", who["carol"]])
    assert who["carol"] not in store.load().people
    assert person_of(index, w.faces_of("carol")[1]) == who["alice"]
    e2 = pp.set_hidden(index, "Alice", True)
    assert store.load().person("Alice").hidden and e2.kind == "hide"
    assert pp.set_hidden(index, "Alice", True) is None              # already: no event
    history = store.history()
    assert [h.kind for h in history] == ["update", "name", "merge", "hide"]
    # undo: the last decision first, then the one before
    assert pp.undo(index).undoes == 4
    assert not store.load().person("Alice").hidden
    assert pp.undo(index).undoes == e.id
    state = store.load()
    assert state.people[who["carol"]].n_faces == 3
    assert person_of(index, w.faces_of("carol")[1]) == who["carol"]
    assert store.undone() == {4: 5, 3: 6}
    # undoing an undo redoes the merge
    pp.undo(index, 6)
    assert who["carol"] not in store.load().people and store.undone() == {4: 5, 6: 7}
    with pytest.raises(PeopleError, match="already undone"):
        pp.undo(index, 4)


def test_a_retried_request_is_applied_once(world):
    w, index = world
    who = people_by_identity(w, index)
    store = PeopleStore(index)
    first = pp.move_faces(index, w.faces_of("carol")[:1], "new", request_id="req-7")
    again = pp.move_faces(index, w.faces_of("carol")[:1], "new", request_id="req-7")
    assert again.id == first.id and store.version() == first.id
    assert first.args["request_id"] == "req-7"
    assert pp.undo(index, request_id="req-8").undoes == first.id
    assert pp.undo(index, request_id="req-8").undoes == first.id and store.version() == 3
    assert pp.name_person(index, who["bob"], "Bob", request_id="req-9").id == 4


def test_undo_refuses_when_later_events_changed_the_same_faces(world):
    w, index = world
    who = people_by_identity(w, index)
    face = w.faces_of("carol")[0]
    first = pp.move_faces(index, [face], who["alice"])
    pp.move_faces(index, [face], who["bob"])
    before = snapshot(index)
    with pytest.raises(UndoConflictError, match=f"face {face}"):
        pp.undo(index, first.id)
    assert snapshot(index) == before


def test_reject_merge_keeps_rejected_faces_out(world):
    w, index = world
    who = people_by_identity(w, index)
    bob_face = w.faces_of("bob")[0]
    pp.reject_faces(index, [bob_face])
    pp.move_faces(index, [bob_face], who["carol"])   # the face now in Carol, rejected from Bob
    pp.merge_people(index, [who["carol"], who["bob"]])
    state = PeopleStore(index).load()
    # merged: Carol is Bob now, and the face rejected from Bob left the merged person
    assert person_of(index, bob_face) is None
    assert (bob_face, who["carol"]) in state.rejections
    pp.update_people(index)
    assert person_of(index, bob_face) != who["carol"]


def test_move_to_new_and_to_a_hidden_person(world):
    w, index = world
    who = people_by_identity(w, index)
    faces = w.faces_of("carol")[:2]
    e = pp.move_faces(index, faces, "new")
    state = PeopleStore(index).load()
    new = state.faces.person[state.faces.rows(faces)[0]]
    assert new not in who.values() and state.people[new].n_faces == 2
    assert e.summary.startswith(f"moved 2 face(s) to {new}")
    pp.set_hidden(index, who["bob"], True)
    before = snapshot(index)
    with pytest.raises(PeopleError, match="hidden"):
        pp.move_faces(index, faces, who["bob"])
    assert snapshot(index) == before


def test_every_bad_input_changes_nothing(world):
    w, index = world
    who = people_by_identity(w, index)
    pp.name_person(index, who["alice"], "Alice")
    face = w.faces_of("bob")[0]
    stranger = w.faces_of("stranger")[0]
    before = snapshot(index)
    bad_calls = [
        (UnknownPersonError, "p999", lambda: pp.name_person(index, "p999", "X")),
        (UnknownPersonError, "Nobody", lambda: pp.name_person(index, "Nobody", "X")),
        (PeopleError, "merge", lambda: pp.name_person(index, who["bob"], "alice")),
        (ConfigError, "empty", lambda: pp.name_person(index, who["bob"], " ")),
        (ConfigError, "path separator", lambda: pp.name_person(index, who["bob"], "a/b")),
        (ConfigError, "control", lambda: pp.name_person(index, who["bob"], "a\tb")),
        (PeopleError, "itself", lambda: pp.merge_people(index, ["Alice", who["alice"]])),
        (PeopleError, "at least two", lambda: pp.merge_people(index, ["Alice"])),
        (UnknownPersonError, "p999", lambda: pp.merge_people(index, ["Alice", "p999"])),
        (UnknownFaceError, "0123456789abcdef-0",
         lambda: pp.move_faces(index, [face, "0123456789abcdef-0"], "Alice")),
        (FaceIdError, "path characters", lambda: pp.move_faces(index, ["../x"], "Alice")),
        (FaceIdError, "control", lambda: pp.reject_faces(index, ["abc\x07"])),
        (UnknownPersonError, "p999", lambda: pp.move_faces(index, [face], "p999")),
        (ConfigError, "at least one face", lambda: pp.move_faces(index, [], "Alice")),
        (PeopleError, "belongs to nobody", lambda: pp.reject_faces(index, [face, stranger])),
        (UnknownPersonError, "p999", lambda: pp.set_hidden(index, "p999", True)),
        (PeopleError, "no event 99", lambda: pp.undo(index, 99)),
        (PeopleError, "numbers from 1", lambda: pp.undo(index, 0)),
    ]
    for error, text, call in bad_calls:
        with pytest.raises(error, match=text):
            call()
        assert snapshot(index) == before, text
    assert person_of(index, face) == who["bob"]


def test_unknown_ids_in_a_fresh_index(tmp_path):
    with pytest.raises(UnknownPersonError, match="no person p1"):
        pp.name_person(tmp_path / "empty", "p1", "Ann")
    with pytest.raises(UnknownFaceError, match="people update"):
        pp.reject_faces(tmp_path / "empty", ["0123456789abcdef-0"])
    assert not (tmp_path / "empty" / "people" / "HEAD.json").exists()


# --------------------------------------------------------------------------------------------
# reading


def test_list_show_photos_and_search(world):
    from facenet_platform.index.people_read import FaceSearcher, list_people, person_photos

    w, index = world
    who = people_by_identity(w, index)
    pp.name_person(index, who["bob"], "Bob")
    pp.set_hidden(index, who["carol"], True)
    store = PeopleStore(index)
    state = store.load()
    assert [p.id for p in list_people(state)] == [who["bob"], who["alice"]]
    assert [p.id for p in list_people(state, "named")] == [who["bob"]]
    assert [p.id for p in list_people(state, "unnamed")] == [who["alice"]]
    assert [p.id for p in list_people(state, "hidden")] == [who["carol"]]
    assert [p.id for p in list_people(state, "all", min_faces=7)] == [who["bob"]]
    photos = person_photos(store.layout, state, [state.person("Bob"),
                                                 state.people[who["alice"]]])
    assert [p["path"] for p in photos] == [f"/photos/alice/{k}.jpg" for k in (1, 3, 5)]
    assert all(len(p["faces"][who["bob"]]) == 1 for p in photos)
    assert len(person_photos(store.layout, state, [state.person("Bob")])) == 7
    # search-face: a new photo of Alice finds her photos, nearest first
    searcher = FaceSearcher(index)
    hits = searcher.search(w.face("alice")[None], top_k=4)[0]
    assert len(hits) == 4 and all(h.person == who["alice"] for h in hits)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert all(h.path.startswith("/photos/alice/") for h in hits)
    assert searcher.search(w.face("zed")[None])[0] == []            # a stranger: no photo


def test_people_gallery_answers_named_visible_people(world):
    from facenet_platform.index.identify import decide_face
    from facenet_platform.index.people_gallery import PeopleGallery

    w, index = world
    who = people_by_identity(w, index)
    pp.name_person(index, who["alice"], "Alice")
    pp.name_person(index, who["carol"], "Carol")
    pp.set_hidden(index, "Carol", True)
    gallery = PeopleGallery.load(index)
    assert gallery.identities() == {"Alice": 6}
    probes = np.stack([w.face("alice"), w.face("bob"), w.face("carol"), w.face("zed")])
    results = gallery.search(probes, top_k=3)
    decisions = [decide_face(m, gallery.identify_threshold, 0.9, gallery.min_quality)
                 for m in results]
    assert decisions[0] == ("Alice", "match", who["alice"])
    assert decisions[1] == ("unknown", "unnamed", who["bob"])       # known to update, no name
    assert decisions[2][0] == "unknown"                              # hidden: never answered
    assert all(m.person != who["carol"] for row in results for m in row)
    assert decisions[3][:2] == ("unknown", "too_far")
    assert decide_face(results[0], gallery.identify_threshold, gallery.min_quality / 2,
                       gallery.min_quality)[:2] \
        == ("unknown", "low_quality")
    # a rename is answered by a gallery loaded after it
    pp.name_person(index, "Alice", "Alice Liddell")
    assert not gallery.is_current()
    fresh = PeopleGallery.load(index)
    assert fresh.search(probes[:1], 1)[0][0].name == "Alice Liddell"


def test_bulk_search_answers_like_identify(world):
    from facenet_platform.index.search import GallerySearcher

    w, index = world
    who = people_by_identity(w, index)
    pp.name_person(index, who["alice"], "Alice")
    batch = {"path": np.array(["a.jpg", "b.jpg"], object), "face_index": np.array([0, 0]),
             "embedding": np.stack([w.face("alice"), w.face("bob")])}
    out = GallerySearcher(str(index), top_k=2)(batch)
    first = out["rank"] == 0
    assert list(out["name"][first]) == ["Alice", ""]          # Bob has no name yet
    assert list(out["person_id"][first]) == [who["alice"], who["bob"]]
    assert list(out["is_match"][first]) == [True, False]      # only a name is a match


# --------------------------------------------------------------------------------------------
# the CLI


def test_cli_round_trip(world, capsys):
    from facenet_platform.cli import main

    w, index = world
    who = people_by_identity(w, index)

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("people", "name", who["alice"], "Alice", "--index", index)
    assert code == 0 and out.strip() == f"event 2: named {who['alice']} 'Alice'"
    code, out, _ = run("people", "list", "--index", index, "--json")
    listed = json.loads(out)
    assert code == 0 and [p["id"] for p in listed["people"]][:1] == [who["bob"]]
    code, out, _ = run("people", "show", "Alice", "--index", index, "--json")
    shown = json.loads(out)
    assert shown["id"] == who["alice"] and len(shown["faces"]) == 6
    assert shown["faces"][0]["quality"] >= shown["faces"][-1]["quality"]
    code, out, _ = run("people", "photos", "Alice", "--with", who["bob"], "--index", index,
                       "-o", index.parent / "photos.parquet")
    assert code == 0 and out.startswith("3 photos of Alice")
    import pyarrow.parquet as pq

    table = pq.read_table(index.parent / "photos.parquet")
    assert table.num_rows == 3 and table.column("people")[0].as_py() == [who["alice"], who["bob"]]
    code, _, err = run("people", "name", who["bob"], "alice", "--index", index)
    assert code == 1 and err.count("\n") == 1 and "people merge" in err
    code, _, err = run("people", "move", "../../etc", "--to", "Alice", "--index", index)
    assert code == 1 and "path characters" in err
    code, out, _ = run("people", "history", "--index", index)
    assert code == 0 and out.splitlines()[-1].split()[2:4] == ["name", "named"]
    code, out, _ = run("people", "undo", "--index", index)
    assert code == 0 and out.startswith("event 3: undid event 2")
    code, out, _ = run("people", "update", "--index", index, "--metrics", "--truth", "folder")
    assert code == 0 and "bcubed:" in out
    code, _, err = run("people", "list", "--index", index.parent / "nothing")
    assert code == 1 and "people update" in err


# --------------------------------------------------------------------------------------------
# one writer; killed writers


def _people_cli(index, *argv, faults: str = "") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
    if faults:
        env[FAULTS_ENV] = faults
    return subprocess.Popen([sys.executable, "-m", "facenet_platform", "people", *argv,
                             "--index", str(index)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the writer ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def test_busy_writer_and_stale_lock(world):
    w, index = world
    who = people_by_identity(w, index)
    store = PeopleStore(index)
    # a writer that sleeps right before its commit point holds the lock
    proc = _people_cli(index, "name", who["alice"], "Alice", faults="sleep_before_head=60")
    _wait_for(Path(store.dir) / "versions" / "00000002.json", proc)
    with pytest.raises(PeopleBusyError, match=f"pid {proc.pid}") as caught:
        pp.name_person(index, who["bob"], "Bob")
    assert isinstance(caught.value, IndexBusyError) and "people change" in str(caught.value)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the holder is dead: its lock is stale and taken over; its half-written version is dropped
    assert store.version() == 1
    pp.name_person(index, who["bob"], "Bob")
    assert store.version() == 2 and store.load().person("Bob").id == who["bob"]
    assert not (Path(store.dir) / "LOCK").exists()
    assert [e.kind for e in store.history()] == ["update", "name"]


@pytest.mark.parametrize("point", ["before_head", "after_head"])
def test_killed_decision_leaves_before_or_after(world, point):
    w, index = world
    who = people_by_identity(w, index)
    store = PeopleStore(index)
    faces = w.faces_of("carol")
    proc = _people_cli(index, "move", *faces, "--to", who["alice"],
                       faults=f"sleep_{point}=60")
    marker = Path(store.dir) / ("versions/00000002.json" if point == "before_head"
                                else "HEAD.json")
    if point == "after_head":
        deadline = time.monotonic() + 120
        while store.version() != 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
    else:
        _wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = store.load()
    moved = [state.faces.person[r] for r in state.faces.rows(faces)]
    if point == "before_head":
        assert state.version == 1 and moved == [who["carol"]] * 3
        assert [e.kind for e in store.history()] == ["update"]
    else:
        assert state.version == 2 and moved == [who["alice"]] * 3
        assert all(state.faces.pinned[state.faces.rows(faces)])
        assert [e.kind for e in store.history()] == ["update", "move"]
    # the next writer takes over the dead one's lock and goes on from that state
    pp.name_person(index, who["bob"], "Bob")
    assert store.version() == state.version + 1
    assert len(list((Path(store.dir) / "events").glob("*.json"))) == state.version + 1


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_killed_update_leaves_before(world, how):
    w, index = world
    store = PeopleStore(index)
    commit_photos(index, [w.photo("/photos/new/x.jpg", ["alice"])])
    if how == "exit":  # the process ends itself (os._exit) right before the commit point
        proc = _people_cli(index, "update", faults="exit_before_head=1")
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 75, err[-2000:]
    else:              # killed from outside while it waits there
        proc = _people_cli(index, "update", faults="sleep_before_head=60")
        _wait_for(Path(store.dir) / "versions" / "00000002.json", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert store.version() == 1 and len(store.load().faces) == 17
    assert (Path(store.dir) / "tables" / "faces-00000002.parquet").exists()  # half a version
    summary = pp.update_people(index)
    assert summary.version == 2 and summary.new_faces == 1 and summary.joined == 1
    assert store.load().faces.rows(w.photos[-1].face_ids()) is not None


def test_people_on_another_pyarrow_filesystem():
    """The store only goes through the index's pyarrow filesystem (here pyarrow's in-memory
    test filesystem): versions, events, undo and the search index all work there."""
    import pyarrow.fs as pafs

    from facenet_platform.index.layout import IndexLayout
    from facenet_platform.index.people_read import FaceSearcher

    layout = IndexLayout(pafs._MockFileSystem(), "/bucket/index")
    w = World(seed=2)
    for k in range(4):
        w.photo(f"/p/a/{k}.jpg", ["a"])
    for k in range(3):
        w.photo(f"/p/b/{k}.jpg", ["b"])
    commit_photos(layout, w.photos)
    assert pp.update_people(layout).people == 2
    state = PeopleStore(layout).load()
    pid = state.faces.person[state.faces.rows(w.faces_of("a"))[0]]
    pp.name_person(layout, pid, "Ann")
    pp.reject_faces(layout, w.faces_of("a")[:1])
    pp.undo(layout)
    store = PeopleStore(layout)
    assert [e.kind for e in store.history()] == ["update", "name", "reject", "undo"]
    assert store.load().person("Ann").n_faces == 4
    hits = FaceSearcher(layout).search(w.face("a")[None], 3)[0]
    assert len(hits) == 3 and {h.name for h in hits} == {"Ann"}
