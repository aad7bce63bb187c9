"""The hub's own tables, beside the store's (made when the hub starts, never on a box).

``fleet_cursors``: per box and stream (``inspections``, ``reviews``), the highest ``seq``
the hub has durably taken from that box: written in the same transaction as the rows it
covers, so a retried batch is recognised whatever happened to the first answer.

``fleet_box_counts``: per box, how many of its inspections the hub holds and the newest
one's time, kept by the forward route in the transaction that stores them (and by the
retention, ``retention.py``, in the one that deletes them), so the fleet page reads one
row per box instead of counting every inspection on each refresh. They are checked at
each start against the rows (one count per box) and taken again when they differ: a hub
of a release from before the counts, started on this database (a downgrade, then this
release again), stored rows without counting them, and the counts stayed short for good.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Integer, String, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lineside_inspect.store.models import InspectionRow
from lineside_inspect.store.utc import UTCDateTime, as_utc

log = logging.getLogger(__name__)


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
    HubBase.metadata.create_all(engine)
    recount_boxes(engine)


def _held() -> Any:
    """Each box's inspections held, counted from the rows: (box_id, held, last_at)."""
    return (select(InspectionRow.box_id, func.count(), func.max(InspectionRow.created_at))
            .where(InspectionRow.box_id.is_not(None)).group_by(InspectionRow.box_id))


def recount_boxes(engine: Engine) -> None:
    """Take the per-box counts again from the rows when they differ (see the module's
    docstring); the first start of a hub made before them fills them so. A plain read
    first: a start whose counts hold takes no lock. Only how many are held is compared (a
    box whose rows retention removed keeps its row at 0, and its last time)."""
    with engine.connect() as c:
        counted = {b: n for b, n in c.execute(select(BoxCountRow.box_id, BoxCountRow.held)) if n}
        rows = {r[0]: r[1] for r in c.execute(_held())}
    if counted == rows:
        return
    try:
        with engine.begin() as c:
            if engine.dialect.name == "postgresql":
                # the forward route and retention change rows and counts in one transaction:
                # held off meanwhile, the count below sees each of theirs whole or not at all.
                # EXCLUSIVE, not SHARE ROW EXCLUSIVE: the forward route's SELECT ... FOR UPDATE
                # of its box's row would get in first, and the updates and it would deadlock
                c.execute(text(f"LOCK TABLE {BoxCountRow.__tablename__} IN EXCLUSIVE MODE"))
            # row by row, not a DELETE and a fill from the rows: a box whose inspections
            # retention removed (or whose rows match) keeps its row and newest time, which
            # the fleet page lists it by (a box that never reported went from the page, and
            # every such box's last inspection time read none: review, session 37)
            kept = {b: last for b, last in c.execute(select(BoxCountRow.box_id,
                                                            BoxCountRow.last_at))}
            held = {b: (n, last) for b, n, last in c.execute(_held())}
            table: Any = BoxCountRow.__table__
            for box_id in sorted(set(kept) | set(held)):
                n, newest = held.get(box_id, (0, None))
                if box_id not in kept:
                    c.execute(table.insert().values(box_id=box_id, held=n, last_at=newest))
                    continue
                last = kept[box_id]
                if last is not None and (newest is None or as_utc(last) > as_utc(newest)):
                    newest = last
                c.execute(table.update().where(table.c.box_id == box_id)
                          .values(held=n, last_at=newest))
    except DBAPIError as exc:  # a lock another session holds past lock_timeout
        log.warning("hub: the boxes' inspection counts differ from the rows and could not be "
                    "taken again (%s); the fleet page's counts may be off until the next start",
                    str(exc.orig).splitlines()[0][:120])
        return
    if counted:
        log.warning("hub: the boxes' inspection counts differed from the rows (a hub of an "
                    "earlier release stored or removed rows on this database?): counted again")
