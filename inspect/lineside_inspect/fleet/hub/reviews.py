"""Reviews on the hub: the plant's review page and dashboard, and reviews both ways.

- The edge server's review API and pages (``/review``, ``/dashboard``, ``/v1/inspections``
  with the fleet's filters ``site``, ``line``, ``box_id``) over every box's inspections;
  a review made here is marked ``origin="hub"``.
- ``POST {REVIEWS_UP}``: reviews made on a box, applied by the merge rule
  (``fleet/review_merge.py``) in ``seq`` order. A review of an inspection the hub does
  not hold (its box has not forwarded it; a box drops one it never forwarded) stops the
  batch there: ``through_seq`` says how far the hub got, ``waiting`` why (to a box that
  reads it: ``fleet/protocol.py``), and the box sends the rest again later. A review
  dated over ``MAX_CLOCK_AHEAD`` ahead of the hub's clock (a box's clock wrong before NTP,
  or a hostile box) is taken at the hub's time, with the box's time kept in its note and
  the log: last writer wins, so a clock far ahead must not win every later review, and
  waiting for the hub's clock to get there could hold the box's reviews for years. A
  review whose boxes the inspection cannot have is skipped and logged, and so is a review
  of another box's inspection (never applied): either would otherwise hold every later
  one. A box's review is recorded under ``reviewer (box id)``, the box id its key's (one
  a hub before that took as ``reviewer`` is still known when it is sent again). The box's
  cursor (``fleet_cursors``, stream ``reviews``) skips what was taken already.
- ``GET {REVIEWS_DOWN}?after=N``: reviews made on the hub of this box's inspections with
  a hub review id above ``N``, oldest first (``seq`` = the hub's review id).

Review ids on the hub grow in commit order because every review here is written under
the store's review lock (one hub process per database: ``docs/fleet.md``), so a box's
cursor never passes a review that commits later.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from lineside_inspect import ui
from lineside_inspect.errors import ConfigError, Forbidden
from lineside_inspect.fleet.hub.config import HubSettings
from lineside_inspect.fleet.hub.tables import CursorRow
from lineside_inspect.fleet.protocol import (
    FEATURES_HEADER,
    MAX_CLOCK_AHEAD,
    NAME_PATTERN,
    REVIEW_WAITING,
    REVIEWS_DOWN,
    REVIEWS_UP,
    ReviewAck,
    ReviewBatch,
    ReviewEvent,
)
from lineside_inspect.fleet.review_merge import apply_review, review_event
from lineside_inspect.names import BIDI_RE, scrub_text
from lineside_inspect.server.deps import Principal, RoleFirstRoute, get_store, require
from lineside_inspect.server.handlers import database_failed
from lineside_inspect.server.responses import errors
from lineside_inspect.server.routes import inspections, pages
from lineside_inspect.store import Store
from lineside_inspect.store.models import InspectionRow, ReviewRow
from lineside_inspect.store.utc import as_utc

log = logging.getLogger("lineside.hub")
STREAM = "reviews"  # this stream's name in fleet_cursors
DOWN_LIMIT = 500
_NAME = re.compile(NAME_PATTERN)

router = APIRouter(route_class=RoleFirstRoute)
fleet = APIRouter(route_class=RoleFirstRoute, tags=["fleet"])
BoxKey = Annotated[Principal, require("box")]
BoxId = Annotated[str, Path(description="the box's id (its key's name)")]


def own_box(box_id: str, who: Principal) -> str:
    """``box_id`` when the caller's key is that box's (403 otherwise)."""
    if not _NAME.fullmatch(box_id):
        raise ConfigError(f"box id must match {NAME_PATTERN}")
    if who.name != box_id:
        raise Forbidden(f"key {who.name!r} speaks only for box {who.name!r}, not {box_id!r}")
    return box_id


def _cursor(store: Store, box_id: str) -> int:
    with Session(store.engine) as s:
        row = s.get(CursorRow, (box_id, STREAM))
        return row.seq if row is not None else 0


def _advance(store: Store, box_id: str, seq: int) -> None:
    with Session(store.engine) as s, s.begin():
        row = s.scalar(select(CursorRow).where(CursorRow.box_id == box_id, CursorRow.stream == STREAM)
                       .with_for_update())
        if row is None:
            s.add(CursorRow(box_id=box_id, stream=STREAM, seq=seq, updated_at=datetime.now(UTC)))
        elif seq > row.seq:
            row.seq, row.updated_at = seq, datetime.now(UTC)


_AHEAD = f"{MAX_CLOCK_AHEAD.total_seconds() / 60:g} minutes"
CLOCK_WARN_EVERY_S = 60.0
_clock_warned: dict[str, float] = {}  # box id -> when its clock was last logged


def box_reviewer(reviewer: str, box_id: str, *, plain: bool = True) -> str:
    """A box's reviewer as the hub records it (origin "box"): ``alice (box1)``. A box
    names its reviewers as it likes; the last parenthesis is the box whose key sent it.
    Its bidirectional controls become U+FFFD (``plain``), as in forwarded records
    (ingest.py): a name holding U+202E showed the suffix reversed and the name's own
    text as another box's, ``(b-xob) op (box-a)`` for box-b's review on every page."""
    if plain:
        reviewer = BIDI_RE.sub("\ufffd", reviewer)
    suffix = f" ({box_id})"
    room = 128 - len(suffix)  # ReviewRow.reviewer's width
    return (reviewer if len(reviewer) <= room else reviewer[:room - 1] + "…") + suffix


def take_reviews(store: Store, box_id: str, batch: ReviewBatch) -> ReviewAck:
    """Apply box ``box_id``'s reviews in ``seq`` order; how far the hub got, and why it
    stopped there if it stopped before the end."""
    # a NUL in a box's review text becomes U+FFFD (as in forwarded records: ingest.py)
    items = sorted((e.model_copy(update={"reviewer": scrub_text(e.reviewer),
                                         "note": scrub_text(e.note), "boxes": scrub_text(e.boxes)})
                    for e in batch.items), key=lambda e: e.seq)
    cursor = _cursor(store, box_id)
    # every item is applied, even at or below the cursor: a review is recognised by its
    # content (apply_review: a resent one is a duplicate), and a box restored from a
    # backup sends new reviews under sequence numbers the hub has passed. The answer never
    # goes beyond what was sent, so the box settles nothing it did not send.
    through = 0
    waiting: Literal["inspection", "clock"] | None = None
    for sent in items:
        if sent.origin != "box":
            raise ConfigError(f"review seq {sent.seq}: a box sends only its own reviews "
                              "(origin 'box')")
        with Session(store.engine) as s:
            owner = s.scalar(select(InspectionRow.box_id).where(InspectionRow.id == sent.inspection_id))
        if owner is not None and owner != box_id:
            # never applied: a box reviews only its own inspections. Skipped, not refused:
            # a box whose id changed still holds reviews of what it forwarded under the
            # old id, and refusing the batch would hold every later review for good
            log.warning("hub: box %s review seq %d of %s skipped: the inspection is another "
                        "box's", box_id, sent.seq, sent.inspection_id)
            through = sent.seq
            continue
        if owner is None:
            waiting = "inspection"  # not forwarded yet: the box sends it again once it is
            break
        event, made = _as_recorded(sent, box_id)
        if event.created_at != made:
            _warn_clock(box_id, sent.seq, made)
        outcome: str
        try:
            # recorded as made on the box whose key sent it (session 40: it had no box)
            outcome = apply_review(store, event, also=_stored_before(sent, event, made, box_id),
                                   box_id=box_id)
        except ConfigError as exc:
            # a review this hub cannot take (a class its inspection's model does not have):
            # refusing the batch would hold every later review of the box forever
            log.warning("hub: box %s review seq %d of %s skipped: %s", box_id, sent.seq,
                        sent.inspection_id, exc.message)
            outcome = "skipped"
        if outcome == "unknown_inspection":  # gone since the owner was read
            waiting = "inspection"
            break
        through = sent.seq
    if through > cursor:
        _advance(store, box_id, through)
    return ReviewAck(through_seq=through, waiting=waiting)


def _as_recorded(sent: ReviewEvent, box_id: str) -> tuple[ReviewEvent, datetime]:
    """The review as the hub records it, and the time the box gave it. Last writer wins
    on the review's own time: one dated over ``MAX_CLOCK_AHEAD`` ahead of the hub (a box
    whose clock was wrong before NTP, or a hostile box) would win every later review of
    its inspection, so it is recorded at the hub's time, the box's kept in its note."""
    made = as_utc(sent.created_at)
    update: dict[str, object] = {"reviewer": box_reviewer(sent.reviewer, box_id)}
    now = datetime.now(UTC)
    if made > now + MAX_CLOCK_AHEAD:
        update |= {"created_at": now, "note": clock_note(sent.note, made)}
    return sent.model_copy(update=update), made


def clock_note(note: str, made: datetime) -> str:
    """The note of a review recorded at the hub's time: the box's own time follows it (it
    is also how a resent copy is known: its hub time differs, this does not)."""
    mark = (f"[made at {made.isoformat()} by the box's clock, over {_AHEAD} ahead of the "
            "hub's: recorded at the hub's time]")
    return f"{note}\n{mark}" if note else mark


def _stored_before(sent: ReviewEvent, event: ReviewEvent, made: datetime, box_id: str
                   ) -> Callable[[ReviewRow], bool]:
    """Besides ``event`` itself (apply_review), the forms this review may be stored in
    already, resent after a lost answer: under the box's plain reviewer name (a hub before
    reviewers were named with their box took it so), with its bidirectional controls (a
    hub before they were replaced), and at the hub's time of an earlier arrival when it
    was dated too far ahead then (known by its note)."""
    names = {event.reviewer, sent.reviewer, box_reviewer(sent.reviewer, box_id, plain=False)}
    clamped = clock_note(sent.note, made)

    def same(r: ReviewRow) -> bool:
        return (r.reviewer in names and r.action == event.action and r.origin == "box"
                and (as_utc(r.created_at) == made or r.note == clamped))

    return same


def _warn_clock(box_id: str, seq: int, at: datetime) -> None:
    """Logged once a minute per box: a box whose clock is still ahead sends many."""
    now = time.monotonic()
    if now - _clock_warned.get(box_id, -CLOCK_WARN_EVERY_S) >= CLOCK_WARN_EVERY_S:
        _clock_warned[box_id] = now
        log.warning("hub: box %s review seq %d made at %s, over %s ahead of the hub's clock: "
                    "recorded at the hub's time, the box's kept in its note (is the box's "
                    "clock right?)", box_id, seq, at.isoformat(), _AHEAD)


def hub_reviews(store: Store, box_id: str, after: int, limit: int) -> ReviewBatch:
    """Reviews made on the hub of ``box_id``'s inspections, hub review id above ``after``."""
    with Session(store.engine) as s:
        rows = s.scalars(select(ReviewRow).join(InspectionRow, InspectionRow.id == ReviewRow.inspection_id)
                         .where(InspectionRow.box_id == box_id, ReviewRow.origin == "hub",
                                ReviewRow.id > after)
                         .order_by(ReviewRow.id).limit(limit)).all()
        return ReviewBatch(items=[review_event(r, r.id) for r in rows])


# waiting is left out when None: the answer an older box knows (its ReviewAck forbids extras)
@fleet.post(REVIEWS_UP, responses=errors(), summary="Reviews made on a box",
            response_model_exclude_none=True)
def reviews_up(box_id: BoxId, batch: ReviewBatch, who: BoxKey, request: Request,
               store: Annotated[Store, Depends(get_store)],
               features: Annotated[str, Header(alias=FEATURES_HEADER, description=(
                   f"what the box reads beyond version 1: {REVIEW_WAITING!r} for "
                   "ReviewAck.waiting"))] = "") -> ReviewAck:
    """Apply a box's reviews by the merge rule (idempotent; see the module docstring)."""
    own_box(box_id, who)
    try:
        ack = take_reviews(store, box_id, batch)
    except OperationalError as exc:  # a refused login said as such (session 51)
        raise database_failed(request, exc) from None
    if REVIEW_WAITING not in {f.strip() for f in features.split(",")}:
        ack.waiting = None  # a box of version 1: its ReviewAck has no such field
    return ack


@fleet.get(REVIEWS_DOWN, responses=errors(), summary="Reviews made on the hub, for a box")
def reviews_down(box_id: BoxId, who: BoxKey, request: Request,
                 store: Annotated[Store, Depends(get_store)],
                 after: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
                 limit: Annotated[int, Query(ge=1, le=DOWN_LIMIT)] = DOWN_LIMIT) -> ReviewBatch:
    own_box(box_id, who)
    try:
        return hub_reviews(store, box_id, after, limit)
    except OperationalError as exc:  # a refused login said as such (session 51)
        raise database_failed(request, exc) from None


@router.get("/", include_in_schema=False)
def home(request: Request) -> object:
    """The hub's home is the fleet page (the edge server's is its stations)."""
    from fastapi.responses import RedirectResponse

    return RedirectResponse("/fleet", status_code=303)


router.include_router(fleet)
router.include_router(inspections.router)  # the review API over every box's inspections
router.include_router(pages.router)  # the review page, dashboard and their JSON


def install(app: FastAPI, settings: HubSettings) -> None:
    """The shared pages read a registry and cameras: the hub has neither (empty ones);
    reviews made here are the hub's."""
    from lineside_inspect.server.registry import Registry

    app.state.registry = Registry(device="cpu", threads=1)
    app.state.cameras = None

    def start() -> None:
        if app.state.store is not None:
            app.state.store.review_origin = "hub"

    app.state.on_startup.append(start)
    app.mount("/static", ui.static, name="static")
