"""A hostile (or broken) box against its hub: what one box key can send must cost the
hub and the other boxes nothing, and be answered with a 4xx naming the problem. A dev hub
(SQLite, images in a real SeaweedFS) under uvicorn on loopback, as in test_fleet_sync.
"""

from __future__ import annotations

import json
import select
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
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from lineside_inspect.errors import HubUnavailable, NotFoundError
from lineside_inspect.fleet.box.client import HubClient
from lineside_inspect.fleet.box.forward import Forwarder, forward_events
from lineside_inspect.fleet.box.reviews import CHANNEL, ReviewSync, review_events
from lineside_inspect.fleet.config import FleetSettings
from lineside_inspect.fleet.protocol import (
    FEATURES_HEADER,
    FORWARD,
    REVIEW_WAITING,
    ForwardAck,
    ForwardBatch,
)
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.server.metrics import Metrics
from lineside_inspect.store import Store
from lineside_inspect.store.box import BOX_ID_FILE
from lineside_inspect.store.models import OutboxRow
from lineside_inspect.store.outbox import Outbox

from .test_fleet_sync import (
    KEYS,
    MODEL,
    ServedHub,
    _answer_without_body,
    _answered,
    _drain,
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
    """Everything the peer sent before it closed. A server that closes with bytes of ours
    unread resets the connection after its answer (TCP's rule): the answer is still what
    was read before the reset."""
    raw = b""
    try:
        while got := c.recv(65536):
            raw += got
    except ConnectionResetError:
        pass
    return raw


def test_one_box_key_cannot_hold_every_forward_place(tmp_path: Path, weed: Any) -> None:
    """A box trickling a huge forward body (a byte per part, each within body_timeout_s)
    holds one place at most: its further forwards are 429 before their bodies are read,
    another box's batch goes in, and the trickle is cut by the minimum body rate."""
    # the trickle is cut body_timeout_s after its place was taken (its rate is nil): the
    # box's three refusals below must all come before, 1 s was tight on a loaded host
    with ServedHub(hub_settings(tmp_path, weed.settings("fleet-hostile-places"),
                                max_forward_bodies=2, body_timeout_s=3)) as hub:
        port = int(hub.url.rsplit(":", 1)[1])
        path1 = FORWARD.format(box_id="box1")
        slow = _send_head(port, path1, KEYS["box1"], declared=60_000_000)
        slow.settimeout(60)  # a hub that never cut the trickle fails the test, not hangs it
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.2):  # well within body_timeout_s, every time
                # once the hub's answer is here it has closed its end: a byte more would
                # draw a reset, and a reset can throw away the answer before it is read
                if select.select([slow], [], [], 0)[0]:
                    return
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
    """As a box of this release does: it reads ReviewAck.waiting."""
    return httpx.post(f"{hub.url}/fleet/v1/boxes/{box}/{leaf}", json=doc, timeout=30,
                      headers={"authorization": f"Bearer {KEYS[box]}",
                               FEATURES_HEADER: REVIEW_WAITING})


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
        "record.created_at: not a time: this field takes an ISO 8601 time": _forwarded(
            2, created_at="99999-01-01"),
        "seq: Input should be less than or equal to 2147483647": _forwarded(2**64),
        "record.defects.0.label 'zzz' is not one of the record's class_names": _forwarded(
            2, defects=[{"label": "zzz", "score": 0.5, "box": [1, 2, 3, 4]}]),
        "record.defects.0.box is not inside the 64x48 image": _forwarded(
            2, defects=[{"label": "short", "score": 0.5, "box": [1e300, -1e300, 1e300, 1]}]),
        # 400,000 defects of 400,000 classes took minutes to check (a list looked up per
        # defect), and every review page listing the record half a gigabyte
        "record.defects has 10001 entries, over the 10000 a record may carry": _forwarded(
            2, defects=[{"label": "short", "score": 0.5, "box": [1, 2, 3, 4]}] * 10_001),
        "record.class_names has 2001 entries, over the 2000": _forwarded(
            2, class_names=[f"c{i}" for i in range(2001)]),
        "record.class_names.1 is over 128 characters": _forwarded(
            2, class_names=["short", "x" * 129]),
        "record.reasons has 2002 entries": _forwarded(
            2, reasons=[{"rule": "critical", "label": "short", "count": 1, "allowed": 0,
                         "message": "x"}] * 2002),
    }
    for message, item in bad_forwards.items():
        r = _post(hub, "box1", "inspections", {"items": [item]})
        assert r.status_code == 422 and message.strip() in r.json()["error"]["message"], r.text
        with pytest.raises(NotFoundError):
            hub.store.get(item["id"])
    bad_reviews = {
        "created_at: out of range": _review(1, held["id"], created_at="0001-01-01T00:00:00+05:00"),
        # pydantic's "Input should be a valid datetime or date, input is too short": what a
        # time is, as a query's says (session 48)
        "body.items.0.created_at: not a time: this field takes an ISO 8601 time, such as "
        "2026-12-07T08:00:00Z": _review(1, held["id"], created_at="yesterday"),
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
    """A review dated ahead of the hub's clock is taken at the hub's time (not waited for,
    not acknowledged and dropped); one of another box's inspection is skipped, never
    applied, and the stream goes on; one of an inspection the hub does not hold stops the
    batch; every box review is recorded under its reviewer and the box whose key sent it."""
    mine, theirs = _forwarded(1), _forwarded(1)
    assert _post(hub, "box3", "inspections", {"items": [mine]}).status_code == 200
    assert _post(hub, "box4", "inspections", {"items": [theirs]}).status_code == 200
    qa = {"authorization": f"Bearer {KEYS['qa']}"}

    def reviews(doc: dict[str, Any]) -> list[str]:
        got = httpx.get(f"{hub.url}/v1/inspections/{doc['id']}", headers=qa).json()
        return [r["reviewer"] for r in got["reviews"]]

    ahead = datetime.now(UTC) + timedelta(minutes=10)
    r = _post(hub, "box3", "reviews", {"items": [_review(1, mine["id"], ahead, action="confirm")]})
    assert r.json() == {"through_seq": 1} and reviews(mine) == ["alice (box3)"]
    r = _post(hub, "box3", "reviews", {"items": [_review(3, theirs["id"]),
                                                 _review(4, mine["id"], reviewer="bob (box4)")]})
    assert r.json() == {"through_seq": 4}
    assert reviews(theirs) == []  # another box's inspection: never reviewed by box3
    # the box is the key's, not its word; the review from the clock ahead did not outrank it
    assert reviews(mine) == ["alice (box3)", "bob (box4) (box3)"]
    got = httpx.get(f"{hub.url}/v1/inspections/{mine['id']}", headers=qa).json()
    assert got["review_state"] == "corrected" and ahead.isoformat() in got["reviews"][0]["note"]
    r = _post(hub, "box3", "reviews", {"items": [_review(5, uuid.uuid4().hex),
                                                 _review(6, mine["id"], reviewer="carol")]})
    assert r.json() == {"through_seq": 0, "waiting": "inspection"}
    assert len(reviews(mine)) == 2


def test_a_box_of_version_1_reads_every_review_answer(hub: ServedHub) -> None:
    """A box of the release before ReviewAck.waiting (its ReviewAck forbids fields it does
    not know) reads the hub's answer to a batch the hub stopped part-way: without the
    features header the answer is version 1's."""
    mine = _forwarded(1000)  # above box3's forward cursor, whichever test ran before
    assert _post(hub, "box3", "inspections", {"items": [mine]}).status_code == 200
    items = [_review(7, mine["id"]), _review(8, uuid.uuid4().hex), _review(9, mine["id"])]
    r = httpx.post(f"{hub.url}/fleet/v1/boxes/box3/reviews", json={"items": items},
                   headers={"authorization": f"Bearer {KEYS['box3']}"}, timeout=30)
    assert r.status_code == 200 and _ReviewAckV1.model_validate_json(r.content).through_seq == 7
    assert r.json() == {"through_seq": 7}
    # a box that names the feature is told why (the same batch again: its first is a duplicate)
    assert _post(hub, "box3", "reviews", {"items": items}).json() == \
        {"through_seq": 7, "waiting": "inspection"}


class _ReviewAckV1(BaseModel):
    """``ReviewAck`` as the release before ``waiting`` has it (4b5c458^, verbatim): the
    model an older box parses the hub's answer with."""

    model_config = ConfigDict(extra="forbid")
    through_seq: int


def _sent_up(sync: ReviewSync) -> int:
    """``sync.send_up()`` once the hub answered it (:func:`_answered`: a try the hub did
    not answer within the box's ``timeout_s`` of 5 s, a loaded CI host, is the next
    one's, as the box's loop retries it): the reviews the hub took, with those of a try
    cut short after an earlier batch of it went (``sync.sent``). The outbox keeps a cut
    batch's events and the hub takes a resent review as a duplicate, so nothing is
    counted twice; what a try drops it settles, so its retry drops nothing again."""
    cut = 0

    def attempt() -> int:
        nonlocal cut
        sent = sync.sent
        try:
            return sync.send_up()
        except HubUnavailable:
            cut += sync.sent - sent
            raise

    return _answered(attempt) + cut


def test_a_box_drops_only_reviews_its_hub_will_never_hold(
        tmp_path: Path, hub: ServedHub, detector: Detector) -> None:
    """A review of an inspection recorded before the box had a hub never goes up: dropped,
    logged and counted, and the reviews after it go on. One of an inspection recorded
    under the box's old id is filed under that id (the hub would skip it from this one),
    holding nothing. One whose inspection is still being forwarded waits for it; one dated
    ahead of the hub's clock is taken at the hub's time, the box's kept in its note."""
    folder = tmp_path / "box"
    before = Store(folder, pass_rate=1.0, box_id="box-old")  # the box's id until today
    renamed = _inspection(detector)
    assert before.save(renamed)
    before.close()
    (folder / BOX_ID_FILE).unlink()  # how a box takes a new id (store/box.py)
    # (a box id no other test of the module's hub forwards as: box2's cursor is past
    # 2,000,000 once test_a_forward_body_of_countless_tiny_values ran)
    store = Store(folder, pass_rate=1.0, box_id="box5")
    metrics = Metrics()
    fleet = FleetSettings(hub_url=hub.url, token=KEYS["box5"], timeout_s=5)  # type: ignore[arg-type]
    hub_client = HubClient(fleet, "box5")
    try:
        unsent = _inspection(detector)  # before hub_url was set: no fleet event
        assert store.save(unsent)
        store.event_makers.append(forward_events)  # as fleet.box.install does
        store.review_event_makers.append(review_events)
        sent = _inspection(detector)
        assert store.save(sent)
        store.flush()
        forwarder = Forwarder(store, hub_client, fleet)
        _drain(forwarder)
        pending = _inspection(detector)  # in the forwarding backlog still
        assert store.save(pending)
        store.flush()
        for i in (unsent, renamed, sent, pending):
            store.review(i.id, reviewer="alice", action="false_reject")
        sync = ReviewSync(store, hub_client, metrics=metrics)
        assert _sent_up(sync) == 1  # sent's; pending's waits for its inspection
        assert [e.topic for e in sync.outbox.pending()] == [pending.id]
        assert [r.reviewer for r in hub.store.get(sent.id).reviews] == ["alice (box5)"]
        text = generate_latest(metrics.registry).decode()
        assert 'lineside_fleet_reviews_dropped_total{reason="not_forwarded"} 1.0' in text
        assert [e.topic for e in Outbox(store.engine, "box-old", CHANNEL).pending()] == [renamed.id]
        _drain(forwarder)  # the inspection goes; its review follows
        assert _sent_up(sync) == 1 and not sync.outbox.pending()
        assert [r.reviewer for r in hub.store.get(pending.id).reviews] == ["alice (box5)"]

        # this box's clock is 10 minutes ahead of the hub's: the review is taken, at the
        # hub's time (it must not outrank the hub's later reviews), the box's in its note
        store.review(sent.id, reviewer="alice", action="confirm")
        [ahead] = sync.outbox.pending()
        when = datetime.now(UTC) + timedelta(minutes=10)
        with Session(store.engine) as s, s.begin():
            row = s.get(OutboxRow, ahead.id)
            assert row is not None
            row.payload = {**row.payload, "created_at": when.isoformat()}
        assert _sent_up(sync) == 1 and not sync.outbox.pending() and sync.dropped == 1
        taken = hub.store.get(sent.id).reviews[-1]
        assert taken.action == "confirm" and taken.created_at < when
        assert when.isoformat() in taken.note
    finally:
        hub_client.close()
        store.close()


def test_a_review_on_a_shared_database_goes_up_from_the_inspections_box(
        tmp_path: Path, weed: Any, detector: Detector) -> None:
    """Boxes sharing one database list each other's inspections on their review pages. A
    review made on box1's page of box2's inspection is box2's to send (the hub takes a
    box's review only of its own inspections): it reaches the hub, and nothing is dropped.
    One a release before filed under box1 is handed over to box2 and goes up too."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with ServedHub(hub_settings(tmp_path, weed.settings("fleet-shared-db"))) as served:
        boxes: dict[str, tuple[Store, HubClient, Forwarder, ReviewSync, Metrics]] = {}
        try:
            for name in ("box1", "box2"):
                store = Store(tmp_path / name, url, pass_rate=1.0, box_id=name)
                store.event_makers.append(forward_events)
                store.review_event_makers.append(review_events)
                fleet = FleetSettings(hub_url=served.url, token=KEYS[name], timeout_s=5)  # type: ignore[arg-type]
                hub_client = HubClient(fleet, name)
                metrics = Metrics()
                boxes[name] = (store, hub_client, Forwarder(store, hub_client, fleet),
                               ReviewSync(store, hub_client, metrics=metrics), metrics)
            store1, store2, forwarder2 = boxes["box1"][0], boxes["box2"][0], boxes["box2"][2]
            first, second = _inspection(detector), _inspection(detector)
            assert store2.save(first) and store2.save(second)
            store2.flush()
            _drain(forwarder2)
            store1.review(first.id, reviewer="alice", action="false_reject")  # box1's page
            store1.review(second.id, reviewer="alice", action="false_reject")
            with Session(store1.engine) as s, s.begin():  # as a release before filed it
                row = s.query(OutboxRow).filter(OutboxRow.channel == CHANNEL,
                                                OutboxRow.topic == second.id).one()
                row.box_id = "box1"
            sync1, sync2 = boxes["box1"][3], boxes["box2"][3]
            assert sync1.send_up() == 0 and not sync1.outbox.pending()  # handed over: no post
            assert _sent_up(sync2) == 2 and not sync2.outbox.pending()
            for done in (first, second):
                assert [r.reviewer for r in served.store.get(done.id).reviews] == ["alice (box2)"]
            for _, _, _, sync, metrics in boxes.values():
                assert sync.dropped == 0
                assert "lineside_fleet_reviews_dropped_total{" not in \
                    generate_latest(metrics.registry).decode()
        finally:
            for store, hub_client, *_ in boxes.values():
                hub_client.close()
                store.close()


def test_ids_from_a_box_are_read_in_order(hub: ServedHub) -> None:
    """A part id holding U+202E reversed the hub's review page line (model, recipe, time
    read backwards); an older box still sends one: taken, its controls made U+FFFD."""
    item = _forwarded(1_000_000, part_id="\u202eevil-\u2066x", camera_id="cam\u200f1\r\n\t2")
    assert _post(hub, "box2", "inspections", {"items": [item]}).status_code == 200
    qa = {"authorization": f"Bearer {KEYS['qa']}"}
    got = httpx.get(f"{hub.url}/v1/inspections/{item['id']}", headers=qa).json()
    # a line break in a camera id split its row of the stations CSV in two
    assert got["part_id"] == "\ufffdevil-\ufffdx" and got["camera_id"] == "cam\ufffd1\ufffd\ufffd\ufffd2"


def test_a_forward_body_of_countless_tiny_values_is_refused_as_it_comes(hub: ServedHub) -> None:
    """Parsed, every JSON object or array is a Python object of 56 bytes or more: 64 MiB
    of ``[],`` under a record took 1.6 GB of the hub's memory to parse (25 times the body;
    the docs plan for 4), and a few box keys at once could take the hub down. The values
    are counted as the body comes in: past the bound, 413 (the box halves its batch),
    nothing stored, and the box's next batch goes in."""
    from lineside_inspect.fleet.hub.front import MAX_FORWARD_VALUES

    bomb = _forwarded(2_000_000)
    bomb["record"]["extra"] = "@"
    body = json.dumps({"items": [bomb]}).encode().replace(
        b'"@"', b"[" + b"[]," * MAX_FORWARD_VALUES + b"[]]")
    r = httpx.post(f"{hub.url}{FORWARD.format(box_id='box2')}", content=body, timeout=60,
                   headers={"authorization": f"Bearer {KEYS['box2']}",
                            "content-type": "application/json"})
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"]["code"] == "body_too_large"
    assert f"over {MAX_FORWARD_VALUES} JSON objects, arrays and values" in r.json()["error"]["message"]
    with pytest.raises(NotFoundError):
        hub.store.get(bomb["id"])
    ok = _forwarded(2_000_001)
    assert _post(hub, "box2", "inspections", {"items": [ok]}).status_code == 200
