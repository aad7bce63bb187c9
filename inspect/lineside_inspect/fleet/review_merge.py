"""The fleet's review merge rule, applied by both sides to a review made on the other.

An inspection may be reviewed on its box and on the hub before either has seen the
other's review. The rule (``fleet.protocol``): **last writer wins on the review's own
``created_at``, ties to the hub**, and every review is kept in both audit trails (up to
``MAX_REVIEWS`` an inspection: ``fleet.protocol``). In the
store this is the order of ``InspectionRow.reviews`` (``store.models.REVIEW_ORDER``:
time, then origin "box" before "hub", then id): the last review is the current truth, so
applying a review is just adding it where the order puts it and setting the inspection's
``review_state`` from whichever review is last now.

A review is known by what it says, not by a sequence number: its inspection, time,
reviewer, action and origin. Applying the same :class:`ReviewEvent` twice is a no-op, so
either side may resend whatever it is unsure of.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError
from sqlalchemy import select

from lineside_inspect.errors import ConfigError, NotFoundError, UnreadableRecord
from lineside_inspect.fleet.protocol import ReviewEvent
from lineside_inspect.store import Store
from lineside_inspect.store.models import REVIEW_ORDER, InspectionRow, ReviewRow
from lineside_inspect.store.store import ACTIONS, MAX_REVIEWS, MAX_TRUTH_BOXES
from lineside_inspect.store.utc import as_utc

Outcome = Literal["current", "superseded", "duplicate", "unknown_inspection"]


class _Box(BaseModel):
    """A box of a review's truth as the other side sent it (a detection's score is
    accepted, not kept: :func:`_truth`)."""

    model_config = ConfigDict(extra="forbid")
    label: str = Field(..., max_length=128)
    box: list[FiniteFloat] = Field(..., min_length=4, max_length=4)
    score: FiniteFloat | None = Field(None, ge=0, le=1)


def review_event(review: ReviewRow, seq: int) -> ReviewEvent:
    """``review`` on the wire, with the sender's ``seq``."""
    return ReviewEvent(seq=seq, inspection_id=review.inspection_id,
                       created_at=as_utc(review.created_at), reviewer=review.reviewer,
                       action=review.action, boxes=review.boxes, note=review.note or "",
                       origin="hub" if review.origin == "hub" else "box")


def _truth(event: ReviewEvent, row: InspectionRow) -> list[dict[str, Any]]:
    """The event's boxes, checked against the inspection (they become training data and
    are drawn on pages): the model's classes, four finite numbers inside the image. With
    a pixel of slack: a confirm carries the detector's own boxes (clipped to the image,
    then rounded), which the local store takes as they are; a box far outside would make
    every drawing of the inspection fail. A box with no area is taken only as one of the
    inspection's own detections: a detector's box clipped at the image's edge (in the
    letterbox's padding, moved out by a reference shift) can have none (x1 == x2), and a
    confirm carries it as the local store took it; refused, that confirm never reached
    the other side, which kept another current review of the inspection for good."""
    if len(event.boxes) > MAX_TRUTH_BOXES:
        raise ConfigError(f"review of {row.id}: more than {MAX_TRUTH_BOXES} boxes")
    detected = {tuple(d["box"]) for d in row.defects}
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(event.boxes):
        try:
            b = _Box.model_validate(raw)
        except ValidationError:
            raise ConfigError(f"review of {row.id}: box {i} is not "
                              "{label, box: [x1, y1, x2, y2], score?}") from None
        if b.label not in row.class_names:
            raise ConfigError(f"review of {row.id}: unknown class {b.label!r} in box {i}")
        x1, y1, x2, y2 = b.box
        if not (all(-1 <= x <= row.width + 1 for x in (x1, x2))
                and all(-1 <= y <= row.height + 1 for y in (y1, y2))
                and ((x1 < x2 and y1 < y2) or tuple(b.box) in detected)):
            raise ConfigError(f"review of {row.id}: box {i} is not a box (x1 < x2, y1 < y2) "
                              f"inside the {row.width}x{row.height} image")
        # the score is not kept: a stored truth box is {label, box} (schemas.TruthBox), and
        # a row holding one with a score could not be read back (every read of it a 500,
        # its forwarding stopped: a hostile hub's review)
        out.append(b.model_dump(exclude={"score"}))
    return out


def apply_review(store: Store, event: ReviewEvent,
                 also: Callable[[ReviewRow], bool] | None = None,
                 box_id: str | None = None) -> Outcome:
    """Apply a review made on the other side to ``store``:

    - ``"duplicate"``: the store holds it already (nothing changed);
    - ``"current"``: added, and it is now the inspection's current review;
    - ``"superseded"``: added to the audit trail, but a later review stays current;
    - ``"unknown_inspection"``: the store has no such inspection (not forwarded yet on a
      hub; removed by retention on a box): nothing changed.

    ``also``: other stored reviews that are this one (a form an earlier hub recorded it
    in: ``fleet/hub/reviews.py``), a duplicate too. ``box_id``: the box it was made on,
    where the receiving side knows it (a hub: the box whose key sent it); None counts as
    its inspection's box (``stats.review_box``).

    Refuses (ConfigError, 422) a review whose action or boxes make no sense for the
    inspection, before anything is written.
    """
    if event.action not in ACTIONS:
        raise ConfigError(f"review of {event.inspection_id}: action must be one of "
                          f"{', '.join(ACTIONS)}, got {event.action!r}")
    at = as_utc(event.created_at)
    try:
        with store.locked_inspection(event.inspection_id) as (s, row):
            for r in row.reviews:
                if (as_utc(r.created_at) == at and r.reviewer == event.reviewer
                        and r.action == event.action and (r.origin or "box") == event.origin):
                    return "duplicate"
                if also is not None and also(r):
                    return "duplicate"
            try:  # (a row that does not read as an inspection: each side logs it, goes on)
                store.record(row)
            except UnreadableRecord as exc:
                raise ConfigError(f"review of {row.id}: {exc.message}") from None
            if len(row.reviews) >= MAX_REVIEWS:  # the receiving side logs it and goes on
                raise ConfigError(f"review of {row.id}: the inspection holds {MAX_REVIEWS} "
                                  "reviews, the most one inspection keeps")
            truth = _truth(event, row)
            added = ReviewRow(inspection_id=row.id, created_at=at, reviewer=event.reviewer,
                              action=event.action, boxes=truth, note=event.note,
                              origin=event.origin, box_id=box_id)
            s.add(added)
            s.flush()
            s.expire(row, ["reviews"])  # re-read in the merge order, the new one included
            current = s.scalars(select(ReviewRow).where(ReviewRow.inspection_id == row.id)
                                .order_by(*REVIEW_ORDER)).all()[-1]
            row.review_state = "confirmed" if current.action == "confirm" else "corrected"
            return "current" if current.id == added.id else "superseded"
    except NotFoundError:
        return "unknown_inspection"
