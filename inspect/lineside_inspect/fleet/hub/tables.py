"""The hub's own tables, beside the store's (made when the hub starts, never on a box).

``fleet_cursors``: per box and stream (``inspections``, ``reviews``), the highest ``seq``
the hub has durably taken from that box: written in the same transaction as the rows it
covers, so a retried batch is recognised whatever happened to the first answer.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lineside_inspect.store.utc import UTCDateTime


class HubBase(DeclarativeBase):
    pass


class CursorRow(HubBase):
    __tablename__ = "fleet_cursors"

    box_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


def create_hub_tables(engine: Engine) -> None:
    HubBase.metadata.create_all(engine)
