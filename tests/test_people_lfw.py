"""The people curation story on an LFW subset, with real Ray and the real model.

build (``index build``, which runs ``people update``) -> name -> move to a new person -> merge
-> move a face -> reject a face -> hide -> new photos -> build again -> the names are kept, the
rejected face never comes back, the moved face stays pinned, ``people photos`` is right,
``identify`` answers the new name, the hidden person is never answered, ``search-face`` finds
the person's photos.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import requires_lfw

pytestmark = [requires_lfw, pytest.mark.lfw, pytest.mark.slow]

#: Three people, four photos each to start with, one more each later, one held out for identify
#: (later and held-out photos: clear, frontal ones -- LFW also has blurred and profile shots,
#: which the quality floor rightly keeps out of people).
PEOPLE = {"Colin_Powell": "Colin", "Tony_Blair": "Tony", "Donald_Rumsfeld": "Donald"}
FIRST = (1, 2, 3, 4)
LATER = {"Colin_Powell": 7, "Tony_Blair": 9, "Donald_Rumsfeld": 9}
HELD_OUT = {"Colin_Powell": 8, "Tony_Blair": 6, "Donald_Rumsfeld": 8}
SMALL = ["--read-batch-size", "2", "--detect-batch-size", "4", "--embed-batch-size", "8",
         "--no-progress"]


def lfw_photo(lfw_root: Path, person: str, number: int) -> Path:
    return lfw_root / "lfw-deepfunneled" / person / f"{person}_{number:04d}.jpg"


@pytest.fixture
def cli(monkeypatch, capsys, pipeline):
    """The CLI in-process; commands that embed use the session's pipeline."""
    from facenet_platform import cli as cli_module
    from facenet_platform.index import gallery_commands

    monkeypatch.setattr(gallery_commands, "build_pipeline", lambda args: pipeline)

    def run(*argv):
        code = cli_module.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert code == 0, f"{argv}: {err[-3000:]}"
        return out

    return run


def test_curation_story(cli, lfw_root, ray_cluster, tmp_path):
    from facenet_platform.index.people_store import PeopleStore

    photos, index = tmp_path / "photos", tmp_path / "index"
    for person in PEOPLE:   # copies in a temporary folder (never in the repository)
        (photos / person).mkdir(parents=True)
        for k in FIRST:
            shutil.copy(lfw_photo(lfw_root, person, k), photos / person)

    # 1. build: the people update runs at the end
    out = cli("index", "build", photos, "--out", index, "--address", ray_cluster, *SMALL)
    assert "people:   v1:" in out
    store = PeopleStore(index)
    state = store.load()

    def majority(person: str, state) -> str:
        rows = [i for i, h in enumerate(state.faces.content_hash)
                if any(p.startswith(str(photos / person)) for p in paths.get(h, []))]
        values, counts = np.unique(state.faces.person[rows].astype(str), return_counts=True)
        return str(values[np.argmax(counts)])

    from facenet_platform.index.people_data import live_paths

    paths = live_paths(store.layout)
    who = {person: majority(person, state) for person in PEOPLE}
    assert len(set(who.values())) == 3, who
    for person, pid in who.items():
        assert state.people[pid].n_faces >= len(FIRST) - 1

    # 2. name everyone
    for person, pid in who.items():
        assert cli("people", "name", pid, PEOPLE[person], "--index", index).startswith("event")

    # 3. split Donald by moving two faces to a new person, then merge them back
    donald = json.loads(cli("people", "show", "Donald", "--index", index, "--json"))
    split = [f["face_id"] for f in donald["faces"][:2]]
    cli("people", "move", *split, "--to", "new", "--index", index)
    new_pid = store.load().faces.person[store.load().faces.rows(split)[0]]
    assert new_pid not in who.values()
    cli("people", "merge", "Donald", new_pid, "--index", index)
    state = store.load()
    assert new_pid not in state.people and state.person("Donald").n_faces == donald["faces"] \
        .__len__()

    # 4. a deliberate move (pinned) and a rejection
    colin = json.loads(cli("people", "show", "Colin", "--index", index, "--json"))
    moved = colin["faces"][-1]["face_id"]
    cli("people", "move", moved, "--to", "Tony", "--index", index)
    tony = json.loads(cli("people", "show", "Tony", "--index", index, "--json"))
    rejected = next(f["face_id"] for f in tony["faces"] if f["face_id"] != moved)
    cli("people", "reject", rejected, "--index", index)
    # 5. rename Colin; hide Tony
    cli("people", "name", "Colin", "Colin Powell", "--index", index)
    cli("people", "hide", "Tony", "--index", index)
    history = cli("people", "history", "--index", index)
    assert [line.split()[2] for line in history.splitlines()] == [
        "update", "name", "name", "name", "move", "merge", "move", "reject", "name", "hide"]

    # 6. new photos, build again: the new faces join their (named) people
    for person in PEOPLE:
        shutil.copy(lfw_photo(lfw_root, person, LATER[person]), photos / person)
    out = cli("index", "build", photos, "--out", index, "--address", ray_cluster, *SMALL)
    assert int(out.split("people:   v", 1)[1].split(" new faces")[0].split()[-1]) >= 3
    state = store.load()
    assert {state.people[pid].name for pid in who.values()} == {"Colin Powell", "Tony", "Donald"}
    paths = live_paths(store.layout)
    joined = {}
    for person, pid in who.items():
        new_hash = next(h for h, ps in paths.items()
                        if any(p.endswith(f"{person}_{LATER[person]:04d}.jpg") for p in ps))
        rows = np.flatnonzero(state.faces.content_hash == new_hash)
        got = set(state.faces.person[rows].tolist())
        joined[person] = pid in got
        assert not got & (set(who.values()) - {pid}), person   # never someone else
    assert all(joined.values()), joined
    row = state.faces.rows([rejected])[0]
    assert state.faces.person[row] != who["Tony_Blair"]              # never back
    row = state.faces.rows([moved])[0]
    assert state.faces.person[row] == who["Tony_Blair"] and state.faces.pinned[row]

    # 7. photos of Colin Powell: his photos but the one whose face was moved
    listed = json.loads(cli("people", "photos", "Colin Powell", "--index", index, "--json"))
    got = {Path(p["path"]).name for p in listed["photos"]}
    moved_photo = Path(next(f["path"] for f in colin["faces"] if f["face_id"] == moved)).name
    expected = {f"Colin_Powell_{k:04d}.jpg" for k in (*FIRST, LATER["Colin_Powell"])} - {
        moved_photo}
    assert got == expected

    # 8. identify answers the new name; the hidden person is never answered
    held = {person: lfw_photo(lfw_root, person, HELD_OUT[person]) for person in PEOPLE}
    result = json.loads(cli("identify", *held.values(), "--index", index, "--json"))
    decisions = {Path(r["path"]).name.rsplit("_", 1)[0]: r["faces"][0] for r in result}
    assert decisions["Colin_Powell"]["decision"] == "Colin Powell"
    assert decisions["Colin_Powell"]["person"] == who["Colin_Powell"]
    assert decisions["Donald_Rumsfeld"]["decision"] == "Donald"
    assert decisions["Tony_Blair"]["decision"] == "unknown"
    assert all(m["person"] != who["Tony_Blair"] for m in decisions["Tony_Blair"]["matches"])

    # 9. search-face: a held-out photo of Donald finds his photos
    found = json.loads(cli("search-face", held["Donald_Rumsfeld"], "--index", index, "--json",
                           "--top-k", "20"))
    hits = found["faces"][0]["photos"]
    assert hits and all(h["person"] == who["Donald_Rumsfeld"] for h in hits)
    assert {Path(h["path"]).parent.name for h in hits} == {"Donald_Rumsfeld"}
