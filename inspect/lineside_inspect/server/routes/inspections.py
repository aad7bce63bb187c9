"""Review API (reviewer role): browse inspections, images, record reviews, dashboard
figures, and the reviewed set as a dataset export for training."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Annotated, Literal

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, FiniteFloat, StrictInt
from starlette.background import BackgroundTask

from lineside_inspect.draw import annotate
from lineside_inspect.errors import ImageError, NotFoundError, Overloaded
from lineside_inspect.imageio import decode_frame, encode_jpeg
from lineside_inspect.names import OneLine, Text
from lineside_inspect.runtime.types import Detections
from lineside_inspect.schemas import InspectionDetail, InspectionPage, Outcome, ReviewAction
from lineside_inspect.server.deps import Reviewer, RoleFirstRoute, Viewer, get_store
from lineside_inspect.server.query import refuse_unknown
from lineside_inspect.server.responses import DashboardStats, errors, media
from lineside_inspect.server.routes.page_data import FleetName, PartFilter, shared_box
from lineside_inspect.store.pull_rules import with_pull
from lineside_inspect.store.stats import Shifts
from lineside_inspect.store.utc import UTCTime, as_utc

router = APIRouter(route_class=RoleFirstRoute, prefix="/v1", tags=["review"])


@router.get("/inspections", responses=errors(401, 403, 404, 422))
def list_inspections(
    request: Request, who: Reviewer,
    verdict: Outcome | None = None,
    camera_id: Annotated[str | None, Query(max_length=128, description=(
        "only this camera's ('': inspections sent without one, as /v1/stats has it)"))] = None,
    part_id: PartFilter = None,  # held to what POST /v1/inspect keeps (names.PartId)
    recipe: Annotated[str | None, Query(max_length=128)] = None,
    label: Annotated[str | None, Query(max_length=128)] = None,
    site: FleetName = None, line: FleetName = None, box_id: FleetName = None,
    min_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    since: Annotated[UTCTime | None, Query(description="ISO time; without an offset: UTC")] = None,
    until: Annotated[UTCTime | None, Query(description=(
        "ISO time, exclusive; without an offset: UTC; after since"))] = None,
    review_state: Literal["unreviewed", "confirmed", "corrected", "reviewed"] | None = None,
    queue: Annotated[Literal["shadow", "to_label"] | None, Query(description=(
        "shadow: a shadow model disagreed with the verdict (its result: GET "
        "/v1/inspections/{id}/shadow); to_label: kept by active-learning capture"))] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> InspectionPage:
    """Stored inspections, newest first (404 when the server keeps no store). ``total``
    counts every stored row matching; a row that does not read as an inspection is left
    out of ``items`` and counted in ``left_out``: step pages by ``limit``. A parameter
    this list does not take is a 422 naming it and those it takes (:func:`_unknown`), as
    is a window or score range that holds nothing (:func:`_in_order`)."""
    _unknown(request)
    _in_order(since, until, min_score, max_score)
    store = get_store(request)
    total, rows = store.query(
        verdict=verdict, camera_id=camera_id, part_id=part_id, recipe=recipe, label=label,
        site=site, line=line, box_id=box_id, min_score=min_score,
        max_score=max_score, since=since, until=until, review_state=review_state, limit=limit,
        offset=offset, queue=queue)
    # a row that does not read as an inspection is left out (logged), not the list a 500;
    # total counts it (only reading a row tells), and left_out says so: items alone fell
    # short of total with nothing to tell a client why (session 40)
    items = store.records(rows)
    return InspectionPage(total=total, limit=limit, offset=offset, items=items,
                          left_out=len(rows) - len(items))


def _in_order(since: datetime | None, until: datetime | None, min_score: float | None,
              max_score: float | None) -> None:
    """Refuse ``until`` not after ``since`` (compared in UTC, a naive time being UTC) and
    ``max_score`` below ``min_score``, naming both bounds: the two swapped listed
    ``total: 0``, read as no inspections in that window (review, session 55)."""
    problems = []
    if since is not None and until is not None and as_utc(until) <= as_utc(since):
        problems.append({"loc": ("query", "until"), "msg": (
            f"{as_utc(until).isoformat()} is not after since ({as_utc(since).isoformat()}): "
            "the window [since, until) holds no time; since is its start, until its end")})
    if min_score is not None and max_score is not None and max_score < min_score:
        problems.append({"loc": ("query", "max_score"), "msg": (
            f"{max_score} is below min_score {min_score}: the range holds no score")})
    if problems:
        raise RequestValidationError([{"type": "value_error", "input": None, **p} for p in problems])


def _unknown(request: Request) -> None:
    """Refuse a parameter the list does not take: ignored, a reviewer's guess
    (``?status=fail``, ``?reviewed=false``) listed every inspection as if it filtered
    them (QA review, session 47); the guess meant is named (new-user review, session 47)."""
    refuse_unknown(request, list_inspections, "this list",
                   "unreviewed fails: verdict=fail&review_state=unreviewed")


@router.get("/inspections/{inspection_id}", responses=errors(401, 403, 404, 422))
def get_inspection(inspection_id: str, request: Request, who: Reviewer) -> InspectionDetail:
    """One stored inspection, with ``pull``: whether ``lineside data pull`` leaves it out
    as it is now reviewed, and why, by the pull's own rules (``store/pull_rules.py``):
    the review page shows it, and had its own copy of the rules (session 51)."""
    store = get_store(request)
    return with_pull(store.record(store.get(inspection_id), origins=True))


def _send(f: IO[bytes], name: str | None) -> StreamingResponse:
    """Stream a file the store opened: retention removing it meanwhile cannot turn the
    answer into a 500 naming its path (an open file outlives its name). ``name`` (the
    row's stored path) gives the media type; a hub's images are object-store streams,
    which have no file descriptor and so no Content-Length up front."""
    try:
        headers = {"Content-Length": str(os.fstat(f.fileno()).st_size)}
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        headers = {}

    def chunks() -> Iterator[bytes]:
        with f:
            while block := f.read(256 * 1024):
                yield block

    return StreamingResponse(chunks(), media_type=mimetypes.guess_type(name or "")[0]
                             or "application/octet-stream",
                             headers=headers, background=BackgroundTask(f.close))


@router.get("/inspections/{inspection_id}/image", response_class=Response, responses={
    **media("the image as it was sent", "image/jpeg", "image/png", "image/bmp"),
    **errors(401, 403, 404)})
def original_image(inspection_id: str, request: Request, who: Reviewer) -> StreamingResponse:
    store = get_store(request)
    row = store.get(inspection_id)
    return _send(store.open_image(row), row.image_path)


@router.get("/inspections/{inspection_id}/reference", response_class=Response, responses={
    **media("the reference image", "image/jpeg", "image/png", "image/bmp"),
    **errors(401, 403, 404)})
def reference_image(inspection_id: str, request: Request, who: Reviewer) -> StreamingResponse:
    """The reference image a reference model compared this inspection's image with."""
    store = get_store(request)
    row = store.get(inspection_id)
    return _send(store.open_reference(row), row.reference_path)


@router.get("/inspections/{inspection_id}/annotated", response_class=Response, responses={
    **media("the image with the (reviewed) boxes drawn", "image/jpeg"),
    **errors(401, 403, 404, 422, 503)})
async def annotated_image(inspection_id: str, request: Request, who: Reviewer) -> Response:
    store = get_store(request)
    row = await anyio.to_thread.run_sync(store.get, inspection_id)
    # boxes drawn from a row that does not read as an inspection: 422 naming it, not a 500
    await anyio.to_thread.run_sync(store.record, row)

    def read() -> bytes:  # outside the drawing slots: a slow object store holds none
        with store.open_image(row) as f:
            return f.read()

    raw = await anyio.to_thread.run_sync(read)
    # the server's limit (a hub's: the built-in one its ingest holds images to), not the
    # built-in one: a frame the server took and judged over it was a 404 "cannot be drawn"
    max_pixels: int = request.app.state.settings.max_pixels

    def draw() -> bytes:
        boxes = row.reviews[-1].boxes if row.reviews else row.defects
        dets = Detections(np.array([b["box"] for b in boxes]),
                          np.array([b.get("score", 1.0) for b in boxes]),
                          np.array([row.class_names.index(b["label"]) for b in boxes]),
                          row.class_names)
        try:  # as the service decoded it: the one frame decode, the server's max_pixels
            image = decode_frame(raw, max_pixels)
        except ImageError as exc:  # stored, not sent: a 400 "invalid_image" blamed the caller
            raise NotFoundError(f"the stored image of inspection {row.id} cannot be drawn: "
                                f"{exc.message}") from None
        return encode_jpeg(annotate(image, dets, row.verdict))

    slots = _drawing(request)
    try:
        with anyio.fail_after(DRAW_WAIT_S):
            await slots.acquire()
    except TimeoutError:
        raise Overloaded(f"{DRAWINGS_AT_ONCE} annotated images are being drawn and more "
                         f"waited over {DRAW_WAIT_S:g}s; retry shortly") from None
    try:
        return Response(await anyio.to_thread.run_sync(draw), media_type="image/jpeg")
    finally:
        slots.release()


DRAWINGS_AT_ONCE = 2
DRAW_WAIT_S = 10.0


def _drawing(request: Request) -> anyio.CapacityLimiter:
    """The app's limit on annotated images drawn at once: each decodes a whole image (up
    to max_pixels, 192 MB at 64 Mpx), and any reviewer key can ask for many side by side;
    anyio's shared pool would run 40 (on a hub, of images boxes sent)."""
    state = request.app.state
    limiter: anyio.CapacityLimiter | None = getattr(state, "drawing_limiter", None)
    if limiter is None:  # made on the event loop, on first use (no race: no await between)
        limiter = state.drawing_limiter = anyio.CapacityLimiter(DRAWINGS_AT_ONCE)
    return limiter


# a field misspelt (``seen_review``) must not pass as absent: it would skip the conflict check
# strict as index is: "1" or true is no coordinate (lax pydantic took ["1", 0, 5, 5])
Coordinate = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class ReviewBox(BaseModel, extra="forbid"):
    label: OneLine = Field(..., max_length=128, description="a class of the inspection's model")
    box: Annotated[list[Coordinate], Field(min_length=4, max_length=4, description=(
        "[x1, y1, x2, y2] in image pixels"))]
    # a defect copied from the inspection (GET .../inspections/{id}) carries its score:
    # accepted, not kept (a reviewer's box has none)
    score: FiniteFloat | None = Field(None, description="ignored")


class ReviewIn(BaseModel, extra="forbid"):
    action: ReviewAction
    boxes: list[ReviewBox] | None = Field(None, max_length=1000,
                                          description="missed_defect: the boxes the model missed")
    # strict: JSON's true, 1.0 or "1" is no box number (lax pydantic took true as box 1)
    index: StrictInt | None = Field(None, ge=0, description=(
        "relabel, remove_box: which box of the truth after the latest review (0-based)"))
    label: OneLine | None = Field(None, max_length=128, description="relabel: the new class")
    note: Text = Field("", max_length=2000)  # lines are fine, a NUL is not
    seen_reviews: StrictInt | None = Field(None, ge=0, le=10**6, description=(
        "how many reviews the inspection had when you looked; if it has more now, 409 "
        "review_conflict and nothing is saved (omit to add a review unconditionally)"))


@router.post("/inspections/{inspection_id}/reviews",
             responses=errors(401, 403, 404, 409, 413, 422))
def add_review(inspection_id: str, body: ReviewIn, request: Request,
               who: Reviewer) -> InspectionDetail:
    """The review recorded; the inspection as ``GET /v1/inspections/{id}`` answers it
    after (its ``pull`` as the review left it)."""
    boxes = None if body.boxes is None else [b.model_dump(exclude={"score"}) for b in body.boxes]
    row = get_store(request).review(inspection_id, reviewer=who.name, action=body.action,
                                 boxes=boxes, index=body.index, label=body.label,
                                 note=body.note, seen_reviews=body.seen_reviews)
    return with_pull(get_store(request).record(row, origins=True))


@router.get("/stats", responses=errors(401, 403, 404, 422))
def stats(request: Request, who: Viewer,
          hours: Annotated[int, Query(ge=1, le=24 * 90)] = 24,
          camera_id: Annotated[str | None, Query(max_length=128, description=(
              "narrow every figure to this camera ('': inspections sent without one)"))] = None,
          recipe: Annotated[str | None, Query(max_length=128)] = None,
          part_id: PartFilter = None,
          site: FleetName = None, line: FleetName = None, box_id: FleetName = None) -> DashboardStats:
    """Dashboard figures over the last ``hours`` (404 when the server keeps no store);
    shifts as the ``shifts`` setting has them. The yield figures (hourly, shifts,
    stations) include the inspections retention removed; the Pareto, model changes and
    review figures count the inspections still kept. ``part_id``: one part's inspections
    at every station and each re-inspection, the kept ones only (retention's history of
    the removed ones keeps no part ids). A parameter it does not take is a 422 naming it
    (``?part=SN-1`` gave the whole line's figures, read as the part's: session 48)."""
    refuse_unknown(request, stats, "/v1/stats")
    settings = request.app.state.settings
    # a box sharing its database: its own figures (box_id names another box's)
    doc = get_store(request).stats(hours, camera_id=camera_id, recipe=recipe, part_id=part_id,
                                   site=site, line=line,
                                   box_id=box_id, here=shared_box(request) is not None,
                                   shifts=Shifts.configured(settings.shifts, settings.shift_timezone))
    cams = request.app.state.cameras
    doc["cameras"] = cams.health() if cams is not None else []
    return DashboardStats.model_validate(doc)
