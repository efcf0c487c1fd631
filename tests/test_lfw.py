"""Tests of LFW layout and pair/people file parsing (facenet_platform.core.lfw)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facenet_platform.core.errors import DatasetError
from facenet_platform.core.lfw import (
    PairList,
    default_lfw_dir,
    lfw_image_path,
    list_identities,
    read_pairs,
    read_people,
)

# Small fake LFW: person -> number of images.
PEOPLE = {"Alice_A": 3, "Bob_B": 2, "Carol_C": 1, "Dan_D": 2}

VIEW2 = """2\t2
Alice_A\t1\t2
Bob_B\t1\t2
Alice_A\t1\tCarol_C\t1
Bob_B\t2\tDan_D\t1
Alice_A\t2\t3
Dan_D\t1\t2
Carol_C\t1\tDan_D\t2
Alice_A\t3\tBob_B\t1
"""

VIEW1 = """3
Alice_A\t1\t3
Bob_B\t1\t2
Dan_D\t1\t2
Alice_A\t2\tBob_B\t2
Carol_C\t1\tAlice_A\t1
Dan_D\t2\tCarol_C\t1
"""


def _make_tree(root: Path, subdir: str | None = "lfw-deepfunneled") -> Path:
    images = root / subdir if subdir else root
    for name, count in PEOPLE.items():
        (images / name).mkdir(parents=True)
        for i in range(1, count + 1):
            (images / name / f"{name}_{i:04d}.jpg").write_bytes(b"")
    return root


@pytest.fixture
def fake_lfw(tmp_path):
    root = _make_tree(tmp_path / "lfw")
    (root / "pairs.txt").write_text(VIEW2)
    (root / "pairsDevTest.txt").write_text(VIEW1)
    return root


def _write(tmp_path: Path, text: str, name: str = "pairs.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# Paths


def test_default_lfw_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LFW_DIR", str(tmp_path / "x"))
    assert default_lfw_dir() == tmp_path / "x"
    monkeypatch.delenv("LFW_DIR")
    monkeypatch.chdir(tmp_path)
    assert default_lfw_dir() == tmp_path / ".." / "shared" / "datasets" / "lfw"
    monkeypatch.setenv("LFW_DIR", "")  # empty counts as unset
    assert default_lfw_dir() == tmp_path / ".." / "shared" / "datasets" / "lfw"


def test_lfw_image_path(tmp_path):
    assert lfw_image_path(tmp_path, "Alice_A", 7) == tmp_path / "Alice_A" / "Alice_A_0007.jpg"
    (tmp_path / "lfw-deepfunneled").mkdir()
    assert lfw_image_path(tmp_path, "Alice_A", 12) == (
        tmp_path / "lfw-deepfunneled" / "Alice_A" / "Alice_A_0012.jpg"
    )
    with pytest.raises(DatasetError, match="start at 1"):
        lfw_image_path(tmp_path, "Alice_A", 0)
    with pytest.raises(DatasetError, match="name"):
        lfw_image_path(tmp_path, "../etc", 1)


# --------------------------------------------------------------------------------------------
# Pairs files


def test_read_view2(fake_lfw):
    pairs = read_pairs(fake_lfw / "pairs.txt", fake_lfw, check_exists=True)
    images = fake_lfw / "lfw-deepfunneled"
    assert len(pairs) == 8 and pairs.n_folds == 2
    np.testing.assert_array_equal(pairs.folds, [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(pairs.issame, [True, True, False, False] * 2)
    assert pairs.issame.dtype == bool and pairs.folds.dtype == np.int64
    assert pairs.paths1[0] == images / "Alice_A" / "Alice_A_0001.jpg"
    assert pairs.paths2[0] == images / "Alice_A" / "Alice_A_0002.jpg"
    assert pairs.paths1[3] == images / "Bob_B" / "Bob_B_0002.jpg"
    assert pairs.paths2[3] == images / "Dan_D" / "Dan_D_0001.jpg"
    # lfw_dir defaults to the pairs file's folder
    assert read_pairs(fake_lfw / "pairs.txt").paths1 == pairs.paths1


def test_read_view1(fake_lfw):
    pairs = read_pairs(fake_lfw / "pairsDevTest.txt", fake_lfw, check_exists=True)
    assert len(pairs) == 6 and pairs.n_folds == 1
    np.testing.assert_array_equal(pairs.folds, np.zeros(6))
    np.testing.assert_array_equal(pairs.issame, [True] * 3 + [False] * 3)


def test_person_folders_directly_under_dir(tmp_path):
    root = _make_tree(tmp_path / "flat", subdir=None)
    pairs = read_pairs(_write(tmp_path, VIEW2), root, check_exists=True)
    assert pairs.paths1[0] == root / "Alice_A" / "Alice_A_0001.jpg"


def test_unique_paths_and_indices(fake_lfw):
    pairs = read_pairs(fake_lfw / "pairs.txt")
    images = fake_lfw / "lfw-deepfunneled"
    unique = pairs.unique_paths()
    # order of first appearance: p1[0], p2[0], p1[1], p2[1], ...
    assert unique[:5] == [
        images / "Alice_A" / "Alice_A_0001.jpg",
        images / "Alice_A" / "Alice_A_0002.jpg",
        images / "Bob_B" / "Bob_B_0001.jpg",
        images / "Bob_B" / "Bob_B_0002.jpg",
        images / "Carol_C" / "Carol_C_0001.jpg",
    ]
    assert len(unique) == len(set(unique)) == 8  # every image of the fake tree
    idx1, idx2 = pairs.pair_indices()
    assert [unique[i] for i in idx1] == pairs.paths1
    assert [unique[i] for i in idx2] == pairs.paths2


def test_take_folds(fake_lfw):
    pairs = read_pairs(fake_lfw / "pairs.txt")
    first = pairs.take_folds(1)
    assert isinstance(first, PairList) and len(first) == 4 and first.n_folds == 1
    np.testing.assert_array_equal(first.folds, 0)
    assert first.paths1 == pairs.paths1[:4]
    assert len(pairs.take_folds(2)) == len(pairs.take_folds(10)) == 8
    with pytest.raises(DatasetError):
        pairs.take_folds(0)


def test_pairlist_length_mismatch():
    with pytest.raises(DatasetError, match="length"):
        PairList([Path("a")], [Path("b")], np.array([True, False]), np.array([0]))


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("2 2 2\n", "line 1.*header"),
        ("x 2\n", "line 1.*not an integer"),
        ("0 2\n", "line 1.*must be >= 1"),
        # a mismatched-shape line inside the matched block of fold 1 (file line 3)
        ("1\t2\nAlice_A\t1\t2\nAlice_A\t1\tBob_B\t1\nA\t1\tB\t1\nC\t1\tD\t1\n", "line 3 .*matched pair 2 of 2"),
        # a matched-shape line inside the mismatched block (file line 5)
        ("1\t2\nAlice_A\t1\t2\nBob_B\t1\t2\nA\t1\tB\t1\nC\t1\t2\n", "line 5 .*mismatched pair 2 of 2"),
        ("1\nAlice_A\t1\tx\nA\t1\tB\t1\n", "line 2.*'x' is not an integer"),
        ("1\nAlice_A\t0\t2\nA\t1\tB\t1\n", "line 2.*must be >= 1"),
        ("1\nAlice_A\t2\t2\nA\t1\tB\t1\n", "line 2 .*with itself"),
        ("1\nAlice_A\t1\t2\n../x\t1\tB\t1\n", "line 3: '../x' is not a valid"),
        ("1\nAlice_A\t1\t2\nBob_B\t1\tBob_B\t2\n", "line 3 .*two different people"),
        ("2\nAlice_A\t1\t2\nBob_B\t1\t2\nA\t1\tB\t1\n", "ends after line 4 with 3 pair lines.*promises 4"),
        ("1\nAlice_A\t1\t2\nA\t1\tB\t1\nC\t1\tD\t1\n", "line 4: unexpected extra line"),
    ],
)
def test_malformed_pairs(tmp_path, text, match):
    path = _write(tmp_path, text, "bad_pairs.txt")
    with pytest.raises(DatasetError, match=match) as info:
        read_pairs(path, tmp_path)
    assert "bad_pairs.txt" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_blank_lines_keep_line_numbers(tmp_path):
    path = _write(tmp_path, "1\n\nAlice_A\t1\t2\n\nA\t1\tB\n")
    with pytest.raises(DatasetError, match="line 5 "):
        read_pairs(path, tmp_path)
    assert len(read_pairs(_write(tmp_path, "1\n\nAlice_A\t1\t2\n\nA\t1\tB\t1\n\n"), tmp_path)) == 2


def test_missing_pairs_file(tmp_path):
    with pytest.raises(DatasetError, match="not found.*LFW_DIR"):
        read_pairs(tmp_path / "nope.txt", tmp_path)


def test_missing_images(fake_lfw):
    images = fake_lfw / "lfw-deepfunneled"
    (images / "Dan_D" / "Dan_D_0002.jpg").unlink()
    (images / "Carol_C" / "Carol_C_0001.jpg").unlink()
    pairs = read_pairs(fake_lfw / "pairs.txt", fake_lfw)  # not checked by default
    assert len(pairs.missing_paths()) == 2
    with pytest.raises(DatasetError, match="2 of 8 referenced images are missing") as info:
        read_pairs(fake_lfw / "pairs.txt", fake_lfw, check_exists=True)
    assert "Carol_C_0001.jpg" in str(info.value) and "Dan_D_0002.jpg" in str(info.value)


def test_missing_images_lists_first_few(tmp_path):
    lines = ["1\t7"] + [f"P{i}\t1\t2" for i in range(7)] + [f"P{i}\t1\tQ{i}\t1" for i in range(7)]
    path = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="21 of 21 .* and 16 more"):
        read_pairs(path, tmp_path, check_exists=True)


# --------------------------------------------------------------------------------------------
# People files and the folder tree


def test_read_people_flat(tmp_path):
    path = _write(tmp_path, "3\nAlice_A\t3\nBob_B\t2\nCarol_C\t1\n", "peopleDevTest.txt")
    assert read_people(path) == [("Alice_A", 3), ("Bob_B", 2), ("Carol_C", 1)]


def test_read_people_folds(tmp_path):
    path = _write(tmp_path, "2\n2\nAlice_A\t3\nBob_B\t2\n1\nCarol_C\t1\n", "people.txt")
    assert read_people(path) == [("Alice_A", 3), ("Bob_B", 2), ("Carol_C", 1)]


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("2\nAlice_A\t3\n", "ends early"),
        ("1\nAlice_A\t3\nBob_B\t2\n", "line 3: unexpected extra"),
        ("1\nAlice_A\tx\n", "line 2.*not an integer"),
        ("1\nAlice_A\t3\t4\n", "line 2: expected 'name n_images'"),
        ("2\n1\nAlice_A\t3\n", "fold blocks"),
        ("a b\n", "line 1: expected a single count"),
    ],
)
def test_malformed_people(tmp_path, text, match):
    with pytest.raises(DatasetError, match=match):
        read_people(_write(tmp_path, text, "people.txt"))


def test_list_identities(fake_lfw, tmp_path):
    ids = list_identities(fake_lfw)
    assert list(ids) == sorted(PEOPLE)
    assert {k: len(v) for k, v in ids.items()} == PEOPLE
    assert ids["Alice_A"][0] == fake_lfw / "lfw-deepfunneled" / "Alice_A" / "Alice_A_0001.jpg"
    assert sorted(list_identities(fake_lfw, min_images=2)) == ["Alice_A", "Bob_B", "Dan_D"]
    with pytest.raises(DatasetError, match="LFW_DIR"):
        list_identities(tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# The real LFW (../shared/datasets/lfw or $LFW_DIR)

LFW_DIR = default_lfw_dir()
requires_lfw = pytest.mark.skipif(
    not (LFW_DIR / "pairs.txt").is_file(),
    reason=f"LFW not found at {LFW_DIR} (set LFW_DIR to the folder holding pairs.txt)",
)


@pytest.mark.lfw
@requires_lfw
def test_real_view2_pairs():
    pairs = read_pairs(LFW_DIR / "pairs.txt", LFW_DIR, check_exists=True)
    assert len(pairs) == 6000 and pairs.n_folds == 10
    assert int(pairs.issame.sum()) == 3000
    for fold in range(10):
        in_fold = pairs.folds == fold
        assert in_fold.sum() == 600 and pairs.issame[in_fold].sum() == 300
    np.testing.assert_array_equal(pairs.issame[:600], [True] * 300 + [False] * 300)
    assert len(pairs.take_folds(2)) == 1200
    assert all(p.is_file() for p in pairs.unique_paths())


@pytest.mark.lfw
@requires_lfw
@pytest.mark.parametrize("name, n", [("pairsDevTest.txt", 1000), ("pairsDevTrain.txt", 2200)])
def test_real_view1_pairs(name, n):
    pairs = read_pairs(LFW_DIR / name, LFW_DIR, check_exists=True)
    assert len(pairs) == n and pairs.n_folds == 1
    assert int(pairs.issame.sum()) == n // 2


@pytest.mark.lfw
@requires_lfw
def test_real_people_files():
    view2 = read_people(LFW_DIR / "people.txt")
    dev_train = read_people(LFW_DIR / "peopleDevTrain.txt")
    dev_test = read_people(LFW_DIR / "peopleDevTest.txt")
    assert len(view2) == len(dev_train) + len(dev_test) == 5749
    assert not {n for n, _ in dev_train} & {n for n, _ in dev_test}
    assert sum(c for _, c in view2) == 13233


@pytest.mark.lfw
@requires_lfw
def test_real_identities():
    ids = list_identities(LFW_DIR)
    assert len(ids) == 5749
    assert sum(len(v) for v in ids.values()) == 13233
    assert len(list_identities(LFW_DIR, min_images=2)) == 1680
