"""benchmarks/wild_set.py: a tiny set is generated, deterministically, and its labels agree with
what the detector finds in the photos (boxes where the faces are, people and strangers as
planned).

The always-run test builds a stand-in LFW folder from scikit-image's astronaut (three "people"
of four shifted, flipped, recoloured crops, and six single-image "strangers"); the ``lfw`` test
uses real LFW people."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, requires_lfw

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import wild_set  # noqa: E402
from wild_eval import iou_matrix  # noqa: E402


def _fake_lfw(root: Path, astronaut: np.ndarray) -> Path:
    """``root/lfw-deepfunneled/<Name>/<Name>_000k.jpg``: 250 px crops around the astronaut's
    face, each a little different."""
    from PIL import Image

    rng = np.random.default_rng(7)
    people = {f"Person_{c}": 4 for c in "ABC"} | {f"Single_{k}": 1 for k in range(6)}
    for name, count in people.items():
        folder = root / "lfw-deepfunneled" / name
        folder.mkdir(parents=True)
        for k in range(count):
            dx, dy = rng.integers(-20, 21), rng.integers(0, 21)
            crop = astronaut[dy:250 + dy, 100 + dx:350 + dx].astype(np.float32)
            crop = np.clip(crop * rng.uniform(0.8, 1.2, size=3), 0, 255).astype(np.uint8)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"{name}_{k + 1:04d}.jpg")
    return root


def _check_set(out: Path, manifest: dict, people: int, per_person: int) -> None:
    import pyarrow.parquet as pq
    from PIL import Image

    from facenet_platform.core.detection import FaceDetector

    table = pq.read_table(out / "labels.parquet")
    assert table.schema.equals(wild_set.labels_schema())
    rows = table.to_pylist()
    assert len({r["face_id"] for r in rows}) == len(rows)
    photos = sorted((out / "photos").glob("wild-*.jpg"))
    assert len(photos) == manifest["photos"] >= 1
    assert {r["photo"] for r in rows if r["role"] == "subject"} <= {
        f"photos/{p.name}" for p in photos}

    subjects = [r for r in rows if r["role"] == "subject"]
    strangers = [r for r in rows if r["role"] == "stranger"]
    per = Counter(r["identity"] for r in subjects)
    assert len(per) == people and max(per.values()) <= per_person
    for photo in {r["photo"] for r in subjects}:     # nobody twice in one photo
        names = [r["identity"] for r in subjects if r["photo"] == photo]
        assert len(names) == len(set(names))
    stranger_names = Counter(r["identity"] for r in strangers)
    assert all(v == 1 for v in stranger_names.values())
    assert not set(stranger_names) & set(per)
    assert manifest["subject_faces"] == len(subjects)
    assert manifest["stranger_faces"] == len(strangers)

    detector = FaceDetector(min_face_size=20)
    checked = found = 0
    for path in photos:
        image = np.asarray(Image.open(path).convert("RGB"))
        mine = [r for r in rows if r["photo"] == f"photos/{path.name}"]
        assert image.shape[1] == mine[0]["photo_width"] and image.shape[0] == mine[0]["photo_height"]
        for r in mine:
            x1, y1, x2, y2 = r["box"]
            assert x2 > x1 and y2 > y1
            if r["role"] != "background":
                # planted faces lie whole inside the photo, fully visible, landmarks in the box
                assert 0 <= x1 and 0 <= y1 and x2 <= image.shape[1] and y2 <= image.shape[0]
                assert r["visible"] > 0.95
                lm = np.asarray(r["landmarks"]).reshape(5, 2)
                w, h = x2 - x1, y2 - y1
                assert np.all((lm[:, 0] > x1 - 0.1 * w) & (lm[:, 0] < x2 + 0.1 * w))
                assert np.all((lm[:, 1] > y1 - 0.1 * h) & (lm[:, 1] < y2 + 0.1 * h))
                assert abs(np.sqrt(w * h) - r["face_px"]) < 1e-3 * r["face_px"] + 1e-3
        dets = detector.detect([image])[0]
        sharp = [r for r in mine if r["role"] == "subject" and r["face_px"] >= 40
                 and r["blur_sigma"] == 0]
        if sharp and len(dets):
            iou = iou_matrix(np.array([r["box"] for r in sharp], np.float32), dets.boxes)
            found += int(np.sum(iou.max(axis=1) >= 0.5))
        checked += len(sharp)
    # the label boxes are where the detector finds the faces (sharp subjects >= 40 px)
    assert checked >= 3
    assert found >= 0.9 * checked, (found, checked)


def test_tiny_set_from_astronaut_is_consistent_and_deterministic(tmp_path, astronaut):
    lfw = _fake_lfw(tmp_path / "lfw", astronaut)
    cache = tmp_path / "sources.parquet"
    out = tmp_path / "set"
    manifest = wild_set.generate(lfw, out, people=3, per_person=4, seed=3, scale=0.5,
                                 source_cache=cache)
    assert manifest["people"] == 3
    _check_set(out, manifest, people=3, per_person=4)

    again = wild_set.generate(lfw, tmp_path / "again", people=3, per_person=4, seed=3, scale=0.5,
                              source_cache=cache)
    assert again["photos"] == manifest["photos"]
    for photo in sorted((out / "photos").glob("*.jpg")):
        assert photo.read_bytes() == (tmp_path / "again" / "photos" / photo.name).read_bytes()
    assert ((out / "labels.parquet").read_bytes()
            == (tmp_path / "again" / "labels.parquet").read_bytes())


def test_asking_for_more_people_than_lfw_has_is_an_error(tmp_path, astronaut):
    lfw = _fake_lfw(tmp_path / "lfw", astronaut)
    with pytest.raises(ValueError, match="only 3 people have >= 4 images"):
        wild_set.generate(lfw, tmp_path / "set", people=4, source_cache=None)


@pytest.mark.lfw
@requires_lfw
def test_tiny_set_from_lfw_is_consistent(tmp_path, lfw_root):
    out = tmp_path / "set"
    manifest = wild_set.generate(lfw_root, out, people=3, per_person=6, seed=1, scale=0.5,
                                 source_cache=tmp_path / "sources.parquet")
    _check_set(out, manifest, people=3, per_person=6)


def test_eval_matches_boxes_one_to_one_and_sets_open_set_thresholds():
    from wild_eval import match_boxes, open_set_scores

    planted = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)
    detected = np.array([[1, 1, 11, 11], [0, 0, 10, 10], [21, 0, 31, 10], [50, 50, 60, 60]],
                        np.float32)
    match, iou = match_boxes(detected, planted)
    # the exact box takes the first planted face, the shifted one gets nothing (one to one)
    assert match.tolist() == [-1, 0, 1, -1]
    assert iou[1] == pytest.approx(1.0) and iou[0] == 0

    impostors = np.linspace(0.5, 1.5, 100)           # 1% -> only the nearest one is named
    person = np.array(["a", "a", "b"], object)
    d = np.array([0.4, 0.55, 0.45])
    s = open_set_scores(person, d, np.array(["a", "b", "b"], object), impostors, fixed=0.5)
    assert s["at_0.01"]["impostors_named"] == pytest.approx(0.01)
    assert s["at_0.01"]["named_correctly"] == pytest.approx(2 / 3)   # 0.4 and 0.45 <= ~0.5101
    assert s["at_0.05"]["impostors_named"] == pytest.approx(0.05)
    assert s["at_0.05"]["named_wrongly"] == pytest.approx(1 / 3)
    assert s["rank1"] == pytest.approx(2 / 3)
