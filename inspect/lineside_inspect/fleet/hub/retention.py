"""The hub's retention: inspections older than ``retention_days`` leave the hub, with
their reviews and images, so a plant's hub does not grow for ever.

A round (:meth:`HubRetention.run_once`) takes the oldest rows past the cutoff in
batches of :data:`BATCH`: their images are deleted from the object store first, then the
rows (their reviews go with them: the foreign key cascades) and each box's held count in
one transaction. Objects first, because a round that fails in between leaves rows whose
images are gone (their page says so) which the next round deletes again; rows first would
leave images nothing points at, for good. A row whose image could not be deleted stays
for the next round. Reference (golden) images are kept: they are content-addressed and
shared by every inspection of a recipe, few, and a new inspection may point at one at any
moment.

Boxes are unaffected: a box's own store has its own retention. A review a box sends of an
inspection the hub no longer holds is answered ``waiting: inspection``; the box, which
forwarded it long ago, drops that review (``fleet/box/reviews.py``, counted as
``not_forwarded``) and the reviews after it go on.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import Counter
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from lineside_inspect.errors import LinesideError
from lineside_inspect.fleet.hub.tables import BoxCountRow
from lineside_inspect.store.models import InspectionRow

if TYPE_CHECKING:
    from lineside_inspect.fleet.objects import ObjectStore
    from lineside_inspect.server.metrics import Metrics
    from lineside_inspect.store import Store

log = logging.getLogger("lineside.hub")
BATCH = 500  # rows (and image deletions, one request to the object store) at a time


@dataclass
class RetentionRound:
    deleted: int = 0  # rows (with their reviews and images)
    kept: int = 0  # rows past the cutoff whose image could not be deleted: next round


class HubRetention:
    """Deletes inspections older than ``days`` from ``store`` and ``objects``; a thread
    runs a round every ``interval_s`` (:meth:`start`, :meth:`stop`)."""

    def __init__(self, store: Store, objects: ObjectStore, days: float, interval_s: float,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.objects = objects
        self.days = days
        self.interval_s = interval_s
        self.deleted = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter: Counter | None = None
        self._failures: Counter | None = None
        if metrics is not None:
            self._counter = Counter("lineside_hub_retention_deleted", "Inspections the hub's "
                                    "retention deleted (with their reviews and images)",
                                    registry=metrics.registry)
            self._failures = Counter("lineside_hub_retention_failures", "Retention rounds "
                                     "that stopped early (database or object store down)",
                                     registry=metrics.registry)

    def run_once(self, now: datetime | None = None) -> RetentionRound:
        """Delete what is past the cutoff, batch by batch, until nothing is (or every row
        left keeps an image the object store would not delete)."""
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.days)
        done = RetentionRound()
        skip: set[str] = set()  # rows whose image stays this round
        while not self._stop.is_set():
            with Session(self.store.engine) as s:
                q = (select(InspectionRow.id, InspectionRow.box_id, InspectionRow.image_path)
                     .where(InspectionRow.created_at < cutoff).order_by(InspectionRow.created_at)
                     .limit(BATCH + len(skip)))
                rows = [r for r in s.execute(q) if r.id not in skip][:BATCH]
            if not rows:
                break
            failed = self._delete_images([r.image_path for r in rows if r.image_path])
            gone = [r for r in rows if r.image_path not in failed]
            skip.update(r.id for r in rows if r.image_path in failed)
            done.kept = len(skip)
            with Session(self.store.engine) as s, s.begin():
                s.execute(delete(InspectionRow).where(InspectionRow.id.in_([r.id for r in gone])))
                per_box: dict[str, int] = {}
                for r in gone:
                    if r.box_id is not None:
                        per_box[r.box_id] = per_box.get(r.box_id, 0) + 1
                for box_id, n in per_box.items():
                    s.execute(update(BoxCountRow).where(BoxCountRow.box_id == box_id)
                              .values(held=BoxCountRow.held - n))
            done.deleted += len(gone)
            self.deleted += len(gone)
            if self._counter is not None:
                self._counter.inc(len(gone))
            if not gone:
                break  # every row left keeps its image this round
        if done.deleted or done.kept:
            log.info("hub retention: %d inspection(s) older than %s deleted%s", done.deleted,
                     cutoff.isoformat(timespec="seconds"),
                     f"; {done.kept} kept for the next round (their images could not be "
                     "deleted)" if done.kept else "")
        return done

    def _delete_images(self, keys: list[str]) -> set[str]:
        """Delete ``keys`` from the object store (a missing one counts as deleted); those
        that could not be."""
        if not keys:
            return set()
        try:
            return set(self.objects.delete_many(keys))
        except LinesideError as exc:
            log.warning("hub retention: images not deleted: %s", exc.message)
            return set(keys)

    # -- the thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                self.last_error = None
            except Exception as exc:  # the database down: the next round tries again
                self.last_error = type(exc).__name__
                if self._failures is not None:
                    self._failures.inc()
                log.warning("hub retention: a round stopped early: %s", exc)
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hub-retention", daemon=True)
        self._thread.start()
        log.info("hub retention: inspections older than %g day(s) are deleted, every %g s",
                 self.days, self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
