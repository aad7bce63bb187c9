"""A record the hub will not store (an older box's, a tampered one) held up every later
inspection of its box for good: the box sent the same batch again and again. Now the
batch is halved until the culprit goes alone, which is set aside (kept, listed for an
admin, protected from retention) while the rest flow on, and sent again on request. A
real hub (SQLite, images in a real SeaweedFS) and a real edge server, on loopback."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, event, update
from sqlalchemy.orm import Session

from lineside_inspect.fleet.box.client import HubClient
from lineside_inspect.fleet.box.forward import Forwarder, forward_events
from lineside_inspect.fleet.box.reviews import ReviewSync, review_events
from lineside_inspect.fleet.config import FleetSettings
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store import Store
from lineside_inspect.store.models import InspectionRow

from .conftest import keyed as box_settings
from .conftest import start_server
from .test_fleet_slow_link import _rounds
from .test_fleet_sync import KEYS, MODEL, ServedHub, _inspection, hub_settings


def _skew(engine: Any, inspection_id: str, by: int) -> None:
    """Make the row's recorded width disagree with its image (the hub refuses it), or
    agree again."""
    with Session(engine) as s, s.begin():
        s.execute(update(InspectionRow).where(InspectionRow.id == inspection_id)
                  .values(width=InspectionRow.width + by))


def test_a_refused_record_is_set_aside_and_the_rest_go_on(tmp_path: Path, weed: Any) -> None:
    store = Store(tmp_path / "box", pass_rate=1.0, box_id="box3", max_age_days=1)
    store.event_makers.append(forward_events)
    store.review_event_makers.append(review_events)
    det = Detector(MODEL, device="cpu", threads=1)
    with ServedHub(hub_settings(tmp_path, weed.settings("fleet-set-aside"))) as hub:
        fleet = FleetSettings(hub_url=hub.url, token=KEYS["box3"], timeout_s=30,  # type: ignore[arg-type]
                              forward_batch=4)
        client = HubClient(fleet, "box3")
        try:
            made = [_inspection(det) for _ in range(4)]
            for inspection in made:
                assert store.save(inspection)
            store.flush()
            bad = made[1].id
            _skew(store.engine, bad, 1)
            forwarder = Forwarder(store, client, fleet)
            store.guard_channel = forwarder.channel  # as fleet/box/__init__.py does
            refused = _rounds(forwarder)
            assert refused and all("invalid_record" in r for r in refused), refused
            assert not forwarder.outbox.pending()
            for inspection in made:
                assert _held(hub.store, inspection.id) == (inspection.id != bad)
            [aside] = forwarder.outbox.set_aside_events()
            assert aside.topic == bad and aside.payload["refused"].startswith(
                "hub refused POST") and "invalid_record" in aside.payload["refused"]
            forwarder.refresh_gauges()
            assert forwarder.status()["set_aside"] == 1
            # a review of it waits with it (sent, the box would drop it: the hub does not
            # hold the inspection and the box owes no forwarding); the others' go up
            for inspection in made[:2]:
                store.review(inspection.id, reviewer="qa", action="confirm")
            sync = ReviewSync(store, client)
            assert sync.send_up() == 1 and sync.dropped == 0
            assert len(sync.outbox.set_aside_events()) == 1
            # retention never takes a set-aside row by age (it is not on the hub)
            store.enforce_retention(now=datetime.now(UTC) + timedelta(days=10))
            assert [r.id for r in _rows(store)] == [bad]

            # the hub fixed (here: the record), sent again: it arrives, after the rest,
            # and its review after it
            _skew(store.engine, bad, -1)
            assert sync.retry_with(forwarder.retry_set_aside) == 1
            assert sync.outbox.set_aside_count() == 0
            assert forwarder.outbox.set_aside_count() == 0
            assert _rounds(forwarder) == []
            assert _held(hub.store, bad)
            assert sync.send_up() == 1 and sync.dropped == 0
            assert [r.action for r in hub.store.get(bad).reviews] == ["confirm"]
        finally:
            client.close()
            store.close()


def _held(hub_store: Store, inspection_id: str) -> bool:
    with Session(hub_store.engine) as s:
        return s.get(InspectionRow, inspection_id) is not None


def _rows(store: Store) -> list[InspectionRow]:
    with Session(store.engine) as s:
        return list(s.query(InspectionRow).all())


def _wait(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return got


def test_an_admin_lists_and_retries_set_aside_inspections(tmp_path: Path, weed: Any) -> None:
    """Through the box's API: GET /v1/fleet/set-aside and POST .../retry (admin only), and
    the set-aside gauge on /metrics."""
    data = tmp_path / "box"
    store = Store(data, pass_rate=1.0, box_id="box4")
    store.event_makers.append(forward_events)
    det = Detector(MODEL, device="cpu", threads=1)
    made = [_inspection(det) for _ in range(2)]
    for inspection in made:
        assert store.save(inspection)
    store.flush()
    bad = made[0].id
    _skew(store.engine, bad, 1)
    store.close()
    with ServedHub(hub_settings(tmp_path, weed.settings("fleet-set-aside-api"))) as hub:
        fleet = FleetSettings(hub_url=hub.url, token=KEYS["box4"], timeout_s=5,  # type: ignore[arg-type]
                              forward_interval_s=0.2)
        box, stop = start_server(box_settings(box_id="box4", fleet=fleet, data_dir=str(data),
                                              store_pass_rate=1.0))
        try:
            with box.client("admin") as c:
                page = _wait("the set-aside inspection",
                             lambda: c.get("/v1/fleet/set-aside").json()["count"] == 1
                             and c.get("/v1/fleet/set-aside").json())
                [item] = page["items"]
                assert item["inspection_id"] == bad and "invalid_record" in item["refused"]
                _wait("the other inspection on the hub", lambda: _held(hub.store, made[1].id))
                gauge = [x for x in c.get("/metrics").text.splitlines()
                         if x.startswith("lineside_fleet_set_aside ")]
                assert gauge == ["lineside_fleet_set_aside 1.0"]
            with box.client("reviewer") as c:
                assert c.get("/v1/fleet/set-aside").status_code == 403
                assert c.post("/v1/fleet/set-aside/retry").status_code == 403
            assert httpx.post(box.url + "/v1/fleet/set-aside/retry").status_code == 401
            assert not _held(hub.store, bad)

            with box.client("reviewer") as c:
                r = c.post(f"/v1/inspections/{bad}/reviews", json={"action": "false_reject"})
                assert r.status_code in (200, 201), r.text
            box_db = create_engine(f"sqlite:///{data / 'lineside.db'}")
            _skew(box_db, bad, -1)
            box_db.dispose()
            with box.client("admin") as c:
                r = c.post("/v1/fleet/set-aside/retry")
                assert r.status_code == 200 and r.json() == {"retried": 1}
                _wait("the retried inspection on the hub", lambda: _held(hub.store, bad))
                _wait("its review on the hub", lambda: hub.store.get(bad).reviews)
                assert c.get("/v1/fleet/set-aside").json() == {"count": 0, "items": [],
                                                                "reviews": 0}
        finally:
            stop()


@contextlib.contextmanager
def _one_set_aside(tmp_path: Path, weed: Any, bucket: str, database_url: str | None = None,
                   ) -> Iterator[tuple[Store, ServedHub, Forwarder, Any]]:
    """A box (reviews made on it go up) and a hub that refused its one inspection, set
    aside; the record fixed since, so a retry goes through: (store, hub, forwarder, the
    inspection)."""
    store = Store(tmp_path / "box", database_url, pass_rate=1.0, box_id="box3")
    store.event_makers.append(forward_events)
    store.review_event_makers.append(review_events)
    with ServedHub(hub_settings(tmp_path, weed.settings(bucket))) as hub:
        fleet = FleetSettings(hub_url=hub.url, token=KEYS["box3"], timeout_s=30,  # type: ignore[arg-type]
                              forward_batch=4)
        client = HubClient(fleet, "box3")
        try:
            bad = _inspection(Detector(MODEL, device="cpu", threads=1))
            assert store.save(bad)
            store.flush()
            _skew(store.engine, bad.id, 1)
            forwarder = Forwarder(store, client, fleet)
            _rounds(forwarder)
            assert forwarder.outbox.set_aside_count() == 1
            _skew(store.engine, bad.id, -1)
            yield store, hub, forwarder, bad
        finally:
            client.close()
            store.close()


def test_a_retry_beside_the_stores_writer_keeps_the_hubs_order(
        tmp_path: Path, weed: Any, database_url: str | None) -> None:
    """On PostgreSQL ids are handed out at insert but seen in commit order: a retry
    written beside the store's writer could be seen after a newer inspection, which the
    forwarder sent first; the hub's cursor then passed the retried one, refused for good
    (409 sequence_behind). The retry holds the writer now."""
    backend = "pg" if database_url else "sqlite"
    with _one_set_aside(tmp_path, weed, f"fleet-retry-order-{backend}", database_url) as (
            store, hub, forwarder, first):
        # the retry stops after its INSERT (its id handed out), before its commit
        flushed, go_on = threading.Event(), threading.Event()

        def hold(session: Any, ctx: Any) -> None:
            if threading.current_thread().name == "retry":
                flushed.set()
                go_on.wait(30)

        event.listen(Session, "after_flush", hold)
        try:
            retry = threading.Thread(target=forwarder.retry_set_aside, name="retry")
            retry.start()
            assert flushed.wait(30)
            later = _inspection(Detector(MODEL, device="cpu", threads=1))
            assert store.save(later)  # answered: the line goes on
            writer = threading.Thread(target=store.flush)
            writer.start()
            writer.join(0.5)
            assert writer.is_alive()  # the writer waits for the retry's commit
            go_on.set()
            retry.join(30)
            writer.join(30)
        finally:
            event.remove(Session, "after_flush", hold)
        assert _rounds(forwarder) == []
        assert _held(hub.store, first.id) and _held(hub.store, later.id)


def test_a_review_is_not_stranded_by_a_retry_meanwhile(tmp_path: Path, weed: Any) -> None:
    """The review sync read which inspections were aside; an admin's retry then queued
    them (and the reviews already aside) again; the sync then set a review of one aside,
    and nothing would ever queue it again. Both hold one lock now: the retry waits."""
    with _one_set_aside(tmp_path, weed, "fleet-aside-race") as (store, hub, forwarder, bad):
        store.review(bad.id, reviewer="qa", action="confirm")
        sync = ReviewSync(store, forwarder.client)
        read = sync._inspections
        retry: list[threading.Thread] = []

        def read_then_retry(ids: set[str]) -> Any:
            got = read(ids)  # the inspection is aside now
            retry.append(threading.Thread(target=sync.retry_with,
                                          args=(forwarder.retry_set_aside,)))
            retry[0].start()
            retry[0].join(0.5)  # an admin's retry, meanwhile
            return got

        sync._inspections = read_then_retry  # type: ignore[method-assign]
        sync.send_up()
        retry[0].join(30)
        assert not retry[0].is_alive()
        assert sync.outbox.set_aside_count() == 0  # queued again with its inspection
        sync._inspections = read  # type: ignore[method-assign]
        assert _rounds(forwarder) == []
        assert sync.send_up() == 1
        assert [r.action for r in hub.store.get(bad.id).reviews] == ["confirm"]
