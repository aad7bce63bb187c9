"""The line's MQTT API (admin): events set aside in the outbox as too large for the broker
(``mqtt.py``). They are queued again at the next start, the only time
``line.mqtt.max_message_bytes`` can change, so there is no retry route: one now would be
set aside again at once."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from lineside_inspect.errors import NotFoundError
from lineside_inspect.server.deps import Admin, RoleFirstRoute
from lineside_inspect.server.responses import errors

router = APIRouter(route_class=RoleFirstRoute, prefix="/v1/line", tags=["line"])


class MqttSetAside(BaseModel):
    seq: int = Field(description="the event's place in the outbox")
    topic: str = Field(description="the topic it was to go to")
    refused: str = Field(description="why it was set aside (code: message)")
    at: str = Field(description="when it was set aside (ISO time)")


class MqttSetAsidePage(BaseModel):
    count: int = Field(description="every set-aside event, of which `items` are the oldest")
    items: list[MqttSetAside]


@router.get("/mqtt/set-aside", responses=errors(401, 403, 404, 422))
async def list_mqtt_set_aside(request: Request, who: Admin,
                              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> MqttSetAsidePage:
    """MQTT events set aside as over ``line.mqtt.max_message_bytes``, oldest first, with
    the reason. They are sent again at the next start (with the limit raised)."""
    publisher = getattr(request.app.state, "mqtt", None)
    if publisher is None:
        raise NotFoundError("MQTT delivery has not started (line.mqtt)")
    outbox = publisher.outbox

    def read() -> MqttSetAsidePage:
        items = [MqttSetAside(seq=e.id, topic=e.topic, refused=str(e.payload.get("refused", "")),
                              at=str(e.payload.get("at", "")))
                 for e in outbox.set_aside_events(limit)]
        return MqttSetAsidePage(count=outbox.set_aside_count(), items=items)

    return await anyio.to_thread.run_sync(read)
