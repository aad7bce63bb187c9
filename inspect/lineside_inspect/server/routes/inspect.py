"""``POST /v1/inspect``: an encoded frame in, a verdict out."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response

from lineside_inspect.draw import annotate
from lineside_inspect.imageio import encode_jpeg
from lineside_inspect.schemas import InspectionResult
from lineside_inspect.server.body import read_upload
from lineside_inspect.server.deps import LimiterDep, LineUser, ServiceDep, SettingsDep
from lineside_inspect.server.responses import errors, verdict_response

router = APIRouter(prefix="/v1", tags=["inspect"])


@router.post(
    "/inspect",
    summary="Inspect one image",
    response_model=InspectionResult,
    responses={200: {"content": {"image/jpeg": {}},
                     "description": "the verdict (JSON), or with annotated=1 the JPEG"},
               **errors(400, 401, 403, 404, 408, 413, 415, 422, 502, 503)},
    openapi_extra={"requestBody": {"content": {
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/bmp": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "format": "binary"},
            "reference": {"type": "string", "format": "binary"}}}},
    }, "required": True}},
)
async def inspect_route(
    request: Request,
    who: LineUser,
    service: ServiceDep,
    limiter: LimiterDep,
    settings: SettingsDep,
    recipe: Annotated[str | None, Query(description="recipe name; default recipe if omitted")] = None,
    camera_id: Annotated[str | None, Query(max_length=128)] = None,
    part_id: Annotated[str | None, Query(max_length=256)] = None,
    annotated: Annotated[bool, Query(description="answer with the annotated JPEG")] = False,
    reference: Annotated[str | None, Query(
        max_length=128, description="reference models: name of a registered reference image")] = None,
) -> Any:
    """Body: the encoded image (image/jpeg, image/png, image/bmp) or multipart with a
    file field ``image``. A reference model also needs the defect-free image of the same
    view: a multipart file field ``reference``, or ``reference=NAME`` of one registered
    with ``PUT /v1/references/NAME``. Answers the verdict JSON (or, with ``annotated=1``,
    a JPEG with boxes drawn and the verdict in ``X-Lineside-*`` headers)."""
    async with limiter.admission():  # before the body is read: a full server refuses at once
        upload = await read_upload(request, settings.max_body_bytes)
        result = await service.inspect_image(upload.data, recipe=recipe, camera_id=camera_id,
                                             part_id=part_id, reference_name=reference,
                                             reference_data=upload.reference)
    if annotated:
        jpeg = await anyio.to_thread.run_sync(
            lambda: encode_jpeg(annotate(result.image, result.defects, result.verdict)))
        card = result.detector.card
        return Response(jpeg, media_type="image/jpeg", headers={
            "X-Lineside-Inspection-Id": result.id, "X-Lineside-Verdict": result.verdict,
            "X-Lineside-Model": f"{card.name}:{card.version}"})
    return verdict_response(result)
