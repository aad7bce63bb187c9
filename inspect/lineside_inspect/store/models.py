"""Database tables (SQLAlchemy 2): inspections, their review audit trail, and the outbox
of events for line outputs.

Each inspection row belongs to the box that made it (``box_id``): several boxes may
share one database, and a box's start-up cleanup and retention touch only its own rows
and files. Rows written before box ids (``box_id`` NULL) are adopted at start-up by the
box whose ``data_dir`` holds their image file (``images/<day>/<id>.<ext>`` is unique to
one inspection), and rows without an image by a box whose database is its own default
SQLite file; any other NULL row is left alone by cleanup and retention (still listed and
reviewable).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    delete,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from lineside_inspect.store.utc import StoredJSON, UTCDateTime


class Base(DeclarativeBase):
    pass


class InspectionRow(Base):
    __tablename__ = "inspections"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    camera_id: Mapped[str | None] = mapped_column(String(128), index=True)
    # indexed: a reviewer's lookup of one part's inspections (GET /v1/inspections?part_id=)
    part_id: Mapped[str | None] = mapped_column(String(256), index=True)
    recipe_name: Mapped[str] = mapped_column(String(128), index=True)
    recipe_version: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    class_names: Mapped[list[str]] = mapped_column(StoredJSON())
    verdict: Mapped[str] = mapped_column(String(8), index=True)
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(StoredJSON())
    defects: Mapped[list[dict[str, Any]]] = mapped_column(StoredJSON())
    labels: Mapped[str] = mapped_column(Text, default="")  # ",open,short," for class filters
    max_score: Mapped[float] = mapped_column(Float, default=0.0)
    timings_ms: Mapped[dict[str, float]] = mapped_column(StoredJSON())
    image_path: Mapped[str | None] = mapped_column(String(512))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    image_bytes: Mapped[int] = mapped_column(Integer, default=0)
    # a reference model's golden image: content-addressed (refs/<sha256>.<ext>), shared
    # by every inspection that used it
    reference_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # indexed: deleting an inspection asks whether its golden image has another user
    reference_path: Mapped[str | None] = mapped_column(String(512), nullable=True, index=True)
    review_state: Mapped[str] = mapped_column(String(16), default="unreviewed", index=True)
    box_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # the plant site and line the box serves (its fleet settings): hub filters
    site: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    line: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # active-learning capture (lifecycle/capture.py): why the image was kept for labelling
    # ("near_threshold", "shadow_disagreement", ...); NULL when it was not
    capture: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # on a hub: when it was received (fleet/hub/ingest.py), which its retention counts from
    # (a box's clock may be wrong, or its backlog old); NULL on a box, and on rows a hub
    # received before this column
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    # a reference model's comparison beyond the golden's name and file: its sha256, the
    # align_reference shift, the unchanged gate's word and difference ({} keys as
    # schemas.ReferenceUsed). A part the gate passed read as judged by the detector on the
    # review page (QA review, session 34); NULL on rows from before
    reference_check: Mapped[dict[str, Any] | None] = mapped_column(StoredJSON(), nullable=True)
    # a recipe's tiling: the tiles (forward passes) the frame was cut into; NULL when it was
    # judged whole, and on rows from before (session 47)
    tiles: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # in the order the fleet's merge rule reads them (fleet/review_merge.py): the last one
    # is the current truth, last by its own time, ties to the hub ("box" < "hub"), then id
    reviews: Mapped[list[ReviewRow]] = relationship(
        back_populates="inspection", order_by=lambda: REVIEW_ORDER,
        cascade="all, delete-orphan", passive_deletes=True)

    __table_args__ = (Index("ix_retention", "verdict", "review_state", "created_at"),)


# columns added after the first release: (table, column, SQL type) for Store's migration
ADDED_COLUMNS = (
    ("inspections", "reference_name", "VARCHAR(128)"),
    ("inspections", "reference_path", "VARCHAR(512)"),
    ("inspections", "box_id", "VARCHAR(64)"),
    ("inspections", "capture", "VARCHAR(64)"),
    ("inspections", "site", "VARCHAR(64)"),
    ("inspections", "line", "VARCHAR(64)"),
    ("outbox", "channel", "VARCHAR(16)"),
    ("reviews", "origin", "VARCHAR(8)"),
    ("inspections", "received_at", "TIMESTAMP WITH TIME ZONE"),
    ("inspections", "reference_check", "JSON"),
    ("reviews", "box_id", "VARCHAR(64)"),
    ("shadow_disagreements", "fused_with", "VARCHAR(300)"),
    ("shadow_disagreements", "fused_kind", "VARCHAR(16)"),
    ("inspections", "tiles", "INTEGER"),
    ("yield_history", "after_counted", "INTEGER"),
    ("yield_history", "passes_after_review", "INTEGER"),
    ("yield_history", "unreviewed_fails", "INTEGER"),
)
# indexes of added columns: (name, table, column), made if missing
ADDED_INDEXES = (("ix_inspections_box_id", "inspections", "box_id"),
                 ("ix_inspections_capture", "inspections", "capture"),
                 ("ix_inspections_site", "inspections", "site"),
                 ("ix_inspections_line", "inspections", "line"),
                 ("ix_inspections_received_at", "inspections", "received_at"),
                 ("ix_inspections_reference_path", "inspections", "reference_path"),
                 ("ix_reviews_created_at", "reviews", "created_at"),
                 ("ix_inspections_part_id", "inspections", "part_id"))


# the box id a hub's store saves its own reviews under, and a box files the hub reviews it
# takes down under (fleet/box/reviews.py pull_down)
HUB_BOX_ID = "hub"


class ReviewRow(Base):
    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inspection_id: Mapped[str] = mapped_column(ForeignKey("inspections.id", ondelete="CASCADE"),
                                               index=True)
    # indexed: "Reviews this shift" (every review page load) and the dashboard's tally read a
    # window of reviews; without it, every review ever kept (review, session 40)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    reviewer: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    boxes: Mapped[list[dict[str, Any]]] = mapped_column(StoredJSON())  # the reviewed truth after this
    note: Mapped[str] = mapped_column(Text, default="")
    # where the review was made: "box" or "hub" (fleet/review_merge.py); NULL before the fleet
    origin: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # the box whose store saved it (a hub's: "hub"): with boxes sharing one database, qa of
    # box a and qa of box b were one reviewer in each box's tally. NULL on reviews from
    # before, and on ones merged from elsewhere (fleet/review_merge.py): those count as
    # made on their inspection's box (stats.review_box). A hub review a box takes down is
    # filed under HUB_BOX_ID, as the hub files it: on the box it is "qa (hub)", not "qa"
    box_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    inspection: Mapped[InspectionRow] = relationship(back_populates="reviews")

    # ids never go back: a hub's review id is its boxes' cursor (fleet/hub/reviews.py), and
    # SQLite gave the id of a review retention removed to the next one, which every box
    # past it then skipped (review, session 34); store.py rebuilds an older table so
    __table_args__ = ({"sqlite_autoincrement": True},)


def review_origin(review: ReviewRow) -> Literal["box", "hub"]:
    """Where ``review`` was made: "hub" by a hub's reviewer (the hub marks its own so, and
    a box files the hub's reviews it takes down under :data:`HUB_BOX_ID`), else "box"
    (reviews from before the fleet were a box's own)."""
    return "hub" if review.origin == "hub" or review.box_id == HUB_BOX_ID else "box"


def reviewed_verdict(verdict: str, reviews: Sequence[tuple[str, list[Any]]],
                     ) -> Literal["pass", "fail"] | None:
    """The verdict the reviews (``(action, boxes)``, oldest first) say a part deserved:
    for a fail, "fail" when the truth after the last has a defect, or when it was confirmed with
    no box (a frame not of the golden's view, an anomaly with no region: the reviewer
    agreed the part is bad, with nothing to box) and nobody called it a false reject;
    "pass" otherwise; None unreviewed. A confirmed box-less fail counted as a false reject
    (dashboard, rollout watch), a good image (data pull) and a part that must pass
    (golden sets); review, session 34. None too when the last review's boxes are not a
    list (text that is not JSON, an object: a hand-edited row, a foreign writer): such a
    review counts as nothing, as in the dashboard's figures (``stats.is_list``); it counted
    as a defect, or (an empty object, ``null``) as a false reject toward a rollback."""
    if not reviews:
        return None
    action, boxes = reviews[-1]
    if not isinstance(boxes, list):
        return None
    if verdict == "pass":
        # a pass is a fail only where a reviewer drew a defect it missed (the dashboard's
        # escape): a confirmed pass keeps the defects its recipe tolerates (max_count) as
        # boxes, and stays a pass (it read as a fail for golden sets and shadows)
        return "fail" if boxes and any(a == "missed_defect" for a, _ in reviews) else "pass"
    if boxes:
        return "fail"
    if verdict == "fail" and action == "confirm" \
            and not any(a == "false_reject" for a, _ in reviews):
        return "fail"
    return "pass"


# oldest first; the last is the current one (NULL origins first on every backend)
REVIEW_ORDER: tuple[Any, ...] = (ReviewRow.created_at, ReviewRow.origin.asc().nulls_first(),
                                 ReviewRow.id)


class YieldHistoryRow(Base):
    """Inspections retention removed, counted per quarter hour they were made in (``hour``:
    its start, UTC; ``store/history.py`` says why not the hour), box, site,
    line, camera, recipe and verdict (``store/history.py``): the yield figures read these
    beside the rows, so a window's passes and fails stay what the line made after its rows
    are gone. Written only by retention (the box's and the hub's), in the transaction that
    deletes the rows. '' stands for none in a key (a primary key holds no NULL, and two
    NULLs would be two keys to an upsert).

    Beside the count, the removed inspections' verdicts after review (session 56): of
    ``after_counted`` of them, ``passes_after_review`` passed after review and
    ``unreviewed_fails`` were fails no review judged. The rest (``inspections`` minus
    ``after_counted``: counted by a release before these columns, or by one after a
    downgrade, which adds to ``inspections`` only) read as before, at the machine's
    verdict, a fail unreviewed. NULL on rows from before the columns: none counted."""

    __tablename__ = "yield_history"

    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    box_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), primary_key=True)
    line: Mapped[str] = mapped_column(String(64), primary_key=True)
    camera_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    recipe_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    verdict: Mapped[str] = mapped_column(String(8), primary_key=True)
    inspections: Mapped[int] = mapped_column(Integer)
    after_counted: Mapped[int | None] = mapped_column(Integer, nullable=True)
    passes_after_review: Mapped[int | None] = mapped_column(Integer, nullable=True)
    unreviewed_fails: Mapped[int | None] = mapped_column(Integer, nullable=True)


class OutboxRow(Base):
    """An event for a line output (MQTT), written in the same transaction as the inspection
    row it tells of (``store/outbox.py``), delivered in ``id`` order by the box that wrote
    it. ``sqlite_autoincrement``: ids never go back, even once delivered rows are purged."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    box_id: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str] = mapped_column(String(1024))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # who delivers it (store/outbox.py): "mqtt" (NULL too) or "fleet" (the hub forwarder)
    channel: Mapped[str | None] = mapped_column(String(16), nullable=True)

    __table_args__ = (Index("ix_outbox_pending", "box_id", "delivered_at", "id"),
                      {"sqlite_autoincrement": True})


# -- model lifecycle (lifecycle/) ---------------------------------------------------------
# made by the lifecycle when it starts (create_all, so on old databases too), not by every
# Store: a store that only records inspections (data pull, tests) keeps its small footprint
LIFECYCLE_TABLES = ("audit_log", "gate_reports", "model_admissions", "shadow_runs",
                    "shadow_disagreements")


class AuditRow(Base):
    """Who did what to which model, when and why: activations (forced ones flagged), gate
    runs, shadow starts and stops, promotions and automatic rollbacks."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    box_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    model_name: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = ({"sqlite_autoincrement": True},)


class GateReportRow(Base):
    """One gate run: a candidate replayed against a model on a golden set (the report in
    full in ``report``). A package's reports (by its graph's sha256 and card) decide
    whether it may judge parts without ``force`` (``Lifecycle._reports``)."""

    __tablename__ = "gate_reports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    box_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    candidate_version: Mapped[str] = mapped_column(String(128))
    candidate_sha256: Mapped[str] = mapped_column(String(64))
    against_version: Mapped[str] = mapped_column(String(128))
    against_sha256: Mapped[str] = mapped_column(String(64))
    golden_name: Mapped[str] = mapped_column(String(128))
    golden_version: Mapped[int] = mapped_column(Integer)
    golden_digest: Mapped[str] = mapped_column(String(64))
    passed: Mapped[bool] = mapped_column(Boolean)
    # stored text that is not JSON reads as Unreadable: read through readable_report()
    report: Mapped[dict[str, Any]] = mapped_column(StoredJSON())

    def readable_report(self) -> dict[str, Any]:
        """The report; {} for one whose stored JSON does not read as an object (a
        hand-edited row, a foreign writer: SQLite keeps any text). Admission reads it as
        admitting nothing (a failed one still refuses, its reasons unread), the API as no
        report: each was a 500 (review of session 42)."""
        return self.report if isinstance(self.report, dict) else {}


class AdmissionRow(Base):
    """Lineage on the box: how a model version came to judge parts (active or shadow) —
    the gate report and golden set that admitted it, or an admin's forced admission."""

    __tablename__ = "model_admissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    box_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # active | shadow | pinned
    gate_report_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    golden_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    golden_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    golden_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the card's

    __table_args__ = ({"sqlite_autoincrement": True},)


class ShadowRunRow(Base):
    """A candidate run as the shadow of a model: its sample rate and running counts."""

    __tablename__ = "shadow_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    box_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    shadow_version: Mapped[str] = mapped_column(String(128))
    shadow_sha256: Mapped[str] = mapped_column(String(64))
    sample_rate: Mapped[float] = mapped_column(Float)
    offered: Mapped[int] = mapped_column(Integer, default=0)  # frames sampled for it
    compared: Mapped[int] = mapped_column(Integer, default=0)
    agreed: Mapped[int] = mapped_column(Integer, default=0)
    dropped: Mapped[int] = mapped_column(Integer, default=0)  # sampled, but the worker was busy
    errors: Mapped[int] = mapped_column(Integer, default=0)


class ShadowResultRow(Base):
    """A frame on which the shadow's verdict differed from the served one: both results.
    The inspection row holds the served result; ``inspection_id`` is not a foreign key
    because the inspection may still be in the store's journal when this is written."""

    __tablename__ = "shadow_disagreements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    inspection_id: Mapped[str] = mapped_column(String(32), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    active_version: Mapped[str] = mapped_column(String(128))
    active_verdict: Mapped[str] = mapped_column(String(8))
    active_defects: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    shadow_version: Mapped[str] = mapped_column(String(128))
    shadow_verdict: Mapped[str] = mapped_column(String(8))
    shadow_defects: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    shadow_reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # how the shadow judged the frame (lifecycle.shadow.Judging): "name version" of the
    # other model of the recipe's fusion and its kind ("anomaly": its served finding
    # weighed in; "detector": its served detections were fused with the shadow's finding);
    # NULL: alone, and on rows from before a shadow said so
    fused_with: Mapped[str | None] = mapped_column(String(300), nullable=True)
    fused_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)

    __table_args__ = ({"sqlite_autoincrement": True},)


def labels_column(labels: Iterable[str]) -> str:
    """The ``labels`` column of a row with these defect labels: ``",open,short,"``, each
    class once, so a class filter matches ``",label,"`` (:func:`label_pattern`). A comma in
    a class name (a card allows one) is kept as ';' here only: it would otherwise split the
    class in two, matching filters for either half."""
    names = sorted({label.replace(",", ";") for label in labels})
    return "," + ",".join(names) + "," if names else ""


def label_pattern(label: str) -> str:
    """What ``labels`` contains for a row with a defect of class ``label``."""
    return "," + label.replace(",", ";") + ","


def delete_any(s: Session, model: type[Base], *conds: Any) -> int:
    """Delete ``model``'s rows matching ``conds`` in ``s``'s transaction, looking first: a
    DELETE takes SQLite's write lock even when it matches nothing (a save looking for room
    waited out the busy timeout behind another writer), and one of the outbox, even of
    nothing, tells a full quota to look again. How many went."""
    key = next(iter(model.__table__.primary_key.columns))  # type: ignore[attr-defined]
    if s.scalar(select(key).where(*conds).limit(1)) is None:
        return 0
    done = s.execute(delete(model).where(*conds), execution_options={"synchronize_session": False})
    return int(getattr(done, "rowcount", 0) or 0)
