"""Store-and-forward, in one process: the hub's ingest served by uvicorn on loopback (a
dev hub on SQLite, images in a real SeaweedFS), a box's real Store and Forwarder.

The kill -9 and multi-box cases run real ``lineside hub`` / ``lineside serve`` processes
on PostgreSQL: ``test_fleet_sync_processes.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
import numpy as np
import pytest
import uvicorn
from prometheus_client import generate_latest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lineside_inspect.errors import HubRefused, HubUnavailable, ObjectStoreUnavailable
from lineside_inspect.fleet.box.client import HubClient
from lineside_inspect.fleet.box.forward import Forwarder, forward_events
from lineside_inspect.fleet.config import FleetSettings, ObjectStoreSettings
from lineside_inspect.fleet.hub.app import create_hub_app
from lineside_inspect.fleet.hub.config import HubSettings
from lineside_inspect.fleet.hub.tables import CursorRow
from lineside_inspect.fleet.objects import ObjectStore
from lineside_inspect.fleet.protocol import FORWARD, ForwardAck, ForwardBatch, ForwardedInspection
from lineside_inspect.imageio import decode_image
from lineside_inspect.inspector import inspect
from lineside_inspect.opencv import cv2
from lineside_inspect.recipes import Recipe
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.server.metrics import Metrics
from lineside_inspect.store import Store
from lineside_inspect.store.models import InspectionRow

from .fleet_peers import Weed, free_port, weed_binary

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "deeppcb" / "1"
SAMPLE = ROOT / "datasets" / "deeppcb-sample" / "images"
KEYS = {"box1": "k-box1", "box2": "k-box2", "box3": "k-box3", "box4": "k-box4",
        "box5": "k-box5", "box6": "k-box6", "box7": "k-box7", "box8": "k-box8",
        "box9": "k-box9", "qa": "k-qa"}


def _png(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return bytes(buf.tobytes())


def _record(inspection_id: str, when: datetime | None = None) -> dict[str, Any]:
    """A record as a box's store gives it (``Store.record`` less reviews)."""
    return {
        "id": inspection_id, "created_at": (when or datetime.now(UTC)).isoformat(),
        "verdict": "fail", "reasons": [{"rule": "critical", "label": "short", "count": 1,
                                        "allowed": 0, "message": "1 short"}],
        "defects": [{"label": "short", "score": 0.9, "box": [1.0, 2.0, 30.0, 40.0]}],
        "recipe": {"name": "deeppcb", "version": "1"},
        "model": {"name": "deeppcb", "version": "1", "sha256": "0" * 64},
        "camera_id": "cam1", "part_id": "SN1",
        "timings_ms": {"decode": 1, "preprocess": 1, "infer": 1, "postprocess": 1, "total": 4},
        "reference": None, "stored": True, "box_id": "box1", "class_names": ["short", "open"],
        "width": 64, "height": 48, "has_image": True, "review_state": "unreviewed"}


def _item(seq: int, inspection_id: str | None = None, image: bytes | None = None,
          reference: bytes | None = None) -> ForwardedInspection:
    iid = inspection_id or uuid.uuid4().hex
    return ForwardedInspection(
        seq=seq, id=iid, site="plant1", line="line1", record=_record(iid),
        image_b64=base64.b64encode(image).decode() if image else None,
        image_ext="png" if image else None,
        reference_b64=base64.b64encode(reference).decode() if reference else None,
        reference_ext="png" if reference else None)


class ServedHub:
    """A hub app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, settings: HubSettings) -> None:
        self.app = create_hub_app(settings)
        self.url = f"http://127.0.0.1:{settings.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1",
                                                    port=settings.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServedHub:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the hub did not start")
            self.thread.join(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def store(self) -> Store:
        return self.app.state.store  # type: ignore[no-any-return]


def hub_settings(tmp: Path, objects: dict[str, Any], **more: Any) -> HubSettings:
    keys = [{"name": name, "role": "reviewer" if name == "qa" else "box", "key": key}
            for name, key in KEYS.items()]
    from lineside_inspect.fleet.hub.config import load_hub_settings

    cfg = tmp / "hub.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({
        "database_url": f"sqlite:///{tmp / 'hub.db'}", "data_dir": "hub-data",
        "objects": objects, "api_keys": keys, "port": free_port(), **more}))
    return load_hub_settings(cfg)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, weed: Any) -> Iterator[ServedHub]:
    tmp = tmp_path_factory.mktemp("hub")
    with ServedHub(hub_settings(tmp, weed.settings("fleet-sync-ingest"))) as served:
        yield served


def client(hub: ServedHub, box: str = "box1", key: str | None = None) -> HubClient:
    fleet = FleetSettings(hub_url=hub.url, token=key or KEYS[box], timeout_s=5)  # type: ignore[arg-type]
    return HubClient(fleet, box)


def test_a_batch_is_stored_once_in_seq_order_with_its_images(hub: ServedHub) -> None:
    box = client(hub)
    image, ref = _png(1), _png(2)
    first, second = _item(5, image=image, reference=ref), _item(7)
    ack = box.post(box.path(FORWARD), ForwardBatch(items=[second, first]), ForwardAck)
    assert ack == ForwardAck(through_seq=7, stored=2, duplicates=0)
    row = hub.store.get(first.id)
    assert (row.box_id, row.site, row.line, row.verdict) == ("box1", "plant1", "line1", "fail")
    day = first.record["created_at"][:10]  # its own UTC day (today's was the next at midnight)
    assert row.image_path == f"images/box1/{day}/{first.id}.png"
    # the reference is content-addressed by the sha256 the hub computed
    assert row.reference_path == f"refs/{hashlib.sha256(ref).hexdigest()}.png"
    with hub.store.open_image(row) as f:  # the hub reads images from the object store
        assert f.read() == image
    with hub.store.open_reference(row) as f:
        assert f.read() == ref
    assert hub.store.record(row).has_image and row.labels == ",short,"
    assert hub.store.get(second.id).image_path is None
    # and a reviewer gets them over HTTP, as the review page does (object-store streams
    # have no file descriptor: this was a 500)
    qa = {"Authorization": f"Bearer {KEYS['qa']}"}
    for what, data in (("image", image), ("reference", ref)):
        r = httpx.get(f"{hub.url}/v1/inspections/{first.id}/{what}", headers=qa)
        assert r.status_code == 200 and r.content == data, (what, r.status_code, r.text[:200])
        assert r.headers["content-type"] == "image/png"

    # the same batch again (an answer the box never saw): nothing changes
    again = box.post(box.path(FORWARD), ForwardBatch(items=[first, second]), ForwardAck)
    assert again == ForwardAck(through_seq=7, stored=0, duplicates=2)
    # a held id under a new seq is a duplicate too (idempotent by id)
    ack = box.post(box.path(FORWARD), ForwardBatch(items=[_item(8, first.id)]), ForwardAck)
    assert ack == ForwardAck(through_seq=8, stored=0, duplicates=1)
    # a new id below the cursor: the box's outbox went back; refused, never half-applied
    late, after = _item(6), _item(9)
    with pytest.raises(HubRefused, match="409 sequence_behind"):
        box.post(box.path(FORWARD), ForwardBatch(items=[late, after]), ForwardAck)
    for skipped in (late, after):
        with pytest.raises(Exception, match="no inspection"):
            hub.store.get(skipped.id)
    with Session(hub.store.engine) as s:
        assert s.get(CursorRow, ("box1", "inspections")).seq == 8  # type: ignore[union-attr]
    figures = httpx.get(hub.url + "/metrics").text
    assert 'lineside_hub_inspections_received_total{box="box1",outcome="stored"} 2.0' in figures
    assert 'lineside_hub_inspections_received_total{box="box1",outcome="duplicate"} 3.0' in figures


def test_refusals_name_the_problem_and_store_nothing(hub: ServedHub) -> None:
    item = _item(1, image=_png(3))
    body = ForwardBatch(items=[item]).model_dump_json()
    url = hub.url + FORWARD.format(box_id="box1")
    # no key: 401 before a byte of the body is read (a huge declared body is not 413)
    with socket.create_connection(("127.0.0.1", int(hub.url.rsplit(":", 1)[1])), timeout=5) as c:
        c.sendall(f"POST {FORWARD.format(box_id='box1')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {10**9}\r\n\r\n{{".encode())
        assert c.recv(4096).startswith(b"HTTP/1.1 401")
    # a reviewer's key cannot make the hub read a forward body
    r = httpx.post(url, content=body, headers={"authorization": f"Bearer {KEYS['qa']}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    # box2 speaking for box1
    with pytest.raises(HubRefused, match="403"):
        box2 = client(hub, "box2")
        box2.request("POST", FORWARD.format(box_id="box1"), body=ForwardBatch(items=[item]))
    box = client(hub)
    bad = [
        item.model_copy(update={"image_b64": "not base64!"}),
        item.model_copy(update={"image_b64": base64.b64encode(b"GIF89a").decode()}),
        item.model_copy(update={"record": {**item.record, "id": uuid.uuid4().hex}}),
        item.model_copy(update={"record": {**item.record, "camera_id": "c" * 200}}),
        item.model_copy(update={"image_ext": None}),
        item.model_copy(update={"record": {**item.record, "width": 2**40}}),  # past INTEGER
    ]
    for b in bad:
        with pytest.raises(HubRefused, match="422"):
            box.post(box.path(FORWARD), ForwardBatch(items=[b]), ForwardAck)
    # NaN and Infinity are JSON tokens Python parses: refused, not stored (every listing
    # with such a row would be a 500) and not a database error the box would retry forever
    for token in ("NaN", "Infinity"):
        doc = ForwardBatch(items=[item]).model_dump(mode="json")
        text = json.dumps(doc).replace('"total": 4', f'"total": {token}', 1)
        assert token in text
        r = httpx.post(hub.url + box.path(FORWARD), content=text, headers={
            "authorization": f"Bearer {KEYS['box1']}", "content-type": "application/json"})
        assert r.status_code == 422 and "not a finite number" in r.text, r.text[:300]
    r = httpx.post(hub.url + FORWARD.format(box_id="box1%0A"), content=body,
                   headers={"authorization": f"Bearer {KEYS['box1']}"})
    assert r.status_code in (400, 403, 404, 422) and "Traceback" not in r.text  # 400: the URL
    with pytest.raises(Exception, match="no inspection"):
        hub.store.get(item.id)


def test_object_store_down_is_503_and_nothing_is_half_stored(tmp_path: Path) -> None:
    dead = {"endpoint": f"127.0.0.1:{free_port()}", "bucket": "fleet-sync-dead",
            "access_key": "a", "secret_key": "b", "timeout_s": 1.0}
    with ServedHub(hub_settings(tmp_path, dead)) as hub:
        box = client(hub)
        item = _item(1, image=_png(4))
        r = box._http.post(FORWARD.format(box_id="box1"),
                           content=ForwardBatch(items=[item]).model_dump_json(),
                           headers={"content-type": "application/json"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "object_store_unavailable"
        assert "127.0.0.1" not in r.json()["error"]["message"] or "Traceback" not in r.text
        with Session(hub.store.engine) as s:
            assert s.scalar(select(InspectionRow.id)) is None  # no row without its image
            assert s.get(CursorRow, ("box1", "inspections")) is None
        with pytest.raises(HubUnavailable):
            box.post(box.path(FORWARD), ForwardBatch(items=[item]), ForwardAck)


def test_a_bucket_deleted_while_the_hub_runs_is_made_again(tmp_path: Path, weed: Any) -> None:
    """The bucket was checked once per process: deleted (or the store replaced) while the
    hub ran, every forward was a 503 until a restart."""
    with ServedHub(hub_settings(tmp_path, weed.settings("fleet-bucket-gone"))) as hub:
        box = client(hub)
        first = _item(1, image=_png(5))
        assert box.post(box.path(FORWARD), ForwardBatch(items=[first]), ForwardAck).stored == 1
        objects = hub.app.state.objects
        for key in list(objects.keys()):
            objects.delete(key)
        objects.client.remove_bucket(objects.bucket)
        second = _item(2, image=_png(6))
        with pytest.raises(HubUnavailable, match="503"):  # the put finds no bucket
            box.post(box.path(FORWARD), ForwardBatch(items=[second]), ForwardAck)
        ack = box.post(box.path(FORWARD), ForwardBatch(items=[second]), ForwardAck)
        assert ack.stored == 1 and objects.exists(hub.store.get(second.id).image_path)


def test_an_object_store_that_refuses_or_goes_away_is_said_once_while_it_lasts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The store's key rotated under a running hub: every forward was a 503 and the hub's
    log said nothing (a refusal was never logged; an unreachable store was a line per
    call). Now one line per cause while it lasts, naming the store's code (never a key),
    and its end with the count once the store answers again (session 53)."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("weed not installed")
    weed = Weed(tmp_path / "weed", binary, election_timeout_s=1)  # its own: restarted here
    weed.start()
    secret = weed.secret_key
    try:
        with ServedHub(hub_settings(tmp_path, weed.settings("fleet-store-outage"))) as hub:
            box = client(hub)
            assert box.post(box.path(FORWARD), ForwardBatch(items=[_item(1, image=_png(7))]),
                            ForwardAck).stored == 1

            def forwards_refused(first: int) -> list[str]:
                caplog.clear()
                with caplog.at_level("INFO", logger="lineside"):
                    for seq in range(first, first + 3):
                        with pytest.raises(HubUnavailable, match="object_store_unavailable"):
                            box.post(box.path(FORWARD),
                                     ForwardBatch(items=[_item(seq, image=_png(seq))]), ForwardAck)
                return [r.getMessage() for r in caplog.records if "object store" in r.getMessage()]

            weed.stop()
            weed.secret_key = "rotated-on-the-store"  # the hub still holds the old one
            weed.start()
            said = forwards_refused(2)
            assert len(said) == 1, said  # before: none at all
            assert "refused put: SignatureDoesNotMatch" in said[0], said  # the store's code
            assert secret not in caplog.text and "rotated-on-the-store" not in caplog.text
            weed.stop()
            said = forwards_refused(5)
            assert len(said) == 1 and "unreachable" in said[0], said  # before: one per call
            weed.secret_key = secret  # the key given back, the store started
            weed.start()
            caplog.clear()
            with caplog.at_level("INFO", logger="lineside"):
                ack = box.post(box.path(FORWARD), ForwardBatch(items=[_item(8, image=_png(8))]),
                               ForwardAck)
            assert ack.stored == 1
            over = [r.getMessage() for r in caplog.records if ": over (" in r.getMessage()]
            assert len(over) == 2, over  # refused 3 times, unreachable 3 times: each said
            assert any("refuses requests" in o and "after 3 time(s)" in o for o in over), over
            assert any("unreachable" in o for o in over), over
    finally:
        weed.stop()


def _answers(objects: ObjectStore, within_s: float = 120.0) -> None:
    """Until a restarted weed serves reads again (its S3 API can answer before its volume
    server is back: a read then is "unreachable", an outage of its own)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            objects.get("kept/a.bin")
            return
        except ObjectStoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_store_refusing_only_writes_is_not_said_over_while_reads_answer(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A full or read-only store refuses puts and answers gets and stats: any answer said
    the refusal "over", and the next put "refused" again (said once while it lasts), two
    lines per forward for as long as it lasted, the "over" untrue. It is over only when a
    refused operation answers again (session 53 review)."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("weed not installed")
    weed = Weed(tmp_path / "weed", binary, election_timeout_s=1)  # its own: restarted here
    weed.start()
    try:
        objects = ObjectStore(ObjectStoreSettings(**weed.settings("fleet-read-only")))
        objects.ensure_bucket()
        objects.put("kept/a.bin", b"kept")
        weed.stop()
        weed.actions = ("Read", "List")  # the key may read, not write
        weed.start()
        _answers(objects)
        caplog.clear()
        with caplog.at_level("INFO", logger="lineside"):
            for n in range(3):
                with pytest.raises(ObjectStoreUnavailable, match="refused put"):
                    objects.put(f"new/{n}.bin", b"refused")
                assert objects.get("kept/a.bin") == b"kept"  # reads answer all along
                assert not objects.exists(f"new/{n}.bin")
        said = [r.getMessage() for r in caplog.records if "object store" in r.getMessage()]
        assert len(said) == 1 and "refused put" in said[0], said  # before: 3 refused, 3 over
        weed.stop()
        weed.actions = ("Admin", "Read", "List", "Tagging", "Write")
        weed.start()
        _answers(objects)
        caplog.clear()
        with caplog.at_level("INFO", logger="lineside"):
            assert objects.get("kept/a.bin") == b"kept"
            assert not [r for r in caplog.records if ": over (" in r.getMessage()]
            objects.put("new/3.bin", b"stored")  # a refused operation answers: over
        over = [r.getMessage() for r in caplog.records if ": over (" in r.getMessage()]
        assert len(over) == 1 and "refuses requests" in over[0] and "(put)" in over[0], over
        assert "after 3 time(s)" in over[0], over
    finally:
        weed.stop()


def test_a_box_whose_clock_is_ahead_is_said_once_not_once_per_inspection(
        tmp_path: Path, weed: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A box whose clock ran a day ahead (NTP broken): each of its inspections was a
    warning line in the hub's log, its backlog of thousands as many lines. Now one line
    while it lasts (and each minute, with the count), and one when its dates are right
    again, with how many were stored at the hub's time (session 53)."""
    def batch(first: int, when: datetime) -> ForwardBatch:
        items = []
        for seq in range(first, first + 20):
            iid = uuid.uuid4().hex
            items.append(ForwardedInspection(seq=seq, id=iid, site="plant1", line="line1",
                                             record=_record(iid, when)))
        return ForwardBatch(items=items)

    with ServedHub(hub_settings(tmp_path, weed.settings("fleet-clock-ahead"))) as hub:
        box = client(hub)
        ahead = datetime.now(UTC) + timedelta(days=1)
        with caplog.at_level("INFO", logger="lineside.hub"):
            for first in (1, 21, 41):
                sent = batch(first, ahead)
                assert box.post(box.path(FORWARD), sent, ForwardAck).stored == 20
            again = box.post(box.path(FORWARD), sent, ForwardAck)  # a retry: not said again
            assert again.stored == 0
            right = box.post(box.path(FORWARD), batch(61, datetime.now(UTC)), ForwardAck)
        assert right.stored == 20
        said = [r.getMessage() for r in caplog.records if "clock" in r.getMessage()]
        assert len(said) == 2, said  # before: 60, one per inspection
        assert "box box1 dates inspections ahead of the hub's clock" in said[0]
        assert "stored at the hub's time" in said[0] and "ahead)" in said[0]
        assert "box box1 dates its inspections by the hub's clock again; 60 of them" in said[1]
        with Session(hub.store.engine) as s:  # each stored once, at the hub's time
            dates = s.scalars(select(InspectionRow.created_at)).all()
        assert len(dates) == 80 and all(d.replace(tzinfo=UTC) < ahead - timedelta(hours=23)
                                        for d in dates)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(MODEL, device="cpu", threads=1)


def _inspection(detector: Detector, when: datetime | None = None) -> Any:
    raw = next(SAMPLE.rglob("*_test.jpg")).read_bytes()
    result = inspect(decode_image(raw), detector,
                     Recipe(name="r", model="deeppcb", default_min_score=0.0))
    result.verdict = "fail"
    result.raw, result.raw_ext = raw, "jpg"
    if when is not None:
        result.created_at = when
    return result


def test_box_forwards_in_order_and_retention_keeps_what_is_not_forwarded(
        tmp_path: Path, hub: ServedHub, detector: Detector) -> None:
    store = Store(tmp_path / "box", pass_rate=1.0, box_id="box2")
    store.site, store.line = "plant1", "line2"
    store.event_makers.append(forward_events)
    store.guard_channel = "fleet"
    metrics = Metrics()
    down = FleetSettings(hub_url=f"http://127.0.0.1:{free_port()}", token=KEYS["box2"],  # type: ignore[arg-type]
                         forward_batch=2, timeout_s=2)
    offline = Forwarder(store, HubClient(down, "box2"), down, metrics)
    try:
        old = _inspection(detector, datetime.now(UTC) - timedelta(days=3))
        new = [_inspection(detector) for _ in range(4)]
        for i in (old, *new):
            assert store.save(i)
        store.flush()
        with pytest.raises(HubUnavailable):  # the hub is unreachable: all of it waits
            offline.forward_once()
        offline.refresh_gauges()
        assert offline.backlog == 5
        # age never removes what is not forwarded yet
        store.max_age_days = 1
        assert store.enforce_retention() == 0 and store.get(old.id).image_path
        # the quota forces it: images go (oldest first), records stay, and it is counted
        store.checkpoint()
        store.max_bytes = store.overhead_bytes() + 3 * len(old.raw)
        assert store.enforce_retention() == 0
        assert store.get(old.id).image_path is None and store.dropped_unforwarded == 2
        offline.refresh_gauges()
        text = generate_latest(metrics.registry).decode()
        assert "lineside_fleet_dropped_unforwarded_total 2.0" in text
        assert "lineside_fleet_backlog 5.0" in text
        # an image removed behind the store's back (between quota runs) goes without it too
        gone = store.get(new[3].id)
        store.image_file(gone).unlink()

        # the hub is back
        forwarder = offline
        forwarder.client = HubClient(down.model_copy(update={"hub_url": hub.url}), "box2")

        def told_missing() -> float:
            return metrics.registry.get_sample_value(
                "lineside_fleet_errors_total", {"kind": "image_missing"}) or 0.0

        cut_told = 0.0  # told missing by a try the hub cut short (its retry tells it again)

        def forward() -> int:
            nonlocal cut_told
            before = told_missing()
            try:
                return forwarder.forward_once()
            except HubUnavailable:
                cut_told += told_missing() - before
                raise

        sent = 0
        while (n := _answered(forward)):
            sent += n
        assert sent == 5 and forwarder.forwarded == 5
        forwarder.refresh_gauges()
        assert forwarder.backlog == 0
        text = generate_latest(metrics.registry).decode()
        assert "lineside_fleet_forwarded_total 5.0" in text
        assert told_missing() == 1 + cut_told  # once by the try that went
        for i in (old, *new):
            row = hub.store.get(i.id)
            assert (row.box_id, row.site, row.line) == ("box2", "plant1", "line2")
            kept = store.get(i.id).image_path is not None and i is not new[3]
            assert (row.image_path is not None) == kept
            if kept:
                with hub.store.open_image(row) as f:
                    assert f.read() == i.raw
        # forwarded: age retention may now remove the old one
        assert store.enforce_retention() >= 1
        with pytest.raises(Exception, match="no inspection"):
            store.get(old.id)
    finally:
        offline.client.close()
        store.close()


def _answered(call: Callable[[], T]) -> T:
    """``call`` (a round of a box's forwarder) once the hub answered it, tried again as the
    box's loop tries it: a round the hub did not answer within the client's ``timeout_s``
    (a loaded CI host; a SeaweedFS just started, slow on its first write), or answered 429
    while it still held the body of the try it cut short, is the next try's. A cut try
    settles and counts nothing sent (the outbox keeps its events, the hub skips what it
    holds): the try that went counts them. What a round counts before it sends (an image
    told missing) a cut try counts too: a caller asserting such a count keeps those."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return call()
        except HubUnavailable:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)  # the poll's interval, not a wait for the hub


def _drain(forwarder: Forwarder) -> None:
    """Forward until nothing is pending, each round tried again while the hub did not
    answer it (:func:`_answered`)."""
    while _answered(forwarder.forward_once):
        pass


def test_a_row_of_its_own_that_does_not_read_is_set_aside_and_the_rest_go_on(
        tmp_path: Path, hub: ServedHub, detector: Detector,
        caplog: pytest.LogCaptureFixture) -> None:
    """A box's own row that does not read as an inspection (a hand edit, another writer)
    raised unreadable_inspection in the forwarder every round: every later inspection
    waited behind it for good. It is set aside now, said once and counted, and the rest
    go; mended and retried, it goes too."""
    from sqlalchemy import text

    store = Store(tmp_path / "box", pass_rate=1.0, box_id="box7")
    store.event_makers.append(forward_events)
    store.guard_channel = "fleet"
    metrics = Metrics()
    fleet = FleetSettings(hub_url=hub.url, token=KEYS["box7"], timeout_s=5)  # type: ignore[arg-type]
    forwarder = Forwarder(store, HubClient(fleet, "box7"), fleet, metrics)
    try:
        bad, *rest = [_inspection(detector) for _ in range(3)]
        for i in (bad, *rest):
            assert store.save(i)
        store.flush()
        with store.engine.begin() as db:
            db.execute(text("UPDATE inspections SET defects = '[{not json' WHERE id = :i"),
                       {"i": bad.id})
        with caplog.at_level("WARNING", logger="lineside.fleet"):
            _drain(forwarder)
            forwarder.forward_once()  # (nothing pending: said no more)
        said = [r.getMessage() for r in caplog.records if bad.id in r.getMessage()]
        assert len(said) == 1 and "defects: '[{not json' is not JSON" in said[0]
        assert [hub.store.get(i.id).id for i in rest] == [i.id for i in rest]
        with pytest.raises(Exception, match="no inspection"):
            hub.store.get(bad.id)
        forwarder.refresh_gauges()
        assert (forwarder.backlog, forwarder.set_aside, forwarder.forwarded) == (0, 1, 2)
        [aside] = forwarder.outbox.set_aside_events()
        assert aside.topic == bad.id and aside.payload["refused"].startswith("unreadable: ")
        text_ = generate_latest(metrics.registry).decode()
        assert 'lineside_fleet_errors_total{kind="record_unreadable"} 1.0' in text_
        with store.engine.begin() as db:  # mended: an admin's retry sends it
            db.execute(text("UPDATE inspections SET defects = '[]' WHERE id = :i"),
                       {"i": bad.id})
        assert forwarder.retry_set_aside() == 1
        _drain(forwarder)
        assert hub.store.get(bad.id).id == bad.id
    finally:
        forwarder.client.close()
        store.close()


def test_hub_config_is_checked_and_keys_are_kept_hashed(tmp_path: Path) -> None:
    from lineside_inspect.errors import ConfigError
    from lineside_inspect.fleet.hub.config import load_hub_settings

    cfg = tmp_path / "hub.yaml"
    cfg.write_text("database_url: sqlite:///hub.db\n")
    with pytest.raises(ConfigError, match="objects: Field required; data_dir: Field required"):
        load_hub_settings(cfg)
    cfg.write_text("objects: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_hub_settings(cfg)
    cfg.write_text("database_url: sqlite:///hub.db\ndata_dir: hub\n"
                   "objects: {endpoint: '127.0.0.1:9', access_key: a, secret_key: b}\n"
                   "api_keys: [{name: box1, role: box, key: plain-secret}]\n")
    hub = load_hub_settings(cfg)
    assert hub.data_dir == str(tmp_path / "hub")  # relative to the file, not the cwd
    assert hub.api_keys[0].sha256 == hashlib.sha256(b"plain-secret").hexdigest()
    assert "plain-secret" not in repr(hub) and "plain-secret" not in hub.model_dump_json()
    server = hub.server_settings()  # what the shared gate, guard and key lookup read
    assert (server.store, server.models, server.api_keys) == (False, [], hub.api_keys)
    # a box key named hub: box hub's inspections and reviews were filed under the hub's
    # own name, its qa and the hub's qa one reviewer "qa (hub)" (session 51)
    cfg.write_text(cfg.read_text().replace("name: box1, role: box", "name: hub, role: box"))
    with pytest.raises(ConfigError, match="api_keys: a box key named 'hub': that is the hub's"):
        load_hub_settings(cfg)
    cfg.write_text(cfg.read_text().replace("role: box", "role: reviewer"))
    assert load_hub_settings(cfg).api_keys[0].name == "hub"  # a reviewer may be named so


def test_a_restored_box_never_marks_unsent_inspections_delivered(
        tmp_path: Path, weed: Any, detector: Detector, monkeypatch: pytest.MonkeyPatch) -> None:
    """A box whose data folder was restored from a backup: the hub's cursor for it is ahead
    of its outbox. Its first batch holds only what the hub has; the hub answers its cursor,
    and the box must settle only what it sent: the new inspection after it goes next (and
    is refused with 409 sequence_behind), never silently marked delivered."""
    import shutil
    import sys

    # a batch cut short by its image budget: one inspection per request, two pending
    monkeypatch.setattr(sys.modules[Forwarder.__module__], "MAX_BATCH_IMAGE_BYTES", -1)
    (tmp_path / "hub").mkdir()
    with ServedHub(hub_settings(tmp_path / "hub", weed.settings("fleet-sync-restore"))) as hub:
        fleet = FleetSettings(hub_url=hub.url, token=KEYS["box1"], forward_batch=2,  # type: ignore[arg-type]
                              timeout_s=5)

        def box(folder: Path) -> Store:
            store = Store(folder, pass_rate=1.0, box_id="box1")
            store.event_makers.append(forward_events)
            store.guard_channel = "fleet"
            return store

        first = box(tmp_path / "box")
        a = _inspection(detector)
        assert first.save(a)
        first.flush()
        first.close()
        shutil.copytree(tmp_path / "box", tmp_path / "backup")  # the backup: A unsent
        live = box(tmp_path / "box")
        for _ in range(2):
            assert live.save(_inspection(detector))
        live.flush()
        sender = Forwarder(live, HubClient(fleet, "box1"), fleet, None)
        _drain(sender)
        sender.client.close()
        live.close()  # the hub's cursor for box1 is now 3

        restored = box(tmp_path / "backup")
        b = _inspection(detector)
        assert restored.save(b)  # a new inspection under seq 2, below the hub's cursor
        restored.flush()
        forwarder = Forwarder(restored, HubClient(fleet, "box1"), fleet, None)
        try:
            assert _answered(forwarder.forward_once) == 1  # A: already held, settled
            with pytest.raises(HubRefused, match="sequence_behind"):
                _answered(forwarder.forward_once)
            forwarder.refresh_gauges()
            assert forwarder.backlog == 1  # B still waits: nothing marked delivered unsent
            with pytest.raises(Exception, match="no inspection"):
                hub.store.get(b.id)
        finally:
            forwarder.client.close()
            restored.close()



def _send_head(port: int, path: str, key: str, declared: int = 10**6) -> socket.socket:
    """A connection that sent a request's head and one byte of its body, and no more."""
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n{{".encode())
    return c


def _answer_without_body(port: int, path: str, key: str) -> tuple[int, dict[str, str], Any]:
    """The hub's answer to a request whose body never comes (a socket timeout, failing the
    test, if the hub waits for the body)."""
    with _send_head(port, path, key) as c:
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            got = c.recv(65536)
            if not got:
                break
            raw += got
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_box_routes_check_the_box_id_before_reading_a_body(hub: ServedHub) -> None:
    """Another box's id, another role or a bad id: refused before a byte of the body is
    read (the body never comes here; a hub that waited for it would time out)."""
    port = int(hub.url.rsplit(":", 1)[1])
    for leaf in ("inspections", "reviews", "status"):
        status, headers, doc = _answer_without_body(port, f"/fleet/v1/boxes/box1/{leaf}",
                                                    KEYS["box2"])
        assert (status, doc["error"]["code"]) == (403, "forbidden"), leaf
        assert "'box2' speaks only for box 'box2', not 'box1'" in doc["error"]["message"]
        assert headers["connection"] == "close"  # the unread body is not a next request
        status, _, doc = _answer_without_body(port, f"/fleet/v1/boxes/box1/{leaf}", KEYS["qa"])
        assert (status, doc["error"]["code"]) == (403, "forbidden"), leaf
    status, _, doc = _answer_without_body(port, "/fleet/v1/boxes/box%201/reviews", KEYS["box1"])
    assert status == 422 and "box id must match" in doc["error"]["message"]


def test_forwarded_bodies_are_admitted_before_they_are_read(tmp_path: Path, weed: Any) -> None:
    """At most max_forward_bodies forwarded batches are read at once: one more is 503 +
    Retry-After before its body is read; the place comes back when the first one ends."""
    with ServedHub(hub_settings(tmp_path, weed.settings("fleet-sync-admission"),
                                max_forward_bodies=1)) as hub:
        port = int(hub.url.rsplit(":", 1)[1])

        def reading() -> float:
            text = httpx.get(hub.url + "/metrics").text
            line = next(x for x in text.splitlines() if x.startswith("lineside_hub_forward_bodies "))
            return float(line.split()[1])

        slow = _send_head(port, FORWARD.format(box_id="box1"), KEYS["box1"])
        try:
            while reading() != 1.0:  # the slow body holds the one place
                threading.Event().wait(0.05)
            status, headers, doc = _answer_without_body(port, FORWARD.format(box_id="box2"),
                                                        KEYS["box2"])
            assert (status, doc["error"]["code"]) == (503, "overloaded")
            assert headers["retry-after"] == "1" and "max_forward_bodies" in doc["error"]["message"]
            # the same box again: its one forward at a time (test_fleet_hostile_box.py)
            status, headers, doc = _answer_without_body(port, FORWARD.format(box_id="box1"),
                                                        KEYS["box1"])
            assert (status, doc["error"]["code"]) == (429, "forward_in_progress")
            # other routes are not held by it
            status, _, doc = _answer_without_body(port, "/fleet/v1/boxes/box1/status", KEYS["box2"])
            assert status == 403
        finally:
            slow.close()
        while reading() != 0.0:  # the broken-off body gave its place back
            threading.Event().wait(0.05)
        box = client(hub, "box2")
        ack = box.post(box.path(FORWARD), ForwardBatch(items=[_item(1, image=_png(9))]), ForwardAck)
        assert ack.stored == 1


def test_an_id_another_box_holds_is_a_conflict_not_a_duplicate(hub: ServedHub) -> None:
    """Box 4 forwarding an inspection id box 3 forwarded: 409 naming the id, nothing stored,
    box 3's record untouched; the fleet page counts what each box's batches stored."""
    box3, box4 = client(hub, "box3"), client(hub, "box4")
    first = _item(1, image=_png(21))
    copied = _item(2, inspection_id=first.id, image=_png(22))
    assert box3.post(box3.path(FORWARD), ForwardBatch(items=[first]), ForwardAck).stored == 1
    assert box3.post(box3.path(FORWARD), ForwardBatch(items=[first]), ForwardAck).duplicates == 1
    r = httpx.post(hub.url + box4.path(FORWARD), content=ForwardBatch(items=[
        _item(1, image=_png(23)), copied]).model_dump_json(),
        headers={"authorization": f"Bearer {KEYS['box4']}", "content-type": "application/json"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "inspection_id_taken"
    message = r.json()["error"]["message"]
    assert first.id in message and "another box" in message and "box3" not in message
    row = hub.store.get(first.id)
    assert row.box_id == "box3"
    with hub.store.open_image(row) as f:
        assert f.read() == _png(21)
    with Session(hub.store.engine) as s:
        assert s.get(CursorRow, ("box4", "inspections")) is None  # nothing of the batch
        held = {b: n for b, n in s.execute(select(InspectionRow.box_id, func.count())
                                           .group_by(InspectionRow.box_id))}
    page = httpx.get(hub.url + "/fleet/v1/boxes",
                     headers={"authorization": f"Bearer {KEYS['qa']}"}).json()
    counted = {b["box_id"]: b["inspections_held"] for b in page["boxes"]}
    assert counted["box3"] == 1 and "box4" not in counted
    assert counted == {b: n for b, n in held.items() if b is not None}


class _EndlessAnswer(BaseHTTPRequestHandler):
    """A broken hub: answers 200 with a body that goes on (no length), counting what the
    box took before it hung up."""

    protocol_version = "HTTP/1.0"
    sent = 0
    done = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        chunk = b" " * 65536
        try:
            for _ in range(2048):  # 128 MiB
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:
            pass
        finally:
            type(self).done.set()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_box_stops_reading_an_answer_at_its_limit() -> None:
    """A hub answering without end: the box refuses the answer once it passes its limit,
    having read about that much (not the whole answer first)."""
    handler = type("Endless", (_EndlessAnswer,), {"sent": 0, "done": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fleet = FleetSettings(hub_url=f"http://127.0.0.1:{server.server_address[1]}",  # type: ignore[arg-type]
                          token="k", timeout_s=5)
    box = HubClient(fleet, "box1", max_answer_bytes=1 << 20)
    try:
        with pytest.raises(HubRefused, match=r"over \d+ bytes"):
            box.post(box.path(FORWARD), ForwardBatch(items=[_item(1)]), ForwardAck)
        assert handler.done.wait(30)
        # what left the hub before the box hung up: the limit plus the sockets' buffers
        assert handler.sent < 32 << 20, handler.sent
    finally:
        box.close()
        server.shutdown()
        server.server_close()


def test_a_wrong_box_key_counts_once_against_its_address(hub: ServedHub) -> None:
    """The hub's box front, the gate and the route each checked one request's key: a
    wrong key counted two failures, and a box with a stale key locked its address out
    twice as fast."""
    from lineside_inspect.server.throttle import SignInThrottle

    kept = hub.app.state.sign_ins
    try:
        body = ForwardBatch(items=[_item(1)]).model_dump_json()
        for path in (FORWARD.format(box_id="box1"), "/fleet/v1/boxes/box1/reviews"):
            hub.app.state.sign_ins = SignInThrottle(failures=3)
            r = httpx.post(hub.url + path, content=body, headers={
                "authorization": "Bearer stale", "content-type": "application/json"})
            assert r.status_code == 401, r.text
            r = httpx.get(hub.url + "/v1/inspections", headers={"authorization": "Bearer stale"})
            assert r.status_code == 401  # two failures so far, under the three allowed
            r = httpx.get(hub.url + "/v1/inspections", headers={"authorization": f"Bearer {KEYS['qa']}"})
            assert r.status_code == 200, (path, r.text)
    finally:
        hub.app.state.sign_ins = kept


def test_a_golden_image_altered_in_the_object_store_is_left_out_of_a_pull(
        hub: ServedHub, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A reference object replaced in the hub's object store (one serves every inspection
    compared with it) went into `data pull`'s set as their golden image; its record names
    it by its sha256, so the pull checks the bytes it got against that."""
    from lineside_inspect.store.pull import pull_from_server

    box = client(hub, "box5")  # (a box of its own: its outbox starts at seq 1)
    ref = _png(31)
    with_ref = [_item(1, image=_png(33), reference=ref), _item(2, image=_png(34), reference=ref)]
    plain = _item(3, image=_png(35))
    assert box.post(box.path(FORWARD), ForwardBatch(items=[*with_ref, plain]),
                    ForwardAck).stored == 3
    box.close()
    qa = {"Authorization": f"Bearer {KEYS['qa']}"}
    for i in (*with_ref, plain):
        r = httpx.post(f"{hub.url}/v1/inspections/{i.id}/reviews", headers=qa,
                       json={"action": "confirm"})
        assert r.status_code in (200, 201), r.text
    objects, key = hub.app.state.objects, f"refs/{hashlib.sha256(ref).hexdigest()}.png"
    objects.put(key, _png(32))  # another image of the same size, under the golden's key
    try:
        with caplog.at_level("WARNING", logger="lineside"):
            ds = pull_from_server(hub.url, tmp_path / "pulled", key=KEYS["qa"])
    finally:
        objects.put(key, ref)  # (the hub is the module's)
    pulled = {Path(r.file_name).stem for r in ds.images}
    assert plain.id in pulled and not {i.id for i in with_ref} & pulled
    said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert f"{with_ref[0].id}: its golden image has sha256 " in said
    assert not list(tmp_path.glob("pulled/images/references/*"))


def test_the_hub_keeps_the_shift_a_box_aligned_a_frame_by_for_data_pull(
        hub: ServedHub, tmp_path: Path) -> None:
    """A box's aligned station (align_reference) forwards the shift it moved each frame
    by onto its golden; a pull from the hub gives training that frame moved by it, its
    boxes with it, as the box's model saw it (session 40), not the frame as sent."""
    from lineside_inspect.runtime.reference import shift_onto
    from lineside_inspect.store.pull import pull_from_server

    box = client(hub, "box6")  # (a box of its own: its outbox starts at seq 1)
    ref, image = _png(41), _png(42)
    item = _item(1, image=image, reference=ref)
    item.record["reference"] = {"name": "golden", "sha256": hashlib.sha256(ref).hexdigest(),
                                "shift": [3.0, -2.0]}
    assert box.post(box.path(FORWARD), ForwardBatch(items=[item]), ForwardAck).stored == 1
    box.close()
    r = httpx.post(f"{hub.url}/v1/inspections/{item.id}/reviews", json={"action": "confirm"},
                   headers={"Authorization": f"Bearer {KEYS['qa']}"})
    assert r.status_code in (200, 201), r.text
    ds = pull_from_server(hub.url, tmp_path / "pulled", key=KEYS["qa"])
    [rec] = [r for r in ds.images if Path(r.file_name).stem == item.id]
    assert rec.aligned == (3.0, -2.0)
    assert [(b.x1, b.y1, b.x2, b.y2) for b in rec.boxes] == [(0.0, 4.0, 27.0, 42.0)]
    pulled = decode_image((tmp_path / "pulled" / "images" / rec.file_name).read_bytes())
    assert np.array_equal(pulled, shift_onto(decode_image(image), decode_image(ref), 3.0, -2.0))


def test_a_pull_from_the_hub_says_a_hub_keeps_no_recipes_regions(
        hub: ServedHub, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The hub holds the boxes' inspections, not their recipes (and a name's version on
    one box is not another box's): ``GET /v1/recipes/{name}/regions`` is no hub route, so
    a pull from it paints nothing out and its warning says to pull from the box, whose
    regions it keeps from when each version starts judging (session 56)."""
    from lineside_inspect.store.pull import pull_from_server

    box = client(hub, "box9")  # (a box no other test forwards as: its outbox starts at seq 1)
    item = _item(1, image=_png(51))
    assert box.post(box.path(FORWARD), ForwardBatch(items=[item]), ForwardAck).stored == 1
    box.close()
    r = httpx.post(f"{hub.url}/v1/inspections/{item.id}/reviews", json={"action": "confirm"},
                   headers={"Authorization": f"Bearer {KEYS['qa']}"})
    assert r.status_code in (200, 201), r.text
    with caplog.at_level("WARNING", logger="lineside"):
        pull_from_server(hub.url, tmp_path / "pulled", key=KEYS["qa"], part_id="SN1",
                         since=datetime.fromisoformat(item.record["created_at"]))
    info = json.loads((tmp_path / "pulled" / "annotations.json").read_text())["info"]
    assert f"{item.id}.png" in [Path(f).name for f in info["recipe_regions_unknown"]["deeppcb:1"]]
    said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "pulled whole" in said and "a fleet hub keeps no box's recipes" in said, said


def test_a_records_tiles_go_only_to_a_hub_that_announced_it_takes_them(
        tmp_path: Path, hub: ServedHub, detector: Detector,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Session 47: a record's ``tiles`` (stored since then) goes only to a hub whose
    answers name ``record-tiles`` (``protocol.HUB_FEATURES_HEADER``). A hub of an earlier
    release does not, and its strict record schema refuses a field it does not know: the
    box sends it records without ``tiles`` and sets nothing aside. Put back after an
    upgrade (the hub refusing again), the box drops the field at once, nothing set aside."""
    from pydantic import Field

    from lineside_inspect.fleet.hub import front, ingest
    from lineside_inspect.fleet.protocol import HUB_FEATURES_HEADER, RECORD_TILES
    from lineside_inspect.runtime.tiles import Tiling
    from lineside_inspect.schemas import StoredInspection

    class OlderRecord(StoredInspection):  # an earlier release's schema: no such field
        tiles: None = Field(None, exclude=True)

    def older_hub() -> None:
        monkeypatch.setattr(front, "HUB_FEATURES", ())
        monkeypatch.setattr(ingest, "StoredInspection", OlderRecord)

    raw = next(SAMPLE.rglob("*_test.jpg")).read_bytes()

    def tiled() -> Any:
        result = inspect(decode_image(raw), detector, Recipe(
            name="big", model="deeppcb", tiling=Tiling(tile=480, overlap=0.2)))
        result.raw, result.raw_ext = raw, "jpg"
        return result

    store = Store(tmp_path / "box", pass_rate=1.0, box_id="box8")
    store.event_makers.append(forward_events)
    store.guard_channel = "fleet"
    settings = FleetSettings(hub_url=hub.url, token=KEYS["box8"], timeout_s=5)  # type: ignore[arg-type]
    sent: list[int | None] = []
    forwarder = Forwarder(store, HubClient(settings, "box8"), settings)
    try:
        # a new hub says what it takes on every answer
        assert httpx.head(f"{hub.url}/healthz").headers[HUB_FEATURES_HEADER] == RECORD_TILES
        older_hub()
        old_era = [tiled(), _inspection(detector)]
        for i in old_era:
            assert store.save(i)
        store.flush()
        _drain(forwarder)
        assert forwarder.client.hub_features == frozenset()
        assert forwarder.forwarded == 2 and store.get(old_era[0].id).tiles == 4
        forwarder.refresh_gauges()
        assert forwarder.set_aside == 0
        assert [hub.store.get(i.id).tiles for i in old_era] == [None, None]
        monkeypatch.undo()  # the hub upgraded: the box's next start asks it
        forwarder.client.close()
        forwarder.client = HubClient(settings, "box8")
        new_era = [tiled(), _inspection(detector)]
        for i in new_era:
            assert store.save(i)
        store.flush()
        _drain(forwarder)
        assert forwarder.client.hub_features == frozenset({RECORD_TILES})
        sent += [hub.store.get(i.id).tiles for i in new_era]
        got = httpx.get(f"{hub.url}/v1/inspections/{new_era[0].id}",
                        headers={"Authorization": f"Bearer {KEYS['qa']}"})
        assert got.status_code == 200 and got.json()["tiles"] == 4, got.text
        whole = httpx.get(f"{hub.url}/v1/inspections/{new_era[1].id}",
                          headers={"Authorization": f"Bearer {KEYS['qa']}"})
        assert whole.status_code == 200 and "tiles" not in whole.json(), whole.text
        # an older hub put back at its address: its refusal of the field is not a record's
        older_hub()
        back = tiled()
        assert store.save(back)
        store.flush()
        with pytest.raises(HubRefused, match="tiles"):
            _answered(forwarder.forward_once)
        _drain(forwarder)
        sent.append(hub.store.get(back.id).tiles)
        forwarder.refresh_gauges()
        assert forwarder.set_aside == 0 and forwarder.backlog == 0
    finally:
        forwarder.client.close()
        store.close()
    assert sent == [4, None, None]


class _NoAnswer(BaseHTTPRequestHandler):
    """A hub's address where something takes the connection and answers nothing (a hub
    crashing, a port left to another program): each request is counted, then cut."""

    seen: ClassVar[list[str]] = []

    def do_HEAD(self) -> None:
        self.seen.append("HEAD")
        self.close_connection = True

    def do_POST(self) -> None:
        self.seen.append("POST")
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_a_hub_that_does_not_answer_costs_a_tiled_round_one_request(
        tmp_path: Path, detector: Detector) -> None:
    """Session 47 (attack pass): before a tiled record's first batch the box asks
    ``HEAD /healthz`` what the hub takes. A hub that did not answer it was taken as one
    that takes nothing, and the batch was sent straight after, to the same silent address:
    two waits a round (past the forwarder's ``stop_timeout_s`` of one request in flight),
    and a hub back in between got the records without their tiles for good. Now the round
    ends at the unanswered question, as its batch would have; the record stays pending."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoAnswer)
    _NoAnswer.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = Store(tmp_path / "box", pass_rate=1.0, box_id="box9")
    store.event_makers.append(forward_events)
    store.guard_channel = "fleet"
    settings = FleetSettings(hub_url=f"http://127.0.0.1:{server.server_address[1]}",
                             token="t", timeout_s=2)  # type: ignore[arg-type]
    forwarder = Forwarder(store, HubClient(settings, "box9"), settings)
    try:
        result = _inspection(detector)
        result.tiles = 4
        assert store.save(result)
        store.flush()
        with pytest.raises(HubUnavailable, match="unreachable"):
            forwarder.forward_once()
        assert _NoAnswer.seen == ["HEAD"]  # not the batch after it, to the same silence
        assert forwarder.client.hub_features is None  # asked again next round
        forwarder.refresh_gauges()
        assert forwarder.backlog == 1 and forwarder.set_aside == 0
    finally:
        forwarder.client.close()
        store.close()
        server.shutdown()
