"""``index build`` on a generated library of every media type, with real local Ray: HEIC,
AVIF, DNG (+ its JPEG), a video, an animated WebP, a sideways JPEG without EXIF, a photo with a
named XMP sidecar, and broken files (a ZIP named .mp4, a truncated HEIC)."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("pillow_heif")
pytest.importorskip("rawpy")
pytest.importorskip("av")
pytest.importorskip("tifffile")

from facenet_platform.core.media.rotation import rotate  # noqa: E402
from facenet_platform.core.media.writers import (animated_bytes, dng_bytes, encode_pillow,  # noqa: E402
                                                 video_bytes)
from facenet_platform.core.media.xmp import NamedFace, write_sidecar  # noqa: E402
from facenet_platform.index.build import BuildOptions, build_index  # noqa: E402
from facenet_platform.index.collection import read_failures, read_faces, read_files  # noqa: E402

SMALL = dict(read_batch_size=2, detect_batch_size=3, embed_batch_size=4, commit_every_files=3,
             progress=False)


@pytest.fixture(scope="module")
def library(tmp_path_factory, astronaut):
    from skimage import data

    d = tmp_path_factory.mktemp("library")
    p = np.ascontiguousarray(astronaut[:, 64:448])  # 512 x 384, one face at ~(115, 58, 205, 174)
    cat = np.zeros_like(p)
    cat[:300] = data.chelsea()[:, :384]
    files = {
        "a.jpg": encode_pillow(p, "JPEG"),
        "b.heic": encode_pillow(p, "HEIF"),
        "c.avif": encode_pillow(p, "AVIF"),
        "IMG_1.dng": dng_bytes(p),
        "IMG_1.jpg": encode_pillow(p, "JPEG", quality=80),
        "side.jpg": encode_pillow(rotate(p, 270), "JPEG"),
        "clip.mp4": video_bytes([p] * 25 + [cat] * 25, fps=10),
        "anim.webp": animated_bytes([p, p, cat, cat], duration_ms=1000),
        "bomb.mp4": b"PK\x03\x04" + b"\0" * 200,
        "cut.heic": encode_pillow(p, "HEIF")[:3000],
    }
    for name, payload in files.items():
        (d / name).write_bytes(payload)
    write_sidecar(str(d / "a.jpg"), [NamedFace("Eileen Collins", (115, 58, 205, 174))],
                  width=384, height=512)
    return d


@pytest.fixture(scope="module")
def built(ray_cluster, library, tmp_path_factory):
    index = tmp_path_factory.mktemp("index")
    summary = build_index([str(library)], index, options=BuildOptions(**SMALL))
    return index, summary


def _by_file(index) -> dict[str, list[dict]]:
    faces = read_faces(index).to_pylist()
    out: dict[str, list[dict]] = {}
    for row in faces:
        out.setdefault(os.path.basename(row["path"]), []).append(row)
    return out


def test_every_type_is_indexed_and_broken_files_are_failures(built, library) -> None:
    index, summary = built
    assert summary.files_seen == 10  # the .xmp sidecar is not a photo
    assert summary.failures == 2 and summary.failures_by_stage == {"decode": 2}
    failures = {os.path.basename(r["path"]): r["reason"] for r in read_failures(index).to_pylist()}
    assert set(failures) == {"bomb.mp4", "cut.heic"}
    assert "ZIP" in failures["bomb.mp4"]
    faces = _by_file(index)
    assert set(faces) == {"a.jpg", "b.heic", "c.avif", "IMG_1.dng", "IMG_1.jpg", "side.jpg",
                          "clip.mp4", "anim.webp"}
    decoders = {name: {r["decoder"] for r in rows} for name, rows in faces.items()}
    assert decoders == {"a.jpg": {"pillow"}, "b.heic": {"pillow-heif"}, "c.avif": {"pillow"},
                        "IMG_1.dng": {"rawpy-half"}, "IMG_1.jpg": {"pillow"},
                        "side.jpg": {"pillow"}, "clip.mp4": {"pyav"},
                        "anim.webp": {"pillow-frames"}}


def test_video_faces_are_keyed_by_content_hash_and_frame_time(built) -> None:
    index, _ = built
    clip = sorted(_by_file(index)["clip.mp4"], key=lambda r: r["face_index"])
    # frames at 0, 2 s (astronaut), 2.5 s (cut to the cat: scene change) and 4 s: faces in two
    assert [(r["face_index"], r["frame_time"], r["frame_index"]) for r in clip] == [
        (0, 0.0, 0), (1, 2.0, 20)]
    assert len({r["content_hash"] for r in clip}) == 1
    anim = _by_file(index)["anim.webp"]
    assert [(r["frame_time"], r["frame_index"]) for r in anim] == [(0.0, 0)]
    still = _by_file(index)["a.jpg"][0]
    assert still["frame_time"] is None and still["frame_index"] is None


def test_sideways_photo_xmp_name_and_raw_pair(built) -> None:
    index, _ = built
    faces = _by_file(index)
    assert [r["rotation"] for r in faces["side.jpg"]] == [90]
    assert [r["rotation"] for r in faces["a.jpg"]] == [0]
    assert [r["xmp_name"] for r in faces["a.jpg"]] == ["Eileen Collins"]
    assert [r["xmp_name"] for r in faces["b.heic"]] == [None]
    files = {os.path.basename(r["path"]): r for r in read_files(index).to_pylist()}
    assert files["IMG_1.dng"]["shot_id"] == files["IMG_1.jpg"]["shot_id"] is not None
    assert files["a.jpg"]["shot_id"] is None


def test_faces_of_each_type_equal_the_jpeg_original(built) -> None:
    index, _ = built
    faces = _by_file(index)
    ref = np.asarray(faces["a.jpg"][0]["embedding"])
    for name in ("b.heic", "c.avif", "IMG_1.jpg", "side.jpg", "clip.mp4", "anim.webp"):
        emb = np.asarray(faces[name][0]["embedding"])
        assert float(np.sum((emb - ref) ** 2)) < 0.15, name
    # the half-size demosaic holds a 4x smaller face: same person, looser tolerance
    emb = np.asarray(faces["IMG_1.dng"][0]["embedding"])
    assert float(np.sum((emb - ref) ** 2)) < 0.6


def test_named_faces_go_back_to_sidecars_and_come_back(built, tmp_path) -> None:
    import shutil

    from facenet_platform.core.images import decode_still
    from facenet_platform.core.media.xmp import read_regions, regions_to_display, write_sidecars

    index, _ = built
    rows = read_faces(index).to_pylist()
    side = next(r for r in rows if r["path"].endswith("side.jpg"))
    copy = tmp_path / "side.jpg"  # write next to a copy: the library is shared by the module
    shutil.copy(side["path"], copy)
    before = copy.read_bytes()
    side = {**side, "path": str(copy), "name": "Eileen"}
    video = next(r for r in rows if r["path"].endswith("clip.mp4"))
    assert write_sidecars([side, {**video, "name": "Eileen"}]) == [str(copy) + ".xmp"]
    assert copy.read_bytes() == before  # the photo is never rewritten
    found = read_regions(str(copy))
    stored = decode_still(before).image  # sideways as stored: the region is on the stored image
    (x1, y1, x2, y2), = regions_to_display(found.regions, 0)
    h, w = stored.shape[:2]
    assert (found.applied_width, found.applied_height) == (w, h)
    # the stored photo is the upright one turned 270 degrees: the face is on the left half
    assert found.regions[0].name == "Eileen" and x2 < 0.6 and 0.0 <= x1 < x2 and y1 < y2


def test_rebuild_processes_nothing(built, library) -> None:
    index, first = built
    again = build_index([str(library)], index, options=BuildOptions(**SMALL))
    assert again.files_new == 0 and again.faces == 0
    assert again.total_faces == first.total_faces
