"""People routes of the ingress (a mixin of :class:`~facenet_platform.serve.api.FaceAPI`).

Reads go to the ``PeopleReader`` replicas; every decision goes to the one writer deployment
(``GalleryWriter``), which applies it through :mod:`facenet_platform.index.people` and records
the request's idempotency key in the event. A decision the writer may not have finished (its
replica died) is retried with the same key: the log answers it if it was committed, so it is
never applied twice. The people version a decision produced becomes this replica's floor for
reads, so the author sees it at once; other replicas see it within the reader's poll interval
(0.25 s).

Person references in URLs are person ids (``p17``) or names (any case).
"""

import asyncio
import uuid
from typing import Any, Optional

from fastapi import Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from facenet_platform.core.errors import NoFaceFoundError

from .people_service import FILTERS, check_request_id
from .uploads import single_upload
from .webapp import (
    ADMIN_AUTH,
    API_VERSION,
    READ_AUTH,
    ApiError,
    app,
    image_body,
    unavailable_errors,
)

V = f"/{API_VERSION}"
_IDEMPOTENCY = Header(None, alias="Idempotency-Key", description=(
    "a key of 8 to 100 characters (letters, digits, . _ : -) naming this decision: a retry "
    "with the same key is answered from the event log and never applied twice"))
_MAX_IDS = 1000


class NameBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=200, description="the person's name")


class MergeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    people: list[str] = Field(..., min_length=1, max_length=100, description=(
        "ids or names of the people merged into the one in the URL"))


class FacesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    faces: list[str] = Field(..., min_length=1, max_length=_MAX_IDS, description="face ids")


class MoveBody(FacesBody):
    to: str = Field(..., min_length=1, max_length=200, description=(
        "id or name of the person the faces go to, or 'new' for a new person"))


class UndoBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: Optional[int] = Field(None, ge=1, description=(
        "the event to undo (default: the latest decision not undone)"))


_DECISION_DOC = ("Answers ``{event, people_version, replayed}`` (``event`` null when nothing "
                 "changed; ``replayed`` when the Idempotency-Key was already in the log).")


class PeopleRoutes:
    """``/v1/people``, ``/v1/faces/move|reject`` and ``/v1/search/face``."""

    # ------------------------------------------------------------------------------- plumbing

    async def _read(self, method, *args):
        return self._ok(await self._call(method, *args, self._people_floor))

    async def _decide(self, kind: str, params: dict[str, Any], key: Optional[str]):
        request_id = check_request_id(key) or uuid.uuid4().hex
        errors = unavailable_errors()
        for attempt in range(4):
            try:
                result = await self.writer.decide.remote(kind, params, request_id)
                break
            except errors as exc:
                # The writer died before or after committing: the same key makes the retry
                # safe (answered from the log when it had committed).
                if attempt == 3:
                    raise ApiError(503, "backend_unavailable",
                                   f"the writer is unavailable ({type(exc).__name__}); retry "
                                   f"with the same Idempotency-Key: {request_id}") from exc
                self.stats.retries += 1
                await asyncio.sleep(0.5 * (attempt + 1))
        result = self._ok(result)
        self._people_floor = max(self._people_floor, int(result["people_version"]))
        return {**result, "request_id": request_id}

    # ---------------------------------------------------------------------------------- reads

    @app.get(f"{V}/people", dependencies=READ_AUTH,
                         summary="People, most faces first (paginated; filters)")
    async def list_people(
        self,
        filter: str = Query("visible", description=f"one of {', '.join(FILTERS)} "
                                                   "(visible: not hidden)"),
        min_faces: int = Query(0, ge=0, le=1_000_000),
        offset: int = Query(0, ge=0, le=10_000_000),
        limit: int = Query(50, ge=1, le=500),
        q: Optional[str] = Query(None, max_length=200, description="names containing this"),
    ):
        async def run():
            if filter not in FILTERS:
                raise ApiError(400, "invalid_parameter",
                               f"filter: one of {', '.join(FILTERS)}, got {filter!r}")
            return await self._read(self.people.list_people, filter, min_faces, offset, limit, q)

        return await self._run("people", run())

    @app.get(f"{V}/people/history", dependencies=READ_AUTH,
                         summary="The decisions and updates, newest first")
    async def people_history(self, limit: int = Query(50, ge=1, le=1000)):
        return await self._run("people", self._read(self.people.history, limit))

    @app.get(f"{V}/people/{{person}}", dependencies=READ_AUTH,
                         summary="One person: name, cover, counts and their faces, best first "
                                 "(paginated)")
    async def get_person(self, person: str, offset: int = Query(0, ge=0, le=10_000_000),
                         limit: int = Query(100, ge=1, le=1000)):
        return await self._run("people", self._read(self.people.person, person, offset, limit))

    @app.get(f"{V}/people/{{person}}/photos", dependencies=READ_AUTH,
                         summary="Photos of a person, optionally together with others")
    async def person_photos(
        self, person: str,
        with_: list[str] = Query([], alias="with", max_length=20,
                                 description="other people who must be in the photo too"),
        offset: int = Query(0, ge=0, le=10_000_000), limit: int = Query(50, ge=1, le=500),
    ):
        return await self._run("people", self._read(self.people.photos, person, list(with_),
                                                    offset, limit))

    # ------------------------------------------------------------------------------ decisions

    @app.post(f"{V}/people/undo", dependencies=ADMIN_AUTH,
                          summary="Undo a decision (default: the latest not undone). "
                                  + _DECISION_DOC)
    async def undo_decision(self, body: UndoBody = UndoBody(),
                            idempotency_key: Optional[str] = _IDEMPOTENCY):
        return await self._run("decision", self._decide("undo", {"event": body.event},
                                                        idempotency_key))

    @app.post(f"{V}/people/{{person}}/name", dependencies=ADMIN_AUTH,
                          summary="Name or rename a person. " + _DECISION_DOC)
    async def name_person(self, person: str, body: NameBody,
                          idempotency_key: Optional[str] = _IDEMPOTENCY):
        return await self._run("decision", self._decide(
            "name", {"person": person, "name": body.name}, idempotency_key))

    @app.post(f"{V}/people/{{person}}/merge", dependencies=ADMIN_AUTH,
                          summary="Merge other people into this one. " + _DECISION_DOC)
    async def merge_people(self, person: str, body: MergeBody,
                           idempotency_key: Optional[str] = _IDEMPOTENCY):
        return await self._run("decision", self._decide(
            "merge", {"person": person, "others": body.people}, idempotency_key))

    @app.post(f"{V}/people/{{person}}/hide", dependencies=ADMIN_AUTH,
                          summary="Hide a person (never answered by identify). "
                                  + _DECISION_DOC)
    async def hide_person(self, person: str, idempotency_key: Optional[str] = _IDEMPOTENCY):
        return await self._run("decision", self._decide("hide", {"person": person},
                                                        idempotency_key))

    @app.post(f"{V}/people/{{person}}/unhide", dependencies=ADMIN_AUTH,
                          summary="Show a hidden person again. " + _DECISION_DOC)
    async def unhide_person(self, person: str, idempotency_key: Optional[str] = _IDEMPOTENCY):
        return await self._run("decision", self._decide("unhide", {"person": person},
                                                        idempotency_key))

    @app.post(f"{V}/faces/move", dependencies=ADMIN_AUTH,
                          summary="Move faces to a person (or a new one) and pin them there. "
                                  + _DECISION_DOC)
    async def move_faces(self, body: MoveBody, idempotency_key: Optional[str] = _IDEMPOTENCY):
        return await self._run("decision", self._decide(
            "move", {"faces": body.faces, "to": body.to}, idempotency_key))

    @app.post(f"{V}/faces/reject", dependencies=ADMIN_AUTH,
                          summary="Not this person: the faces leave their person for good. "
                                  + _DECISION_DOC)
    async def reject_faces(self, body: FacesBody,
                           idempotency_key: Optional[str] = _IDEMPOTENCY):
        return await self._run("decision", self._decide("reject", {"faces": body.faces},
                                                        idempotency_key))

    # -------------------------------------------------------------------------- search by face

    @app.post(f"{V}/search/face", dependencies=READ_AUTH,
                          openapi_extra=image_body("file"),
                          summary="The collection's photos that contain a face of this photo")
    async def search_face(
        self, request: Request,
        face: Optional[int] = Query(None, ge=0, le=99, description=(
            "which detected face to search for (default: the photo's main face)")),
        top_k: int = Query(50, ge=1, le=500, description="photos at most"),
        threshold: Optional[float] = Query(None, ge=0, le=4, description=(
            "squared L2 distance at most (default: the people's assign distance)")),
    ):
        return await self._run("search", self._search_face(request, face, top_k, threshold))

    async def _search_face(self, request, face, top_k, threshold):
        from facenet_platform.core.alignment import select_central_face
        from facenet_platform.core.detection import Detections

        source, data = single_upload(request.headers.get("content-type"),
                                     await self._body(request))
        det = await self._detect_one(source, data, self.args.max_faces_default())
        if len(det) == 0:
            raise NoFaceFoundError(f"{source}: no face found")
        if face is None:
            face = select_central_face(Detections(det.boxes, det.scores, det.landmarks),
                                       (det.height, det.width))
        elif face >= len(det):
            raise ApiError(400, "invalid_parameter",
                           f"face: the photo has {len(det)} face(s), numbered from 0")
        embedding = (await self._embed(det.crops[[face]]))[0]
        hits = self._ok(await self._call(self.people.search_face, embedding, top_k, threshold))
        return {"faces": [{"index": i, "box": [round(float(v), 1) for v in det.boxes[i]],
                           "score": round(float(det.scores[i]), 5)} for i in range(len(det))],
                "face": int(face), "image": {"width": det.width, "height": det.height},
                "photos": hits}
