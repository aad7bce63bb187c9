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

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from lineside_inspect.store.utc import UTCDateTime


class Base(DeclarativeBase):
    pass


class InspectionRow(Base):
    __tablename__ = "inspections"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    camera_id: Mapped[str | None] = mapped_column(String(128), index=True)
    part_id: Mapped[str | None] = mapped_column(String(256))
    recipe_name: Mapped[str] = mapped_column(String(128), index=True)
    recipe_version: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    class_names: Mapped[list[str]] = mapped_column(JSON)
    verdict: Mapped[str] = mapped_column(String(8), index=True)
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    defects: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    labels: Mapped[str] = mapped_column(Text, default="")  # ",open,short," for class filters
    max_score: Mapped[float] = mapped_column(Float, default=0.0)
    timings_ms: Mapped[dict[str, float]] = mapped_column(JSON)
    image_path: Mapped[str | None] = mapped_column(String(512))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    image_bytes: Mapped[int] = mapped_column(Integer, default=0)
    # a reference model's golden image: content-addressed (refs/<sha256>.<ext>), shared
    # by every inspection that used it
    reference_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reference_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    review_state: Mapped[str] = mapped_column(String(16), default="unreviewed", index=True)
    box_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    reviews: Mapped[list[ReviewRow]] = relationship(
        back_populates="inspection", order_by="ReviewRow.id", cascade="all, delete-orphan",
        passive_deletes=True)

    __table_args__ = (Index("ix_retention", "verdict", "review_state", "created_at"),)


# columns added after the first release: (table, column, SQL type) for Store's migration
ADDED_COLUMNS = (
    ("inspections", "reference_name", "VARCHAR(128)"),
    ("inspections", "reference_path", "VARCHAR(512)"),
    ("inspections", "box_id", "VARCHAR(64)"),
)
# indexes of added columns: (name, table, column), made if missing
ADDED_INDEXES = (("ix_inspections_box_id", "inspections", "box_id"),)


class ReviewRow(Base):
    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inspection_id: Mapped[str] = mapped_column(ForeignKey("inspections.id", ondelete="CASCADE"),
                                               index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reviewer: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    boxes: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # the reviewed truth after this
    note: Mapped[str] = mapped_column(Text, default="")
    inspection: Mapped[InspectionRow] = relationship(back_populates="reviews")


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

    __table_args__ = (Index("ix_outbox_pending", "box_id", "delivered_at", "id"),
                      {"sqlite_autoincrement": True})
