"""The wire contract between an edge box and its hub (HTTP + JSON, version 1).

A box authenticates with its own API key on the hub (role ``box``, key name = box id);
the hub refuses a box speaking for another box id. Everything a box sends is idempotent,
so a box retries whatever it is unsure of:

- ``POST {FORWARD}`` — a batch of inspections, each with its box-local sequence number
  ``seq`` (the box's outbox id: increasing, with gaps). The hub applies items in ``seq``
  order, skips ids it already holds, and answers the highest ``seq`` it has durably taken
  (``ForwardAck.through_seq``: images in the object store, then the row in PostgreSQL).
  The box drops from its queue only what is at or below ``through_seq``. Ordering per box
  holds because a box sends in ``seq`` order and the hub treats any item at or below its
  cursor for that box as a duplicate (gaps in ``seq`` are normal: other outbox channels).
  An id the hub does not hold at or below that cursor is refused (409 ``sequence_behind``:
  the box's outbox went back, e.g. a reset data folder), never skipped silently. An id the
  hub holds from another box is refused too (409 ``inspection_id_taken``), not a duplicate.
  Past ``max_forward_bodies`` batches being read at once the hub answers 503 (retry).
  A record's ``tiles`` (how many tiles a recipe's tiling cut the frame into) goes only to
  a hub whose answers name ``{RECORD_TILES}`` in ``{HUB_FEATURES_HEADER}``; to any other hub
  (one of an earlier release, whose record schema forbids it) the record goes without it.
- ``POST {REVIEWS_UP}`` — reviews made on the box, with their own ``seq``; same cursor rule.
  The hub stops at a review whose inspection it does not hold (not forwarded yet, or
  never will be); the box sends it again later (or, for an inspection it never
  forwarded, drops it: ``fleet/box/reviews.py``). A box that sends
  ``{FEATURES_HEADER}: {REVIEW_WAITING}`` is also told why (``ReviewAck.waiting``); any
  other box gets the answer of version 1 unchanged (``through_seq`` only: its
  ``ReviewAck`` forbids fields it does not know).
- ``GET {REVIEWS_DOWN}?after=N`` — reviews made on the hub for this box's inspections,
  with the hub's review id above ``N``; the box keeps ``N`` as its cursor.
- ``POST {STATUS}`` — what the box runs and how far behind it is.
- ``GET {ASSIGNMENT}?line=L`` — which model versions this box's line should run (the box
  names its own ``fleet.line``; a box without a line is assigned nothing).
- ``GET {PACKAGE}`` — a published package (tar.gz), with its signature in ``{SIGNATURE}``.

Concurrent reviews of one inspection (one on the box, one on the hub, before either saw
the other) are resolved by **last writer wins on the review's own ``created_at``, ties to
the hub**; every review is kept in both audit trails, so nothing said is lost, up to
``store.MAX_REVIEWS`` (100) reviews of one inspection: past it each side refuses more
(a reviewer gets 422) and skips the other side's, logged, so two sides that each took a
100th review at the same moment keep different current reviews of that inspection.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from lineside_inspect.store.utc import UTCTime

PREFIX = "/fleet/v1"
FORWARD = PREFIX + "/boxes/{box_id}/inspections"
REVIEWS_UP = PREFIX + "/boxes/{box_id}/reviews"
REVIEWS_DOWN = PREFIX + "/boxes/{box_id}/hub-reviews"
STATUS = PREFIX + "/boxes/{box_id}/status"
ASSIGNMENT = PREFIX + "/boxes/{box_id}/assignment"
PACKAGE = PREFIX + "/packages/{model}/{version}/package.tar.gz"
SIGNATURE = PREFIX + "/packages/{model}/{version}/package.sig"
# a request header: what a box understands beyond version 1 (comma-separated). A hub adds
# to an answer only what the box named here, so an older box (whose models forbid unknown
# fields) always reads the answer it knows
FEATURES_HEADER = "Lineside-Fleet-Features"
REVIEW_WAITING = "review-waiting"  # ReviewAck.waiting
# the reverse, an answer header on every answer of a hub: what it takes in a box's
# requests beyond version 1 (comma-separated). A box sends a field only to a hub that
# named it here, so a hub of an older release (whose record schema forbids fields it does
# not know) never sees one: the box leaves the field out, and that hub lacks it
HUB_FEATURES_HEADER = "Lineside-Hub-Features"
RECORD_TILES = "record-tiles"  # ForwardedInspection.record's "tiles" (session 47)
HUB_FEATURES = (RECORD_TILES,)  # what this release's hub announces
# a time a box sends (a review's, an inspection's) over this far ahead of the hub's clock
# is taken at the hub's time: a box whose clock ran ahead before NTP, or a hostile one
MAX_CLOCK_AHEAD = timedelta(minutes=5)

ID_PATTERN = r"[0-9a-f]{32}"
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
SHA256_PATTERN = r"[0-9a-f]{64}"


def _full(pattern: str) -> AfterValidator:
    """Full-matches ``pattern``: pydantic's ``pattern=`` only searches, so ``../x`` would
    pass a name rule (and names.py says why never ``^...$`` either)."""
    rx = re.compile(pattern)

    def check(value: str) -> str:
        if not rx.fullmatch(value):
            raise ValueError(f"must match {pattern}")
        return value

    return AfterValidator(check)


def _schema(pattern: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": f"^{pattern}$"})


MAX_DEPTH = 16  # a record is 4 deep (record.defects.0.box.0); a review's boxes 3


def _shallow(value: Any) -> Any:
    """``value`` when no list or object in it is nested over ``MAX_DEPTH`` deep; walked
    without recursion, so the recursive walks after it (``scrub_text``, the range check)
    cannot overflow Python's stack on a hostile document."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        if depth >= MAX_DEPTH:
            raise ValueError(f"nested over {MAX_DEPTH} deep")
        stack.extend((c, depth + 1) for c in children)
    return value


# the database's INTEGER: a box's outbox id and the hub's review id are both one
Seq = Annotated[int, Field(ge=1, le=2**31 - 1)]
Id = Annotated[str, _full(ID_PATTERN), _schema(ID_PATTERN)]
FleetName = Annotated[str, _full(NAME_PATTERN), _schema(NAME_PATTERN)]
Sha256 = Annotated[str, _full(SHA256_PATTERN), _schema(SHA256_PATTERN)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ForwardedInspection(_Wire):
    """One inspection as the box recorded it: the row's fields (``record``, the store's
    ``StoredInspection`` shape less reviews) and its image, base64, when it kept one."""

    seq: Seq
    id: Id
    site: FleetName | None = None
    line: FleetName | None = None
    record: Annotated[dict[str, Any], AfterValidator(_shallow)]
    image_b64: str | None = None
    image_ext: Literal["jpg", "png"] | None = None
    reference_b64: str | None = None
    reference_ext: Literal["jpg", "png"] | None = None


class ForwardBatch(_Wire):
    items: list[ForwardedInspection] = Field(..., min_length=1, max_length=1000)


class ForwardAck(_Wire):
    through_seq: int = Field(..., description="every item at or below this seq is held")
    stored: int = Field(..., description="items new to the hub in this batch")
    duplicates: int = Field(..., description="items the hub already held (skipped)")


class ReviewEvent(_Wire):
    """A review as both sides record it (``reviews`` row less its local id)."""

    seq: Seq = Field(..., description="sender's sequence: box outbox id or hub review id")
    inspection_id: Id
    created_at: UTCTime
    reviewer: str = Field(..., max_length=128)
    action: str = Field(..., max_length=32)
    boxes: Annotated[list[dict[str, Any]], AfterValidator(_shallow)]
    note: str = Field("", max_length=4000)
    origin: Literal["box", "hub"]


class ReviewBatch(_Wire):
    items: list[ReviewEvent] = Field(..., max_length=1000)


class ReviewAck(_Wire):
    through_seq: int
    # only to a box that named REVIEW_WAITING in FEATURES_HEADER, and only when the hub
    # stopped before the batch's end
    waiting: Literal["inspection", "clock"] | None = Field(None, description=(
        "why the hub stopped before the batch's end (sent only to a box whose request "
        f"named {REVIEW_WAITING!r} in {FEATURES_HEADER}): the next review's inspection is "
        "not held (inspection); clock: a hub of 4b5c458 waited for a review dated over 5 "
        "minutes ahead of its clock (a hub now takes it at its own time)"))


class ModelRunning(_Wire):
    name: FleetName
    version: str = Field(..., max_length=128)
    sha256: Sha256
    role: Literal["active", "shadow", "standby"] = "active"


class BoxStatus(_Wire):
    site: FleetName | None = None
    line: FleetName | None = None
    version: str = Field(..., max_length=64, description="Lineside version on the box")
    models: list[ModelRunning]
    ready: bool
    forward_backlog: int = Field(..., ge=0)
    forward_lag_s: float | None = Field(None, ge=0)
    # each cut to 500 characters as the box cuts them: a box key stored ~1 MB of text a
    # report on the fleet page (fleet review, session 32)
    model_errors: list[Annotated[str, AfterValidator(lambda v: v[:500])]] = Field(
        default_factory=list, max_length=32,
        description="assignments the box could not apply, and why (500 characters each)")
    # sent only when there are some: a hub of an older release (no such field) still takes
    # the reports of a box whose line is quiet
    alarms: list[Annotated[str, Field(max_length=500)]] = Field(
        default_factory=list, max_length=32, exclude_if=lambda v: not v, description=(
            "recipes in fail-rate alarm (docs/lifecycle.md section 6), one line each; "
            "absent when none"))


class AssignedModel(_Wire):
    name: FleetName
    version: FleetName
    sha256: Sha256 = Field(..., description="of package.tar.gz")


class Assignment(_Wire):
    """What a line runs: its models, each at one version. ``revision`` rises with every
    change, so a box can tell it has seen this one."""

    line: FleetName | None = None
    revision: int = Field(..., ge=0)
    models: list[AssignedModel]
