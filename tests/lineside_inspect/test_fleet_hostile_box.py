"""A hostile (or broken) box against its hub: what one box key can send must cost the
hub and the other boxes nothing, and be answered with a 4xx naming the problem. A dev hub
(SQLite, images in a real SeaweedFS) under uvicorn on loopback, as in test_fleet_sync.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from sqlalchemy.orm import Session

from lineside_inspect.errors import NotFoundError
from lineside_inspect.fleet.box.client import HubClient
from lineside_inspect.fleet.box.forward import Forwarder, forward_events
from lineside_inspect.fleet.box.reviews import ReviewSync, review_events
from lineside_inspect.fleet.config import FleetSettings
from lineside_inspect.fleet.protocol import FORWARD, ForwardAck, ForwardBatch
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.server.metrics import Metrics
from lineside_inspect.store import Store
from lineside_inspect.store.box import BOX_ID_FILE
from lineside_inspect.store.models import OutboxRow

from .test_fleet_sync import (
    KEYS,
    MODEL,
    ServedHub,
    _answer_without_body,
    _inspection,
    _item,
    _png,
    _send_head,
    client,
    hub_settings,
)


def _reading(hub: ServedHub) -> float:
    """Forwarded bodies the hub is reading or applying now (its own gauge)."""
    text = httpx.get(hub.url + "/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("lineside_hub_forward_bodies "))
    return float(line.split()[1])


def _until_closed(c: socket.socket) -> bytes:
    raw = b""
    while got := c.recv(65536):
        raw += got
    return raw


def test_one_box_key_cannot_hold_every_forward_place(tmp_path: Path, weed: Any) -> None:
    """A box trickling a huge forward body (a byte per part, each within body_timeout_s)
    holds one place at most: its further forwards are 429 before their bodies are read,
    another box's batch goes in, and the trickle is cut by the minimum body rate."""
    with ServedHub(hub_settings(tmp_path, weed.settings("fleet-hostile-places"),
                                max_forward_bodies=2, body_timeout_s=1)) as hub:
        port = int(hub.url.rsplit(":", 1)[1])
        path1 = FORWARD.format(box_id="box1")
        slow = _send_head(port, path1, KEYS["box1"], declared=60_000_000)
        slow.settimeout(60)  # a hub that never cut the trickle fails the test, not hangs it
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.2):  # well within body_timeout_s, every time
                try:
                    slow.sendall(b" ")
                except OSError:  # the hub answered and closed
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            while _reading(hub) != 1.0:
                threading.Event().wait(0.05)
            for _ in range(3):  # the same box again: refused before a byte of the body
                status, headers, doc = _answer_without_body(port, path1, KEYS["box1"])
                assert (status, doc["error"]["code"]) == (429, "forward_in_progress")
                assert "box box1 has a forwarded batch in the hub already" in doc["error"]["message"]
                assert headers["retry-after"] == "1" and headers["connection"] == "close"
            box2 = client(hub, "box2")
            ack = box2.post(box2.path(FORWARD), ForwardBatch(items=[_item(1, image=_png(31))]),
                            ForwardAck)
            assert ack.stored == 1
            answer = _until_closed(slow)
        finally:
            stop.set()
            sender.join()
            slow.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b'"body_timeout"' in answer and b"bytes/s on average" in answer
        while _reading(hub) != 0.0:  # the place and the box's turn came back
            threading.Event().wait(0.05)
        box1 = client(hub, "box1")
        ack = box1.post(box1.path(FORWARD), ForwardBatch(items=[_item(1, image=_png(32))]),
                        ForwardAck)
        assert ack.stored == 1


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(MODEL, device="cpu", threads=1)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, weed: Any) -> Iterator[ServedHub]:
    tmp = tmp_path_factory.mktemp("hub")
    with ServedHub(hub_settings(tmp, weed.settings("fleet-hostile"))) as served:
        yield served


def _post(hub: ServedHub, box: str, leaf: str, doc: Any) -> httpx.Response:
    return httpx.post(f"{hub.url}/fleet/v1/boxes/{box}/{leaf}", json=doc,
                      headers={"authorization": f"Bearer {KEYS[box]}"}, timeout=30)


def _review(seq: int, inspection_id: str, when: datetime | None = None, **more: Any) -> dict[str, Any]:
    return {"seq": seq, "inspection_id": inspection_id,
            "created_at": (when or datetime.now(UTC)).isoformat(), "reviewer": "alice",
            "action": "false_reject", "boxes": [], "note": "", "origin": "box", **more}


def _forwarded(seq: int, **record: Any) -> dict[str, Any]:
    item = _item(1, image=_png(seq % 100)).model_dump(mode="json")
    item["record"].update(record)
    return {**item, "seq": seq}


def test_hostile_values_are_422s_naming_the_field(hub: ServedHub) -> None:
    """Times that overflow once taken to UTC, documents nested past any record's shape,
    sequence numbers past the database's INTEGER, defects the record's model cannot have
    or boxes outside the image: a 422 naming the field, nothing stored (each was a 500, or
    a record every later drawing of failed)."""
    held = _forwarded(1)
    assert _post(hub, "box1", "inspections", {"items": [held]}).status_code == 200
    deep: Any = None
    for _ in range(400):
        deep = {"x": [deep]}
    bad_forwards = {
        "record.created_at: out of range": _forwarded(2, created_at="0001-01-01T00:00:00+05:00"),
        "record.created_at: out of range ": _forwarded(2, created_at="9999-12-31T23:59:59-05:00"),
        "record: nested over 16 deep": _forwarded(2, extra=deep),
        "seq: Input should be less than or equal to 2147483647": _forwarded(2**64),
        "record.defects.0.label 'zzz' is not one of the record's class_names": _forwarded(
            2, defects=[{"label": "zzz", "score": 0.5, "box": [1, 2, 3, 4]}]),
        "record.defects.0.box is not inside the 64x48 image": _forwarded(
            2, defects=[{"label": "short", "score": 0.5, "box": [1e300, -1e300, 1e300, 1]}]),
    }
    for message, item in bad_forwards.items():
        r = _post(hub, "box1", "inspections", {"items": [item]})
        assert r.status_code == 422 and message.strip() in r.json()["error"]["message"], r.text
        with pytest.raises(NotFoundError):
            hub.store.get(item["id"])
    bad_reviews = {
        "created_at: out of range": _review(1, held["id"], created_at="0001-01-01T00:00:00+05:00"),
        "boxes: nested over 16 deep": _review(1, held["id"], boxes=[{"label": deep}]),
        "seq: Input should be less than or equal to 2147483647": _review(2**64, held["id"]),
    }
    for message, review in bad_reviews.items():
        r = _post(hub, "box1", "reviews", {"items": [review]})
        assert r.status_code == 422 and message in r.json()["error"]["message"], r.text
    # a review's box outside the image is skipped (never applied), the stream goes on
    outside = _review(1, held["id"], action="missed_defect",
                      boxes=[{"label": "short", "box": [0, 0, 1e300, 10]}])
    r = _post(hub, "box1", "reviews", {"items": [outside]})
    assert r.json() == {"through_seq": 1}
    qa = {"authorization": f"Bearer {KEYS['qa']}"}
    assert httpx.get(f"{hub.url}/v1/inspections/{held['id']}", headers=qa).json()["reviews"] == []
    r = httpx.get(f"{hub.url}/v1/inspections/{held['id']}/annotated", headers=qa)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"


def test_box_reviews_wait_skip_and_name_their_box(hub: ServedHub) -> None:
    """A review dated ahead of the hub's clock waits (not acknowledged and dropped); one
    of another box's inspection is skipped, never applied, and the stream goes on; one
    of an inspection the hub does not hold stops the batch; every box review is recorded
    under its reviewer and the box whose key sent it."""
    mine, theirs = _forwarded(1), _forwarded(1)
    assert _post(hub, "box3", "inspections", {"items": [mine]}).status_code == 200
    assert _post(hub, "box4", "inspections", {"items": [theirs]}).status_code == 200
    qa = {"authorization": f"Bearer {KEYS['qa']}"}

    def reviews(doc: dict[str, Any]) -> list[str]:
        got = httpx.get(f"{hub.url}/v1/inspections/{doc['id']}", headers=qa).json()
        return [r["reviewer"] for r in got["reviews"]]

    ahead = datetime.now(UTC) + timedelta(minutes=10)
    r = _post(hub, "box3", "reviews", {"items": [_review(1, mine["id"], ahead),
                                                 _review(2, mine["id"])]})
    assert r.json() == {"through_seq": 0, "waiting": "clock"} and reviews(mine) == []
    r = _post(hub, "box3", "reviews", {"items": [_review(3, theirs["id"]),
                                                 _review(4, mine["id"], reviewer="bob (box4)")]})
    assert r.json() == {"through_seq": 4}  # an answer an older box reads: no "waiting"
    assert reviews(theirs) == []  # another box's inspection: never reviewed by box3
    assert reviews(mine) == ["bob (box4) (box3)"]  # the box is the key's, not its word
    r = _post(hub, "box3", "reviews", {"items": [_review(5, uuid.uuid4().hex),
                                                 _review(6, mine["id"], reviewer="carol")]})
    assert r.json() == {"through_seq": 0, "waiting": "inspection"}
    assert len(reviews(mine)) == 1


def test_a_box_drops_only_reviews_its_hub_will_never_hold(
        tmp_path: Path, hub: ServedHub, detector: Detector) -> None:
    """A review of an inspection recorded before the box had a hub, or under another box
    id, never goes up: dropped, logged and counted, and the reviews after it go on. One
    whose inspection is still being forwarded waits for it; one dated ahead of the hub's
    clock waits for the clock."""
    folder = tmp_path / "box"
    before = Store(folder, pass_rate=1.0, box_id="box-old")  # the box's id until today
    renamed = _inspection(detector)
    assert before.save(renamed)
    before.close()
    (folder / BOX_ID_FILE).unlink()  # how a box takes a new id (store/box.py)
    store = Store(folder, pass_rate=1.0, box_id="box2")
    metrics = Metrics()
    fleet = FleetSettings(hub_url=hub.url, token=KEYS["box2"], timeout_s=5)  # type: ignore[arg-type]
    hub_client = HubClient(fleet, "box2")
    try:
        unsent = _inspection(detector)  # before hub_url was set: no fleet event
        assert store.save(unsent)
        store.event_makers.append(forward_events)  # as fleet.box.install does
        store.review_event_makers.append(review_events)
        sent = _inspection(detector)
        assert store.save(sent)
        store.flush()
        forwarder = Forwarder(store, hub_client, fleet)
        while forwarder.forward_once():
            pass
        pending = _inspection(detector)  # in the forwarding backlog still
        assert store.save(pending)
        store.flush()
        for i in (unsent, renamed, sent, pending):
            store.review(i.id, reviewer="alice", action="false_reject")
        sync = ReviewSync(store, hub_client, metrics=metrics)
        assert sync.send_up() == 1  # sent's; pending's waits for its inspection
        assert [e.topic for e in sync.outbox.pending()] == [pending.id]
        assert [r.reviewer for r in hub.store.get(sent.id).reviews] == ["alice (box2)"]
        text = generate_latest(metrics.registry).decode()
        for reason in ("not_forwarded", "other_box"):
            assert f'lineside_fleet_reviews_dropped_total{{reason="{reason}"}} 1.0' in text
        while forwarder.forward_once():  # the inspection goes; its review follows
            pass
        assert sync.send_up() == 1 and not sync.outbox.pending()
        assert [r.reviewer for r in hub.store.get(pending.id).reviews] == ["alice (box2)"]

        # this box's clock is 10 minutes ahead of the hub's: the review waits, not dropped
        store.review(sent.id, reviewer="alice", action="confirm")
        [ahead] = sync.outbox.pending()
        when = datetime.now(UTC) + timedelta(minutes=10)
        with Session(store.engine) as s, s.begin():
            row = s.get(OutboxRow, ahead.id)
            assert row is not None
            row.payload = {**row.payload, "created_at": when.isoformat()}
        assert sync.send_up() == 0 and [e.id for e in sync.outbox.pending()] == [ahead.id]
        assert sync.dropped == 2 and len(hub.store.get(sent.id).reviews) == 1
        with Session(store.engine) as s, s.begin():  # the hub's clock got there
            row = s.get(OutboxRow, ahead.id)
            assert row is not None
            row.payload = {**row.payload, "created_at": datetime.now(UTC).isoformat()}
        assert sync.send_up() == 1 and len(hub.store.get(sent.id).reviews) == 2
    finally:
        hub_client.close()
        store.close()
