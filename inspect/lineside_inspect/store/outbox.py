"""The outbox: events for line outputs (MQTT) and for the fleet hub, kept in the store
until their receiver has them.

An inspection's events are as durable as the inspection itself: the functions in
``Store.event_makers`` turn it into events when its journal record is made, so they are
journaled with it (surviving kill -9 from the moment the verdict is answered) and enter
the ``outbox`` table in the same transaction as its row (:func:`add_events`, called by
``Store._apply``; a replay after a crash skips both together). A publisher then reads
them in ``id`` order (:meth:`Outbox.pending`), and marks them delivered only once the
broker acknowledged them (:meth:`Outbox.mark_delivered`). Delivered rows are purged after
a while; undelivered ones are never dropped.

Each row names the box that wrote it: boxes sharing one database deliver only their own.
Each row has a ``channel``: ``mqtt`` (or NULL, rows from before channels) for the MQTT
publisher, ``fleet`` for the hub forwarder (``fleet/box/forward.py``; its ``topic`` is the
inspection id); an :class:`Outbox` reads and delivers one channel only.

An event its receiver refuses for good (the hub will not store that record) is *set
aside* (:meth:`Outbox.set_aside`): it moves to the channel's set-aside channel
(:func:`set_aside_channel`, with the refusal in its payload), so the events behind it
flow again, and stays there, undelivered and never purged, until an admin sends it
again (:meth:`Outbox.retry_set_aside`) once the receiver is fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, delete, func, or_, select, update
from sqlalchemy.orm import Session

from lineside_inspect.store.models import OutboxRow
from lineside_inspect.store.utc import as_utc

if TYPE_CHECKING:
    from lineside_inspect.inspector import Inspection

log = logging.getLogger("lineside.store")

# an event as journaled: {"topic": str, "payload": JSON object, "created_at": ISO time,
# "channel": str (absent: mqtt)}
Event = dict[str, Any]
EventMaker = Callable[["Inspection"], list[Event]]
MQTT = "mqtt"  # the default channel (NULL in rows written before channels)
MAX_REFUSAL_CHARS = 1000  # of a set-aside event's refusal, kept in its payload


def set_aside_channel(channel: str) -> str:
    """Where ``channel``'s events its receiver refused for good wait (16 characters at most,
    the column's width)."""
    return f"{channel}-refused"[:16]


def event(topic: str, payload: dict[str, Any], created_at: datetime | None = None,
          channel: str = MQTT) -> Event:
    e = {"topic": topic, "payload": payload,
         "created_at": (created_at or datetime.now(UTC)).isoformat()}
    if channel != MQTT:
        e["channel"] = channel
    return e


def events_for(makers: Iterable[EventMaker], inspection: Inspection) -> list[Event]:
    """The events of ``inspection``. A maker that fails is logged and skipped: an event
    must never cost the inspection its place in the store."""
    out: list[Event] = []
    for make in makers:
        try:
            out.extend(make(inspection))
        except Exception:
            log.exception("making the events of inspection %s failed", inspection.id)
    return out


def add_events(session: Session, box_id: str, events: Iterable[Event]) -> int:
    """Add ``events`` to the outbox within ``session``'s transaction (the inspection
    row's own), in order."""
    n = 0
    for e in events:
        session.add(OutboxRow(created_at=datetime.fromisoformat(e["created_at"]), box_id=box_id,
                              topic=e["topic"], payload=e["payload"], channel=e.get("channel")))
        n += 1
    return n


@dataclass(frozen=True)
class PendingEvent:
    id: int
    created_at: datetime
    topic: str
    payload: dict[str, Any]


def on_channel(channel: str) -> Any:
    """The SQL condition: an outbox row of ``channel``."""
    if channel == MQTT:
        return or_(OutboxRow.channel.is_(None), OutboxRow.channel == MQTT)
    return OutboxRow.channel == channel


class Outbox:
    """The outbox rows of box ``box_id`` on ``channel`` in the store's database."""

    def __init__(self, engine: Engine, box_id: str, channel: str = MQTT) -> None:
        self.engine = engine
        self.box_id = box_id
        self.channel = channel

    def _mine(self) -> Any:
        return (OutboxRow.box_id == self.box_id) & on_channel(self.channel)

    def _waiting(self) -> Any:
        return self._mine() & OutboxRow.delivered_at.is_(None)

    def enqueue(self, topic: str, payload: dict[str, Any]) -> int:
        """Add one event outside an inspection's transaction (events about no inspection);
        its id."""
        with Session(self.engine) as s, s.begin():
            row = OutboxRow(created_at=datetime.now(UTC), box_id=self.box_id, topic=topic,
                            payload=payload,
                            channel=None if self.channel == MQTT else self.channel)
            s.add(row)
            s.flush()
            return int(row.id)

    def pending(self, limit: int = 100, after: int = 0) -> list[PendingEvent]:
        """Undelivered events with an id above ``after``, oldest first."""
        with Session(self.engine) as s:
            rows = s.scalars(select(OutboxRow).where(self._waiting(), OutboxRow.id > after)
                             .order_by(OutboxRow.id).limit(limit)).all()
            return [PendingEvent(r.id, r.created_at, r.topic, r.payload) for r in rows]

    def mark_delivered(self, ids: Iterable[int], at: datetime | None = None) -> None:
        ids = list(ids)
        when = at or datetime.now(UTC)
        with Session(self.engine) as s, s.begin():
            for start in range(0, len(ids), 500):
                s.execute(update(OutboxRow).where(self._mine(),
                                                  OutboxRow.id.in_(ids[start:start + 500]))
                          .values(delivered_at=when))

    def backlog(self) -> int:
        """Events waiting for delivery."""
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count()).select_from(OutboxRow)
                                .where(self._waiting())) or 0)

    def oldest_pending_age(self, now: datetime | None = None) -> float | None:
        """Seconds the oldest undelivered event has waited (the delivery lag); None when
        nothing waits."""
        with Session(self.engine) as s:
            oldest = s.scalar(select(OutboxRow.created_at).where(self._waiting())
                              .order_by(OutboxRow.id).limit(1))
        if oldest is None:
            return None
        return max(0.0, (as_utc(now or datetime.now(UTC)) - oldest).total_seconds())

    # -- events the receiver refused for good ------------------------------------------
    def _set_aside(self) -> Any:
        return ((OutboxRow.box_id == self.box_id)
                & (OutboxRow.channel == set_aside_channel(self.channel))
                & OutboxRow.delivered_at.is_(None))

    def set_aside(self, ids: Iterable[int], refusal: str, at: datetime | None = None) -> int:
        """Move this channel's undelivered events ``ids`` aside with ``refusal`` (why the
        receiver will not take them), each keeping its own payload under ``event``; how
        many moved."""
        ids = list(ids)
        when = (at or datetime.now(UTC)).isoformat()
        with Session(self.engine) as s, s.begin():
            rows = s.scalars(select(OutboxRow).where(self._waiting(), OutboxRow.id.in_(ids))).all()
            for row in rows:
                row.channel = set_aside_channel(self.channel)
                row.payload = {"refused": refusal[:MAX_REFUSAL_CHARS], "at": when,
                               "event": row.payload}
            return len(rows)

    def set_aside_events(self, limit: int = 100) -> list[PendingEvent]:
        """Events set aside, oldest first; each payload says why (``refused``) and when
        (``at``), and keeps the event's own (``event``)."""
        with Session(self.engine) as s:
            rows = s.scalars(select(OutboxRow).where(self._set_aside())
                             .order_by(OutboxRow.id).limit(limit)).all()
            return [PendingEvent(r.id, r.created_at, r.topic, r.payload) for r in rows]

    def set_aside_count(self) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count()).select_from(OutboxRow)
                                .where(self._set_aside())) or 0)

    def retry_set_aside(self) -> int:
        """Queue every set-aside event again with its own payload, as a new event at the
        end of its channel (a receiver that tracks ids, as the hub does per box, has passed
        the old one's); how many. Where another thread writes this channel's events (the
        store's writer), hold it meanwhile: ``Store.writer_paused``."""
        with Session(self.engine) as s, s.begin():
            rows = s.scalars(select(OutboxRow).where(self._set_aside()).order_by(OutboxRow.id)).all()
            now = datetime.now(UTC)  # queued now: the delivery lag counts from here
            for row in rows:
                s.add(OutboxRow(created_at=now, box_id=row.box_id, topic=row.topic,
                                payload=dict(row.payload or {}).get("event", {}),
                                channel=None if self.channel == MQTT else self.channel))
                s.delete(row)
            return len(rows)

    def purge_delivered(self, older_than_s: float, now: datetime | None = None) -> int:
        """Delete this box's events delivered more than ``older_than_s`` ago."""
        cutoff = as_utc(now or datetime.now(UTC)) - timedelta(seconds=older_than_s)
        with Session(self.engine) as s, s.begin():
            res = s.execute(delete(OutboxRow).where(self._mine(),
                                                    OutboxRow.delivered_at.is_not(None),
                                                    OutboxRow.delivered_at < cutoff))
            return int(getattr(res, "rowcount", 0) or 0)
