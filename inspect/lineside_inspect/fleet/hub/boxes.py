"""The fleet on the hub: each box's last status report (``POST {STATUS}``: what it runs,
whether it is ready, how far behind its forwarding is) and the listing the fleet page
reads (``GET /fleet/v1/boxes``: which box runs what, when it last reported, its backlog,
and the newest inspection the hub holds from it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import JSON, Boolean, String, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Mapped, Session, mapped_column

from lineside_inspect.fleet.hub.config import HubSettings
from lineside_inspect.fleet.hub.pins import check_pinned
from lineside_inspect.fleet.hub.reviews import BoxId, BoxKey, own_box
from lineside_inspect.fleet.hub.tables import BoxCountRow, HubBase
from lineside_inspect.fleet.protocol import PREFIX, STATUS, BoxStatus
from lineside_inspect.server.deps import RoleFirstRoute, Viewer, get_store
from lineside_inspect.server.handlers import database_failed
from lineside_inspect.server.responses import errors
from lineside_inspect.store import Store
from lineside_inspect.store.utc import UTCDateTime, as_utc

BOXES = PREFIX + "/boxes"
# a box reports every few seconds (fleet/box/status.py): silent this long, it is "silent"
SILENT_AFTER_S = 60.0

router = APIRouter(route_class=RoleFirstRoute, tags=["fleet"])


class BoxStatusRow(HubBase):
    """A box's latest report (one row per box, replaced by each report)."""

    __tablename__ = "fleet_boxes"

    box_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime())
    site: Mapped[str | None] = mapped_column(String(64), nullable=True)
    line: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ready: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[dict[str, Any]] = mapped_column(JSON)  # the BoxStatus as sent


class StatusAck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    received_at: datetime


class FleetBox(BaseModel):
    """One box as the fleet page shows it."""

    model_config = ConfigDict(extra="forbid")
    box_id: str
    reported_at: datetime | None = Field(description="its last status report (None: never)")
    silent_s: float | None = Field(description="seconds since that report")
    silent: bool = Field(description=f"no report for {SILENT_AFTER_S:g} s or more")
    status: BoxStatus | None
    inspections_held: int = Field(description="its inspections the hub holds")
    last_inspection_at: datetime | None = Field(description="the newest of them")


class Fleet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    now: datetime
    silent_after_s: float
    boxes: list[FleetBox]


def record_status(store: Store, box_id: str, status: BoxStatus, now: datetime) -> None:
    with Session(store.engine) as s, s.begin():
        row = s.get(BoxStatusRow, box_id, with_for_update=True)
        if row is None:
            row = BoxStatusRow(box_id=box_id)
            s.add(row)
        row.reported_at, row.site, row.line = now, status.site, status.line
        row.ready, row.status = status.ready, status.model_dump(mode="json")


def fleet(store: Store, now: datetime) -> Fleet:
    """Every box that reported or forwarded, by site, line and id."""
    with Session(store.engine) as s:
        reports = {r.box_id: r for r in s.scalars(select(BoxStatusRow))}
        # one row per box, kept by the forward route: never a count over the inspections
        held = {c.box_id: (c.held, c.last_at) for c in s.scalars(select(BoxCountRow))}
    boxes = []
    for box_id in sorted(set(reports) | {b for b in held if b is not None}):
        r = reports.get(box_id)
        n, last = held.get(box_id, (0, None))
        age = (now - as_utc(r.reported_at)).total_seconds() if r is not None else None
        boxes.append(FleetBox(
            box_id=box_id, reported_at=r.reported_at if r is not None else None, silent_s=age,
            silent=age is None or age >= SILENT_AFTER_S,
            status=BoxStatus.model_validate(r.status) if r is not None else None,
            inspections_held=n, last_inspection_at=as_utc(last) if last is not None else None))
    boxes.sort(key=lambda b: ((b.status.site or "") if b.status else "",
                              (b.status.line or "") if b.status else "", b.box_id))
    return Fleet(now=now, silent_after_s=SILENT_AFTER_S, boxes=boxes)


@router.post(STATUS, responses=errors(), summary="A box's status report")
def report_status(box_id: BoxId, status: BoxStatus, who: BoxKey, request: Request,
                  store: Annotated[Store, Depends(get_store)]) -> StatusAck:
    own_box(box_id, who)
    check_pinned(who, status.site, status.line, "the status report")
    now = datetime.now(UTC)
    try:
        record_status(store, box_id, status, now)
    except OperationalError as exc:  # a refused login said as such (session 51)
        raise database_failed(request, exc) from None
    return StatusAck(received_at=now)


@router.get(BOXES, responses=errors(401, 403), summary="The fleet: every box and its state")
def list_boxes(who: Viewer, store: Annotated[Store, Depends(get_store)]) -> Fleet:
    return fleet(store, datetime.now(UTC))


def install(app: FastAPI, settings: HubSettings) -> None:
    """The table is the hub's own: made at start, after the store (never on a box)."""

    def start() -> None:
        if app.state.store is not None:
            BoxStatusRow.__table__.create(app.state.store.engine, checkfirst=True)  # type: ignore[attr-defined]

    app.state.on_startup.append(start)
