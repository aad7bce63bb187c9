"""Boxes sharing one database (a SQLite file two servers open), seen from box a: a row of
box b's it shows names box b (the dashboard's CSV, the reviews' audit trail, the review
page's cards), and its image is box b's to serve. A box with a database of its own shows
what it did."""

from __future__ import annotations

import csv
import io
import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROLE_KEYS, Running, keyed, numbered, start_server

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "deeppcb-sample" / "images"
IMAGE = next(SAMPLE.rglob("*_test.jpg")).read_bytes()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


_FRAMES = itertools.count()  # each frame a file of its own


def _fails(srv: Running, n: int) -> list[str]:
    """``n`` fails from cam1 (a recipe that fails the sample's defects)."""
    with srv.client("admin") as admin:
        r = admin.put("/v1/recipes/strict", json={"name": "strict", "model": "deeppcb",
                                                  "default_min_score": 0.05})
        assert r.status_code == 200, r.text
    ids = []
    with srv.client("line") as c:
        for _ in range(n):  # (each its own file: a pull takes byte-identical frames once)
            r = c.post("/v1/inspect", content=numbered(IMAGE, next(_FRAMES)),
                       headers={"content-type": "image/jpeg"},
                       params={"recipe": "strict", "camera_id": "cam1"})
            assert r.json()["verdict"] == "fail", r.text
            ids.append(r.json()["id"])
    srv.app.state.store.flush()
    return ids


@pytest.fixture(scope="module")
def boxes() -> Iterator[dict[str, Any]]:
    """Box a (one fail) and box b (two) on one SQLite file, and a box with its own
    database (one fail); box a's reviewer confirmed its own fail and one of box b's (a
    review of another box's inspection is allowed: docs/fleet/views.md), box b's reviewer
    (the same name) box b's other fail."""
    folder = Path(tempfile.mkdtemp(prefix="lineside-shared-"))
    db = f"sqlite:///{folder / 'shared.db'}"
    started = [start_server(keyed(database_url=db, box_id=f"box-{x}", store_pass_rate=1.0))
               for x in "ab"] + [start_server(keyed(store_pass_rate=1.0))]
    (a, _), (b, _), (own, _) = started
    try:
        on_a, on_b, on_own = _fails(a, 1), _fails(b, 2), _fails(own, 1)
        with a.client("reviewer") as c:
            for iid in (on_a[0], on_b[0]):
                r = c.post(f"/v1/inspections/{iid}/reviews", json={"action": "confirm"})
                assert r.status_code == 200, r.text
        with b.client("reviewer") as c:
            r = c.post(f"/v1/inspections/{on_b[1]}/reviews", json={"action": "confirm"})
            assert r.status_code == 200, r.text
        yield {"a": a, "b": b, "own": own, "on_a": on_a, "on_b": on_b, "on_own": on_own}
    finally:
        for _, stop in started:
            stop()
        shutil.rmtree(folder, ignore_errors=True)


def _csv(srv: Running, table: str) -> list[list[str]]:
    with srv.client("viewer") as c:
        r = c.get("/v1/stats.csv", params={"table": table})
    assert r.status_code == 200, r.text
    return list(csv.reader(io.StringIO(r.text)))


def test_a_shared_databases_csv_names_each_box(boxes: dict[str, Any]) -> None:
    """Box a's stations CSV had one row per camera and recipe with no box: box a's cam1 and
    box b's cam1 read as one camera twice, and the file as box a's alone. Its figures are
    its own now (session 39), and its files say so: the box in each row and scope."""
    head, *rows = _csv(boxes["a"], "stations")
    assert head[:3] == ["box_id", "camera_id", "recipe"]
    assert sorted((r[0], r[1], r[head.index("inspections")]) for r in rows) == [
        ("box-a", "cam1", "1")]
    head, *rows = _csv(boxes["a"], "hourly")
    assert head[2:5] == ["site", "line", "box_id"]
    assert {r[4] for r in rows} == {"box-a"}
    # a box with its own database: its files as they were
    assert _csv(boxes["own"], "stations")[0][:2] == ["camera_id", "recipe"]
    assert _csv(boxes["own"], "hourly")[0][:3] == ["start_utc", "end_utc", "camera_id"]


def test_the_reviews_audit_trail_names_each_inspections_box(boxes: dict[str, Any]) -> None:
    """GET /v1/reviews (the review page's audit trail) lists every box's reviews on a shared
    database: each said its camera, not whose (cam1 of box a and of box b alike)."""
    with boxes["a"].client("reviewer") as c:
        items = c.get("/v1/reviews").json()["items"]
    assert sorted((i["inspection_id"], i["box_id"]) for i in items) == sorted(
        [(boxes["on_a"][0], "box-a"), (boxes["on_b"][0], "box-b"), (boxes["on_b"][1], "box-b")])


def test_a_shared_boxs_reviewer_tally_counts_the_reviews_made_on_it(
        boxes: dict[str, Any]) -> None:
    """"Reviews this shift" (GET /v1/reviewers) on box a and on box b each said reviewer 3:
    their reviewers of one name were one, since a review did not record its box. A review
    records it now: box a's made 2 (one of them of box b's part), box b's 1."""
    for x, made in (("a", 2), ("b", 1)):
        with boxes[x].client("reviewer") as c:
            got = c.get("/v1/reviewers").json()["reviewers"]
        assert [(r["reviewer"], r["box_id"], r["reviews"]) for r in got] == [
            ("reviewer", f"box-{x}", made)]
    with boxes["own"].client("reviewer") as c:  # a box of its own: every review is its own
        assert c.get("/v1/reviewers").json()["reviewers"] == []


def test_a_shared_boxs_dashboard_and_status_totals_are_its_own(boxes: dict[str, Any]) -> None:
    """Box a's dashboard yield and status page totals counted box b's inspections too (3),
    beside its own station cards (1). Every figure of its dashboard is its own now; asked
    for by box_id, box b's."""
    for x, made in (("a", 1), ("b", 2)):
        with boxes[x].client("viewer") as c:
            doc = c.get("/v1/stats").json()
            seen = c.get("/v1/overview").json()
            theirs = c.get("/v1/stats", params={"box_id": "box-b"}).json()
        assert sum(h["inspections"] for h in doc["hourly"]) == made
        assert doc["shifts"][-1]["inspections"] == made
        assert {s["box_id"] for s in doc["stations"]} == {f"box-{x}"}
        assert [(r["reviewer"], r["box_id"]) for r in doc["reviewers"]] == [
            ("reviewer", f"box-{x}")]
        assert seen["shift"]["inspections"] == seen["day"]["inspections"] == made
        assert sum(h["inspections"] for h in theirs["hourly"]) == 2


def test_one_malformed_stored_row_does_not_break_the_list(
        boxes: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """A row whose stored timings lack fields (a hand-edited row, a damaged database) made
    GET /v1/inspections a 500 for every page holding it. It is left out, logged."""
    from sqlalchemy import delete, update

    from lineside_inspect.store.models import InspectionRow

    own = boxes["own"]
    store = own.app.state.store
    bad = boxes["on_own"][0]
    was = store.get(bad).timings_ms
    with own.client("line") as c:  # a sound row beside it
        r = c.post("/v1/inspect", content=IMAGE, headers={"content-type": "image/jpeg"},
                   params={"recipe": "strict", "camera_id": "cam1"})
        good = r.json()["id"]
    store.flush()
    with store.engine.begin() as db:
        db.execute(update(InspectionRow).where(InspectionRow.id == bad)
                   .values(timings_ms={"total": 1.0}))
    try:
        with own.client("reviewer") as c, caplog.at_level("WARNING", "lineside.store"):
            r = c.get("/v1/inspections")
        assert r.status_code == 200, r.text
        assert [i["id"] for i in r.json()["items"]] == [good]
        assert any(bad in m and "timings_ms.decode" in m for m in caplog.messages)
    finally:
        with store.engine.begin() as db:
            db.execute(update(InspectionRow).where(InspectionRow.id == bad)
                       .values(timings_ms=was))
            db.execute(delete(InspectionRow).where(InspectionRow.id == good))


def test_a_stored_row_that_does_not_read_is_a_422_naming_it_not_a_500(
        boxes: dict[str, Any]) -> None:
    """A row with text that is not JSON in a JSON column, or not a time in created_at (a
    hand-edited row, one another writer left: SQLite keeps any text) was a 500 for its own
    page, its annotated image and a review of it, and for every list page holding it
    (the JSON was decoded for the whole page at once). Its record is now a 422 naming the
    column, its image is still served, a review saves nothing, and the list leaves it out."""
    from sqlalchemy import delete, text

    from lineside_inspect.store.models import InspectionRow

    own = boxes["own"]
    store = own.app.state.store
    bad_json, bad_time = _fails(own, 2)
    with store.engine.begin() as db:
        db.execute(text("UPDATE inspections SET defects = '[{not json' WHERE id = :i"),
                   {"i": bad_json})
        db.execute(text("UPDATE inspections SET created_at = 'yesterday' WHERE id = :i"),
                   {"i": bad_time})
    try:
        with own.client("reviewer") as c:
            for iid, column, what in ((bad_json, "defects", "JSON"),
                                      (bad_time, "created_at", "an ISO time")):
                r = c.get(f"/v1/inspections/{iid}")
                assert r.status_code == 422, r.text
                err = r.json()["error"]
                assert err["code"] == "unreadable_inspection"
                assert iid in err["message"] and f"{column}: " in err["message"]
                assert f"is not {what}" in err["message"]
                assert c.get(f"/v1/inspections/{iid}/annotated").status_code == 422
                r = c.post(f"/v1/inspections/{iid}/reviews", json={"action": "confirm"})
                assert (r.status_code, r.json()["error"]["code"]) == (422, "unreadable_inspection")
            r = c.get(f"/v1/inspections/{bad_json}/image")  # the parts it can read
            # (the sample as sent, numbered by _fails' comment segment)
            assert r.status_code == 200 and r.content.endswith(IMAGE[2:]) \
                and r.content.startswith(b"\xff\xd8\xff\xfe")
            r = c.get("/v1/inspections", params={"limit": 500})
            assert r.status_code == 200, r.text
            listed = {i["id"] for i in r.json()["items"]}
            assert not listed & {bad_json, bad_time} and set(boxes["on_own"]) <= listed
        assert not store.get(bad_json).reviews and not store.get(bad_time).reviews
    finally:
        with store.engine.begin() as db:
            db.execute(delete(InspectionRow).where(InspectionRow.id.in_([bad_json, bad_time])))


def test_reviews_that_do_not_read_leave_the_dashboard_log_and_list_standing(
        boxes: dict[str, Any]) -> None:
    """A review whose boxes are not JSON made the dashboard (GET /v1/stats) a 500 (SQLite's
    json_array_length), one whose time is not one the reviews' audit trail (GET
    /v1/reviews). Each counts as nothing now; the log and the list leave them out, and say
    how many (left_out), so total still matches the pages a client steps through."""
    from sqlalchemy import delete, text

    from lineside_inspect.store.models import InspectionRow

    own = boxes["own"]
    store = own.app.state.store
    not_json, timeless = _fails(own, 2)
    try:
        with own.client("reviewer") as c:
            for iid in (not_json, timeless):
                r = c.post(f"/v1/inspections/{iid}/reviews", json={"action": "false_reject"})
                assert r.status_code == 200, r.text
            before = c.get("/v1/stats").json()
            with store.engine.begin() as db:
                db.execute(text("UPDATE reviews SET boxes = '[{not json' "
                                "WHERE inspection_id = :i"), {"i": not_json})
                db.execute(text("UPDATE reviews SET created_at = '2026-02-30 10:00:00' "
                                "WHERE inspection_id = :i"), {"i": timeless})
            r = c.get("/v1/stats")
            assert r.status_code == 200, r.text
            # the review that does not read is no false reject; the other still is
            assert r.json()["false_rejects_confirmed"] == before["false_rejects_confirmed"] - 1
            r = c.get("/v1/reviews", params={"limit": 500})
            assert r.status_code == 200, r.text
            log = r.json()
            # (defects_after of boxes that are not JSON was the length of their text)
            assert not {not_json, timeless} & {i["inspection_id"] for i in log["items"]}
            assert log["left_out"] == 2 and len(log["items"]) + 2 == log["total"]
            r = c.get("/v1/inspections", params={"limit": 500})
            page = r.json()
            assert r.status_code == 200 and page["left_out"] == 2
            assert len(page["items"]) + page["left_out"] == page["total"]
            r = c.get("/v1/inspections", params={"limit": 500, "verdict": "pass"})
            assert "left_out" not in r.json()  # (none: the page as a release before sent it)
    finally:
        with store.engine.begin() as db:
            db.execute(delete(InspectionRow).where(InspectionRow.id.in_([not_json, timeless])))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                    "(make test installs it)")
def test_the_review_page_names_each_cards_box(boxes: dict[str, Any]) -> None:
    """Box a's review page listed box b's fails as its own: no box on the card, and
    "(no image kept)" where box b keeps it. Each card, the part opened and the audit trail
    name the box; a box with its own database shows none."""
    from playwright.sync_api import expect, sync_playwright

    a, on_b = boxes["a"], boxes["on_b"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(a.url + "/review")
            page.fill("#key", "reviewer-secret")
            page.click("button[type=submit]")
            page.select_option("select[name=review_state]", "")  # reviewed ones too
            page.click("#filters button[type=submit]")
            cards = page.locator(".card")
            expect(cards).to_have_count(3)
            theirs = page.locator(f'.card[data-id="{on_b[1]}"]')
            expect(theirs.locator(".where")).to_contain_text("box-b · cam1")
            expect(theirs).to_contain_text("(its image is kept on box box-b)")
            mine = page.locator(f'.card[data-id="{boxes["on_a"][0]}"]')
            expect(mine.locator(".where")).to_contain_text("box-a · cam1")
            expect(mine.locator("img")).to_have_count(1)
            theirs.click()
            expect(page.locator("#d-meta")).to_contain_text("box box-b")
            expect(page.locator("#d-status")).to_have_text(
                "its image is kept on box box-b, not on this one")
            page.keyboard.press("Escape")
            page.click("#tab-audit")
            expect(page.locator("#audit-table thead")).to_contain_text("box")
            expect(page.locator("#audit-table tbody")).to_contain_text("box-b")

            page.goto(boxes["own"].url + "/review")  # a box of its own: as it was
            page.fill("#key", "reviewer-secret")
            page.click("button[type=submit]")
            expect(page.locator(".card")).to_have_count(1)
            own_box = boxes["own"].app.state.store.box_id
            expect(page.locator(".card .where")).not_to_contain_text(own_box)
        finally:
            browser.close()


def test_a_pull_goes_on_past_a_page_of_rows_that_do_not_read(
        boxes: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page of the list whose rows all fail to read (left_out, no items) was taken by
    `data pull` as the list's end: every older row was never pulled, and the pull said
    nothing. It passes over them by offset and goes on, naming how many it left out."""
    from datetime import UTC, datetime

    from sqlalchemy import delete, text

    from lineside_inspect.store import pull
    from lineside_inspect.store.models import InspectionRow

    own = boxes["own"]
    store = own.app.state.store
    since = datetime.now(UTC)  # (the fixture's own rows are older)
    ids = _fails(own, 5)  # newest first in the list: ids[4], ids[3] | ids[2], ids[1] | ids[0]
    with store.engine.begin() as db:
        for iid in ids[1:3]:  # the whole second page of two
            db.execute(text("UPDATE inspections SET defects = '[{not json' WHERE id = :i"),
                       {"i": iid})
    monkeypatch.setattr(pull, "PAGE", 2)
    try:
        ds = pull.pull_from_server(own.url, tmp_path / "pulled", key=ROLE_KEYS["reviewer"],
                                   since=since, reviewed=False)
        pulled = {r.file_name.split("/")[-1][:32] for r in ds.images}
        assert pulled == {ids[0], ids[3], ids[4]}
    finally:
        with store.engine.begin() as db:
            db.execute(delete(InspectionRow).where(InspectionRow.id.in_(ids)))
