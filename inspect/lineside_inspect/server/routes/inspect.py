"""``POST /v1/inspect``: an encoded frame in, a verdict out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from lineside_inspect.names import Name, PartId
from lineside_inspect.schemas import InspectionResult
from lineside_inspect.server.body import read_upload
from lineside_inspect.server.deps import RoleFirstRoute, authorize, key_holder, query_model, query_parameters
from lineside_inspect.server.limiter import Limiter
from lineside_inspect.server.responses import (
    VERDICT_OR_JPEG,
    annotated_response,
    errors,
    image_body,
    verdict_response,
)
from lineside_inspect.server.service import InspectionService

router = APIRouter(route_class=RoleFirstRoute, prefix="/v1", tags=["inspect"])


class InspectQuery(BaseModel):
    """``POST /v1/inspect``'s query parameters (unknown ones are ignored, as elsewhere)."""

    recipe: Name | None = Field(None, description="recipe name; default recipe if omitted")
    # a name (names.py): the camera's folder when reviewed inspections are pulled as a
    # dataset, and an MQTT topic level; '../x', 'a/b' or '/abs' are refused (422)
    camera_id: Name | None = Field(None, description="the camera that took the image")
    part_id: PartId | None = None  # kept as sent (names.PartId), what part filters match
    annotated: bool = Field(False, description="answer with the annotated JPEG")
    reference: str | None = Field(None, max_length=128, description=(
        "reference models: name of a registered reference image"))


@router.post(
    "/inspect",
    operation_id="inspect",  # what clients call; the function is inspect_route
    summary="Inspect one image",
    response_model=InspectionResult,
    responses={**VERDICT_OR_JPEG, **errors(400, 401, 403, 404, 408, 413, 415, 422, 502, 503)},
    openapi_extra={"parameters": query_parameters(InspectQuery), **image_body(multipart=True)},
)
async def inspect_route(request: Request) -> Any:
    """Body: the encoded image (image/jpeg, image/png, image/bmp) or multipart with a
    file field ``image``. A reference model also needs the defect-free image of the same
    view: a multipart file field ``reference``, or ``reference=NAME`` of one registered
    with ``PUT /v1/references/NAME``. Answers the verdict JSON (or, with ``annotated=1``,
    a JPEG with boxes drawn and the verdict in ``X-Lineside-*`` headers)."""
    # The hot path takes its caller, parameters and services by hand: FastAPI's dependency
    # and per-parameter solving cost ~0.4 ms per inspection here (measured, a tenth of the
    # server's budget); the same checks, the same 401/403/422 answers, and the same
    # parameters in /docs (openapi_extra above).
    who = authorize(request, "line")
    query = query_model(InspectQuery, request)
    state = request.app.state
    service: InspectionService = state.service
    limiter: Limiter = state.limiter
    # before the body is read: a full server refuses at once, and so does a key's full share
    async with limiter.admission(key_holder(request, who)):
        upload = await read_upload(request, state.settings.max_body_bytes)
        result = await service.inspect_image(
            upload.data, recipe=query.recipe, camera_id=query.camera_id, part_id=query.part_id,
            reference_name=query.reference, reference_data=upload.reference,
            draw=query.annotated)
    return annotated_response(result) if query.annotated else verdict_response(result)
