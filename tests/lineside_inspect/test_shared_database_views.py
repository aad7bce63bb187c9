"""Boxes sharing one database (a SQLite file two servers open), seen from box a: a row of
box b's it shows names box b (the dashboard's CSV, the reviews' audit trail, the review
page's cards), and its image is box b's to serve. A box with a database of its own shows
what it did."""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Running, keyed, start_server

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "deeppcb-sample" / "images"
IMAGE = next(SAMPLE.rglob("*_test.jpg")).read_bytes()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _fails(srv: Running, n: int) -> list[str]:
    """``n`` fails from cam1 (a recipe that fails the sample's defects)."""
    with srv.client("admin") as admin:
        r = admin.put("/v1/recipes/strict", json={"name": "strict", "model": "deeppcb",
                                                  "default_min_score": 0.05})
        assert r.status_code == 200, r.text
    ids = []
    with srv.client("line") as c:
        for _ in range(n):
            r = c.post("/v1/inspect", content=IMAGE, headers={"content-type": "image/jpeg"},
                       params={"recipe": "strict", "camera_id": "cam1"})
            assert r.json()["verdict"] == "fail", r.text
            ids.append(r.json()["id"])
    srv.app.state.store.flush()
    return ids


@pytest.fixture(scope="module")
def boxes() -> Iterator[dict[str, Any]]:
    """Box a (one fail) and box b (two) on one SQLite file, and a box with its own
    database (one fail); box a's reviewer confirmed its own fail and one of box b's (a
    review of another box's inspection is allowed: docs/fleet/views.md)."""
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
    box b's cam1 read as one camera twice, and the file as box a's alone (its dashboard
    names the boxes). Its hourly file now says it covers every box."""
    head, *rows = _csv(boxes["a"], "stations")
    assert head[:3] == ["box_id", "camera_id", "recipe"]
    assert sorted((r[0], r[1], r[head.index("inspections")]) for r in rows) == [
        ("box-a", "cam1", "1"), ("box-b", "cam1", "2")]
    head, *rows = _csv(boxes["a"], "hourly")
    assert head[2:5] == ["site", "line", "box_id"]
    assert {r[4] for r in rows} == {"(all)"}
    # a box with its own database: its files as they were
    assert _csv(boxes["own"], "stations")[0][:2] == ["camera_id", "recipe"]
    assert _csv(boxes["own"], "hourly")[0][:3] == ["start_utc", "end_utc", "camera_id"]


def test_the_reviews_audit_trail_names_each_inspections_box(boxes: dict[str, Any]) -> None:
    """GET /v1/reviews (the review page's audit trail) lists every box's reviews on a shared
    database: each said its camera, not whose (cam1 of box a and of box b alike)."""
    with boxes["a"].client("reviewer") as c:
        items = c.get("/v1/reviews").json()["items"]
    assert sorted((i["inspection_id"], i["box_id"]) for i in items) == sorted(
        [(boxes["on_a"][0], "box-a"), (boxes["on_b"][0], "box-b")])


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
