"""The HTTP ingress: :class:`FaceAPI` (``@serve.ingress``) composes the model, gallery,
thumbnail and people deployments behind the routes of :mod:`facenet_platform.serve.webapp`
(where the endpoint list, the error model and the API keys are described). The people routes
are the :class:`~facenet_platform.serve.people_api.PeopleRoutes` mixin.
"""

import asyncio
import collections
import hashlib
import logging
import os
import time
from typing import Any, Optional

import numpy as np
from fastapi import Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from facenet_platform.core.errors import NoFaceFoundError
from facenet_platform.index.face_ids import check_face_id
from facenet_platform.index.gallery import GalleryError

from .auth import KeyRing
from .catalog import check_photo_id
from .config import INGRESS, AppArgs
from .deployments import Detected, Thumbnail, WriteResult
from .http_errors import Failure, http_status
from .people_api import PeopleRoutes
from .thumbnails import FACE_SIZES, PHOTO_SIZES, snap_size
from .uploads import (
    BadUpload,
    all_uploads,
    named_uploads,
    read_body,
    single_upload,
)
from .webapp import (
    ADMIN_AUTH,
    API_VERSION,
    READ_AUTH,
    STATIC_DIR,
    ApiError,
    app,
    error_response,
    image_body,
    install_keyring,
    keyring,
    unavailable_errors,
)

logger = logging.getLogger(__name__)


# -- statistics ------------------------------------------------------------------------------------

class _Stats:
    """Counters and a latency window of one ingress replica."""

    def __init__(self, window: int = 4096):
        self.started = time.time()
        self.requests: collections.Counter = collections.Counter()
        self.statuses: collections.Counter = collections.Counter()
        self.latency: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=window))
        self.faces = 0
        self.retries = 0

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[endpoint] += 1
        self.statuses[str(status)] += 1
        self.latency[endpoint].append(seconds)

    def to_dict(self) -> dict[str, Any]:
        lat = {}
        for endpoint, values in self.latency.items():
            if values:
                p = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
                lat[endpoint] = {"n": len(values), "p50_ms": round(p[0], 1),
                                 "p95_ms": round(p[1], 1), "p99_ms": round(p[2], 1)}
        return {"uptime_s": round(time.time() - self.started, 1),
                "requests": dict(self.requests), "statuses": dict(self.statuses),
                "faces": self.faces, "backend_retries": self.retries, "latency": lat}


# -- the ingress -----------------------------------------------------------------------------------

@serve.deployment(name=INGRESS)
@serve.ingress(app)
class FaceAPI(PeopleRoutes):
    """HTTP front: parses and checks uploads, then calls detector -> embedder -> searcher."""

    def __init__(self, detector: DeploymentHandle, embedder: DeploymentHandle,
                 searcher: DeploymentHandle, writer: DeploymentHandle,
                 thumbnailer: DeploymentHandle, people: DeploymentHandle, settings: dict):
        from facenet_platform.core.images import max_pixels_from_env

        self.args = AppArgs.model_validate(settings)
        keys = KeyRing.from_config(self.args.auth, os.environ)
        keys.check_startable()  # no key and keys not turned off: refuse to start
        if len(keys):
            logger.info("API keys: %s", keys.counts())
        else:
            logger.warning("API keys are OFF (insecure_no_auth): anyone who can reach this "
                           "service can see every face and change every person")
        install_keyring(keys)
        self.detector, self.embedder, self.searcher, self.writer, self.thumbnailer = (
            detector, embedder, searcher, writer, thumbnailer)
        self.people = people
        self._people_floor = 0  # the newest people version this replica wrote or was told of
        self.max_pixels = self.args.max_pixels or max_pixels_from_env()
        self.stats = _Stats()
        self._model: Optional[dict[str, Any]] = None
        self._page = (STATIC_DIR / "index.html").read_text() if (
            STATIC_DIR / "index.html").is_file() else None

    # ---------------------------------------------------------------------------- plumbing

    async def _call(self, method, *args):
        """``await handle.method.remote(*args)``, retried when the replica died mid-call."""
        errors = unavailable_errors()
        for attempt in range(self.args.call_retries + 1):
            try:
                return await method.remote(*args)
            except errors as exc:
                if attempt == self.args.call_retries:
                    raise ApiError(503, "backend_unavailable",
                                   f"a backend replica is unavailable ({type(exc).__name__}); "
                                   "retry shortly") from exc
                self.stats.retries += 1
                logger.warning("retrying a call whose replica failed: %s", type(exc).__name__)

    async def _body(self, request: Request) -> bytes:
        body = await read_body(request.headers.get("content-length"), request.stream(),
                               self.args.max_body_bytes)
        if not body:
            raise BadUpload("empty request body: send a photo (multipart field 'file' or the "
                            "raw bytes)")
        return body

    def _probe(self, source: str, data: bytes) -> None:
        """Header-only checks (empty, not an image, over the pixel limit): nothing decoded."""
        from facenet_platform.core.images import probe_image

        probe_image(data, source=source, max_pixels=self.max_pixels)

    @staticmethod
    def _ok(result):
        if isinstance(result, Failure):
            raise ApiError(result.status, result.code, result.message)
        return result

    async def _model_info(self) -> dict[str, Any]:
        if self._model is None:
            self._model = await self._call(self.embedder.ready)
        return self._model

    async def _embed(self, crops: np.ndarray) -> np.ndarray:
        """Embeddings of any number of crops: calls of at most max_batch_size faces, in
        parallel, each batched with other clients' by the embedder."""
        size = self.args.max_batch_size
        parts = await asyncio.gather(*(self._call(self.embedder.embed, crops[i:i + size])
                                       for i in range(0, len(crops), size)))
        return np.concatenate(parts)

    async def _run(self, endpoint: str, coro):
        t0 = time.perf_counter()
        status = 500
        try:
            result = await coro
            status = getattr(result, "status_code", 200)
            return result
        except ApiError as exc:
            status = exc.status
            raise
        except Exception as exc:
            mapped = http_status(exc)
            if mapped is None:
                logger.exception("%s failed", endpoint)
                raise ApiError(500, "internal_error",
                               "internal error (see the service logs)") from None
            status, code = mapped
            message = str(exc)
            if isinstance(exc, GalleryError):
                logger.warning("%s: gallery error: %s", endpoint, exc)
                message = message.splitlines()[0]
            raise ApiError(status, code, message) from None
        finally:
            self.stats.record(endpoint, status, time.perf_counter() - t0)

    async def _detect_one(self, source: str, data: bytes, max_faces: int) -> Detected:
        self._probe(source, data)
        return self._ok(await self._call(self.detector.detect, data, source, max_faces,
                                         self.max_pixels))

    async def _central(self, source: str, data: bytes) -> Detected:
        return self._ok(await self._call(self.detector.central, data, source, self.max_pixels))

    def _max_faces(self, max_faces: Optional[int]) -> int:
        if max_faces is None:
            return self.args.max_faces_default()
        if max_faces > self.args.max_faces_limit:
            raise ApiError(400, "invalid_parameter",
                           f"max_faces: at most {self.args.max_faces_limit}")
        return max_faces

    # ---------------------------------------------------------------------------- endpoints

    @app.post(f"/{API_VERSION}/identify", dependencies=READ_AUTH, openapi_extra=image_body("file"),
              summary="Who is in this photo: every face, its top-k identities and a decision")
    async def identify(
        self, request: Request,
        top_k: Optional[int] = Query(None, ge=1, le=100,
                                     description="identities listed per face (default 5)"),
        threshold: Optional[float] = Query(None, ge=0, le=4, description=(
            "squared L2 distance at or under which a face is its nearest identity (default: "
            "the gallery's identification threshold, calibrated for 1:N open-set use and "
            "stricter than verify's 1:1 threshold)")),
        max_faces: Optional[int] = Query(None, ge=1, description=(
            "faces considered per photo, highest detection score first (default 20)")),
    ):
        return await self._run("identify", self._identify(request, top_k, threshold,
                                                          max_faces))

    async def _identify(self, request, top_k, threshold, max_faces):
        from facenet_platform.core.quality import face_quality
        from facenet_platform.index.identify import IdentifiedFace, decide_face
        from facenet_platform.index.stages import sharpness

        source, data = single_upload(request.headers.get("content-type"),
                                     await self._body(request))
        det = await self._detect_one(source, data, self._max_faces(max_faces))
        top_k = top_k or self.args.top_k
        if len(det) == 0:  # no search, but the same threshold a search would have used
            info = await self._model_info()
            embeddings = np.zeros((0, int(info["embedding_size"])), np.float32)
        else:
            embeddings = await self._embed(det.crops)
        # The people's identification (1:N) threshold, not the embedder's 1:1 one.
        version, gallery_threshold, matches, min_quality = await self._call(
            self.searcher.search, embeddings, top_k)
        thr = gallery_threshold if threshold is None else float(threshold)
        quality = (face_quality(det.scores, det.boxes, det.landmarks, sharpness(det.crops))
                   if len(det) else np.zeros(0, np.float32))
        faces = []
        for i in range(len(det)):
            decision, reason, person = decide_face(matches[i], thr, float(quality[i]),
                                                   min_quality)
            faces.append(IdentifiedFace(int(det.indices[i]), det.boxes[i], det.landmarks[i],
                                        float(det.scores[i]), decision, matches[i], thr, person,
                                        float(quality[i]), reason).to_dict())
        self.stats.faces += len(faces)
        return {"faces": faces, "image": {"width": det.width, "height": det.height},
                "threshold": thr, "gallery_version": version, "detected": det.n_detected}

    @app.post(f"/{API_VERSION}/verify", dependencies=READ_AUTH,
              openapi_extra=image_body("file1", "file2", raw=False),
              summary="Are the main faces of two photos the same person?")
    async def verify(
        self, request: Request,
        threshold: Optional[float] = Query(None, ge=0, le=4, description=(
            "same-person squared L2 distance threshold (default: the model's)")),
    ):
        return await self._run("verify", self._verify(request, threshold))

    async def _verify(self, request, threshold):
        from facenet_platform.core.pipeline import Verification, face_json, squared_distance

        uploads = named_uploads(request.headers.get("content-type"), await self._body(request),
                                ("file1", "file2"))
        for source, data in uploads:
            self._probe(source, data)
        found = await asyncio.gather(*(self._central(s, d) for s, d in uploads))
        for (source, _), det in zip(uploads, found):
            if len(det) == 0:
                raise NoFaceFoundError(f"{source}: no face found")
        embeddings = await self._embed(np.concatenate([d.crops for d in found]))
        if threshold is None:
            threshold = (await self._model_info())["threshold"]
        result = Verification(squared_distance(embeddings[0], embeddings[1]), float(threshold))
        faces = [{**face_json(d.boxes[0], d.scores[0], d.landmarks[0]),
                  "faces_in_photo": d.n_detected} for d in found]
        return {**result.to_dict(), "faces": faces}

    @app.post(f"/{API_VERSION}/embed", dependencies=READ_AUTH, openapi_extra=image_body("file"),
              summary="Every face of a photo with its embedding")
    async def embed(
        self, request: Request,
        max_faces: Optional[int] = Query(None, ge=1, description="faces per photo (default 20)"),
    ):
        return await self._run("embed", self._embed_faces(request, max_faces))

    async def _embed_faces(self, request, max_faces):
        from facenet_platform.core.pipeline import face_json

        source, data = single_upload(request.headers.get("content-type"),
                                     await self._body(request))
        det = await self._detect_one(source, data, self._max_faces(max_faces))
        info = await self._model_info()
        embeddings = (await self._embed(det.crops) if len(det)
                      else np.zeros((0, info["embedding_size"]), np.float32))
        faces = [face_json(det.boxes[i], det.scores[i], det.landmarks[i], index=int(det.indices[i]),
                           embedding=embeddings[i]) for i in range(len(det))]
        return {"faces": faces, "image": {"width": det.width, "height": det.height},
                "model_id": info["model_id"], "embedding_size": int(info["embedding_size"])}

    @app.post(f"/{API_VERSION}/identities/{{name}}/faces", dependencies=ADMIN_AUTH, status_code=201,
              openapi_extra=image_body("file", multiple=True),
              summary="Enroll one or more photos of a person (the main face of each)")
    async def enroll(self, name: str, request: Request):
        return await self._run("enroll", self._enroll(name, request))

    async def _enroll(self, name, request):
        from facenet_platform.index.gallery import check_name

        check_name(name)
        uploads = all_uploads(request.headers.get("content-type"), await self._body(request))
        for source, data in uploads:
            self._probe(source, data)
        found = await asyncio.gather(*(self._central(s, d) for s, d in uploads))
        keep = [i for i, det in enumerate(found) if len(det)]
        skipped = [{"source": uploads[i][0], "reason": "no face found"}
                   for i, det in enumerate(found) if not len(det)]
        if not keep:
            raise NoFaceFoundError(f"no face found in any of the {len(uploads)} photos of "
                                   f"{name!r}; nothing enrolled")
        embeddings = await self._embed(np.concatenate([found[i].crops for i in keep]))
        hashes = [hashlib.sha256(uploads[i][1]).hexdigest() for i in keep]
        sources = [f"upload:{uploads[i][0]}:{hashes[j][:12]}" for j, i in enumerate(keep)]
        model = (await self._model_info())["spec"]  # a new gallery records the model's spec
        # Not retried on a dead writer: a write must not be applied twice (the content hashes
        # would make a second attempt a no-op anyway, but say so rather than guess).
        try:
            result = self._ok(await self.writer.add.remote(name, embeddings, sources, hashes,
                                                           model))
        except unavailable_errors() as exc:
            raise ApiError(503, "backend_unavailable",
                           f"the gallery writer is unavailable ({type(exc).__name__}); the "
                           "enrollment may not have been saved: retry") from exc
        assert isinstance(result, WriteResult)
        body = {"name": name, "added": result.added, "already_enrolled": result.already_enrolled,
                "faces": result.faces, "skipped": skipped, "gallery_version": result.version,
                "identities": result.identities}
        return JSONResponse(body, status_code=201 if result.added else 200)

    @app.delete(f"/{API_VERSION}/identities/{{name}}", dependencies=ADMIN_AUTH,
                summary="Forget a person (every enrolled face)")
    async def delete_identity(self, name: str):
        return await self._run("delete", self._delete(name))

    async def _delete(self, name):
        try:
            result = self._ok(await self.writer.remove.remote(name))
        except unavailable_errors() as exc:
            raise ApiError(503, "backend_unavailable",
                           f"the gallery writer is unavailable ({type(exc).__name__})") from exc
        return {"name": name, "removed": result.removed, "gallery_version": result.version,
                "identities": result.identities}

    @app.get(f"/{API_VERSION}/identities", dependencies=READ_AUTH, summary="Who is enrolled")
    async def list_identities(self):
        async def run():
            version, identities = await self._call(self.searcher.identities)
            return {"identities": [{"name": n, "faces": c} for n, c in identities.items()],
                    "count": len(identities), "gallery_version": version}

        return await self._run("identities", run())

    @app.get(f"/{API_VERSION}/stats", dependencies=READ_AUTH,
             summary="Request counters and latencies (this ingress replica; one replica of each "
                     "backend)")
    async def get_stats(self):
        async def run():
            detector, embedder, searcher, writer, thumbnailer, people = await asyncio.gather(
                self._call(self.detector.stats), self._call(self.embedder.stats),
                self._call(self.searcher.info), self._call(self.writer.stats),
                self._call(self.thumbnailer.stats), self._call(self.people.stats))
            return {"ingress": {"replica": serve.get_replica_context().replica_tag,
                                **self.stats.to_dict(), "api_keys": keyring().counts()},
                    "detector": detector, "embedder": embedder, "gallery": searcher,
                    "writer": writer, "thumbnailer": thumbnailer, "people": people,
                    "limits": {"max_body_bytes": self.args.max_body_bytes,
                               "max_pixels": self.max_pixels,
                               "max_faces_limit": self.args.max_faces_limit}}

        return await self._run("stats", run())

    # ---------------------------------------------------------------------------- thumbnails

    @staticmethod
    def _jpeg(result: Thumbnail) -> Response:
        headers = {"ETag": result.etag, "Cache-Control": "private, max-age=86400",
                   "Vary": "X-API-Key, Authorization", "X-Thumbnail-Size": str(result.size)}
        if result.data is None:
            return Response(status_code=304, headers=headers)
        return Response(result.data, media_type="image/jpeg", headers=headers)

    @app.get(f"/{API_VERSION}/faces/{{face_id}}/thumbnail", dependencies=READ_AUTH,
             response_class=Response,
             responses={200: {"content": {"image/jpeg": {}},
                              "description": "JPEG, size x size px"},
                        304: {"description": "the copy named by If-None-Match is current"}},
             summary="A collection face as a square JPEG crop (cached; ETag)")
    async def face_thumbnail(
        self, face_id: str, request: Request,
        size: Optional[int] = Query(None, ge=16, le=1024, description=(
            f"edge in px; served at the smallest of {list(FACE_SIZES)} that is at least this "
            f"(default {FACE_SIZES[1]})")),
    ):
        async def run():
            fid = check_face_id(face_id)
            px = snap_size(size, FACE_SIZES, FACE_SIZES[1])
            return self._jpeg(self._ok(await self._call(
                self.thumbnailer.face, fid, px, request.headers.get("if-none-match"))))

        return await self._run("thumbnail", run())

    @app.get(f"/{API_VERSION}/photos/{{photo_id}}/thumbnail", dependencies=READ_AUTH,
             response_class=Response,
             responses={200: {"content": {"image/jpeg": {}},
                              "description": "JPEG, longer side at most size px"},
                        304: {"description": "the copy named by If-None-Match is current"}},
             summary="A collection photo as a downscaled JPEG (cached; ETag)")
    async def photo_thumbnail(
        self, photo_id: str, request: Request,
        size: Optional[int] = Query(None, ge=16, le=4096, description=(
            f"longer side in px; served at the smallest of {list(PHOTO_SIZES)} that is at "
            f"least this (default {PHOTO_SIZES[1]})")),
    ):
        async def run():
            pid = check_photo_id(photo_id)
            px = snap_size(size, PHOTO_SIZES, PHOTO_SIZES[1])
            return self._jpeg(self._ok(await self._call(
                self.thumbnailer.photo, pid, px, request.headers.get("if-none-match"))))

        return await self._run("thumbnail", run())

    @app.get(f"/{API_VERSION}/photos/{{photo_id}}", dependencies=READ_AUTH,
             summary="A collection photo: its size and its faces (ids and boxes)")
    async def photo_info(self, photo_id: str):
        async def run():
            pid = check_photo_id(photo_id)
            return self._ok(await self._call(self.thumbnailer.photo_info, pid))

        return await self._run("photo", run())

    @app.get("/healthz", summary="200 when the models and the gallery answer, else 503")
    async def healthz(self):
        try:
            detector, embedder, searcher = await asyncio.wait_for(asyncio.gather(
                self.detector.ready.remote(), self.embedder.ready.remote(),
                self.searcher.ready.remote()), timeout=10)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return error_response(503, "not_ready", f"not ready: {type(exc).__name__}: {exc}"[:500])
        if (embedder["model_id"], embedder["embedding_size"]) != (
                searcher["model_id"], searcher["embedding_size"]) and searcher["faces"]:
            return error_response(503, "model_mismatch",
                          f"the gallery holds embeddings of {searcher['model_id']!r} but the "
                          f"embedder runs {embedder['model_id']!r}")
        if detector["crop_size"] != embedder["input_size"]:
            return error_response(503, "model_mismatch",
                          f"the detector crops {detector['crop_size']} px but the model takes "
                          f"{embedder['input_size']} px")
        return {"status": "ok", "model_id": embedder["model_id"],
                "gallery_version": searcher["version"], "identities": searcher["identities"],
                "faces": searcher["faces"]}

    # ---------------------------------------------------------------------------- web page

    @app.get("/", include_in_schema=False)
    async def page(self):
        if self._page is None:
            return error_response(404, "not_found", "the web page is not installed")
        return HTMLResponse(self._page)

    @app.get("/static/{filename}", include_in_schema=False)
    async def static(self, filename: str):
        path = (STATIC_DIR / filename).resolve()
        if path.parent != STATIC_DIR or not path.is_file():
            return error_response(404, "not_found", f"no static file {filename!r}")
        return FileResponse(path)
