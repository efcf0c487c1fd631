"""Sideways-photo retry, XMP face regions (read, match, write) and RAW+JPEG pairing."""

from __future__ import annotations

import numpy as np
import pytest

from facenet_platform.core.errors import XmpError
from facenet_platform.core.images import decode_still
from facenet_platform.core.media.pairing import ShotMeta, pair_shots, read_shot_meta
from facenet_platform.core.media.rotation import RotationRetry, box_to_unrotated, rotate
from facenet_platform.core.media.writers import encode_pillow
from facenet_platform.core.media.xmp import (FaceRegion, NamedFace, extract_xmp_packet,
                                             match_regions, orient_points, parse_regions,
                                             read_regions, regions_to_display, write_sidecar)


@pytest.fixture(scope="module")
def detector():
    from facenet_platform.core.detection import FaceDetector

    return FaceDetector(num_threads=1)


@pytest.fixture(scope="module")
def portrait(astronaut) -> np.ndarray:
    return np.ascontiguousarray(astronaut[:, 64:448])  # 512 x 384


# --------------------------------------------------------------------------------------------
# sideways photos


@pytest.mark.parametrize("stored_turn_cw,retry_below", [(180, None), (270, None), (90, 0.99)])
def test_rotation_retry_finds_the_face_of_a_sideways_jpeg_without_exif(
        stored_turn_cw, retry_below, detector, portrait) -> None:
    sideways = rotate(portrait, stored_turn_cw)
    still = decode_still(encode_pillow(sideways, "JPEG"))  # no EXIF at all
    assert still.orientation == 0
    first = detector.detect([still.image])
    if retry_below is None:
        assert len(first[0]) == 0  # MTCNN misses the face upside down / turned left
    else:  # turned right, MTCNN finds it at a lower score (and would crop it sideways)
        assert len(first[0]) == 1 and first[0].scores[0] < retry_below
    result = RotationRetry(detector, retry_below=retry_below)([still.image], first,
                                                              [still.orientation])
    assert result.retried == 1 and result.detector_calls == 3
    assert result.rotations == [(360 - stored_turn_cw) % 360]
    assert len(result.detections[0]) == 1
    assert result.images[0].shape == portrait.shape
    upright = detector.detect([portrait])[0]
    assert np.abs(result.detections[0].boxes[0] - upright.boxes[0]).max() < 12
    # the box maps back onto the stored (sideways) pixels
    h, w = still.image.shape[:2]
    back = box_to_unrotated(result.detections[0].boxes[0].reshape(2, 2), result.rotations[0], w, h)
    (x1, y1), (x2, y2) = back.min(axis=0), back.max(axis=0)
    crop_centre = still.image[int((y1 + y2) / 2), int((x1 + x2) / 2)]
    assert crop_centre.shape == (3,)


def test_rotation_retry_skips_oriented_and_faced_images(detector, portrait) -> None:
    sideways = rotate(portrait, 90)
    dets = detector.detect([sideways, portrait])
    result = RotationRetry(detector)([sideways, portrait], dets, [6, 0])
    assert result.retried == 0 and result.detector_calls == 0 and result.rotations == [0, 0]


def test_rotation_retry_on_a_faceless_image_keeps_it(detector) -> None:
    from skimage import data

    cat = np.ascontiguousarray(data.chelsea())
    result = RotationRetry(detector)([cat], detector.detect([cat]), [0])
    assert result.retried == 1 and result.rotations == [0] and len(result.detections[0]) == 0
    assert result.images[0] is cat


# --------------------------------------------------------------------------------------------
# XMP


ATTRS = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF
 xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about=""
 xmlns:mwg-rs="http://www.metadataworkinggroup.com/schemas/regions/"
 xmlns:stArea="http://ns.adobe.com/xmp/sType/Area#"
 xmlns:stDim="http://ns.adobe.com/xap/1.0/sType/Dimensions#">
 <mwg-rs:Regions rdf:parseType="Resource">
  <mwg-rs:AppliedToDimensions stDim:w="384" stDim:h="512" stDim:unit="pixel"/>
  <mwg-rs:RegionList><rdf:Bag>
   <rdf:li><rdf:Description mwg-rs:Name="Eileen Collins" mwg-rs:Type="Face">
     <mwg-rs:Area stArea:x="0.40" stArea:y="0.22" stArea:w="0.30" stArea:h="0.22"
      stArea:unit="normalized"/></rdf:Description></rdf:li>
   <rdf:li><rdf:Description mwg-rs:Name="Nobody" mwg-rs:Type="Face">
     <mwg-rs:Area stArea:x="0.9" stArea:y="0.9" stArea:w="0.1" stArea:h="0.1"
      stArea:unit="normalized"/></rdf:Description></rdf:li>
  </rdf:Bag></mwg-rs:RegionList></mwg-rs:Regions></rdf:Description></rdf:RDF></x:xmpmeta>"""

ELEMENTS = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF
 xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about=""
 xmlns:mwg-rs="http://www.metadataworkinggroup.com/schemas/regions/"
 xmlns:stArea="http://ns.adobe.com/xmp/sType/Area#">
 <mwg-rs:Regions><rdf:Description><mwg-rs:RegionList><rdf:Bag><rdf:li rdf:parseType="Resource">
  <mwg-rs:Name>Jane</mwg-rs:Name><mwg-rs:Type>Face</mwg-rs:Type>
  <mwg-rs:Area rdf:parseType="Resource"><stArea:x>0.5</stArea:x><stArea:y>0.5</stArea:y>
   <stArea:w>0.2</stArea:w><stArea:h>0.1</stArea:h><stArea:unit>normalized</stArea:unit>
  </mwg-rs:Area></rdf:li></rdf:Bag></mwg-rs:RegionList></rdf:Description></mwg-rs:Regions>
 </rdf:Description></rdf:RDF></x:xmpmeta>"""


def test_parse_both_rdf_spellings() -> None:
    a = parse_regions(ATTRS)
    assert [r.name for r in a.regions] == ["Eileen Collins", "Nobody"]
    assert (a.applied_width, a.applied_height) == (384, 512)
    assert a.regions[0].box == pytest.approx((0.25, 0.11, 0.55, 0.33))
    b = parse_regions(ELEMENTS)
    assert b.regions == [FaceRegion("Jane", 0.5, 0.5, 0.2, 0.1, "Face")]


@pytest.mark.parametrize("bad", [
    b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2
    "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><x:xmpmeta xmlns:x="adobe:ns:meta/">
    &lol2;</x:xmpmeta>""",
    b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
    <x:xmpmeta xmlns:x="adobe:ns:meta/">&xxe;</x:xmpmeta>""",
    b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><unclosed>",
])
def test_hostile_or_malformed_xmp_is_refused(bad) -> None:
    with pytest.raises(XmpError):
        parse_regions(bad, source="evil.xmp")


def test_packet_in_a_jpeg_and_sidecar_precedence(tmp_path, portrait) -> None:
    photo = tmp_path / "p.jpg"
    data = encode_pillow(portrait, "JPEG", xmp=ATTRS)
    photo.write_bytes(data)
    assert extract_xmp_packet(data).startswith(b"<x:xmpmeta")
    found = read_regions(str(photo), data)
    assert found is not None and found.regions[0].name == "Eileen Collins"
    (tmp_path / "p.xmp").write_bytes(ELEMENTS)  # Lightroom-style sidecar wins
    assert read_regions(str(photo), data).regions[0].name == "Jane"
    assert read_regions(str(tmp_path / "other.jpg"), b"") is None


def test_orientation_maps_regions_like_exif_transpose() -> None:
    from PIL import Image, ImageOps

    # a marker pixel at stored (x=30, y=10) of a 100 x 50 image
    for orientation in range(1, 9):
        stored = np.zeros((50, 100), np.uint8)
        stored[10, 30] = 255
        image = Image.fromarray(stored)
        exif = image.getexif()
        exif[0x0112] = orientation
        image.info["exif"] = exif.tobytes()
        shown = np.asarray(ImageOps.exif_transpose(image))
        y, x = np.argwhere(shown == 255)[0]
        px, py = orient_points(np.array([(30.5 / 100), (10.5 / 50)]), orientation)
        assert (int(px * shown.shape[1]), int(py * shown.shape[0])) == (x, y), orientation


@pytest.mark.parametrize("orientation,stored_turn", [(1, 0), (6, 1), (3, 2), (8, 3)])
def test_region_matches_detected_face_with_orientation(orientation, stored_turn, detector,
                                                       portrait) -> None:
    faces = detector.detect([portrait])[0]
    h, w = portrait.shape[:2]
    x1, y1, x2, y2 = faces.boxes[0]
    region_display = FaceRegion("Eileen", (x1 + x2) / 2 / w, (y1 + y2) / 2 / h,
                                (x2 - x1) / w * 1.2, (y2 - y1) / h * 1.2)
    # the region as stored in a file whose pixels are turned and tagged with `orientation`
    from facenet_platform.core.media.xmp import unorient_box

    sx1, sy1, sx2, sy2 = unorient_box(region_display.box, orientation)
    stored = FaceRegion("Eileen", (sx1 + sx2) / 2, (sy1 + sy2) / 2, sx2 - sx1, sy2 - sy1)
    shown = regions_to_display([stored, FaceRegion("Ghost", 0.05, 0.95, 0.05, 0.05)],
                               orientation)
    assert shown[0] == pytest.approx(region_display.box, abs=1e-6)
    assert match_regions(shown, faces.boxes, w, h) == [(0, 0)]


def test_write_sidecar_round_trip_and_keeps_other_metadata(tmp_path, detector, portrait) -> None:
    photo = tmp_path / "IMG_1.jpg"
    stored = rotate(portrait, 270)  # stored turned, displayed with orientation 6
    photo.write_bytes(encode_pillow(stored, "JPEG", orientation=6))
    before = photo.read_bytes()
    still = decode_still(before)
    box = tuple(float(v) for v in detector.detect([still.image])[0].boxes[0])
    h, w = still.image.shape[:2]
    path = write_sidecar(str(photo), [NamedFace("Eileen", box)], width=w, height=h,
                         orientation=still.orientation)
    assert path == str(photo) + ".xmp" and photo.read_bytes() == before
    found = read_regions(str(photo))
    assert (found.applied_width, found.applied_height) == (stored.shape[1], stored.shape[0])
    shown = regions_to_display(found.regions, still.orientation)
    assert np.array(shown[0]) * [w, h, w, h] == pytest.approx(box, abs=0.5)
    # a sidecar holding other metadata keeps it; its regions are replaced
    text = open(path, encoding="utf-8").read().replace(
        "<rdf:Description ", '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        'xmp:Rating="5" ', 1)
    open(path, "w", encoding="utf-8").write(text)
    write_sidecar(str(photo), [NamedFace("Collins", box)], width=w, height=h,
                  orientation=still.orientation)
    again = open(path, encoding="utf-8").read()
    assert 'Rating="5"' in again and "Collins" in again and "Eileen" not in again
    assert [r.name for r in read_regions(str(photo)).regions] == ["Collins"]


def test_write_sidecar_refuses_to_merge_into_a_hostile_sidecar(tmp_path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"not read")
    (tmp_path / "a.jpg.xmp").write_bytes(b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>')
    with pytest.raises(XmpError):
        write_sidecar(str(photo), [NamedFace("A", (0, 0, 10, 10))], width=100, height=100)
    assert (tmp_path / "a.jpg.xmp").read_bytes().startswith(b"<!DOCTYPE")


# --------------------------------------------------------------------------------------------
# RAW + JPEG pairing


def test_pairing_by_folder_stem_and_capture_metadata(tmp_path, portrait) -> None:
    pytest.importorskip("tifffile")
    pytest.importorskip("rawpy")
    from facenet_platform.core.media.writers import dng_bytes

    d = tmp_path
    (d / "IMG_1.DNG").write_bytes(dng_bytes(portrait[:64, :64], taken_at="2024:05:01 12:00:00"))
    jpeg = encode_pillow(portrait, "JPEG")
    (d / "img_1.jpg").write_bytes(jpeg)
    (d / "IMG_2.dng").write_bytes(dng_bytes(portrait[:64, :64], model="Other",
                                            taken_at="2024:05:01 12:00:00"))
    (d / "IMG_2.JPG").write_bytes(_with_exif(jpeg, "TestCam One", "2024:05:01 12:00:01"))
    (d / "IMG_3.dng").write_bytes(dng_bytes(portrait[:64, :64], taken_at="2024:05:01 12:00:00"))
    (d / "IMG_3.jpg").write_bytes(_with_exif(jpeg, "TestCam One", "2024:05:01 13:00:00"))
    (d / "IMG_4.jpg").write_bytes(jpeg)
    (d / "sub").mkdir()
    (d / "sub" / "IMG_4.dng").write_bytes(dng_bytes(portrait[:64, :64]))
    paths = sorted(str(p) for p in d.rglob("*") if p.is_file())
    meta = {p: read_shot_meta(open(p, "rb").read()) for p in paths}
    assert meta[str(d / "IMG_1.DNG")] == ShotMeta("2024:05:01 12:00:00", "TestCam One")
    shots = pair_shots(paths, meta)
    assert shots == {str(d / "IMG_1.DNG"): str(d / "IMG_1"), str(d / "img_1.jpg"): str(d / "IMG_1")}
    # without metadata the stem decides alone
    assert len(pair_shots(paths)) == 6


def _with_exif(jpeg: bytes, model: str, taken_at: str) -> bytes:
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(jpeg))
    exif = Image.Exif()
    exif[0x0110] = model
    exif.get_ifd(0x8769)[0x9003] = taken_at
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()
