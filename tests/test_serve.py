"""End-to-end tests of the Serve application: the real deployments on a local Ray instance.

One application serves the whole module (started once, about a minute on a small machine): a
read and an admin API key, a small committed collection (the astronaut photo) for thumbnails,
2 searcher replicas (so that "visible to the next request on every replica" is tested),
max_batch_size 4, a 2 MiB body limit and a 1 Mpx pixel limit. The gallery is enrolled through
the gallery API (``Gallery.open/add/save``) with embeddings the service itself computes, after
the service started: the searchers pick the new version up on the next request.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from facenet_platform.core.weights import PRETRAINED
from facenet_platform.index.people_engine import PeopleOptions

from bad_inputs import DECODABLE, UNREADABLE, write_bad_inputs
from serve_collection import ServiceClient, jpeg as jpeg_bytes, running_serve
from conftest import lfw_available, lfw_dir

#: identify's threshold: the people's assign distance (people update decides with it too)
ASSIGN = PeopleOptions().assign_distance

ray = pytest.importorskip("ray")
requests = pytest.importorskip("requests")

pytestmark = pytest.mark.slow

READ_KEY = "test-read-key-5b2f9c0d"
ADMIN_KEY = "test-admin-key-77e1a4b2"
API_KEY = ADMIN_KEY  # what requests send unless a test says otherwise
MAX_BODY = 2 * 1024 * 1024
MAX_PIXELS = 1_000_000
ENROLLED = ["Colin_Powell", "Gloria_Macapagal_Arroyo", "Serena_Williams"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class Service(ServiceClient):
    index_dir: Path
    face_ids: list[str]          # of the committed collection
    photos_dir: Path
    default_key: ClassVar[str | None] = API_KEY


@pytest.fixture(scope="module")
def service(tmp_path_factory, weights_cache):
    from facenet_platform.serve.auth import ADMIN_KEY_ENV, READ_KEY_ENV

    from serve_collection import write_collection

    root = tmp_path_factory.mktemp("serve")
    index_dir = root / "index"
    astronaut_file = root / "photos" / "astronaut.jpg"
    astronaut_file.parent.mkdir()
    from skimage import data as skdata

    astronaut_file.write_bytes(jpeg_bytes(skdata.astronaut()))
    face_ids = write_collection(index_dir, [(astronaut_file, [(180, 60, 290, 200)])])
    with running_serve(index_dir, name="facenet-test",
                       env={READ_KEY_ENV: READ_KEY, ADMIN_KEY_ENV: ADMIN_KEY}, max_batch_size=4,
                       max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS,
                       searcher={"num_replicas": 2}) as url, requests.Session() as session:
        yield Service(url, session, index_dir=index_dir, face_ids=sorted(face_ids),
                      photos_dir=root / "photos")


def lfw_photo(name: str, number: int) -> Path:
    return lfw_dir() / "lfw-deepfunneled" / name / f"{name}_{number:04d}.jpg"


def central_embedding(service: Service, data: bytes) -> np.ndarray:
    """The embedding of a photo's main face, computed by the service's /v1/embed."""
    from facenet_platform.core.alignment import select_central_face
    from facenet_platform.core.detection import Detections

    response = service.post("/v1/embed", files={"file": ("photo.jpg", data)})
    assert response.status_code == 200, response.text
    body = response.json()
    faces = body["faces"]
    assert faces, "no face in a gallery photo"
    dets = Detections(np.array([f["box"] for f in faces], np.float32),
                      np.array([f["score"] for f in faces], np.float32),
                      np.array([f["landmarks"] for f in faces], np.float32))
    best = select_central_face(dets, (body["image"]["height"], body["image"]["width"]))
    return np.asarray(faces[best]["embedding"], np.float32)


@pytest.fixture(scope="module")
def lfw_gallery(service):
    """Three LFW people, two photos each, enrolled with the gallery API while the app runs."""
    if not lfw_available():
        pytest.skip(f"LFW not found at {lfw_dir()} (set LFW_DIR to run the LFW-backed tests)")
    from facenet_platform.index.gallery import Gallery

    gallery = Gallery.open(service.index_dir)
    for name in ENROLLED:
        paths = [lfw_photo(name, i) for i in (1, 2)]
        gallery.add(name, np.stack([central_embedding(service, p.read_bytes()) for p in paths]),
                    [str(p) for p in paths])
    version = gallery.save()
    return version


def identify(service: Service, data: bytes, **params) -> dict:
    response = service.post("/v1/identify", files={"file": ("photo.jpg", data)}, params=params)
    assert response.status_code == 200, response.text
    return response.json()


# -- health, key, docs -------------------------------------------------------------------------


def test_healthz_needs_no_key_and_reports_ready(service):
    response = service.get("/healthz", key=None)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok" and body["model_id"] == "facenet-20180408-102900"


def test_api_key_is_enforced(service):
    fid = service.face_ids[0]
    for path in ("/v1/identities", f"/v1/faces/{fid}/thumbnail", f"/v1/photos/{fid[:16]}",
                 "/v1/stats"):
        for key in (None, "wrong-key", READ_KEY + "x"):
            response = service.get(path, key=key)
            assert response.status_code == 401, (path, key)
            assert set(response.json()) == {"error", "code"}
            assert response.json()["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        assert service.get(path, key=READ_KEY).status_code == 200, path
    response = service.post("/v1/identify", key=None, data=b"x")
    assert response.status_code == 401  # before the body is looked at
    bearer = service.get("/v1/identities", key=None,
                         headers={"Authorization": f"Bearer {READ_KEY}"})
    assert bearer.status_code == 200
    assert service.get("/", key=None).status_code == 200  # the page itself holds no data


def test_read_key_cannot_change_anything(service, astronaut):
    photo = jpeg_bytes(astronaut)
    assert service.post("/v1/identify", key=READ_KEY,
                        files={"file": ("a.jpg", photo)}).status_code == 200
    for method, path, kwargs in [
            ("POST", "/v1/identities/Someone/faces", {"files": {"file": ("a.jpg", photo)}}),
            ("DELETE", "/v1/identities/Someone", {})]:
        response = service.request(method, path, key=READ_KEY, **kwargs)
        assert response.status_code == 403, (path, response.text)
        assert response.json() == {"error": "this needs an admin key; the key sent is a read key",
                                   "code": "forbidden"}
    assert "Someone" not in str(service.get("/v1/identities").json())


def test_openapi_lists_every_endpoint(service):
    spec = service.get("/openapi.json", key=None).json()
    assert {"/v1/identify", "/v1/verify", "/v1/embed", "/v1/identities",
            "/v1/identities/{name}", "/v1/identities/{name}/faces", "/v1/stats",
            "/v1/faces/{face_id}/thumbnail", "/v1/photos/{photo_id}",
            "/v1/photos/{photo_id}/thumbnail", "/healthz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/identify"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "application/octet-stream" in body
    # both ways of sending a key are declared, so that /docs offers "Authorize"
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}
    assert spec["paths"]["/v1/faces/{face_id}/thumbnail"]["get"]["security"]


def test_docs_work_offline(service):
    import re

    response = service.get("/docs", key=None)
    assert response.status_code == 200
    html = response.text
    # every asset the page loads comes from this service
    urls = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', html) + re.findall(
        r"url:\s*'([^']+)'", html)
    assert urls and not [u for u in urls if "//" in u], urls
    assert "cdn" not in html.lower() and "https://" not in html and "http://" not in html
    for asset in re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', html):
        fetched = service.get(asset if asset.startswith("/") else "/" + asset, key=None)
        assert fetched.status_code == 200 and len(fetched.content) > 1000, asset
    redoc = service.get("/redoc", key=None)
    assert redoc.status_code == 200 and "fonts.googleapis" not in redoc.text


# -- thumbnails ------------------------------------------------------------------------------------


def test_thumbnails_are_cached_jpegs_without_paths(service):
    from PIL import Image

    fid = service.face_ids[0]
    response = service.get(f"/v1/faces/{fid}/thumbnail", key=READ_KEY, params={"size": 100})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).size == (128, 128)  # snapped up to 128
    etag = response.headers["etag"]
    assert "private" in response.headers["cache-control"]
    again = service.get(f"/v1/faces/{fid}/thumbnail", key=READ_KEY, params={"size": 100},
                        headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.content
    photo = service.get(f"/v1/photos/{fid[:16]}/thumbnail", key=READ_KEY, params={"size": 256})
    assert photo.status_code == 200
    assert Image.open(io.BytesIO(photo.content)).size == (256, 256)
    info = service.get(f"/v1/photos/{fid[:16]}", key=READ_KEY).json()
    assert info == {"photo_id": fid[:16], "width": 512, "height": 512,
                    "faces": [{"face_id": fid, "box": [180.0, 60.0, 290.0, 200.0]}]}
    stats = service.get("/v1/stats").json()["thumbnailer"]
    assert stats["cache"]["items"] >= 2 and stats["not_modified"] >= 1


def test_thumbnail_errors(service):
    fid = service.face_ids[0]
    cases = [
        ("/v1/faces/0000000000000000-0/thumbnail", 404, "unknown_face"),
        ("/v1/photos/0000000000000000/thumbnail", 404, "unknown_photo"),
        ("/v1/photos/0000000000000000", 404, "unknown_photo"),
        ("/v1/faces/not-a-face/thumbnail", 400, "invalid_id"),
        (f"/v1/faces/{fid}..%5C..%5Cx/thumbnail", 400, "invalid_id"),
        ("/v1/faces/..%2F..%2Fetc%2Fpasswd/thumbnail", 404, "not_found"),
        (f"/v1/photos/{fid[:15]}%00/thumbnail", 400, "invalid_id"),
        ("/v1/photos/..%2Fmanifest.json", 404, "not_found"),
        ("/v1/photos/%2E%2E/thumbnail", 400, "invalid_id"),
        (f"/v1/faces/{fid}/thumbnail?size=5000", 400, "invalid_parameter"),
        (f"/v1/faces/{fid}/thumbnail?size=abc", 400, "invalid_parameter"),
        (f"/v1/photos/{fid[:16]}/thumbnail?size=0", 400, "invalid_parameter"),
    ]
    for path, status, code in cases:
        response = service.get(path, key=READ_KEY)
        assert (response.status_code, response.json().get("code")) == (status, code), (
            path, response.text)
        assert str(service.photos_dir) not in response.text and str(
            service.index_dir) not in response.text


# -- identify, verify, embed ---------------------------------------------------------------------


def test_identify_held_out_photo_and_stranger(service, lfw_gallery):
    held_out = identify(service, lfw_photo("Serena_Williams", 5).read_bytes(), top_k=2)
    assert held_out["gallery_version"] >= lfw_gallery  # the searchers reloaded
    face = held_out["faces"][0]
    assert list(face) == ["box", "score", "landmarks", "decision", "matches", "person",
                          "quality", "reason"]
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and 0.9 < face["score"] <= 1
    assert face["decision"] == "Serena_Williams"
    assert len(face["matches"]) == 2
    # identify decides with the identification threshold (verify keeps the 1:1 one)
    assert face["matches"][0]["distance"] <= held_out["threshold"] == ASSIGN
    assert face["reason"] == "match" and face["quality"] > 0.5
    assert face["matches"][0]["distance"] <= face["matches"][1]["distance"]

    stranger = identify(service, lfw_photo("Aaron_Eckhart", 1).read_bytes())
    assert stranger["faces"][0]["decision"] == "unknown"
    assert len(stranger["faces"][0]["matches"]) == 3  # top_k 5, but only 3 people
    # The threshold parameter moves the decision: 4 accepts anyone's nearest identity.
    lenient = identify(service, lfw_photo("Aaron_Eckhart", 1).read_bytes(), threshold=4)
    assert lenient["faces"][0]["decision"] in ENROLLED and lenient["threshold"] == 4


def test_identify_raw_body_and_max_faces(service, lfw_gallery):
    data = lfw_photo("Colin_Powell", 3).read_bytes()
    response = service.post("/v1/identify", data=data,
                            headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    assert response.json()["faces"][0]["decision"] == "Colin_Powell"
    # Two photos side by side: two faces; max_faces keeps the best-scored one.
    from PIL import Image

    pair = np.concatenate([np.asarray(Image.open(lfw_photo("Colin_Powell", 3))),
                           np.asarray(Image.open(lfw_photo("Serena_Williams", 5)))], axis=1)
    both = identify(service, jpeg_bytes(pair))
    assert sorted(f["decision"] for f in both["faces"]) == ["Colin_Powell", "Serena_Williams"]
    assert len(identify(service, jpeg_bytes(pair), max_faces=1)["faces"]) == 1


def test_verify(service, lfw_gallery):
    def verify(a: Path, b: Path, **params):
        response = service.post("/v1/verify", params=params, files={
            "file1": (a.name, a.read_bytes()), "file2": (b.name, b.read_bytes())})
        assert response.status_code == 200, response.text
        return response.json()

    same = verify(lfw_photo("Serena_Williams", 1), lfw_photo("Serena_Williams", 5))
    assert same["same_person"] is True and same["distance"] <= same["threshold"] == PRETRAINED.threshold
    assert len(same["faces"]) == 2 and len(same["faces"][0]["landmarks"]) == 5
    different = verify(lfw_photo("Serena_Williams", 1), lfw_photo("Aaron_Eckhart", 1))
    assert different["same_person"] is False and different["distance"] > PRETRAINED.threshold
    strict = verify(lfw_photo("Serena_Williams", 1), lfw_photo("Serena_Williams", 5), threshold=0)
    assert strict["same_person"] is False and strict["threshold"] == 0


def test_embed_every_face(service, astronaut):
    response = service.post("/v1/embed", files={"file": ("a.jpg", jpeg_bytes(astronaut))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == "facenet-20180408-102900" and body["embedding_size"] == 512
    assert len(body["faces"]) == 1
    embedding = np.asarray(body["faces"][0]["embedding"])
    assert embedding.shape == (512,) and abs(np.linalg.norm(embedding) - 1) < 1e-4


def test_photo_without_a_face_is_an_empty_list(service):
    blank = np.full((200, 300, 3), (120, 160, 200), np.uint8)
    body = identify(service, jpeg_bytes(blank))
    assert body["faces"] == [] and body["image"] == {"width": 300, "height": 200}
    assert body["threshold"] == ASSIGN  # what a face would have met
    response = service.post("/v1/embed", files={"file": ("b.jpg", jpeg_bytes(blank))})
    assert response.status_code == 200 and response.json()["faces"] == []
    response = service.post("/v1/verify", files={"file1": ("b.jpg", jpeg_bytes(blank)),
                                                 "file2": ("b.jpg", jpeg_bytes(blank))})
    assert response.status_code == 422 and response.json()["code"] == "no_face"


# -- enrollment --------------------------------------------------------------------------------


def test_enroll_identify_delete(service, lfw_gallery):
    name = "Aaron_Eckhart"
    photo = lfw_photo(name, 1).read_bytes()
    response = service.post(f"/v1/identities/{name}/faces",
                            files=[("file", ("a.jpg", photo))])
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["name"], body["added"], body["faces"]) == (name, 1, 1)
    version = body["gallery_version"]
    # Visible to the very next requests, whichever of the 2 searcher replicas answers.
    for _ in range(4):
        result = identify(service, photo)
        assert result["faces"][0]["decision"] == name and result["gallery_version"] == version
    # The same photo again adds nothing.
    again = service.post(f"/v1/identities/{name}/faces", files={"file": ("a.jpg", photo)})
    assert again.status_code == 200 and again.json()["already_enrolled"] == 1
    people = service.get("/v1/identities").json()
    assert {"name": name, "faces": 1} in people["identities"]

    response = service.request("DELETE", f"/v1/identities/{name}")
    assert response.status_code == 200 and response.json()["removed"] == 1
    assert identify(service, photo)["faces"][0]["decision"] == "unknown"
    response = service.request("DELETE", f"/v1/identities/{name}")
    assert response.status_code == 404 and response.json()["code"] == "unknown_identity"


def test_enroll_several_photos_skips_faceless_ones(service, astronaut):
    blank = np.full((120, 120, 3), 200, np.uint8)
    response = service.post("/v1/identities/Eileen_Collins/faces", files=[
        ("file", ("a1.jpg", jpeg_bytes(astronaut))),
        ("file", ("a2.jpg", jpeg_bytes(astronaut[:400, 60:460]))),
        ("file", ("blank.jpg", jpeg_bytes(blank)))])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["added"] == 2 and body["skipped"] == [
        {"source": "upload 'blank.jpg'", "reason": "no face found"}]
    only_blank = service.post("/v1/identities/Eileen_Collins/faces",
                              files={"file": ("blank.jpg", jpeg_bytes(blank))})
    assert only_blank.status_code == 422
    assert service.request("DELETE", "/v1/identities/Eileen_Collins").status_code == 200


def test_concurrent_enrollments_lose_nothing(service, astronaut):
    photo = jpeg_bytes(astronaut)
    names = [f"concurrent_{i}" for i in range(6)]

    def enroll(name):
        return service.post(f"/v1/identities/{name}/faces", files={"file": ("a.jpg", photo)})

    with ThreadPoolExecutor(len(names)) as pool:
        responses = list(pool.map(enroll, names))
    assert [r.status_code for r in responses] == [201] * len(names), [r.text for r in responses]
    versions = sorted(r.json()["gallery_version"] for r in responses)
    assert versions == list(range(versions[0], versions[0] + len(names)))  # one save each
    people = {p["name"]: p["faces"] for p in service.get("/v1/identities").json()["identities"]}
    assert all(people.get(n) == 1 for n in names)
    for name in names:
        assert service.request("DELETE", f"/v1/identities/{name}").status_code == 200


# -- bad input -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    return write_bad_inputs(tmp_path_factory.mktemp("bad-inputs"))


@pytest.mark.parametrize("key", [*UNREADABLE, *DECODABLE, "huge_header"])
def test_bad_and_odd_inputs_get_their_status(service, bad_inputs, key):
    data = bad_inputs[key].read_bytes()
    expected = 200 if key in DECODABLE else 413 if key == "huge_header" else 400
    for path in ("/v1/identify", "/v1/embed", "/v1/identities/odd_input/faces"):
        response = service.post(path, files={"file": (bad_inputs[key].name, data)})
        want = 201 if expected == 200 and path.endswith("/faces") else expected
        assert response.status_code == want, (path, response.text)
        body = response.json()
        if want >= 400:
            assert set(body) == {"error", "code"} and bad_inputs[key].name in body["error"]
        elif path == "/v1/identify":
            assert len(body["faces"]) == 1  # every decodable one is the astronaut's face
    # and as the raw body
    response = service.post("/v1/identify", data=data,
                            headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == expected
    if key in DECODABLE:
        service.request("DELETE", "/v1/identities/odd_input")


def test_request_errors(service, bad_inputs, astronaut):
    good = bad_inputs["png_alpha"].read_bytes()
    cases = [
        # (method, path, kwargs, status, code)
        ("POST", "/v1/identify", {"data": b"\0" * (MAX_BODY + 1),
                                  "headers": {"Content-Type": "application/octet-stream"}},
         413, "body_too_large"),
        ("POST", "/v1/identify", {"files": {"file": ("big.jpg", b"\xff" * (MAX_BODY + 10))}},
         413, "body_too_large"),
        ("POST", "/v1/identify", {"files": {"file": ("big.jpg", jpeg_bytes(
            np.zeros((1000, 1001, 3), np.uint8)))}}, 413, "image_too_large"),  # > 1 Mpx
        ("POST", "/v1/identify", {"data": b""}, 400, "bad_upload"),
        ("POST", "/v1/identify", {"data": {"file": "not a photo"}}, 400, "bad_upload"),
        ("POST", "/v1/identify", {"files": {"a": ("a.jpg", good), "b": ("b.jpg", good)}},
         400, "bad_upload"),
        ("POST", "/v1/identify?top_k=0", {"files": {"file": ("a.png", good)}}, 400,
         "invalid_parameter"),
        ("POST", "/v1/identify?threshold=abc", {"files": {"file": ("a.png", good)}}, 400,
         "invalid_parameter"),
        ("POST", "/v1/identify?max_faces=1000", {"files": {"file": ("a.png", good)}}, 400,
         "invalid_parameter"),
        ("POST", "/v1/verify", {"files": {"file1": ("a.png", good)}}, 400, "bad_upload"),
        ("POST", "/v1/verify", {"data": good}, 400, "bad_upload"),
        ("POST", "/v1/verify", {"files": {"file1": ("a.png", good), "file2": (
            "t.jpg", bad_inputs["truncated"].read_bytes())}}, 400, "bad_image"),
        ("POST", "/v1/identities/unknown/faces", {"files": {"file": ("a.png", good)}}, 400,
         "bad_request"),
        ("POST", "/v1/identities/x/faces", {"files": {"file": (
            "c.jpg", bad_inputs["corrupt"].read_bytes())}}, 400, "bad_image"),
        ("DELETE", "/v1/identities/nobody_at_all", {}, 404, "unknown_identity"),
        ("GET", "/v1/nothing-here", {}, 404, "not_found"),
        ("PUT", "/v1/identify", {}, 405, "method_not_allowed"),
    ]
    for method, path, kwargs, status, code in cases:
        response = service.request(method, path, **kwargs)
        assert (response.status_code, response.json().get("code")) == (status, code), (
            method, path, response.text)
        assert response.json()["error"]


def test_stats_count_requests(service):
    body = service.get("/v1/stats").json()
    ingress = body["ingress"]
    assert ingress["requests"]["identify"] > 0 and "200" in ingress["statuses"]
    assert "500" not in ingress["statuses"]  # no bad input ever became an internal error
    assert ingress["latency"]["identify"]["p50_ms"] > 0
    assert body["embedder"]["batches"] > 0 and body["embedder"]["max_batch_size"] == 4
    assert body["gallery"]["model_id"] == "facenet-20180408-102900"
    assert body["limits"] == {"max_body_bytes": MAX_BODY, "max_pixels": MAX_PIXELS,
                              "max_faces_limit": 100}


# -- the web page in headless Chromium -------------------------------------------------------------


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page, one websocket)."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-port=0", "about:blank"]

    def __init__(self):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="facenet-chromium-")
        self.proc = subprocess.Popen([CHROMIUM, f"--user-data-dir={self.profile}", *self.FLAGS],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=1 << 26, open_timeout=30))
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=120))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout} s for {expression}")

    def set_file(self, selector: str, path: Path) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])

    def close(self) -> None:
        try:
            if getattr(self, "_stack", None) is not None:
                self._stack.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
            shutil.rmtree(self.profile, ignore_errors=True)


STATUS_SETTLED = ("['done', 'error'].includes(document.getElementById('status').dataset.state)"
                  " && document.getElementById('status').dataset.state")
DECISIONS = "[...document.querySelectorAll('#faces li.face')].map(li => li.dataset.decision)"


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} not found: apt-get install -y chromium to run the "
                           "web page test")
def test_web_page_in_headless_chromium(service, astronaut, tmp_path):
    from PIL import Image

    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).save(photo, quality=92)
    other = tmp_path / "astronaut-crop.png"
    Image.fromarray(astronaut[20:420, 40:440]).save(other)
    browser = Browser()
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=service.url + "/")
        browser.wait_for("document.readyState === 'complete' && !!document.getElementById('file')")
        # The page asks for the key once and keeps it in the tab's sessionStorage.
        assert browser.eval("document.getElementById('key-dialog').open")
        browser.eval(f"sessionStorage.setItem('facenet_api_key', {json.dumps(API_KEY)})")
        browser.eval("location.hash = '#/identify'; location.reload()")
        time.sleep(0.5)
        browser.wait_for("document.readyState === 'complete' && "
                         "!document.getElementById('identify-view').hidden")
        assert not browser.eval("document.getElementById('key-dialog').open")

        # Upload a photo: one face, nobody enrolled under it yet.
        browser.set_file("#file", photo)
        assert browser.wait_for(STATUS_SETTLED) == "done", browser.eval(
            "document.getElementById('status').textContent")
        assert browser.eval(DECISIONS) == ["unknown"]
        assert browser.eval("document.getElementById('canvas').width") == astronaut.shape[1]

        # Enroll that face from the page, then the page shows the name on it.
        browser.eval("document.querySelector('#faces li.face .enroll-name').value = "
                     "'Eileen_Collins'")
        browser.eval("document.querySelector('#faces li.face form button').click()")
        browser.wait_for("document.getElementById('status').textContent.includes('enrolled')")
        assert browser.eval(DECISIONS) == ["Eileen_Collins"]
        assert "Eileen_Collins" in browser.eval(
            "[...document.querySelectorAll('#identities li')].map(li => li.dataset.name)")

        # Another photo of her is recognised: read the name back from the page.
        browser.eval("document.getElementById('status').dataset.state = 'idle'")
        browser.set_file("#file", other)
        assert browser.wait_for(STATUS_SETTLED) == "done"
        assert browser.eval(DECISIONS) == ["Eileen_Collins"]
        shot = browser.call("Page.captureScreenshot", format="png")
        (tmp_path / "page.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
        service.request("DELETE", "/v1/identities/Eileen_Collins")
