"""``POST /v1/inspect``: an encoded frame in, a verdict out."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response

from lineside_inspect.draw import annotate
from lineside_inspect.imageio import encode_jpeg, sniff_format
from lineside_inspect.inspector import Inspection, inspect
from lineside_inspect.references import resolve_reference
from lineside_inspect.server.body import read_image_upload
from lineside_inspect.server.deps import (
    LimiterDep,
    LineUser,
    MetricsDep,
    ReferencesDep,
    RegistryDep,
    SettingsDep,
)

router = APIRouter(prefix="/v1", tags=["inspect"])


def count(app: Any, result: Inspection) -> None:
    """Count the inspection in the metrics and hand it to the store (if configured)."""
    metrics = app.state.metrics
    metrics.inspections.labels(result.verdict, result.recipe.name, result.camera_id or "").inc()
    for label in result.defects.labels:
        metrics.defects.labels(label).inc()
    for stage, ms in result.timings_ms.items():
        metrics.latency.labels(stage).observe(ms / 1000)
    store = getattr(app.state, "store", None)
    if store is not None:
        result.stored = store.save(result)


def record(request: Request, result: Inspection, metrics: Any) -> None:
    count(request.app, result)


@router.post(
    "/inspect",
    summary="Inspect one image",
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
    registry: RegistryDep,
    limiter: LimiterDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    references: ReferencesDep,
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
    rule = registry.recipe(recipe)
    detector = registry.detector(rule.model, rule.model_version)  # pinned for this request
    upload = await read_image_upload(request, settings.max_body_bytes, settings.max_pixels)
    ref = resolve_reference(detector.needs_reference, detector.card.name, references,
                            data=upload.reference, name=reference)
    image, raw = upload.image, upload.raw
    metrics.queue.set(limiter.in_system)
    result = await limiter.run(lambda: inspect(image, detector, rule, decode_ms=upload.decode_ms,
                                               camera_id=camera_id, part_id=part_id,
                                               reference=ref))
    result.raw, result.raw_ext = raw, sniff_format(raw).replace("jpeg", "jpg")
    await anyio.to_thread.run_sync(record, request, result, metrics)
    if annotated:
        jpeg = encode_jpeg(annotate(image, result.defects, result.verdict))
        return Response(jpeg, media_type="image/jpeg", headers={
            "X-Lineside-Inspection-Id": result.id, "X-Lineside-Verdict": result.verdict,
            "X-Lineside-Model": f"{detector.card.name}:{detector.card.version}"})
    return result.to_json()
