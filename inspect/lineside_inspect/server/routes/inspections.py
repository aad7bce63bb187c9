"""Review API (reviewer role): browse inspections, images, record reviews, dashboard
figures, and the reviewed set as a dataset export for training."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Annotated, Any, Literal

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, FiniteFloat
from starlette.background import BackgroundTask

from lineside_inspect.draw import annotate
from lineside_inspect.imageio import decode_image, encode_jpeg
from lineside_inspect.runtime.types import Detections
from lineside_inspect.server.deps import Reviewer, get_store
from lineside_inspect.server.responses import DashboardStats, errors
from lineside_inspect.store.models import InspectionRow

router = APIRouter(prefix="/v1", tags=["review"])


def row_json(row: InspectionRow) -> dict[str, Any]:
    return {
        "id": row.id, "created_at": row.created_at.isoformat(), "camera_id": row.camera_id,
        "part_id": row.part_id, "verdict": row.verdict, "reasons": row.reasons,
        "defects": row.defects, "recipe": {"name": row.recipe_name, "version": row.recipe_version},
        "model": {"name": row.model_name, "version": row.model_version, "sha256": row.model_sha256},
        "class_names": row.class_names, "timings_ms": row.timings_ms,
        "width": row.width, "height": row.height, "has_image": row.image_path is not None,
        "review_state": row.review_state, "box_id": row.box_id,
        "reference": None if row.reference_path is None and row.reference_name is None else {
            "name": row.reference_name, "has_image": row.reference_path is not None},
        "reviews": [{"id": r.id, "created_at": r.created_at.isoformat(), "reviewer": r.reviewer,
                     "action": r.action, "boxes": r.boxes, "note": r.note} for r in row.reviews],
    }


@router.get("/inspections")
def list_inspections(
    request: Request, who: Reviewer,
    verdict: Literal["pass", "fail"] | None = None,
    camera_id: str | None = None, recipe: str | None = None, label: str | None = None,
    min_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    since: Annotated[datetime | None, Query(description="ISO time; without an offset: UTC")] = None,
    until: Annotated[datetime | None, Query(description="ISO time; without an offset: UTC")] = None,
    review_state: Literal["unreviewed", "confirmed", "corrected", "reviewed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> dict[str, Any]:
    total, rows = get_store(request).query(
        verdict=verdict, camera_id=camera_id, recipe=recipe, label=label, min_score=min_score,
        max_score=max_score, since=since, until=until, review_state=review_state, limit=limit,
        offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "items": [row_json(r) for r in rows]}


@router.get("/inspections/{inspection_id}")
def get_inspection(inspection_id: str, request: Request, who: Reviewer) -> dict[str, Any]:
    return row_json(get_store(request).get(inspection_id))


def _send(f: IO[bytes]) -> StreamingResponse:
    """Stream a file the store opened: retention removing it meanwhile cannot turn the
    answer into a 500 naming its path (an open file outlives its name)."""
    size = os.fstat(f.fileno()).st_size

    def chunks() -> Iterator[bytes]:
        with f:
            while block := f.read(256 * 1024):
                yield block

    return StreamingResponse(chunks(), media_type=mimetypes.guess_type(str(f.name))[0]
                             or "application/octet-stream",
                             headers={"Content-Length": str(size)}, background=BackgroundTask(f.close))


@router.get("/inspections/{inspection_id}/image")
def original_image(inspection_id: str, request: Request, who: Reviewer) -> StreamingResponse:
    store = get_store(request)
    return _send(store.open_image(store.get(inspection_id)))


@router.get("/inspections/{inspection_id}/reference")
def reference_image(inspection_id: str, request: Request, who: Reviewer) -> StreamingResponse:
    """The reference image a reference model compared this inspection's image with."""
    store = get_store(request)
    return _send(store.open_reference(store.get(inspection_id)))


@router.get("/inspections/{inspection_id}/annotated")
async def annotated_image(inspection_id: str, request: Request, who: Reviewer) -> Response:
    store = get_store(request)
    row = await anyio.to_thread.run_sync(store.get, inspection_id)

    def draw() -> bytes:
        with store.open_image(row) as f:
            raw = f.read()
        boxes = row.reviews[-1].boxes if row.reviews else row.defects
        dets = Detections(np.array([b["box"] for b in boxes]),
                          np.array([b.get("score", 1.0) for b in boxes]),
                          np.array([row.class_names.index(b["label"]) for b in boxes]),
                          row.class_names)
        return encode_jpeg(annotate(decode_image(raw), dets, row.verdict))

    return Response(await anyio.to_thread.run_sync(draw), media_type="image/jpeg")


class ReviewBox(BaseModel):
    label: str = Field(..., max_length=128, description="a class of the inspection's model")
    box: Annotated[list[FiniteFloat], Field(min_length=4, max_length=4, description=(
        "[x1, y1, x2, y2] in image pixels"))]


class ReviewIn(BaseModel):
    action: Literal["confirm", "false_reject", "missed_defect", "relabel"]
    boxes: list[ReviewBox] | None = Field(None, max_length=1000,
                                          description="missed_defect: the boxes the model missed")
    index: int | None = Field(None, description="relabel: which box")
    label: str | None = Field(None, description="relabel: the new class")
    note: str = Field("", max_length=2000)


@router.post("/inspections/{inspection_id}/reviews")
def add_review(inspection_id: str, body: ReviewIn, request: Request,
               who: Reviewer) -> dict[str, Any]:
    boxes = None if body.boxes is None else [b.model_dump() for b in body.boxes]
    row = get_store(request).review(inspection_id, reviewer=who.name, action=body.action,
                                 boxes=boxes, index=body.index, label=body.label,
                                 note=body.note)
    return row_json(row)


@router.get("/stats", responses=errors(401, 403, 404, 422))
def stats(request: Request, who: Reviewer,
          hours: Annotated[int, Query(ge=1, le=24 * 90)] = 24) -> DashboardStats:
    """Dashboard figures over the last ``hours`` (404 when the server keeps no store)."""
    doc = get_store(request).stats(hours)
    cams = request.app.state.cameras
    doc["cameras"] = cams.health() if cams is not None else []
    return DashboardStats.model_validate(doc)
