"""Named reference images for reference models: ``/v1/references``.

Anyone who may inspect may list and read them; only an admin may register, replace or
delete one, since every verdict of a reference model depends on its reference.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request, Response

from lineside_inspect.server.body import read_body
from lineside_inspect.server.deps import Admin, LineUser, ReferencesDep, SettingsDep

router = APIRouter(prefix="/v1/references", tags=["references"])
MEDIA = {"png": "image/png", "jpg": "image/jpeg", "bmp": "image/bmp"}


@router.get("")
def list_references(who: LineUser, references: ReferencesDep) -> dict[str, Any]:
    return {"items": references.names()}


@router.get("/{name}")
def get_reference(name: str, who: LineUser, references: ReferencesDep) -> Response:
    ref = references.get(name)
    return Response(ref.raw, media_type=MEDIA[ref.ext],
                    headers={"X-Lineside-Reference-Sha256": ref.sha256})


@router.put("/{name}", openapi_extra={"requestBody": {"content": {
    t: {"schema": {"type": "string", "format": "binary"}} for t in MEDIA.values()},
    "required": True}})
async def put_reference(name: str, request: Request, who: Admin, references: ReferencesDep,
                        settings: SettingsDep) -> dict[str, Any]:
    """Body: the encoded defect-free image (PNG, JPEG or BMP) of the view ``name`` names."""
    data = await read_body(request, settings.max_body_bytes)
    ref = await anyio.to_thread.run_sync(references.put, name, data)
    height, width = ref.image.shape[:2]
    return {**ref.to_json(), "width": width, "height": height}


@router.delete("/{name}", status_code=204)
def delete_reference(name: str, who: Admin, references: ReferencesDep) -> Response:
    references.delete(name)
    return Response(status_code=204)
