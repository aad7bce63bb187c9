"""Reviews both ways, box status and the hub's plant view, with real parts: a hub on a real
PostgreSQL with images in a real SeaweedFS, and an edge server (the bundled model, its
SQLite store) forwarding to it, both served by uvicorn on loopback."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.orm import Session

from lineside_inspect.config import ApiKey
from lineside_inspect.errors import HubUnavailable
from lineside_inspect.fleet.box.client import HubClient
from lineside_inspect.fleet.box.reviews import ReviewSync
from lineside_inspect.fleet.config import FleetSettings
from lineside_inspect.fleet.hub.app import create_hub_app
from lineside_inspect.fleet.hub.bench_reviews import (
    QUERIES,
    review_list_latency,
    seed_inspections,
    synthetic_records,
)
from lineside_inspect.fleet.hub.boxes import fleet
from lineside_inspect.fleet.hub.config import HubSettings
from lineside_inspect.fleet.hub.tables import create_hub_tables
from lineside_inspect.store import Store
from lineside_inspect.store.models import InspectionRow
from lineside_inspect.store.outbox import Outbox

from .conftest import CHROMIUM, Running, start_server
from .conftest import keyed as box_settings
from .fleet_peers import free_port

BOX = "box-a"
HUB_KEYS = {BOX: "k-box-a", "qa": "k-qa", "box-p": "k-box-p"}
ROOT = Path(__file__).resolve().parents[2]


class Hub:
    """The hub app under uvicorn in a thread; stopped and started again on its port."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.port}"
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> Hub:
        self.app = create_hub_app(self.settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1",
                                                    port=self.settings.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive(), "the hub did not start"
            self.thread.join(0.02)
        return self

    def stop(self) -> None:
        assert self.server is not None and self.thread is not None
        self.server.should_exit = True
        self.thread.join(15)

    def client(self, key: str = "qa") -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {HUB_KEYS[key]}"})


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, postgres: str, weed: Any) -> Iterator[Hub]:
    name = f"views_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    settings = HubSettings(
        database_url=f"{postgres}/{name}", objects=weed.settings("fleet-views"),  # type: ignore[arg-type]
        data_dir=str(tmp_path_factory.mktemp("hub")), port=free_port(),
        api_keys=[ApiKey.from_plain(BOX, "box", HUB_KEYS[BOX]),
                  ApiKey.from_plain("box-p", "box", HUB_KEYS["box-p"]),
                  ApiKey.from_plain("qa", "reviewer", HUB_KEYS["qa"])])
    served = Hub(settings).start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def box(hub: Hub) -> Iterator[Running]:
    fleet = FleetSettings(hub_url=hub.url, token=HUB_KEYS[BOX], site="plant-a", line="line-1",  # type: ignore[arg-type]
                          forward_interval_s=0.2, status_interval_s=0.3, timeout_s=3)
    running, stop = start_server(box_settings(box_id=BOX, fleet=fleet, store_pass_rate=1.0))
    yield running
    stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except (httpx.HTTPError, AssertionError, KeyError):
            got = None
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _try_round(sync: ReviewSync) -> tuple[int, int] | None:
    """One round of a box's review sync; None when the hub did not answer it within the
    box's ``timeout_s`` (3 s: a loaded CI host): that round is the next poll's, as the
    box's loop retries it (the outbox and the cursor keep a retried round from sending or
    applying anything twice)."""
    try:
        return sync.sync_once()
    except HubUnavailable:
        return None


def _round(sync: ReviewSync) -> tuple[int, int]:
    """A round of a box's review sync the hub answered, retried as the box's loop retries
    it: (reviews the hub took, hub reviews applied), with those of a try the hub cut short
    (a sync's own counts; another thread's rounds, a running loop's, would count too)."""
    cut = [0, 0]

    def attempt() -> tuple[int, int] | None:
        sent, applied = sync.sent, sync.applied
        got = _try_round(sync)
        if got is None:
            cut[0] += sync.sent - sent
            cut[1] += sync.applied - applied
        return got

    up, down = wait_for("a review sync round the hub answered", attempt, timeout=60)
    return up + cut[0], down + cut[1]


def _inspect(box: Running, image_bytes: bytes) -> str:
    with box.client("line") as c:
        r = c.post("/v1/inspect?camera_id=cam1", content=image_bytes,
                   headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _reviews(c: httpx.Client, iid: str) -> list[tuple[str, str]]:
    r = c.get(f"/v1/inspections/{iid}")
    r.raise_for_status()
    return [(x["reviewer"], x["action"]) for x in r.json()["reviews"]]


def test_reviews_both_ways_status_and_the_plant_view(hub: Hub, box: Running,
                                                      image_bytes: bytes) -> None:
    iid = _inspect(box, image_bytes)
    q = hub.client()
    wait_for("the inspection on the hub", lambda: q.get(f"/v1/inspections/{iid}").status_code == 200)

    # the fleet page's listing: the box, what it runs, its report, its backlog
    doc = wait_for("a ready status report", lambda: next(
        b for b in q.get("/fleet/v1/boxes").json()["boxes"]
        if b["box_id"] == BOX and b["status"]["ready"]))
    assert doc["status"]["site"] == "plant-a" and doc["status"]["line"] == "line-1"
    assert ("deeppcb", "1", "active") in {(m["name"], m["version"], m["role"])
                                          for m in doc["status"]["models"]}
    assert doc["silent"] is False and doc["inspections_held"] == 1
    assert doc["status"]["forward_backlog"] >= 0

    # the hub's review list narrows by site, line, box (names full-matched)
    for params, n in (({"site": "plant-a"}, 1), ({"line": "line-1", "box_id": BOX}, 1),
                      ({"site": "plant-b"}, 0), ({"box_id": "box-z"}, 0)):
        assert q.get("/v1/inspections", params=params).json()["total"] == n, params
    for bad in ({"site": "../x"}, {"line": "a b"}, {"box_id": "x" * 65}):
        r = q.get("/v1/inspections", params=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert q.get("/v1/stats", params={"site": "plant-a"}).json()["stations"][0]["inspections"] == 1
    assert q.get("/v1/stats", params={"site": "plant-b"}).json()["stations"] == []

    # up: a review made on the box reaches the hub, marked as the box's
    with box.client("reviewer") as b:
        b.post(f"/v1/inspections/{iid}/reviews", json={"action": "confirm"}).raise_for_status()
        # recorded under the box whose key sent it
        wait_for("the box's review on the hub",
                 lambda: _reviews(q, iid) == [(f"reviewer ({BOX})", "confirm")])
        # down: one made on the hub reaches the box, and is not echoed back up
        q.post(f"/v1/inspections/{iid}/reviews", json={"action": "false_reject"}).raise_for_status()
        wait_for("the hub's review on the box", lambda: _reviews(b, iid) == [
            ("reviewer", "confirm"), ("qa", "false_reject")])
        assert b.get(f"/v1/inspections/{iid}").json()["review_state"] == "corrected"
        outbox = Outbox(box.app.state.store.engine, BOX, "fleet-reviews")
        assert outbox.backlog() == 0
        _round(box.app.state.fleet_reviews)
        assert len(_reviews(q, iid)) == 2

        # concurrent edits: both sides review before either hears of the other; the later
        # one wins on both, and both trails keep both
        sync = box.app.state.fleet_reviews
        sync.stop()
        for c, action, note in ((b, "confirm", "box"), (q, "false_reject", "hub")):
            c.post(f"/v1/inspections/{iid}/reviews", json={"action": action, "note": note}
                   ).raise_for_status()
        _round(sync)
        for c in (b, q):
            got = c.get(f"/v1/inspections/{iid}").json()
            assert [r["note"] for r in got["reviews"]][-2:] == ["box", "hub"]
            assert got["review_state"] == "corrected" and len(got["reviews"]) == 4

        # the hub unreachable: the box's review page and review API carry on, the review waits
        hub.stop()
        try:
            assert b.get("/review").status_code == 200
            assert b.get("/v1/inspections", params={"verdict": "fail"}).json()["total"] >= 1
            b.post(f"/v1/inspections/{iid}/reviews", json={"action": "confirm", "note": "offline"}
                   ).raise_for_status()
            assert b.get(f"/v1/inspections/{iid}").json()["review_state"] == "confirmed"
            assert outbox.backlog() == 1
            with pytest.raises(Exception, match="unreachable"):
                sync.sync_once()
        finally:
            hub.start()
        q = hub.client()
        _round(sync)
        assert outbox.backlog() == 0
        got = q.get(f"/v1/inspections/{iid}").json()
        assert got["reviews"][-1]["note"] == "offline" and got["review_state"] == "confirmed"


def _metrics(box: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with box.client() as c:
        text = c.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _task(name: str, task: str, kind: str | None = None) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = (("kind", kind), ("task", task)) if kind else (("task", task),)
    return (f"lineside_fleet_task_{name}", labels)


def test_every_hub_task_of_a_box_is_in_its_metrics(hub: Hub, box: Running,
                                                    image_bytes: bytes) -> None:
    """Forwarding, the review sync and the status reports, each one loop (fleet/box/
    periodic.py) with the same figures: its last success, its errors by kind, its failures
    in a row while the hub is down; and the reviews' own counts and backlog."""
    iid = _inspect(box, image_bytes)
    q = hub.client()
    wait_for("the inspection on the hub", lambda: q.get(f"/v1/inspections/{iid}").status_code == 200)
    with box.client("reviewer") as b:
        b.post(f"/v1/inspections/{iid}/reviews", json={"action": "confirm"}).raise_for_status()
    sync = box.app.state.fleet_reviews
    _round(sync)  # its loop may have been stopped by another test
    q.post(f"/v1/inspections/{iid}/reviews", json={"action": "false_reject"}).raise_for_status()
    _round(sync)
    got = _metrics(box)
    assert got[("lineside_fleet_reviews_sent_total", ())] >= 1
    assert got[("lineside_fleet_reviews_applied_total", ())] >= 1
    assert got[("lineside_fleet_reviews_backlog", ())] == 0
    for task in ("forward", "reviews", "status"):
        wait_for(f"{task}'s last success", lambda task=task: _metrics(box)[_task(  # type: ignore[misc]
            "last_success_timestamp_seconds", task)] > 0)

    hub.stop()
    try:
        _inspect(box, image_bytes)  # waits in the outbox
        with box.client("reviewer") as b:
            b.post(f"/v1/inspections/{iid}/reviews", json={"action": "confirm"}).raise_for_status()
        for task in ("forward", "status"):
            wait_for(f"{task} failing", lambda task=task: _metrics(box)[_task(  # type: ignore[misc]
                "errors_total", task, "hub_unavailable")] >= 1 and _metrics(box)[_task(
                "consecutive_failures", task)] >= 1)
        assert _metrics(box)[("lineside_fleet_reviews_backlog", ())] == 1
    finally:
        hub.start()
    _round(sync)
    for task in ("forward", "status"):
        wait_for(f"{task} back", lambda task=task: _metrics(box)[_task(  # type: ignore[misc]
            "consecutive_failures", task)] == 0)
    assert _metrics(box)[("lineside_fleet_reviews_backlog", ())] == 0


def test_hub_pages_and_box_keys(hub: Hub, box: Running) -> None:
    q = hub.client()
    # the plant view: pages answer with the fleet's filters (the box's pages have none)
    page = q.get("/review").text
    assert 'name="site"' in page and 'name="box_id"' in page and 'href="/fleet"' in page
    assert 'name="line"' in q.get("/dashboard").text
    assert "fleet.js" in q.get("/fleet").text
    assert q.get("/", follow_redirects=False).headers["location"] == "/fleet"
    with box.client("reviewer") as b:
        assert 'name="site"' not in b.get("/review").text
        assert b.get("/fleet").status_code == 404
    # a box's key speaks only for its own box, and a reviewer's not at all
    with hub.client(BOX) as k:
        r = k.post("/fleet/v1/boxes/box-b/reviews", json={"items": []})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert k.get("/fleet/v1/boxes/box-b/hub-reviews").status_code == 403
        assert k.get("/fleet/v1/boxes").status_code == 403
        r = k.post(f"/fleet/v1/boxes/{BOX}/reviews", json={"items": [{"seq": 1}]})
        assert r.status_code == 422 and "Traceback" not in r.text
        # a batch: a review the inspection cannot have is skipped (not holding the rest),
        # one of an inspection the hub does not hold yet stops it (saying why), another
        # box's is skipped, never applied
        mine, theirs = (synthetic_records(1, box_id=b, seed=i)[0] for i, b in ((1, BOX), (2, "box-b")))
        with Session(hub.app.state.store.engine) as s, s.begin():
            s.add_all([InspectionRow(**mine), InspectionRow(**theirs)])

        def review(seq: int, iid: str, label: str = "open") -> dict[str, Any]:
            return {"seq": seq, "inspection_id": iid, "created_at": "2026-12-01T10:00:00Z",
                    "reviewer": "op", "action": "missed_defect", "origin": "box",
                    "boxes": [{"label": label, "box": [1, 2, 3, 4]}]}

        r = k.post(f"/fleet/v1/boxes/{BOX}/reviews", json={"items": [
            review(10_001, mine["id"], "<b>alien</b>"), review(10_002, mine["id"]),
            review(10_003, uuid.uuid4().hex), review(10_004, mine["id"])]})
        assert r.status_code == 200
        # no features header: the answer of version 1 (fleet/protocol.py), no "waiting"
        assert r.json() == {"through_seq": 10_002}
        assert [x["boxes"] for x in q.get(f"/v1/inspections/{mine['id']}").json()["reviews"]] == \
            [[{"label": "open", "box": [1.0, 2.0, 3.0, 4.0]}]]
        r = k.post(f"/fleet/v1/boxes/{BOX}/reviews", json={"items": [review(10_005, theirs["id"])]})
        assert r.json() == {"through_seq": 10_005}  # the box's stream goes on past it
        assert not q.get(f"/v1/inspections/{theirs['id']}").json()["reviews"]
    assert q.post(f"/fleet/v1/boxes/{BOX}/status", json={}).status_code == 403
    assert q.get(f"/fleet/v1/boxes/{BOX}/hub-reviews").status_code == 403
    # an unsigned caller is refused before its body is read
    r = httpx.post(f"{hub.url}/fleet/v1/boxes/{BOX}/reviews", content=b"x" * 100)
    assert r.status_code == 401


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_hub_pages_in_the_browser(hub: Hub, box: Running, browser: Any) -> None:
    """The fleet page lists the box from its report; the review page and dashboard offer
    the fleet's sites, lines and boxes and narrow by them (headless Chromium)."""
    from playwright.sync_api import expect

    with hub.client() as q:
        doc = q.get("/v1/inspections", params={"box_id": BOX, "verdict": "fail"}).json()
    total = doc["total"]
    assert total >= 1
    newest = doc["items"][0]["id"]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    missing: list[str] = []  # a hub has no queues or shadows: the page asks for none
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    page.goto(hub.url + "/")  # the hub's home is the fleet page, behind the sign-in
    page.fill("#key", HUB_KEYS["qa"])
    page.click("button[type=submit]")
    row = page.locator(f'tr[data-box="{BOX}"]')
    expect(row).to_contain_text("plant-a")
    expect(row).to_contain_text("deeppcb 1")
    expect(row).to_contain_text("ready")
    page.goto(hub.url + "/review")
    expect(page.locator(f'select[name=box_id] option[value="{BOX}"]')).to_have_count(1)
    page.select_option("select[name=box_id]", BOX)
    page.select_option("select[name=review_state]", "")
    page.click("#filters button[type=submit]")
    # the filtered list, not the one shown until its answer (every box's unreviewed
    # fails: its count may read "of {total}" too, or contain it, as "of 12" holds
    # "of 1"; and its first card may be another box's)
    expect(page.locator("#count")).to_have_text(re.compile(rf" of {total}$"))
    card = page.locator(".card").first
    expect(card).to_have_attribute("data-id", newest)
    # a reviewer sees which box each item came from (a box's own page does not say)
    expect(card.locator(".where")).to_contain_text(f"{BOX} · ")
    card.click()
    expect(page.locator("#d-meta")).to_contain_text(f"box {BOX} · ")
    assert not [u for u in missing if "/v1/" in u], missing
    page.goto(hub.url + "/dashboard")
    expect(page.locator('select[name=site] option[value="plant-a"]')).to_have_count(1)
    with page.expect_request(lambda r: "/v1/stats?" in r.url and "site=plant-a" in r.url):
        page.select_option("select[name=site]", "plant-a")
    expect(page.locator("#status")).to_contain_text("updated")


KILLED_REVIEWER = """
import os, signal, sys
from sqlalchemy.orm import Session
from lineside_inspect.fleet.box.reviews import review_events
from lineside_inspect.fleet.hub.bench_reviews import synthetic_rows
from lineside_inspect.store import Store

store = Store(sys.argv[1], box_id="box-p")
store.review_event_makers.append(review_events)  # as fleet.box.install does
row = synthetic_rows(1, box_id="box-p", seed=11, fail_every=1)[0]
iid = row.id
with Session(store.engine) as s, s.begin():
    s.add(row)
store.review(iid, reviewer="op", action="false_reject", note="before kill")
os.kill(os.getpid(), signal.SIGKILL)  # the moment the review is answered
"""


def test_a_box_review_survives_kill_9_and_goes_up(hub: Hub, tmp_path: Path) -> None:
    """A box process reviews and is killed with SIGKILL the moment the review is saved:
    its outbox event was written with it, so the review reaches the hub afterwards; and a
    hub review comes down to the same store."""
    data = tmp_path / "box-p"
    proc = subprocess.run([sys.executable, "-c", KILLED_REVIEWER, str(data)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    record = synthetic_records(1, box_id="box-p", seed=11, fail_every=1)[0]
    with Session(hub.app.state.store.engine) as s, s.begin():  # as if forwarded already
        s.add(InspectionRow(**record))
    store = Store(data, box_id="box-p")
    client = HubClient(FleetSettings(hub_url=hub.url, token=HUB_KEYS["box-p"]), "box-p")  # type: ignore[arg-type]
    try:
        sync = ReviewSync(store, client)
        assert _round(sync) == (1, 0)
        with hub.client() as q:
            got = q.get(f"/v1/inspections/{record['id']}").json()
            assert [(r["note"], r["action"]) for r in got["reviews"]] == [("before kill", "false_reject")]
            q.post(f"/v1/inspections/{record['id']}/reviews", json={"action": "confirm"}).raise_for_status()
        assert _round(sync) == (0, 1)
        assert store.get(record["id"]).review_state == "confirmed"
        assert _round(sync) == (0, 0)  # nothing echoed, nothing twice
    finally:
        client.close()
        store.close()

def test_review_list_filters_at_volume(hub: Hub) -> None:
    """The benchmark's queries (``lineside bench hub``) on a few thousand rows: each
    filter answers exactly the rows it names."""
    records = synthetic_records(3000, seed=7)
    seed_inspections(hub.app.state.store.engine, 3000, seed=7)
    with hub.client() as q:
        got = {r["query"]: r["matching"] for r in review_list_latency(q, rounds=1)}
    for name, params in QUERIES:
        if not params or set(params) == {"verdict", "review_state"}:
            continue  # these count the other tests' inspections too
        want = sum(1 for r in records if all(r[k] == v for k, v in params.items()))
        assert got[name] == want > 0, name


def _rows_read(plan: dict[str, Any], table: str) -> float:
    """Rows a PostgreSQL plan (EXPLAIN ANALYZE, JSON) read from ``table``, all loops."""
    here = plan["Actual Rows"] * plan["Actual Loops"] if plan.get("Relation Name") == table else 0
    return here + sum(_rows_read(p, table) for p in plan.get("Plans", []))


def test_the_fleet_page_reads_a_row_per_box_not_every_inspection(hub: Hub) -> None:
    """Each refresh of the fleet page reads the per-box counts the forward route keeps, not
    the inspections: its statements, run again under EXPLAIN ANALYZE on PostgreSQL, read
    (almost) no inspection rows with thousands in the table. A hub made before the counts
    were kept fills them once, from the rows, when it starts."""
    store = hub.app.state.store
    engine = store.engine
    seed_inspections(engine, 2000, seed=8)
    with engine.begin() as c:  # as on a hub from before the counts
        c.execute(text("DROP TABLE fleet_box_counts"))
    create_hub_tables(engine)
    with Session(engine) as s:
        held = {b: n for b, n in s.execute(
            select(InspectionRow.box_id, func.count()).where(InspectionRow.box_id.is_not(None))
            .group_by(InspectionRow.box_id))}
    assert sum(held.values()) >= 2000
    statements: list[tuple[str, Any]] = []
    me = threading.get_ident()

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        if threading.get_ident() == me:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        page = fleet(store, datetime.now(UTC))
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert {b.box_id: b.inspections_held for b in page.boxes if b.inspections_held} == held
    read = 0.0
    with engine.connect() as c:
        raw = c.connection.driver_connection
        assert raw is not None
        for statement, parameters in statements:
            with raw.cursor() as cur:
                cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
                row = cur.fetchone()
                assert row is not None
                read += _rows_read(row[0][0]["Plan"], "inspections")
    assert statements and read == 0, f"the fleet page read {read:.0f} inspection rows"


def test_counts_an_older_hub_left_short_are_taken_again_at_start(hub: Hub) -> None:
    """A hub of a release from before the per-box counts (650864a), started on a database
    this release made (a downgrade), stores rows without counting them: the next start of
    this release counts them again (they stayed short for good: the fleet page said 30
    held of 37). Counts that hold are left alone."""
    store = hub.app.state.store
    engine = store.engine
    create_hub_tables(engine)  # counts kept, as by this release
    seed_inspections(engine, 200, seed=9)  # as an older hub stored them: no count
    create_hub_tables(engine)  # this release's next start
    with Session(engine) as s:
        held = {b: n for b, n in s.execute(
            select(InspectionRow.box_id, func.count()).where(InspectionRow.box_id.is_not(None))
            .group_by(InspectionRow.box_id))}
        newest = s.scalar(select(func.max(InspectionRow.created_at)))
    page = fleet(store, datetime.now(UTC))
    assert {b.box_id: b.inspections_held for b in page.boxes if b.inspections_held} == held
    assert max(b.last_inspection_at for b in page.boxes if b.last_inspection_at) == newest


def test_a_recount_keeps_the_boxes_whose_inspections_retention_removed(
        tmp_path: Path, database_url: str | None) -> None:
    """The counts taken again at start (an older hub stored rows uncounted) keep a box whose
    every inspection retention removed: its row at 0 and its newest time. They were
    deleted and filled from the rows, and such a box left the fleet page (it never
    reported) or read no last inspection (review, session 37)."""
    from lineside_inspect.fleet.hub.tables import BoxCountRow

    store = Store(tmp_path, database_url, box_id="hub")
    create_hub_tables(store.engine)
    last = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
    with Session(store.engine) as s, s.begin():  # as retention leaves a box it emptied
        s.add(BoxCountRow(box_id="gone-box", held=0, last_at=last))
    now = datetime.now(UTC)
    seed_inspections(store.engine, 60, seed=4, now=now)  # stored by an older hub: uncounted
    create_hub_tables(store.engine)
    with Session(store.engine) as s:
        held = {b: n for b, n in s.execute(
            select(InspectionRow.box_id, func.count()).where(InspectionRow.box_id.is_not(None))
            .group_by(InspectionRow.box_id))}
    boxes = {b.box_id: b for b in fleet(store, now).boxes}
    assert boxes["gone-box"].inspections_held == 0
    assert boxes["gone-box"].last_inspection_at == last
    assert {b: f.inspections_held for b, f in boxes.items() if f.inspections_held} == held
    assert max(f.last_inspection_at for f in boxes.values() if f.last_inspection_at) == now
    store.close()


def test_a_removed_box_goes_up_to_the_hub_and_down_to_the_box(hub: Hub, box: Running,
                                                              image_bytes: bytes) -> None:
    """``remove_box`` (session 55) both ways: the box's reaches the hub, the hub's the box,
    each side's truth the same after (a side that did not know the action skipped it,
    logged: ``docs/upgrading.md``)."""
    iid = _inspect(box, image_bytes)
    q = hub.client()
    wait_for("the inspection on the hub", lambda: q.get(f"/v1/inspections/{iid}").status_code == 200)
    drawn = [{"label": "open", "box": [10.0, 10.0, 30.0, 30.0]},
             {"label": "short", "box": [40.0, 40.0, 60.0, 70.0]},
             {"label": "spur", "box": [80.0, 80.0, 90.0, 95.0]}]
    with box.client("reviewer") as b:
        truth = b.post(f"/v1/inspections/{iid}/reviews", json={
            "action": "missed_defect", "boxes": drawn}).json()["reviews"][-1]["boxes"]
        r = b.post(f"/v1/inspections/{iid}/reviews", json={"action": "remove_box", "index": 0})
        assert r.status_code == 200, r.text
        after_box = truth[1:]
        assert r.json()["reviews"][-1]["boxes"] == after_box
        # a round of the box's review sync each poll (the module's first test stops its loop)
        sync = box.app.state.fleet_reviews

        def synced(c: httpx.Client, last: tuple[str, str]) -> bool:
            _try_round(sync)  # one the hub did not answer in time is the next poll's
            return _reviews(c, iid)[-1:] == [last]

        wait_for("the box's remove_box on the hub",
                 lambda: synced(q, (f"reviewer ({BOX})", "remove_box")))
        got = q.get(f"/v1/inspections/{iid}").json()
        assert got["reviews"][-1]["boxes"] == after_box and got["review_state"] == "corrected"
        # down: the hub's reviewer takes out the next one
        r = q.post(f"/v1/inspections/{iid}/reviews", json={"action": "remove_box", "index": 0,
                                                            "seen_reviews": len(got["reviews"])})
        assert r.status_code == 200, r.text
        wait_for("the hub's remove_box on the box", lambda: synced(b, ("qa", "remove_box")))
        here = b.get(f"/v1/inspections/{iid}").json()
        assert here["reviews"][-1]["boxes"] == after_box[1:] == r.json()["reviews"][-1]["boxes"]
        assert here["reviews"][-1]["origin"] == "hub"
