"""What an attacker's pass over a running hub found (2026-12-04, session 21), each pinned
here: a dev hub (SQLite, images in a real SeaweedFS) under uvicorn on loopback, and for
the database going down a real PostgreSQL database whose connections are then refused.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from lineside_inspect.errors import NotFoundError

from .test_fleet_hostile_box import _forwarded, _post, _review
from .test_fleet_sync import KEYS, ServedHub, _send_head, hub_settings

QA = {"authorization": f"Bearer {KEYS['qa']}"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, weed: Any) -> Iterator[ServedHub]:
    tmp = tmp_path_factory.mktemp("hub-probe")
    keys = [{"name": name, "role": "reviewer" if name == "qa" else "box", "key": key,
             **({"site": "plant1", "line": "line1"} if name == "box2" else {})}
            for name, key in KEYS.items()]
    with ServedHub(hub_settings(tmp, weed.settings("fleet-probe"), api_keys=keys)) as served:
        yield served


def _png_head(width: int, height: int) -> bytes:
    """A PNG's signature and IHDR for ``width`` x ``height`` (what the hub reads before
    anything is decoded), and a little zlib data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\0" * 1000)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + struct.pack(">I", len(idat)) + b"IDAT"
            + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def _with_image(item: dict[str, Any], data: bytes, ext: str = "png") -> dict[str, Any]:
    return {**item, "image_b64": base64.b64encode(data).decode(), "image_ext": ext}


def _refused(hub: ServedHub, box: str, items: list[dict[str, Any]], status: int = 422) -> str:
    # sent as JSON text by hand: httpx will not encode a lone surrogate, a hostile box does
    r = httpx.post(f"{hub.url}/fleet/v1/boxes/{box}/inspections", timeout=30,
                   content=json.dumps({"items": items}).encode(),
                   headers={"authorization": f"Bearer {KEYS[box]}",
                            "content-type": "application/json"})
    assert r.status_code == status, r.text
    for item in items:
        with pytest.raises(NotFoundError):
            hub.store.get(item["id"])
    return str(r.json()["error"]["message"])


def test_a_forwarded_image_is_the_size_its_record_says_and_within_the_pixel_limit(
        hub: ServedHub) -> None:
    """A 196 KB PNG of 8192x8192 in a record of 64x48 was stored, and each drawing of it
    took 360 MB; a "jpg" of HTML was stored as an image."""
    msg = _refused(hub, "box1", [_with_image(_forwarded(1), _png_head(9000, 9000))])
    assert msg.startswith("item seq 1: image_b64: image is 9000x9000 = 81000000 pixels, over "), msg
    msg = _refused(hub, "box1", [_with_image(_forwarded(1), _png_head(8192, 8192))])
    assert msg == "item seq 1: image_b64 is 8192x8192, the record says 64x48", msg
    msg = _refused(hub, "box1", [_with_image(_forwarded(1), _png_head(640, 480))])
    assert msg == "item seq 1: image_b64 is 640x480, the record says 64x48", msg
    msg = _refused(hub, "box1", [_with_image(_forwarded(1), b"\xff\xd8<html><script>", "jpg")])
    assert msg.startswith("item seq 1: image_b64: "), msg
    # no reader makes pixels of a JPEG's header alone, or a PNG without image data: each
    # stopped every data pull from the hub (review, session 34)
    sof = b"\xff\xc0\x00\x11\x08\x00\x30\x00\x40\x03" + bytes(9)
    msg = _refused(hub, "box1", [_with_image(_forwarded(1), b"\xff\xd8" + sof + b"\xff\xd9", "jpg")])
    assert msg == "item seq 1: image_b64: corrupt JPEG: no scan (start-of-scan marker) found", msg
    no_idat = _png_head(64, 48).replace(b"IDAT", b"tEXt")
    msg = _refused(hub, "box1", [_with_image(_forwarded(1), no_idat)])
    assert msg == "item seq 1: image_b64: corrupt PNG image: it has no image data (IDAT chunk)", msg
    big = _with_image(_forwarded(1, width=9000, height=9000), _png_head(9000, 9000))
    msg = _refused(hub, "box1", [big])
    assert msg.startswith("item seq 1: record size 9000x9000 is not an image of 1 to"), msg
    assert _post(hub, "box1", "inspections", {"items": [_forwarded(1)]}).status_code == 200


def test_one_id_twice_in_a_batch_is_a_422_naming_it(hub: ServedHub) -> None:
    """It was 409 busy, "retry": a box would have retried a permanent error for ever."""
    first = _forwarded(1)
    again = {**_forwarded(2), "id": first["id"]}
    again["record"] = {**again["record"], "id": first["id"]}
    msg = _refused(hub, "box4", [first, again])
    assert msg == f"a batch must not repeat an inspection id: {first['id']} is sent under seq 1, 2"


def test_an_inspection_dated_ahead_of_the_hub_is_stored_at_the_hubs_time(hub: ServedHub) -> None:
    """Dated 9999-12-31 it headed every reviewer's queue, and the fleet page's newest
    inspection of the box, for good."""
    ahead = _forwarded(1, created_at="9999-12-30T00:00:00Z")
    soon = _forwarded(2, created_at=(datetime.now(UTC) + timedelta(minutes=2)).isoformat())
    before = datetime.now(UTC)
    assert _post(hub, "box3", "inspections", {"items": [ahead, soon]}).status_code == 200
    stored = hub.store.get(ahead["id"]).created_at.replace(tzinfo=UTC)
    assert before <= stored <= datetime.now(UTC)
    # within the allowance, the box's own time stands
    assert hub.store.get(soon["id"]).created_at.replace(tzinfo=UTC) > datetime.now(UTC)
    fleet = httpx.get(f"{hub.url}/fleet/v1/boxes", headers=QA).json()
    [box3] = [b for b in fleet["boxes"] if b["box_id"] == "box3"]
    assert box3["last_inspection_at"] < "9999"


def test_text_that_cannot_be_stored_is_scrubbed_and_a_class_with_a_comma_is_one_class(
        hub: ServedHub) -> None:
    """A lone surrogate (JSON's "\\ud800") in a record answered the codec's own words after
    the images went up: like a NUL it becomes U+FFFD (refusing it would stop the box's
    stream for good). A class "a,short" matched label filters for
    "a" and for "short" (labels are kept ",a,b,")."""
    odd = _forwarded(20, camera_id="cam\ud800", part_id="p\x00",
                     class_names=["a,short", "short"],
                     defects=[{"label": "a,short", "score": 0.9, "box": [1, 2, 3, 4]}])
    r = httpx.post(f"{hub.url}/fleet/v1/boxes/box3/inspections", timeout=30,
                   content=json.dumps({"items": [odd]}).encode(),
                   headers={"authorization": f"Bearer {KEYS['box3']}",
                            "content-type": "application/json"})
    assert r.status_code == 200, r.text
    row = hub.store.get(odd["id"])
    assert (row.camera_id, row.part_id) == ("cam\ufffd", "p\ufffd")

    def listed(label: str) -> list[str]:
        got = httpx.get(f"{hub.url}/v1/inspections", params={"label": label}, headers=QA)
        return [i["id"] for i in got.json()["items"]]

    assert odd["id"] in listed("a,short")
    assert odd["id"] not in listed("short") and odd["id"] not in listed("a")
    # a review's typed text fields say so by name (a box's own store cannot hold one)
    review = _review(1, odd["id"], reviewer="qa\ud800")
    r = httpx.post(f"{hub.url}/fleet/v1/boxes/box3/reviews", timeout=30,
                   content=json.dumps({"items": [review]}).encode(),
                   headers={"authorization": f"Bearer {KEYS['box3']}",
                            "content-type": "application/json"})
    assert r.status_code == 422 and "items.0.reviewer" in r.text, r.text
    r = httpx.get(f"{hub.url}/fleet/v1/boxes/box1/hub-reviews", params={"after": 2**31},
                  headers={"authorization": f"Bearer {KEYS['box1']}"})
    assert r.status_code == 422 and "after" in r.json()["error"]["message"], r.text


def test_a_pinned_box_key_names_only_its_site_and_line(hub: ServedHub) -> None:
    """A box key filed inspections under any site and line and moved that line's
    dashboard; a key pinned in the hub's config (api_keys[].site/.line) may not."""
    box = {"authorization": f"Bearer {KEYS['box2']}"}
    elsewhere = {**_forwarded(1), "site": "plant-b", "line": "press-7"}
    msg = _refused(hub, "box2", [elsewhere], status=403)
    assert msg == ("box box2's key is pinned to site 'plant1' in the hub's config; item seq 1 "
                   "names site 'plant-b'"), msg
    other_line = {**_forwarded(1), "line": "press-7"}
    assert "pinned to line 'line1'" in _refused(hub, "box2", [other_line], status=403)
    assert _post(hub, "box2", "inspections", {"items": [_forwarded(1)]}).status_code == 200
    listed = httpx.get(f"{hub.url}/v1/inspections", params={"line": "press-7"}, headers=QA)
    assert listed.status_code == 200 and listed.json()["items"] == [], listed.text
    status = {"version": "x", "ready": True, "site": "plant1", "line": "press-7",
              "models": [], "forward_backlog": 0}
    r = httpx.post(f"{hub.url}/fleet/v1/boxes/box2/status", json=status, headers=box)
    assert r.status_code == 403 and "the status report names line 'press-7'" in r.text, r.text
    r = httpx.post(f"{hub.url}/fleet/v1/boxes/box2/status", json={**status, "line": "line1"},
                   headers=box)
    assert r.status_code == 200, r.text
    r = httpx.get(f"{hub.url}/fleet/v1/boxes/box2/assignment", params={"line": "press-7"},
                  headers=box)
    assert r.status_code == 403 and "pinned to line 'line1'" in r.text, r.text
    r = httpx.get(f"{hub.url}/fleet/v1/boxes/box2/assignment", params={"line": "line1"},
                  headers=box)
    assert r.status_code == 200, r.text
    # an unpinned key: as before
    free = {**_forwarded(1), "site": "plant-b", "line": "press-7"}
    assert _post(hub, "box4", "inspections", {"items": [free]}).status_code == 200


def test_a_boxs_review_batches_go_one_at_a_time(hub: ServedHub) -> None:
    """Four batches of 1,000 reviews at once from one box key kept a core busy for minutes
    after the box hung up. A second while the first is in the hub: 429, body unread."""
    port = int(hub.url.rsplit(":", 1)[1])
    path = "/fleet/v1/boxes/box1/reviews"
    with _send_head(port, path, KEYS["box1"]):
        r = None
        for _ in range(100):  # until the held one is in the hub
            r = httpx.post(hub.url + path, json={"items": []},
                           headers={"authorization": f"Bearer {KEYS['box1']}"})
            if r.status_code == 429:
                break
        assert r is not None and r.status_code == 429, r and r.text
        assert r.json()["error"]["code"] == "reviews_in_progress" and r.headers["retry-after"]
        # another box is not held up by it
        r = httpx.post(hub.url + "/fleet/v1/boxes/box3/reviews", json={"items": []},
                       headers={"authorization": f"Bearer {KEYS['box3']}"})
        assert r.status_code == 200, r.text
    for _ in range(200):  # the held batch's connection closed: box1's turn comes back
        r = httpx.post(hub.url + path, json={"items": []},
                       headers={"authorization": f"Bearer {KEYS['box1']}"})
        if r.status_code == 200:
            break
    assert r.status_code == 200, r.text


def test_an_inspection_keeps_at_most_max_reviews_and_a_box_stream_goes_on(hub: ServedHub) -> None:
    from lineside_inspect.store.store import MAX_REVIEWS

    held = _forwarded(50)
    assert _post(hub, "box3", "inspections", {"items": [held]}).status_code == 200
    start = datetime.now(UTC) - timedelta(hours=1)
    reviews = [_review(100 + n, held["id"], start + timedelta(seconds=n))
               for n in range(MAX_REVIEWS + 5)]
    r = _post(hub, "box3", "reviews", {"items": reviews})
    assert r.json()["through_seq"] == reviews[-1]["seq"], r.text  # skipped past the cap
    got = httpx.get(f"{hub.url}/v1/inspections/{held['id']}", headers=QA).json()
    assert len(got["reviews"]) == MAX_REVIEWS
    r = httpx.post(f"{hub.url}/v1/inspections/{held['id']}/reviews", json={"action": "confirm"},
                   headers=QA)
    assert r.status_code == 422 and f"holds {MAX_REVIEWS} reviews" in r.text, r.text


def test_an_unreachable_object_store_is_not_named_to_the_caller(hub: ServedHub) -> None:
    """A box key heard the object store's internal address in a 503."""
    from lineside_inspect.errors import ObjectStoreUnavailable
    from lineside_inspect.fleet.objects import ObjectStore

    dead = ObjectStore(hub.app.state.objects.settings.model_copy(
        update={"endpoint": "127.0.0.1:9"}))
    with pytest.raises(ObjectStoreUnavailable) as caught:
        dead.exists("images/x.png")
    assert caught.value.message == ("the object store is unreachable (during stat); retry "
                                    "later"), caught.value.message


def _readyz_until(hub: ServedHub, status: int) -> int:
    """``/readyz``'s status once it is ``status``, or its last after ~10 s (the hub keeps
    its database's answer for a second)."""
    got = 0
    for _ in range(100):
        got = httpx.get(hub.url + "/readyz").status_code
        if got == status:
            break
        time.sleep(0.1)
    return got


def test_an_unreachable_database_is_503_on_every_route(
        tmp_path: Path, weed: Any, postgres: str) -> None:
    """With PostgreSQL down, reviewer routes answered 500 with a traceback in the log and
    /readyz said ready; the box routes already said 503 database_unavailable."""
    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    settings = hub_settings(tmp_path, weed.settings("fleet-probe-db"),
                            database_url=f"{postgres.replace('postgresql:', 'postgresql+psycopg:')}/{name}"
                            if postgres.startswith("postgresql:") else f"{postgres}/{name}")
    try:
        with ServedHub(settings) as served:
            held = _forwarded(1)
            assert _post(served, "box1", "inspections", {"items": [held]}).status_code == 200
            with admin.connect() as c:  # the database goes away under the running hub
                c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               f"WHERE datname = '{name}'"))
            for path in ("/v1/inspections", f"/v1/inspections/{held['id']}", "/v1/stats",
                         "/fleet/v1/boxes"):
                r = httpx.get(served.url + path, headers=QA)
                assert r.status_code == 503, (path, r.text)
                assert r.json()["error"]["code"] == "database_unavailable", r.text
                assert r.headers["retry-after"]
            assert _readyz_until(served, 503) == 503  # it said ready while routes said 503
            with admin.connect() as c:
                c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            assert _readyz_until(served, 200) == 200
            r = httpx.get(served.url + "/v1/inspections", headers=QA)
            assert r.status_code == 200 and r.json()["items"][0]["id"] == held["id"], r.text
    finally:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def test_a_boxs_fail_rate_alarms_reach_the_fleet_page(hub: ServedHub) -> None:
    """A box whose recipe is in fail-rate alarm says so in its status report, and the hub's
    fleet list shows it; a quiet box's report carries no such field at all (so a hub of an
    older release still takes it)."""
    from lineside_inspect.fleet.box.status import box_status

    from .conftest import SAMPLE, settings, start_server

    running, stop = start_server(settings(lifecycle={"fail_rate_alarm": {
        "baseline_inspections": 4, "window": 4, "max_fail_rate_increase": 0.3}}))
    try:
        quiet = box_status(running.app).model_dump(mode="json")
        assert "alarms" not in quiet
        good = sorted((SAMPLE / "images").rglob("*_temp.jpg"))[:4]
        bad = sorted((SAMPLE / "images").rglob("*_test.jpg"))[:2]
        for f in good + bad:
            r = httpx.post(running.url + "/v1/inspect", content=f.read_bytes(), timeout=60,
                           headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
        report = box_status(running.app).model_dump(mode="json")
    finally:
        stop()
    assert report["alarms"] == [
        "deeppcb-default (deeppcb 1): 50.0% of the last 4 failed, usually 0.0%"]
    assert _post(hub, "box3", "status", report).status_code == 200
    fleet = httpx.get(f"{hub.url}/fleet/v1/boxes", headers=QA).json()
    [box3] = [b for b in fleet["boxes"] if b["box_id"] == "box3"]
    assert box3["status"]["alarms"] == report["alarms"]
    assert _post(hub, "box3", "status", quiet).status_code == 200
    fleet = httpx.get(f"{hub.url}/fleet/v1/boxes", headers=QA).json()
    [box3] = [b for b in fleet["boxes"] if b["box_id"] == "box3"]
    assert "alarms" not in box3["status"]  # none: absent, as sent


def test_a_hub_that_refuses_the_alarms_field_still_gets_the_report(hub: ServedHub) -> None:
    """A hub of an older release answers 422 to a field it does not know: the box reports
    without its alarms from then on, and the rest of the report gets through. The older
    hub is this hub behind a proxy that refuses bodies naming "alarms", as it would."""
    from types import SimpleNamespace

    from lineside_inspect.fleet.box.client import HubRefused
    from lineside_inspect.fleet.box.status import StatusReporter
    from lineside_inspect.fleet.protocol import BoxStatus

    sent: list[dict[str, Any]] = []

    class OlderHub:
        def path(self, template: str) -> str:
            return template.format(box_id="box3")

        def request(self, method: str, path: str, *, body: BoxStatus) -> None:
            doc = json.loads(body.model_dump_json())
            if "alarms" in doc:
                raise HubRefused(f"hub refused {method} {path}: 422 body.alarms: Extra inputs "
                                 "are not permitted")
            r = _post(hub, "box3", "status", doc)
            assert r.status_code == 200, r.text
            sent.append(doc)

    alarm = SimpleNamespace(raised=lambda: [{
        "recipe": "r", "judged_by": "m 1", "state": "alarm", "recent_fail_rate": 0.5,
        "recent_inspections": 400, "usual_fail_rate": 0.02}])
    app = SimpleNamespace(state=SimpleNamespace(
        settings=SimpleNamespace(fleet=SimpleNamespace(site=None, line=None)),
        registry=SimpleNamespace(models=dict), ready=True, lifecycle=SimpleNamespace(
            alarm=alarm, shadow=None)))
    reporter = StatusReporter(app, OlderHub())  # type: ignore[arg-type]
    reporter.report_once()
    reporter.report_once()
    assert reporter.reported == 2 and reporter.hub_takes_alarms is False
    assert len(sent) == 2 and all("alarms" not in d and d["ready"] for d in sent)


def test_a_hub_whose_database_cannot_be_reached_says_so_in_one_line(tmp_path: Path) -> None:
    """``lineside hub`` with PostgreSQL down printed the application start-up's 160-line
    traceback and exited 3."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app
    from lineside_inspect.serve_process import free_port

    cfg = tmp_path / "hub.yaml"
    cfg.write_text(json.dumps({
        "database_url": f"postgresql+psycopg://lineside:pw-s3cret@127.0.0.1:{free_port()}/hub",
        "data_dir": str(tmp_path / "data"), "port": free_port(),
        "objects": {"endpoint": f"127.0.0.1:{free_port()}", "bucket": "lineside",
                    "access_key": "a", "secret_key": "bbbbbbbb", "secure": False}}))
    result = CliRunner().invoke(app, ["hub", "--config", str(cfg)])
    assert result.exit_code == 2, result.output
    assert "the hub's database postgresql+psycopg://127.0.0.1:" in result.output
    assert "cannot be reached" in result.output and "Connection refused" in result.output
    assert "Traceback" not in result.output and "pw-s3cret" not in result.output
    # a password in the query, or holding an '@' (a driver then quotes part of it as the
    # host), is not shown either
    from lineside_inspect.errors import DatabaseUnavailable
    from lineside_inspect.fleet.hub.app import check_database

    port = free_port()
    for url in (f"postgresql+psycopg://u@127.0.0.1:{port}/db?connect_timeout=2&password=s3cret-q",
                f"postgresql+psycopg://u:pa@ss-w0rd@127.0.0.1:{port}/db"):
        with pytest.raises(DatabaseUnavailable) as exc:
            check_database(url)
        assert "s3cret-q" not in exc.value.message and "ss-w0rd" not in exc.value.message
    # SQLite is the store's to make (its folder may not exist yet): no check, no refusal
    check_database(f"sqlite:///{tmp_path / 'not-yet' / 'hub.db'}")


def test_a_forwarded_record_is_reviewed_only_by_reviews_the_hub_holds(hub: ServedHub) -> None:
    """A record forwarded as "confirmed" with no review was listed as reviewed, and data
    pull took its detections as a reviewer's truth with nobody's name on them."""
    item = _forwarded(900_000, review_state="confirmed")  # past the other tests' seqs
    r = _post(hub, "box3", "inspections", {"items": [item]})
    assert r.status_code == 200, r.text
    assert hub.store.get(item["id"]).review_state == "unreviewed"
    listed = httpx.get(f"{hub.url}/v1/inspections", params={"review_state": "reviewed"},
                       headers=QA, timeout=30).json()["items"]
    assert item["id"] not in {i["id"] for i in listed}
    r = _post(hub, "box3", "reviews", {"items": [_review(900_000, item["id"], action="confirm")]})
    assert r.status_code == 200, r.text
    assert hub.store.get(item["id"]).review_state == "confirmed"  # now a review says so
