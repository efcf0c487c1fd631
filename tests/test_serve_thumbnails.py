"""API keys, the photo catalog and thumbnails of the Serve application, without a Ray cluster:
the key ring's roles and constant-time comparison inputs, size buckets and face squares, the
LRU cache, and the Thumbnailer deployment class run in-process on a committed collection."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facenet_platform.core.errors import ConfigError
from facenet_platform.serve import thumbnails as th
from facenet_platform.serve.auth import (
    ADMIN,
    READ,
    AuthDenied,
    AuthOptions,
    KeyRing,
    key_digest,
)
from facenet_platform.serve.catalog import PhotoCatalog, PhotoIdError, check_photo_id

from serve_collection import jpeg, write_collection

READ_KEY = "read-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


# -- keys ----------------------------------------------------------------------------------------


def test_keyring_roles_from_env_and_digests():
    ring = KeyRing.from_config(AuthOptions(), {"FACENET_READ_KEY": f"{READ_KEY}, other-read-key-xxxxxxxx",
                                               "FACENET_ADMIN_KEY": ADMIN_KEY})
    assert ring.counts() == {READ: 2, ADMIN: 1}
    assert ring.authorize(READ_KEY, READ) == READ
    assert ring.authorize("other-read-key-xxxxxxxx", READ) == READ
    assert ring.authorize(ADMIN_KEY, READ) == ADMIN  # admin keys may read
    assert ring.authorize(ADMIN_KEY, ADMIN) == ADMIN
    with pytest.raises(AuthDenied) as denied:
        ring.authorize(READ_KEY, ADMIN)
    assert (denied.value.status, denied.value.code) == (403, "forbidden")
    for key in (None, "", "wrong-key-but-long-enough", READ_KEY + " ", READ_KEY[:-1]):
        with pytest.raises(AuthDenied) as denied:
            ring.authorize(key, READ)
        assert (denied.value.status, denied.value.code) == (401, "unauthorized")
    # digests from a config file; the legacy single key is an admin key
    ring = KeyRing.from_config(AuthOptions(read_key_sha256=[key_digest(READ_KEY).upper()]),
                               {"FACENET_API_KEY": ADMIN_KEY})
    assert ring.role_of(READ_KEY) == READ and ring.role_of(ADMIN_KEY) == ADMIN
    # a key listed as read and as admin is admin
    both = KeyRing.from_config(AuthOptions(read_key_sha256=[key_digest(ADMIN_KEY)]),
                               {"FACENET_ADMIN_KEY": ADMIN_KEY})
    assert both.role_of(ADMIN_KEY) == ADMIN and len(both) == 1


def test_no_key_refuses_to_start_unless_insecure():
    with pytest.raises(ConfigError, match="no API key configured"):
        KeyRing.from_config(AuthOptions(), {}).check_startable()
    open_ring = KeyRing.from_config(AuthOptions(insecure_no_auth=True), {})
    open_ring.check_startable()
    assert open_ring.authorize(None, ADMIN) == ADMIN
    with pytest.raises(ConfigError, match="at least 16"):
        KeyRing.from_config(AuthOptions(), {"FACENET_READ_KEY": "short"})
    with pytest.raises(ValueError, match="digests"):
        AuthOptions(admin_key_sha256=[ADMIN_KEY])  # the key itself, not its digest


def test_cli_serve_key_prints_a_key_and_its_digest():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "facenet_platform", "serve-key"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(":", 1) for line in proc.stdout.splitlines())
    key, digest = lines["key"].strip(), lines["sha256"].strip()
    assert len(key) >= 32 and key_digest(key) == digest


# -- sizes and crops -------------------------------------------------------------------------------


def test_sizes_snap_to_buckets():
    assert th.snap_size(None, th.FACE_SIZES, 128) == 128
    assert [th.snap_size(s, th.FACE_SIZES, 128) for s in (16, 64, 65, 200, 256, 1024)] == [
        64, 64, 128, 256, 256, 256]
    assert th.snap_size(5000, th.PHOTO_SIZES, 512) == th.PHOTO_SIZES[-1]


@pytest.mark.parametrize("box, size, expected", [
    ((40, 40, 60, 60), (200, 100), (34, 34, 66, 66)),        # inside: box + 30% each side
    ((0, 0, 20, 20), (200, 100), (0, 0, 32, 32)),            # at a corner: shifted in
    ((190, 90, 200, 100), (200, 100), (184, 84, 200, 100)),  # other corner
    ((0, 0, 150, 90), (200, 100), (25, 0, 125, 100)),        # larger than the photo: shrunk
])
def test_face_square_stays_inside_the_photo(box, size, expected):
    left, top, right, bottom = th.face_square(box, *size)
    assert (left, top, right, bottom) == expected
    assert right - left == bottom - top
    assert 0 <= left and 0 <= top and right <= size[0] and bottom <= size[1]


def test_face_and_photo_thumbnails(astronaut):
    face = Image.open(io.BytesIO(th.face_thumbnail(astronaut, (180, 60, 290, 200), 128)))
    assert face.format == "JPEG" and face.size == (128, 128)
    photo = Image.open(io.BytesIO(th.photo_thumbnail(astronaut, 256)))
    assert photo.size == (256, 256)
    wide = np.zeros((100, 400, 3), np.uint8)
    assert Image.open(io.BytesIO(th.photo_thumbnail(wide, 1024))).size == (400, 100)  # not enlarged
    assert Image.open(io.BytesIO(th.photo_thumbnail(wide, 256))).size == (256, 64)


def test_cache_drops_least_recently_used_first():
    cache = th.ThumbnailCache(max_bytes=250)
    for i in range(3):
        cache.put(("face", i), f'"e{i}"', bytes(100))
    assert cache.get(("face", 0)) is None  # 300 > 250: the oldest went
    assert cache.get(("face", 1)) == ('"e1"', bytes(100))  # 1 is now the most recent
    cache.put(("face", 3), '"e3"', bytes(100))
    assert cache.get(("face", 2)) is None and cache.get(("face", 1)) is not None
    cache.put(("face", 4), '"e4"', bytes(1000))  # larger than the cache: not kept
    assert cache.get(("face", 4)) is None
    assert cache.stats()["bytes"] <= 250


# -- catalog and the Thumbnailer deployment class ------------------------------------------------


@pytest.fixture()
def collection(tmp_path, astronaut):
    photos = tmp_path / "photos"
    photos.mkdir()
    a = photos / "astronaut.jpg"
    a.write_bytes(jpeg(astronaut))
    b = photos / "two.png"
    Image.fromarray(np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)).save(b)
    index = tmp_path / "index"
    ids = write_collection(index, [(a, [(180, 60, 290, 200)]),
                                   (b, [(180, 60, 290, 200), (734, 60, 844, 200)])])
    return index, ids, photos


def test_catalog_maps_ids_never_paths(collection):
    index, ids, photos = collection
    catalog = PhotoCatalog.load(index)
    assert len(catalog) == 3 and catalog.n_photos == 2
    fid = next(f for f, p in ids.items() if p.endswith("two.png") and f.endswith("-1"))
    face = catalog.face(fid)
    assert face.box == (734.0, 60.0, 844.0, 200.0) and face.width == 1024
    photo = catalog.photo(face.photo_id)
    assert photo.faces == 2 and (photo.width, photo.height) == (1024, 512)
    assert [f.face_id for f in catalog.faces_of_photo(face.photo_id)] == sorted(
        f for f, p in ids.items() if p.endswith("two.png"))
    assert catalog.face("0000000000000000-0") is None
    assert catalog.photo("0000000000000000") is None
    empty = PhotoCatalog.load(index.parent / "no-index")
    assert len(empty) == 0
    # an index without a collection is not "changed" at every poll (no reload storm)
    from facenet_platform.index.layout import IndexLayout
    from facenet_platform.serve.catalog import collection_version

    assert empty.version == collection_version(IndexLayout.open(index.parent / "no-index"))
    assert catalog.version == collection_version(IndexLayout.open(index))
    assert check_photo_id(face.photo_id.upper()) == face.photo_id
    for bad in ("../etc/passwd", "a/b", "3f9a0c12d4e5b6a", "3f9a0c12d4e5b6a7-0", "\x00" * 16):
        with pytest.raises(PhotoIdError):
            check_photo_id(bad)


def test_thumbnailer_serves_caches_and_revalidates(collection):
    from facenet_platform.serve.deployments import Failure, Thumbnail, ThumbnailerImpl

    index, ids, photos = collection
    thumbs = ThumbnailerImpl(str(index), cache_mb=1, check_interval_s=0)
    fid = next(iter(ids))
    first = thumbs.face(fid, 64)
    assert isinstance(first, Thumbnail) and first.data[:2] == b"\xff\xd8"
    assert Image.open(io.BytesIO(first.data)).size == (64, 64)
    assert thumbs.face(fid, 64).data == first.data and thumbs.encoded == 1  # from the cache
    assert thumbs.face(fid, 128).etag != first.etag  # another size, another ETag
    not_modified = thumbs.face(fid, 64, if_none_match=f'"x", {first.etag}')
    assert not_modified.data is None and not_modified.etag == first.etag
    photo = thumbs.photo(fid.split("-")[0], 256)
    assert Image.open(io.BytesIO(photo.data)).size == (256, 256)
    info = thumbs.photo_info(fid.split("-")[0])
    assert info["faces"][0]["face_id"] == fid and "path" not in str(info)
    missing = thumbs.face("0000000000000000-0", 64)
    assert isinstance(missing, Failure) and missing.status == 404
    # a source file gone since indexing: 410, and the message names no path
    for path in set(ids.values()):
        (photos / path.rsplit("/", 1)[1]).unlink()
    gone = thumbs.face(fid, 256)
    assert isinstance(gone, Failure) and gone.status == 410
    assert str(photos) not in gone.message and "photos" not in gone.message
    # a new build commits: the catalog is read again
    write_collection(index, [], seed=1)
    assert thumbs.stats()["reloads"] >= 1
