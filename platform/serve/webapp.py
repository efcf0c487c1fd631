"""The HTTP surface of the Serve application: the FastAPI ``app`` (routes are methods of
:class:`~facenet_platform.serve.api.FaceAPI` and its mixins), the error body, and the API-key
dependencies every ``/v1`` route declares.

Endpoints (JSON unless said; OpenAPI at ``/docs`` and ``/openapi.json``; role needed in
brackets)::

    POST   /v1/identify                   [read]  one photo -> every face, top-k identities
    POST   /v1/verify                     [read]  file1 + file2 -> distance, same person or not
    POST   /v1/embed                      [read]  one photo -> every face with its embedding
    GET    /v1/identities                 [read]  who is enrolled, faces each
    POST   /v1/identities/{name}/faces    [admin] enroll one or more photos of a person
    DELETE /v1/identities/{name}          [admin] forget a person (404 if unknown)
    GET    /v1/faces/{face_id}/thumbnail  [read]  JPEG crop of a collection face
    GET    /v1/photos/{photo_id}          [read]  a collection photo's size and faces
    GET    /v1/photos/{photo_id}/thumbnail [read] JPEG of a collection photo, downscaled
    GET    /v1/stats                      [read]  counters and latencies
    GET    /healthz                               200 once models and gallery answer, else 503
    GET    /                                      the web page (its data comes from /v1)

A photo comes as the multipart field ``file`` (``file1``/``file2`` for verify; any number of
file fields to enroll) or as the raw request body. Errors are ``{"error": message, "code": code}``
with 400 (not an image, corrupt, bad parameter or id), 401 (no or unknown API key), 403 (a read
key on a change), 404, 410 (an indexed photo no longer readable), 413 (body or pixel limit), 422
(verify/enroll photo without a face) or 503 (a backend is down); a photo without faces is a 200
with an empty ``faces`` list.

API keys (see :mod:`facenet_platform.serve.auth`): everything under ``/v1`` needs one, sent as
``X-API-Key: KEY`` or ``Authorization: Bearer KEY``; a read key may identify and browse, an admin
key may also change. The page, ``/docs``, ``/openapi.json`` and ``/healthz`` need none (they
hold no personal data). Thumbnails come with an ``ETag`` and ``Cache-Control: private``; a
request with a matching ``If-None-Match`` gets ``304``. No response ever holds a path of the
server's disk: photos and faces are named by their ids.
"""


from pathlib import Path
from typing import Optional

from fastapi import Depends, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from .auth import ADMIN, READ, AuthDenied, KeyRing

API_VERSION = "v1"
STATIC_DIR = Path(__file__).resolve().parent / "static"


class ApiError(Exception):
    """An error answered as ``{"error": message, "code": code}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str, **extra) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, "code": code, **extra}, status_code=status,
                        headers=headers)


# Swagger UI and ReDoc served from the fastapi-offline package (no CDN): /docs works offline.
app = FastAPIOffline(
    title="facenet-platform",
    version="1",
    description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    # The validator badge would fetch from the internet; the spec is validated in the tests.
    swagger_ui_parameters={"validatorUrl": None},
)


@app.exception_handler(ApiError)
async def _api_error(_, exc: ApiError):
    return error_response(exc.status, exc.code, exc.message)


@app.exception_handler(RequestValidationError)
async def _validation_error(_, exc: RequestValidationError):
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('query', 'path'))}: "
        f"{e.get('msg')}" for e in exc.errors())
    return error_response(400, "invalid_parameter", problems or "invalid request")


_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed"}


@app.exception_handler(StarletteHTTPException)
async def _http_error(_, exc: StarletteHTTPException):
    return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"),
                  str(exc.detail))


@app.middleware("http")
async def _server_timing(request, call_next):
    """``Server-Timing: app;dur=MS`` on every answer: the time this ingress spent on it."""
    import time

    t0 = time.perf_counter()
    response = await call_next(request)
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"
    return response


# -- API keys --------------------------------------------------------------------------------------

_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                           description="a read or admin API key")
_bearer = HTTPBearer(auto_error=False, description="a read or admin API key as a bearer token")

#: The keys of this ingress replica (one FaceAPI per replica process), set by FaceAPI.__init__.
_KEYRING: Optional[KeyRing] = None


def install_keyring(ring: KeyRing) -> None:
    """Use ``ring`` for every request of this process (the ingress replica)."""
    global _KEYRING
    _KEYRING = ring


def keyring() -> Optional[KeyRing]:
    return _KEYRING


def _require(role: str):
    """A FastAPI dependency admitting requests whose key has ``role`` (admin keys have both)."""

    def check(x_api_key: Optional[str] = Security(_key_header),
              bearer: Optional[HTTPAuthorizationCredentials] = Security(_bearer)) -> str:
        # Through keyring(), a module function: Serve ships this closure to the replica by
        # value (with a copy of the globals it names), the module's own _KEYRING is there.
        ring = keyring()
        if ring is None:
            raise ApiError(503, "not_ready", "the service is starting")
        given = x_api_key or (bearer.credentials if bearer else None)
        try:
            return ring.authorize(given, role)
        except AuthDenied as denied:
            raise ApiError(denied.status, denied.code, denied.message) from None

    check.__name__ = f"require_{role}_key"
    return check


READ_AUTH = [Depends(_require(READ))]
ADMIN_AUTH = [Depends(_require(ADMIN))]


def image_body(*fields: str, multiple: bool = False, raw: bool = True) -> dict:
    """OpenAPI description of an upload body (the endpoints parse it themselves)."""
    props = {f: ({"type": "array", "items": {"type": "string", "format": "binary"}}
                 if multiple else {"type": "string", "format": "binary"}) for f in fields}
    content = {"multipart/form-data": {"schema": {"type": "object", "properties": props,
                                                  "required": list(fields)}}}
    if raw:
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        content["image/jpeg"] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


_UNAVAILABLE: tuple[type[BaseException], ...] = ()


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for a replica that died or cannot be reached (reads are retried; writes
    are retried only where a request id makes them idempotent)."""
    global _UNAVAILABLE
    if not _UNAVAILABLE:
        import ray.exceptions as rex

        names = ("RayActorError", "ActorDiedError", "ActorUnavailableError",
                 "ActorUnschedulableError", "WorkerCrashedError", "NodeDiedError")
        _UNAVAILABLE = tuple(getattr(rex, n) for n in names if hasattr(rex, n))
    return _UNAVAILABLE
