"""Named reference images for reference models: ``/v1/references``.

Anyone who may inspect may list and read them; only an admin may register, replace or
delete one, since every verdict of a reference model depends on its reference.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio.to_thread
from fastapi import APIRouter, Request, Response

from lineside_inspect.errors import LinesideError, ReferenceImageError
from lineside_inspect.recipes import Recipe
from lineside_inspect.recipes.rules import blank_reference
from lineside_inspect.references import Reference, check_name
from lineside_inspect.server.body import read_image_body
from lineside_inspect.server.deps import (
    Admin,
    LineUser,
    ReferencesDep,
    RegistryDep,
    RoleFirstRoute,
    ServiceDep,
    SettingsDep,
)
from lineside_inspect.server.registry import Registry
from lineside_inspect.server.responses import (
    ReferenceList,
    StoredReference,
    errors,
    image_body,
    media,
)

router = APIRouter(route_class=RoleFirstRoute, prefix="/v1/references", tags=["references"])
MEDIA = {"png": "image/png", "jpg": "image/jpeg", "bmp": "image/bmp"}


@router.get("", responses=errors(401, 403))
def list_references(who: LineUser, references: ReferencesDep) -> ReferenceList:
    return ReferenceList(items=references.names())


@router.get("/{name}", response_class=Response, responses={
    **media("the image file as registered; its sha256 in X-Lineside-Reference-Sha256",
            *MEDIA.values()),
    **errors(401, 403, 404, 422)})
def get_reference(name: str, who: LineUser, references: ReferencesDep) -> Response:
    ref = references.get(name)
    return Response(ref.raw, media_type=MEDIA[ref.ext],
                    headers={"X-Lineside-Reference-Sha256": ref.sha256})


def _not_blank(registry: Registry) -> Callable[[Reference], None]:
    """Refuses a golden image every inspection against would fail as ``blank_frame``: it
    spans fewer grey levels than the lowest ``min_contrast`` of the recipes loaded that
    judge with a reference. One that sets none takes a flat golden (it may be the part's
    own look, a tile all of one colour; frames against it are then not checked for
    contrast, :func:`~lineside_inspect.recipes.rules.blank_view`), so it counts as 0:
    one strict recipe refused the golden a station on an unset recipe could use."""
    def check(ref: Reference) -> None:
        # the verdict's own rule, per recipe: refused only where every one would fail it
        blanks = [blank_reference(r, ref) for r in registry.recipes()
                  if _judges_with_reference(registry, r)]
        if blanks and all(b is not None for b in blanks):
            minimum = min(b.minimum for b in blanks if b is not None)
            raise ReferenceImageError(
                f"reference image {ref.name}: nearly blank, it spans {ref.contrast} grey "
                f"levels (5th to 95th percentile), under {minimum}, the lowest min_contrast of the "
                "recipes that judge with a reference: every part inspected against it would "
                "fail as blank_frame. Send an image that shows the part, or set the recipe's "
                "min_contrast lower for a part that flat")
    return check


def _judges_with_reference(registry: Registry, recipe: Recipe) -> bool:
    try:
        return registry.detector_for(recipe).needs_reference
    except LinesideError:  # its version not loaded (unloaded since): it judges nothing now
        return False


@router.put("/{name}", responses=errors(400, 401, 403, 408, 413, 415, 422),
            openapi_extra=image_body())
async def put_reference(name: str, request: Request, who: Admin, references: ReferencesDep,
                        settings: SettingsDep, registry: RegistryDep) -> StoredReference:
    """Body: the encoded defect-free image (PNG, JPEG or BMP) of the view ``name`` names.
    422 invalid_reference for a nearly blank one (a lens cap, a lamp off): every part
    inspected against it would fail as ``blank_frame``."""
    data = await read_image_body(request, settings.max_body_bytes)
    ref = await anyio.to_thread.run_sync(references.put, name, data, _not_blank(registry))
    height, width = ref.image.shape[:2]
    return StoredReference(name=name, sha256=ref.sha256, width=width, height=height)


@router.delete("/{name}", status_code=204, response_class=Response,
               responses=errors(401, 403, 404, 408, 409, 413, 422))
def delete_reference(name: str, who: Admin, references: ReferencesDep,
                     service: ServiceDep) -> Response:
    """409 reference_breaks_camera when a configured camera names it (its triggers would
    all fail); a new image may be put under its name instead."""
    service.check_reference_unused(check_name(name))
    references.delete(name)
    return Response(status_code=204)
