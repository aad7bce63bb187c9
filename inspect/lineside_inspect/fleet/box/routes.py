"""The box's fleet API (admin): inspections the hub refused and the forwarder set aside
(``forward.py``), and sending them again once the hub is fixed."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from lineside_inspect.errors import NotFoundError
from lineside_inspect.fleet.box.forward import Forwarder
from lineside_inspect.server.deps import Admin, RoleFirstRoute
from lineside_inspect.server.responses import errors

router = APIRouter(route_class=RoleFirstRoute, prefix="/v1/fleet", tags=["fleet"])


class SetAside(BaseModel):
    seq: int = Field(description="the event's place in the box's outbox")
    inspection_id: str
    created_at: datetime = Field(description="when the inspection was made")
    refused: str = Field(description="the hub's refusal (code: message)")
    at: str = Field(description="when it was set aside (ISO time)")


class SetAsidePage(BaseModel):
    count: int = Field(description="every set-aside inspection, of which `items` are the oldest")
    items: list[SetAside]
    reviews: int = Field(0, description="reviews made here, set aside with their inspection "
                         "or because one alone is over the hub's max_json_bytes")


class Retried(BaseModel):
    retried: int = Field(description="inspections queued again, after those waiting")


def _forwarder(request: Request) -> Forwarder:
    forwarder: Forwarder | None = getattr(request.app.state, "forwarder", None)
    if forwarder is None:
        raise NotFoundError("this box forwards nothing to a hub (no fleet.hub_url, or no store)")
    return forwarder


@router.get("/set-aside", responses=errors(401, 403, 404, 422))
async def list_set_aside(request: Request, who: Admin,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> SetAsidePage:
    """Inspections the hub refused to store, oldest first, with its reason. They stay on
    this box (retention keeps them) until sent again."""
    outbox = _forwarder(request).outbox

    def read() -> SetAsidePage:
        items = [SetAside(seq=e.id, inspection_id=e.topic, created_at=e.created_at,
                          refused=str(e.payload.get("refused", "")), at=str(e.payload.get("at", "")))
                 for e in outbox.set_aside_events(limit)]
        sync = getattr(request.app.state, "fleet_reviews", None)
        reviews = sync.outbox.set_aside_count() if sync is not None else 0
        return SetAsidePage(count=outbox.set_aside_count(), items=items, reviews=reviews)

    return await anyio.to_thread.run_sync(read)


@router.post("/set-aside/retry", responses=errors(401, 403, 404, 408, 413))
async def retry_set_aside(request: Request, who: Admin) -> Retried:
    """Send every set-aside inspection again, after those waiting (once the hub was fixed,
    e.g. a limit raised). One the hub still refuses is set aside again."""
    forwarder = _forwarder(request)
    sync = getattr(request.app.state, "fleet_reviews", None)
    if sync is None:
        return Retried(retried=await anyio.to_thread.run_sync(forwarder.retry_set_aside))
    # the inspections, then their reviews (sent while their inspection was still aside, a
    # review would be dropped as never to be forwarded), under the review sync's lock
    return Retried(retried=await anyio.to_thread.run_sync(sync.retry_with,
                                                          forwarder.retry_set_aside))
