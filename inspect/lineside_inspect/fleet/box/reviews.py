"""Reviews both ways between a box and its hub.

Up: a review made on the box (``Store.review``) gets an event on the outbox channel
``fleet-reviews`` in the review's own transaction (:func:`review_events`), so it is sent
even if the box is killed right after. The event is filed under the box id its
inspection is recorded under: with boxes sharing one database, a review made on one box's
page of another box's inspection is sent by that other box (the hub takes a box's review
only of its own inspections). :class:`ReviewSync` posts the pending ones in outbox id
order (``seq``) to ``REVIEWS_UP`` and marks delivered what the hub's ``through_seq``
covers. The hub stops at a review whose inspection it does not hold yet (``ReviewAck.
waiting``: still in the forwarding backlog); the rest waits for the next round. A review
dated ahead of the hub's clock is taken at the hub's time (``fleet/hub/reviews.py``; a
hub of 4b5c458 waited instead, ``waiting: clock``). Some reviews never go up, each
dropped with a log line and counted (``lineside_fleet_reviews_dropped{reason}``), since
one would otherwise hold every later review of the box for good:

- ``gone``: its inspection left the store (retention) before the review went up;
- ``not_forwarded``: the hub does not hold its inspection and this box owes it no
  forwarding (recorded before ``hub_url`` was set, or deleted by the hub's retention).
  Judged from the forwarding owed *before* the batch was sent: an inspection delivered
  since was held by then;

Some are set aside instead (kept, counted by ``GET /v1/fleet/set-aside``, queued again by
an admin's retry, :meth:`ReviewSync.retry_with`):

- a review of an inspection the forwarder set aside (the hub refused its record,
  ``forward.py``): sent, the hub would wait for the inspection, and the box, owing it no
  forwarding, would drop the review. The retry queues the inspections first, then their
  reviews, under one lock with the check that sets them aside (a review set aside just
  after its inspection was queued again would be stranded);
- one alone over the hub's ``max_json_bytes`` (413; a hub or proxy limit set too low). A
  batch the hub finds too large is halved first (and grows back after ``periodic.GROW_AFTER``
  batches in a row went through), as the forwarder does; sent again at the same size it
  stalled every later review for good.

An event a release before this one filed here for another box's inspection is handed to
that box's outbox (logged), not dropped. One of an inspection recorded under a box id no
running box has any more (a box whose id changed) waits in that id's outbox: the hub
skips it from any other box.

Down: reviews made on the hub of this box's inspections, fetched with a cursor (the hub's
review id, kept in ``<data_dir>/fleet/hub-reviews.cursor``) and applied by the merge
rule (``fleet/review_merge.py``). They are written by the merge, never by
``Store.review``, so they make no outbox event: nothing is echoed back up.

The hub being unreachable changes nothing on the box: its review page reads and writes
the local store only, and the events wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lineside_inspect.atomic import write_atomic
from lineside_inspect.errors import ConfigError, HubRefused, LinesideError
from lineside_inspect.fleet.box import forward
from lineside_inspect.fleet.box.client import HubBodyTooLarge, HubClient
from lineside_inspect.fleet.box.periodic import BatchSize, HubTask, PeriodicHubTask
from lineside_inspect.fleet.protocol import (
    REVIEWS_DOWN,
    REVIEWS_UP,
    ReviewAck,
    ReviewBatch,
    ReviewEvent,
)
from lineside_inspect.fleet.review_merge import apply_review
from lineside_inspect.store import Store
from lineside_inspect.store.models import HUB_BOX_ID, InspectionRow, OutboxRow, ReviewRow
from lineside_inspect.store.outbox import (
    Event,
    Outbox,
    PendingEvent,
    event,
    on_channel,
    set_aside_channel,
)
from lineside_inspect.store.utc import as_utc

if TYPE_CHECKING:
    from lineside_inspect.server.metrics import Metrics

log = logging.getLogger("lineside.fleet")
CHANNEL = "fleet-reviews"  # the outbox channel of reviews going up; topic: inspection id
CURSOR_FILE = Path("fleet") / "hub-reviews.cursor"
BATCH = 200
# a hub review dated this far ahead of the box's clock is not applied (logged, skipped): a
# clock that far off is broken, and such a review would outrank every later one for good
HUB_FAR_AHEAD = timedelta(days=1)
PURGE_EVERY_S = 60.0
KEEP_DELIVERED_S = 3600.0
ROUNDS = 50  # batches per sync round (the next round goes on)


def review_events(review: ReviewRow) -> list[Event]:
    """The store's review event maker: the review as it goes up (its outbox id is added
    as ``seq`` when it is sent)."""
    return [event(review.inspection_id, {
        "created_at": as_utc(review.created_at).isoformat(), "reviewer": review.reviewer,
        "action": review.action, "boxes": review.boxes, "note": review.note or ""},
        created_at=review.created_at, channel=CHANNEL)]


class ReviewMetrics:
    """The review sync's figures in the box's ``/metrics`` (beside its task's errors and
    last success, ``fleet/box/periodic.py``)."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.sent = Counter("lineside_fleet_reviews_sent", "Reviews made on this box the "
                            "hub took", registry=r)
        self.applied = Counter("lineside_fleet_reviews_applied", "Reviews made on the hub "
                               "applied on this box", registry=r)
        self.backlog = Gauge("lineside_fleet_reviews_backlog", "Reviews made on this box "
                             "waiting to go up", registry=r)
        self.dropped = Counter("lineside_fleet_reviews_dropped", "Reviews made on this box "
                               "that never go up, by reason (gone, not_forwarded)",
                               ["reason"], registry=r)


class ReviewSync(HubTask):
    """One thread per box: reviews up, then hub reviews down, every ``interval_s`` (backing
    off while the hub fails, up to 30 s)."""

    def __init__(self, store: Store, client: HubClient, interval_s: float = 1.0,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.client = client
        self.interval_s = interval_s
        self.outbox = Outbox(store.engine, store.box_id, CHANNEL)
        self.cursor_path = store.data_dir / CURSOR_FILE
        self.metrics = ReviewMetrics(metrics) if metrics is not None else None
        self.sent = 0  # reviews the hub took
        self.applied = 0  # hub reviews applied here
        self.dropped = 0  # reviews that never go up (see the module docstring)
        self._clock_logged = False  # the hub waits for this box's clock: said once
        self.sizes = BatchSize(BATCH)  # halved when the hub finds a batch too large
        self._aside_lock = threading.Lock()
        self._last_purge = time.monotonic()
        self.loop = PeriodicHubTask(
            "reviews", self._step, interval_s=interval_s, retry_min_s=interval_s,
            retry_max_s=30.0, waiting="reviews wait", metrics=metrics)

    def _step(self) -> bool:
        self.sync_once()
        if time.monotonic() - self._last_purge > PURGE_EVERY_S:  # what the hub has
            self._last_purge = time.monotonic()
            self.outbox.purge_delivered(KEEP_DELIVERED_S)
        return False  # every interval_s

    def refresh_gauges(self) -> None:
        """The backlog, when ``/metrics`` is read."""
        if self.metrics is not None:
            self.metrics.backlog.set(self.outbox.backlog())

    def sync_once(self) -> tuple[int, int]:
        """One round: (reviews the hub took, hub reviews applied here)."""
        return self.send_up(), self.pull_down()

    # -- up -------------------------------------------------------------------------
    def send_up(self) -> int:
        taken = 0
        for _ in range(ROUNDS):  # bounded: a stop waits for one round at most
            pending = self.outbox.pending(limit=self.batch)
            if not pending:
                return taken
            with self._aside_lock:  # (an admin's retry: retry_with)
                owners, owed, aside = self._inspections({e.topic for e in pending})
                held_back = [e for e in pending if e.topic in aside and e.topic in owners]
                if held_back:  # their inspection waits for an admin's retry: so do they
                    self.outbox.set_aside([e.id for e in held_back], "its inspection is set "
                                          "aside: the hub refused its record")
                    pending = [e for e in pending if e not in held_back]
            # never to go up from here, whatever the hub says: settled now
            gone = {e.id: "gone" for e in pending if e.topic not in owners}
            self._drop([e for e in pending if e.id in gone], gone)
            theirs = [e for e in pending if e.topic in owners
                      and owners[e.topic] not in (self.store.box_id, None)]
            self._hand_over(theirs, owners)
            items = [ReviewEvent(seq=e.id, inspection_id=e.topic, origin="box", **e.payload)
                     for e in pending if e.id not in gone and e not in theirs]
            if not items:
                continue
            try:
                ack = self.client.post(self.client.path(REVIEWS_UP), ReviewBatch(items=items),
                                       ReviewAck)
            except HubBodyTooLarge:
                if self.sizes.halve(len(items)):
                    log.warning("fleet: a batch of %d reviews was too large for the hub: "
                                "sending %d at a time", len(items), self.batch)
                    continue
                self.outbox.set_aside([items[0].seq], "too_large: on its own it is over the "
                                      "hub's max_json_bytes")
                log.warning("fleet: review %d of inspection %s is over the hub's max_json_bytes "
                            "on its own: set aside (raise the hub's limit, then POST "
                            "/v1/fleet/set-aside/retry)", items[0].seq, items[0].inspection_id)
                continue
            self.sizes.went_through()
            through = min(ack.through_seq, items[-1].seq)  # settle only what was sent
            self.outbox.mark_delivered([i.seq for i in items if i.seq <= through])
            n = sum(1 for i in items if i.seq <= through)
            taken += n
            self.sent += n
            if self.metrics is not None:
                self.metrics.sent.inc(n)
            stuck = next((i for i in items if i.seq > through), None)
            if stuck is None:
                self._clock_logged = False
                continue
            if ack.waiting == "clock":
                self._log_clock(stuck)
                return taken
            if stuck.inspection_id in owed:  # the hub gets it from the forwarder, then this
                return taken
            # the hub does not hold it, and this box will never forward it: dropped, and
            # the reviews after it go on in the next round (an older hub says no why:
            # it stopped for an inspection it does not hold)
            self._drop([e for e in pending if e.id == stuck.seq], {stuck.seq: "not_forwarded"})
        return taken

    @property
    def batch(self) -> int:
        """Reviews sent at once now (:class:`BatchSize`)."""
        return self.sizes.size

    def _inspections(self, ids: set[str]) -> tuple[dict[str, str | None], set[str], set[str]]:
        """Of ``ids``: the box id each inspection here was recorded under, those whose
        forwarding this box still owes the hub (read before the batch goes up), and those
        the forwarder set aside."""
        def waiting(channel: str) -> set[str]:
            return set(s.scalars(select(OutboxRow.topic).where(
                OutboxRow.box_id == self.store.box_id, on_channel(channel),
                OutboxRow.delivered_at.is_(None), OutboxRow.topic.in_(ids))))

        with Session(self.store.engine) as s:
            owners = {i: b for i, b in s.execute(
                select(InspectionRow.id, InspectionRow.box_id).where(InspectionRow.id.in_(ids)))}
            owed = waiting(forward.CHANNEL)
            aside = waiting(set_aside_channel(forward.CHANNEL))
        return owners, owed, aside

    def retry_with(self, requeue_inspections: Callable[[], int]) -> int:
        """Queue the set-aside inspections (``requeue_inspections``, the forwarder's) and
        then the set-aside reviews again, under the lock :meth:`send_up` sets reviews
        aside under; the inspections queued."""
        with self._aside_lock:
            n = requeue_inspections()
            self.outbox.retry_set_aside()
        self.loop.wake()
        return n

    def _hand_over(self, events: list[PendingEvent], owners: dict[str, str | None]) -> None:
        """Give ``events`` to the outbox of the box their inspection is recorded under (a
        database shared by boxes: that box's sync sends them; the hub takes a box's review
        only of its own inspections). ``Store.review`` files them there itself; these were
        filed here by a release before that."""
        for e in events:
            owner = owners[e.topic]
            with Session(self.store.engine) as s, s.begin():
                s.execute(update(OutboxRow).where(OutboxRow.id == e.id, OutboxRow.box_id ==
                                                  self.store.box_id).values(box_id=owner))
            log.warning("fleet: review %d of inspection %s handed to box %s: the inspection "
                        "is recorded under that box id, whose review sync sends it", e.id,
                        e.topic, owner)

    def _drop(self, events: list[PendingEvent], why: dict[int, str]) -> None:
        """Settle ``events``, which never go up: logged and counted by reason."""
        if not events:
            return
        self.outbox.mark_delivered([e.id for e in events])
        for e in events:
            reason = why[e.id]
            log.warning("fleet: review %d of inspection %s does not go up: %s", e.id, e.topic, {
                "gone": "the inspection left this box before it went up",
                "not_forwarded": "the hub does not hold the inspection and this box never "
                                 "forwarded it (recorded before hub_url was set) or the "
                                 "hub's retention deleted it"}[reason])
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.dropped.labels(reason).inc()

    def _log_clock(self, stuck: ReviewEvent) -> None:
        """Once while the hub waits for this box's clock (it retries every round)."""
        if not self._clock_logged:
            self._clock_logged = True
            log.warning("fleet: the hub waits for review %d, made at %s: over 5 minutes ahead "
                        "of the hub's clock (is this box's clock right?)", stuck.seq,
                        stuck.created_at.isoformat())

    # -- down -----------------------------------------------------------------------
    def cursor(self) -> int:
        try:
            return int(self.cursor_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _save_cursor(self, seq: int) -> None:
        write_atomic(self.cursor_path, str(seq).encode())

    def pull_down(self) -> int:
        applied = 0
        for _ in range(ROUNDS):  # bounded: a stop waits for one round at most
            after = self.cursor()
            batch = self.client.get(self.client.path(REVIEWS_DOWN), ReviewBatch,
                                    params={"after": after, "limit": BATCH})
            for e in sorted(batch.items, key=lambda i: i.seq):
                if e.seq <= after:
                    continue
                if e.origin != "hub":
                    raise HubRefused(f"hub sent review seq {e.seq} as made on a box")
                outcome: str
                try:
                    if as_utc(e.created_at) > datetime.now(UTC) + HUB_FAR_AHEAD:
                        # it would outrank every review made on the box for good (one at
                        # the end of time made every later one a 500): a broken or hostile hub
                        raise ConfigError(f"it is dated {e.created_at.isoformat()}, over "
                                          f"{HUB_FAR_AHEAD.days} day ahead of the box's clock")
                    # filed under the hub, as the hub files it: the box's tally named the
                    # hub's qa as a reviewer of this box (session 51)
                    outcome = apply_review(self.store, e, box_id=HUB_BOX_ID)
                except LinesideError as exc:  # one bad review must not stop the rest
                    log.warning("fleet: hub review %d of %s not applied: %s", e.seq,
                                e.inspection_id, exc.message)
                    outcome = "refused"
                if outcome in ("current", "superseded"):
                    applied += 1
                    self.applied += 1
                    if self.metrics is not None:
                        self.metrics.applied.inc()
                self._save_cursor(e.seq)
                after = e.seq
            if len(batch.items) < BATCH:
                return applied
        return applied

    def status(self) -> dict[str, Any]:
        return {"backlog": self.outbox.backlog(), "sent": self.sent, "applied": self.applied,
                "dropped": self.dropped, "failures": self.failures,
                "last_error": self.last_error}


def setup(app: Any, settings: Any) -> None:
    """Reviews both ways on ``app.state.fleet_reviews``; call after the hub client's
    start-up hook is added (this one runs after it and stops before it closes)."""
    app.state.fleet_reviews = None

    def start() -> None:
        store, client = app.state.store, getattr(app.state, "hub_client", None)
        if store is None or client is None:
            return
        # a review made here is outboxed with it from now on
        store.review_event_makers.append(review_events)
        sync = ReviewSync(store, client, settings.fleet.forward_interval_s, app.state.metrics)
        sync.start()
        app.state.fleet_reviews = sync
        app.state.metrics_hooks.append(sync.refresh_gauges)

    def stop() -> None:
        if app.state.fleet_reviews is not None:
            app.state.fleet_reviews.stop()

    app.state.on_startup.append(start)
    app.state.on_shutdown.append(stop)
