"""The hub's own tables, beside the store's (made when the hub starts, never on a box).

``fleet_cursors``: per box and stream (``inspections``, ``reviews``), the highest ``seq``
the hub has durably taken from that box: written in the same transaction as the rows it
covers, so a retried batch is recognised whatever happened to the first answer.

``fleet_box_counts``: per box, how many of its inspections the hub holds and the newest
one's time, kept by the forward route in the transaction that stores them (and by the
retention, ``retention.py``, in the one that deletes them), so the fleet page reads one
row per box instead of counting every inspection on each refresh. A hub that had
inspections before this table fills it once, when it is made.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, Integer, String, func, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lineside_inspect.store.models import InspectionRow
from lineside_inspect.store.utc import UTCDateTime


class HubBase(DeclarativeBase):
    pass


class CursorRow(HubBase):
    __tablename__ = "fleet_cursors"

    box_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BoxCountRow(HubBase):
    __tablename__ = "fleet_box_counts"

    box_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    held: Mapped[int] = mapped_column(Integer, default=0)
    last_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


def create_hub_tables(engine: Engine) -> None:
    counted = inspect(engine).has_table(BoxCountRow.__tablename__)
    HubBase.metadata.create_all(engine)
    if not counted:  # once, on a hub made before the counts were kept
        with engine.begin() as c:
            c.execute(BoxCountRow.__table__.insert().from_select(  # type: ignore[attr-defined]
                ["box_id", "held", "last_at"],
                select(InspectionRow.box_id, func.count(), func.max(InspectionRow.created_at))
                .where(InspectionRow.box_id.is_not(None)).group_by(InspectionRow.box_id)))
