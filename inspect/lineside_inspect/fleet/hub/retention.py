"""The hub's retention: inspections the hub received longer than ``retention_days`` ago
leave it, with their reviews and images, so a plant's hub does not grow for ever.

A round (:meth:`HubRetention.run_once`) takes the rows the hub received before the
cutoff (``received_at``: a box's clock may be behind and its backlog old, so a row dated
by the box could leave on arrival; rows from before that column go by ``created_at``),
oldest first, in batches of :data:`BATCH`: their images are deleted from the object
store first, then the rows (their reviews go with them: the foreign key cascades), each
box's held count and the rows' passes and fails, first pass and after review
(``store/history.py``: the dashboard's yield figures keep them) in one transaction. An
object store that cannot be reached ends the round (the next one tries again). Objects
first, because a round that fails in between leaves rows whose images are gone (their
page says so) which the next round deletes again; rows first would leave images nothing
points at, for good. A row whose image could not be deleted stays for the next round.

Reference (golden) images are content-addressed and shared by every inspection of a
camera's recipe, so one goes only when the last inspection pointing at it has gone
(:meth:`HubRetention._drop_unused_references`). A box may forward a new inspection of
that golden image at any moment, whose ingest found the object there and did not put it
again; so the object is read before it is deleted and put back when a row points at it
afterwards, and the ingest looks again once its rows are committed
(``Ingest._keep_references``): whichever of the two comes second restores it. A put-back
the object store fails is tried again first thing in the next round; only a hub process
that ends between the delete and the put-back loses that image (its bytes are in memory).

Boxes are unaffected: a box's own store has its own retention. A review a box sends of an
inspection the hub no longer holds is answered ``waiting: inspection``; the box, which
forwarded it long ago, drops that review (``fleet/box/reviews.py``, counted as
``not_forwarded``) and the reviews after it go on.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.orm import Session

from lineside_inspect.errors import NotFoundError
from lineside_inspect.fleet.hub.images import CONTENT_TYPES
from lineside_inspect.fleet.hub.tables import BoxCountRow
from lineside_inspect.store import history
from lineside_inspect.store.models import InspectionRow

if TYPE_CHECKING:
    from lineside_inspect.fleet.objects import ObjectStore
    from lineside_inspect.server.metrics import Metrics
    from lineside_inspect.store import Store

log = logging.getLogger("lineside.hub")
BATCH = 500  # rows (and image deletions, one request to the object store) at a time
# rows whose image the object store refused to delete (each key on its own) after which a
# round gives up: each costs the next batch's query a row more
MAX_SKIPPED = 10 * BATCH


@dataclass
class RetentionRound:
    deleted: int = 0  # rows (with their reviews and images)
    kept: int = 0  # rows past the cutoff whose image could not be deleted: next round
    references: int = 0  # reference images no inspection points at any more, deleted


class HubRetention:
    """Deletes inspections received more than ``days`` ago from ``store`` and ``objects``;
    a thread runs a round every ``interval_s`` (:meth:`start`, :meth:`stop`)."""

    def __init__(self, store: Store, objects: ObjectStore, days: float, interval_s: float,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.objects = objects
        self.days = days
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter: Counter | None = None
        self._failures: Counter | None = None
        self._references: Counter | None = None
        # reference keys of deleted rows, looked at once their round's rows are gone (kept
        # across rounds: a round that stops early, or a key the store would not delete)
        self._candidates: set[str] = set()
        # reference images deleted, then found pointed at, whose put-back failed: put back
        # first thing in the next round (lost only if the process ends meanwhile)
        self._restore: dict[str, bytes] = {}
        if metrics is not None:
            self._counter = Counter("lineside_hub_retention_deleted", "Inspections the hub's "
                                    "retention deleted (with their reviews and images)",
                                    registry=metrics.registry)
            self._failures = Counter("lineside_hub_retention_failures", "Retention rounds "
                                     "that stopped early (database or object store down)",
                                     registry=metrics.registry)
            self._references = Counter("lineside_hub_retention_references_deleted",
                                       "Reference images the hub's retention deleted once "
                                       "no inspection pointed at them",
                                       registry=metrics.registry)

    def run_once(self, now: datetime | None = None) -> RetentionRound:
        """Delete what is past the cutoff, batch by batch, until nothing is (or every row
        left keeps an image the object store would not delete). Raises
        ObjectStoreUnavailable (the round ends) when the object store cannot be reached."""
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.days)
        done = RetentionRound()
        self._restore_deleted()  # first: an image an inspection points at is missing
        # by when the hub received a row (a box's clock may be behind, its backlog old:
        # dated by the box, a row could leave on arrival); rows received before the hub
        # kept that time go by when they were made
        for old, by in ((InspectionRow.received_at < cutoff, InspectionRow.received_at),
                        (InspectionRow.received_at.is_(None) & (InspectionRow.created_at < cutoff),
                         InspectionRow.created_at)):
            self._delete_where(old, by, done)
        self._drop_unused_references(done)
        with Session(self.store.engine) as s, s.begin():  # slots no figure reads any more
            history.prune(s, now or datetime.now(UTC))
        if done.deleted or done.kept:
            log.info("hub retention: %d inspection(s) received before %s deleted%s%s",
                     done.deleted, cutoff.isoformat(timespec="seconds"),
                     f", and {done.references} reference image(s) no inspection points at"
                     if done.references else "",
                     f"; {done.kept} kept for the next round (their images could not be "
                     "deleted)" if done.kept else "")
        return done

    def _referenced(self, key: str) -> bool:
        with Session(self.store.engine) as s:
            return s.scalar(select(InspectionRow.id)
                            .where(InspectionRow.reference_path == key).limit(1)) is not None

    def _put_back(self, key: str, data: bytes) -> None:
        """Put ``key`` back (kept in ``_restore`` until it is: an object store down here
        ends the round, and the next one tries first)."""
        self._restore[key] = data
        self.objects.put(key, data, CONTENT_TYPES.get(key.rsplit(".", 1)[-1],
                                                      "application/octet-stream"))
        del self._restore[key]
        log.info("hub retention: reference image %s put back (an inspection stored as it "
                 "was deleted points at it)", key)

    def _restore_deleted(self) -> None:
        """Put back the reference images a round deleted and found pointed at, but could
        not put back (or did not get to look at again)."""
        for key, data in list(self._restore.items()):
            if self._referenced(key) and not self.objects.exists(key):
                self._put_back(key, data)
            self._restore.pop(key, None)

    def _drop_unused_references(self, done: RetentionRound) -> None:
        """Delete the candidate reference images no inspection points at now. Read first
        and put back when an inspection stored meanwhile points at one (its ingest found
        the object there before the delete: the module's docstring)."""
        for key in sorted(self._candidates):
            if self._stop.is_set():
                return
            if self._referenced(key):
                self._candidates.discard(key)
                continue
            try:
                data = self.objects.get(key)
            except NotFoundError:
                self._candidates.discard(key)
                continue
            # kept until the look after the delete is done: a round ending in between (the
            # database busy with the very ingest that points at it) must not lose it
            self._restore[key] = data
            if self.objects.delete_many([key]):
                del self._restore[key]
                continue  # the store would not delete it: tried again next round
            self._candidates.discard(key)
            if self._referenced(key):
                self._put_back(key, data)
                continue
            del self._restore[key]
            done.references += 1
            if self._references is not None:
                self._references.inc()

    def _delete_where(self, old: ColumnElement[bool], by: Any, done: RetentionRound) -> None:
        skip: set[str] = set()  # rows whose image stays this round
        while not self._stop.is_set() and len(skip) < MAX_SKIPPED:
            with Session(self.store.engine) as s:
                q = (select(InspectionRow.id, InspectionRow.image_path,
                            InspectionRow.reference_path).where(old)
                     .order_by(by).limit(BATCH + len(skip)))
                rows = [r for r in s.execute(q) if r.id not in skip][:BATCH]
            if not rows:
                return
            keys = [r.image_path for r in rows if r.image_path]
            failed = set(self.objects.delete_many(keys)) if keys else set()
            kept = {r.id for r in rows if r.image_path in failed}
            gone = [r.id for r in rows if r.id not in kept]
            skip |= kept
            done.kept += len(kept)
            self._candidates.update(r.reference_path for r in rows
                                    if r.id not in kept and r.reference_path)
            with Session(self.store.engine) as s, s.begin():
                # counted from what was deleted: a second hub process deleting the same
                # rows meanwhile must not take them off the boxes' counts twice (a SQLite
                # before 3.35 has no RETURNING: read, then delete; one process owns it)
                # each row's verdict after review, read first: its reviews go with it
                # (a row another process deletes meanwhile is read here, and counted only
                # if this delete returns it)
                judged = select(InspectionRow.id, history.judged(s)).where(
                    InspectionRow.id.in_(gone))
                after: dict[str, str | None] = dict(s.execute(judged).all())
                deleting = delete(InspectionRow).where(InspectionRow.id.in_(gone))
                if self.store.engine.dialect.delete_returning:
                    removed = s.execute(deleting.returning(
                        *history.KEY_COLUMNS, InspectionRow.id)).all()
                else:
                    removed = s.execute(select(*history.KEY_COLUMNS, InspectionRow.id)
                                        .where(InspectionRow.id.in_(gone))).all()
                    s.execute(deleting)
                boxes = [r.box_id for r in removed]
                for box_id, n in collections.Counter(b for b in boxes if b is not None).items():
                    s.execute(update(BoxCountRow).where(BoxCountRow.box_id == box_id)
                              .values(held=BoxCountRow.held - n))
                # the fleet's yield figures keep their passes and fails (store/history.py)
                history.count_removed(s, [(*r[:-1], after.get(r[-1])) for r in removed])
            done.deleted += len(boxes)
            if self._counter is not None:
                self._counter.inc(len(boxes))
            if not gone:
                return  # every row left keeps its image this round

    # -- the thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # the database down: the next round tries again
                if self._failures is not None:
                    self._failures.inc()
                log.warning("hub retention: a round stopped early: %s", exc)
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hub-retention", daemon=True)
        self._thread.start()
        log.info("hub retention: inspections received over %g day(s) ago are deleted, every %g s",
                 self.days, self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
