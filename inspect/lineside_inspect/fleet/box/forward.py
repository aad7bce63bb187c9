"""Store-and-forward: the box's inspections to its hub, in order, exactly once on the hub.

Each inspection gets a ``fleet`` event (:func:`forward_events`, one of the store's event
makers): it is journaled with the inspection and enters the outbox in the row's own
transaction, so from the moment a verdict is answered its forwarding survives kill -9.
A thread (:class:`Forwarder`) reads the pending fleet events in outbox id order, sends
their rows and images to the hub as one ``ForwardBatch`` (``seq`` = outbox id), and marks
delivered only what the hub's ``ForwardAck.through_seq`` covers. Whatever is unsure is
sent again: the hub skips what it holds (by its per-box cursor and by inspection id).

A batch the hub cuts off (408: the box's uplink is slower than the hub's
``min_body_rate``; ``HubCutBody``) or finds too large (413: over its ``max_body_bytes``)
is sent again at half its size, down to one inspection; the size grows back, doubling
after ``periodic.GROW_AFTER`` batches in a row went through, up to ``forward_batch``. One
inspection still too large for the hub goes without its images (logged and counted):
sent again as it was, it would hold up every later one for good. One too large even
without them is set aside, as a refused record is (below).

A batch whose content the hub refuses (``HubRefusedRecord``: a record it will not store,
e.g. one an older box wrote, or an id another box holds) is halved the same way until the
culprit goes alone; that one is *set aside* (``Outbox.set_aside``: logged with the hub's
reason, counted, kept with its row, never purged) and the rest flow on. An admin lists
set-aside inspections and sends them again once the hub is fixed (``routes.py``:
``/v1/fleet/set-aside``).

While the hub is unreachable the backlog grows (bounded by local retention, which keeps
unforwarded rows: ``Store.enforce_retention``) and the thread backs off; nothing on the
verdict path waits for it. An image the disk quota removed before it was forwarded is
left out of its record (the row still goes), and counted.
"""

from __future__ import annotations

import base64
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from lineside_inspect.errors import HubRefused, NotFoundError, UnreadableRecord
from lineside_inspect.fleet.box.client import (
    HubBodyTooLarge,
    HubClient,
    HubCutBody,
    HubRefusedRecord,
)
from lineside_inspect.fleet.box.periodic import BatchSize, HubTask, PeriodicHubTask
from lineside_inspect.fleet.config import FleetSettings
from lineside_inspect.fleet.protocol import (
    FORWARD,
    RECORD_TILES,
    ForwardAck,
    ForwardBatch,
    ForwardedInspection,
)
from lineside_inspect.store.models import InspectionRow
from lineside_inspect.store.outbox import Event, Outbox, PendingEvent, event

if TYPE_CHECKING:
    from lineside_inspect.inspector import Inspection
    from lineside_inspect.server.metrics import Metrics
    from lineside_inspect.store import Store

log = logging.getLogger("lineside.fleet")
CHANNEL = "fleet"  # the outbox channel; an event's topic is its inspection id
MAX_BATCH_IMAGE_BYTES = 8 * 1024 * 1024  # images and references per request (base64 adds a third)
PURGE_EVERY_S = 60.0
KEEP_DELIVERED_S = 3600.0


def forward_events(inspection: Inspection) -> list[Event]:
    """The store's event maker: one fleet event per inspection."""
    return [event(inspection.id, {}, channel=CHANNEL)]


class FleetMetrics:
    """The forwarder's figures in the server's registry (``/metrics``)."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.backlog = Gauge("lineside_fleet_backlog", "Inspections waiting to be forwarded "
                             "to the hub", registry=r)
        self.lag = Gauge("lineside_fleet_lag_seconds", "Age of the oldest inspection waiting "
                         "to be forwarded (0: none)", registry=r)
        self.forwarded = Counter("lineside_fleet_forwarded", "Inspections the hub acknowledged",
                                 registry=r)
        self.errors = Counter("lineside_fleet_errors", "Forwarding failures by kind "
                              "(hub_unavailable, hub_refused, image_missing, image_too_large, "
                              "record_missing, record_refused, record_unreadable, internal)",
                              ["kind"], registry=r)
        self.set_aside = Gauge("lineside_fleet_set_aside", "Inspections set aside because "
                               "the hub refused their records, or their rows do not read "
                               "(GET /v1/fleet/set-aside)",
                               registry=r)
        self.dropped = Counter("lineside_fleet_dropped_unforwarded", "Images the disk quota "
                               "removed before they were forwarded (their records still go)",
                               registry=r)


class Forwarder(HubTask):
    """One thread per box; :meth:`wake` when new fleet events are committed."""

    channel = CHANNEL

    def __init__(self, store: Store, client: HubClient, settings: FleetSettings,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.outbox = Outbox(store.engine, store.box_id, CHANNEL)
        self.metrics = FleetMetrics(metrics) if metrics is not None else None
        self._dropped_seen = store.dropped_unforwarded
        self.forwarded = 0
        self.sizes = BatchSize(settings.forward_batch)  # halved when the hub cuts a body off
        self._bare: set[int] = set()  # seqs to send without images: alone, still too large
        self._last_purge = time.monotonic()
        # backoff: from half the poll interval up to ten of them (1-30 s)
        self.loop = PeriodicHubTask(
            "forward", self._step, interval_s=settings.forward_interval_s,
            retry_min_s=settings.forward_interval_s / 2,
            retry_max_s=min(30.0, max(1.0, 10 * settings.forward_interval_s)),
            waiting="inspections wait in the outbox", metrics=metrics,
            on_failure=self._failed)

    @property
    def stop_timeout_s(self) -> float:  # type: ignore[override]
        return self.settings.timeout_s + 2  # a request in flight may finish

    # -- the loop ------------------------------------------------------------------
    def _step(self) -> bool:
        """One round (``fleet/box/periodic.py`` runs it): True while more is pending."""
        sent = self.forward_once()
        self.refresh_gauges()
        if time.monotonic() - self._last_purge > PURGE_EVERY_S:
            self._last_purge = time.monotonic()
            self._purge()
        return sent > 0

    def _failed(self, kind: str, message: str) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(kind).inc()
        self._safe_gauges()

    def _purge(self) -> None:
        try:
            self.outbox.purge_delivered(KEEP_DELIVERED_S)
        except Exception as exc:
            log.warning("fleet: purging delivered events failed: %s", exc)

    def forward_once(self) -> int:
        """Send one batch of what is pending; the number the hub acknowledged (0: nothing
        was pending)."""
        pending = self.outbox.pending(limit=self.batch)
        if not pending:
            return 0
        items, missing, aside = self._items(pending)
        through = 0
        if items:
            try:
                ack = self.client.post(self.client.path(FORWARD), ForwardBatch(items=items),
                                       ForwardAck)
            except HubBodyTooLarge:
                if len(items) > 1:
                    self._shrink(len(items), "too large for the hub")
                elif items[0].seq not in self._bare:
                    self._bare.add(items[0].seq)
                    self._count("image_too_large")
                    log.warning("fleet: inspection %s with its images is over the hub's "
                                "max_body_bytes on its own: its record goes without them",
                                items[0].id)
                else:
                    # its record alone is over the limit: sent again as it is, it would
                    # hold up every later inspection for good
                    self.set_aside_one(items[0].seq, items[0].id, "too_large: over the hub's "
                                       "max_body_bytes even without its images (raise the "
                                       "hub's max_body_bytes)")
                    return 1
                raise
            except HubCutBody:
                self._shrink(len(items), "cut off by the hub (a slow uplink?)")
                raise
            except HubRefusedRecord as exc:
                if any("tiles" in i.record for i in items) \
                        and not self.client.takes(RECORD_TILES):
                    # the hub that said it takes tiles is gone (an older release put back
                    # at its address): its refusal is of the field, not of a record. The
                    # next round sends them without it; nothing is set aside
                    log.warning("fleet: the hub no longer takes a record's tiles: its "
                                "records go without them from now on")
                    raise
                if len(items) > 1:
                    self._shrink(len(items), "refused by the hub (a record in it?)")
                    raise
                self.set_aside_one(items[0].seq, items[0].id, exc.message)
                return 1
            self.sizes.went_through()
            # the hub answers its cursor, which may be ahead of this batch (a restored
            # box): settle only what was sent, never events the cut left for later
            through = min(ack.through_seq, items[-1].seq)
        # events whose rows are gone have nothing to send: settled with the batch they
        # came in, once the hub took all of it
        full = not items or through >= items[-1].seq
        done = [e.id for e in pending if e.id not in aside
                and (e.id <= through or (full and e.id in missing))]
        self.outbox.mark_delivered(done)
        self._bare.difference_update(done)
        n = sum(1 for e in pending if e.id <= through and e.id not in missing | aside)
        self.forwarded += n
        if self.metrics is not None:
            self.metrics.forwarded.inc(n)
        if items and through < items[-1].seq:
            # the hub holds less than was sent: say so, and send the rest again
            raise HubRefused(f"hub acknowledged through seq {through} of {items[-1].seq}")
        return len(done) + len(aside)  # (set aside: the next round goes on at once)

    def set_aside_one(self, seq: int, inspection_id: str, refusal: str) -> None:
        """The hub refused inspection ``inspection_id``'s record on its own: set its event
        aside (kept, with the reason), so every later inspection goes on."""
        self._set_aside(seq, refusal, "record_refused")
        log.warning("fleet: the hub refused inspection %s: %s. It is set aside (kept on this "
                    "box; GET /v1/fleet/set-aside lists it, POST /v1/fleet/set-aside/retry "
                    "sends it again) and later inspections go on", inspection_id, refusal)
        self._safe_gauges()

    def _set_aside(self, seq: int, reason: str, kind: str) -> None:
        """Event ``seq`` kept aside with ``reason`` (listed, sent again by a retry), counted
        as an error of ``kind``: what every way of setting one aside does."""
        self.outbox.set_aside([seq], reason)
        self._bare.discard(seq)
        self._count(kind)

    def _set_aside_unreadable(self, seq: int, why: str) -> None:
        self._set_aside(seq, f"unreadable: {why}", "record_unreadable")
        log.warning("fleet: not forwarded: %s. It is set aside (GET /v1/fleet/set-aside; "
                    "POST /v1/fleet/set-aside/retry sends it again once the row is mended) and "
                    "later inspections go on", why)

    def retry_set_aside(self) -> int:
        """Queue every set-aside inspection again, after those waiting; how many. The
        store's writer is held meanwhile, so the new events' ids are seen in order."""
        with self.store.writer_paused():
            n = self.outbox.retry_set_aside()
        self.wake()
        return n

    @property
    def batch(self) -> int:
        """Inspections sent at once now (:class:`BatchSize`)."""
        return self.sizes.size

    def _shrink(self, sent: int, why: str) -> None:
        """The hub cut a body of ``sent`` inspections off, or found it too large: half as
        many next time (a link slower than the hub's ``min_body_rate``, a body over its
        ``max_body_bytes``)."""
        if not self.sizes.halve(sent):
            log.warning("fleet: the hub cut off a batch of one inspection: this box's uplink "
                        "is slower than the hub's min_body_rate allows for it (lower it)")
            return
        log.warning("fleet: a batch of %d inspections was %s: sending %d at a time", sent,
                    why, self.batch)

    def _items(self, pending: list[PendingEvent],
               ) -> tuple[list[ForwardedInspection], set[int], set[int]]:
        """The batch for ``pending`` (cut at MAX_BATCH_IMAGE_BYTES, at least one item), the
        events whose rows are gone, and those set aside (rows that do not read)."""
        ids = [e.topic for e in pending]
        with Session(self.store.engine) as s:
            rows = {r.id: r for r in s.scalars(select(InspectionRow).where(InspectionRow.id.in_(ids))
                                               .options(selectinload(InspectionRow.reviews)))}
        items: list[ForwardedInspection] = []
        missing: set[int] = set()
        aside: set[int] = set()
        size = 0
        # a record's tiles go only to a hub that said it takes them: a hub of an earlier
        # release refuses a record with a field it does not know (protocol.RECORD_TILES)
        tiles = any(r.tiles is not None for r in rows.values()) \
            and self.client.takes(RECORD_TILES)
        for e in pending:
            row = rows.get(e.topic)
            if row is None:
                missing.add(e.id)
                self._count("record_missing")
                log.warning("fleet: inspection %s is no longer in the store; not forwarded",
                            e.topic)
                continue
            try:
                item, n = self._item(e.id, row, tiles)
            except UnreadableRecord as exc:
                # a row of its own that does not read as an inspection (a hand edit,
                # another writer: Store.record) raised here every round, and every later
                # inspection waited behind it for good (review, session 40). Set aside,
                # as a record the hub refuses: said once, kept, sent again by a retry
                self._set_aside_unreadable(e.id, exc.message)
                aside.add(e.id)
                continue
            if items and size + n > MAX_BATCH_IMAGE_BYTES:
                break
            items.append(item)
            size += n
        return items, missing, aside

    def _item(self, seq: int, row: InspectionRow,
              tiles: bool = False) -> tuple[ForwardedInspection, int]:
        """The item of ``row``, its ``tiles`` left out unless ``tiles`` (the hub takes
        them); the bytes of its images."""
        record = self.store.record(row).model_dump(mode="json", exclude={"reviews"})
        if not tiles:
            record.pop("tiles", None)
        image = ref = None
        if row.image_path and seq not in self._bare:
            image = self._read(row, "image")
        if row.reference_path and seq not in self._bare:
            ref = self._read(row, "reference")
        item = ForwardedInspection(
            seq=seq, id=row.id, site=row.site, line=row.line, record=record,
            image_b64=_b64(image), image_ext=image[1] if image else None,
            reference_b64=_b64(ref), reference_ext=ref[1] if ref else None)
        # the reference goes with every item: a large golden image alone filled a body
        return item, (len(image[0]) if image else 0) + (len(ref[0]) if ref else 0)

    def _read(self, row: InspectionRow, what: str) -> tuple[bytes, str] | None:
        """The image's bytes and ext ("jpg" or "png"); None when it is gone."""
        try:
            path = self.store.image_file(row) if what == "image" else self.store.reference_file(row)
            data = path.read_bytes()
        except (NotFoundError, FileNotFoundError):
            self._count("image_missing")
            log.warning("fleet: the %s of inspection %s was removed before it was forwarded; "
                        "its record goes without it", what, row.id)
            return None
        return _as_jpg_or_png(data, Path(path).suffix.lstrip(".").lower())

    def _count(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(kind).inc()

    # -- figures -------------------------------------------------------------------
    def refresh_gauges(self) -> None:
        backlog = self.outbox.backlog()
        lag = self.outbox.oldest_pending_age(datetime.now(UTC)) or 0.0
        self.backlog, self.lag_s = backlog, lag
        self.set_aside = self.outbox.set_aside_count()
        if self.metrics is not None:
            self.metrics.backlog.set(backlog)
            self.metrics.lag.set(lag)
            self.metrics.set_aside.set(self.set_aside)
            dropped = self.store.dropped_unforwarded
            if dropped > self._dropped_seen:
                self.metrics.dropped.inc(dropped - self._dropped_seen)
                self._dropped_seen = dropped

    def _safe_gauges(self) -> None:
        try:
            self.refresh_gauges()
        except Exception as exc:  # the local database: the next round tells
            log.debug("fleet: gauges not refreshed: %s", exc)

    backlog: int = 0
    lag_s: float = 0.0
    set_aside: int = 0

    def status(self) -> dict[str, Any]:
        return {"backlog": self.backlog, "lag_s": self.lag_s, "forwarded": self.forwarded,
                "batch": self.batch, "set_aside": self.set_aside,
                "failures": self.failures, "last_error": self.last_error}


def _b64(image: tuple[bytes, str] | None) -> str | None:
    return base64.b64encode(image[0]).decode("ascii") if image is not None else None


def _as_jpg_or_png(data: bytes, ext: str) -> tuple[bytes, str]:
    """The wire carries JPEG or PNG: a BMP upload is re-encoded losslessly as PNG."""
    if ext in ("jpg", "png"):
        return data, ext
    import numpy as np

    from lineside_inspect.opencv import cv2

    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    ok, buf = cv2.imencode(".png", frame) if frame is not None else (False, None)
    if not ok or buf is None:
        raise NotFoundError(f"a stored .{ext} image could not be re-encoded for the hub")
    return bytes(buf.tobytes()), "png"
