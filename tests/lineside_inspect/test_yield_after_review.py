"""Yield after review (session 56): a line lead reads the machine's first pass beside the
yield after review (a false reject overturned is a pass, a drawn missed defect a fail, by
store.models.reviewed_verdict's rule), with the fails no review has judged yet, per hour,
shift, station, model version and on the status page; on SQLite and PostgreSQL, through
/v1/stats, its CSV and /v1/overview, and through retention (which keeps each removed
inspection's verdict after review in its history, store/history.py)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest

from .conftest import shift_begun_an_hour_ago
from .test_figures_agree import _inspect, _set
from .test_ui_screens import CHROMIUM, _context, _sign_in

BOX = {"label": "short", "box": [10, 10, 40, 40]}
# name -> (machine verdict, model version, reviews, verdict after review)
PARTS: dict[str, tuple[str, str, list[dict[str, Any]], str]] = {
    "fr": ("fail", "1", [{"action": "false_reject"}], "pass"),
    "undone": ("fail", "1", [{"action": "false_reject"},
                             {"action": "missed_defect", "boxes": [BOX]}], "fail"),
    "fr_then_confirm": ("fail", "1", [{"action": "false_reject"}, {"action": "confirm"}], "pass"),
    "confirmed": ("fail", "1", [{"action": "confirm"}], "fail"),
    "escape": ("pass", "1", [{"action": "missed_defect", "boxes": [BOX]}], "fail"),
    "escape_undone": ("pass", "2", [{"action": "missed_defect", "boxes": [BOX]},
                                    {"action": "false_reject"}], "pass"),
    "confirmed_pass": ("pass", "2", [{"action": "confirm"}], "pass"),
    "unreviewed_fail": ("fail", "2", [], "fail"),
    "unreviewed_fail_2": ("fail", "2", [], "fail"),
    "unreviewed_pass": ("pass", "2", [], "pass"),
}
KEYS = ("passes", "fails", "inspections", "yield_pct", "passes_after_review",
        "unreviewed_fails", "reviewed_yield_pct")
# 4 of 10 passed the machine; 5 after review (2 overturned, 1 escape); 2 fails unreviewed
LINE = {"passes": 4, "fails": 6, "inspections": 10, "yield_pct": 40.0,
        "passes_after_review": 5, "unreviewed_fails": 2, "reviewed_yield_pct": 50.0}


def _sum(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(int(r[k]) for r in rows) for k in ("passes", "fails", "inspections",
                                                       "passes_after_review", "unreviewed_fails")}


def _whole(fig: dict[str, Any]) -> dict[str, Any]:
    return {k: fig[k] for k in KEYS}


def _held(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The figures of the hours (or shifts) that hold inspections, by their start: the
    window moves with the clock, so the rows' places in the list do not stay put."""
    return {str(r["start"]): _whole(r) for r in rows if r["inspections"]}


def test_yield_after_review_per_hour_shift_station_version_and_status(
        launch: Any, database_url: str | None) -> None:
    srv = launch(store_pass_rate=1.0, database_url=database_url, **shift_begun_an_hour_ago())
    ids = dict(zip(PARTS, _inspect(srv, "cam1", len(PARTS)), strict=True))
    now = datetime.now(UTC)
    _set(srv, {ids[n]: {"verdict": v, "model_version": version,
                        "created_at": now - timedelta(minutes=5)}
               for n, (v, version, _, _) in PARTS.items()})
    with srv.client("reviewer") as c:
        for name, (_, _, steps, _) in PARTS.items():
            for body in steps:
                assert c.post(f"/v1/inspections/{ids[name]}/reviews", json=body).status_code == 200
        doc = c.get("/v1/stats").json()
        hourly_csv = list(csv.DictReader(io.StringIO(
            c.get("/v1/stats.csv", params={"table": "hourly"}).text)))
        versions_csv = list(csv.DictReader(io.StringIO(
            c.get("/v1/stats.csv", params={"table": "versions"}).text)))
        overview = c.get("/v1/overview").json()
    after = sum(p[3] == "pass" for p in PARTS.values())
    assert after == LINE["passes_after_review"]  # (the table above agrees with itself)
    expected = {k: v for k, v in LINE.items() if not k.endswith("_pct")}
    assert _sum(doc["hourly"]) == _sum(doc["shifts"]) == _sum(hourly_csv) == expected
    [station] = doc["stations"]
    assert _whole(station) == LINE
    shift = [s for s in doc["shifts"] if s["inspections"]]
    assert len(shift) == 1 and _whole(shift[0]) == LINE
    # the status page: the box's shift and day, and cam1's card
    assert _whole(overview["shift"]) == _whole(overview["day"]) == LINE
    # (no camera configured: cards only for configured cameras; the box figure holds them)
    # per model version: version 1 judged 5 (1 passed; 2 after review), version 2 judged 5
    by_version = {v["version"]: v for v in doc["versions"]}
    assert set(by_version) == {"1", "2"}
    assert _whole(by_version["1"]) == {
        "passes": 1, "fails": 4, "inspections": 5, "yield_pct": 20.0,
        "passes_after_review": 2, "unreviewed_fails": 0, "reviewed_yield_pct": 40.0}
    assert _whole(by_version["2"]) == {
        "passes": 3, "fails": 2, "inspections": 5, "yield_pct": 60.0,
        "passes_after_review": 3, "unreviewed_fails": 2, "reviewed_yield_pct": 60.0}
    assert by_version["1"]["first"] is not None and by_version["1"]["recipe"] == station["recipe"]
    assert {r["version"]: int(r["passes_after_review"]) for r in versions_csv} == {"1": 2, "2": 3}
    # retention keeps each removed inspection's verdict after review beside its machine
    # verdict: the figures stay (they dropped to the first pass, every fail unreviewed);
    # no version is known of them. The quota first (reviewed fails go before unreviewed
    # ones), then the age limit
    _set(srv, {i: {"created_at": now - timedelta(hours=3)} for i in ids.values()})
    with srv.client("viewer") as c:
        before = c.get("/v1/stats").json()
    store = srv.app.state.store
    store.checkpoint()
    image = max(r.image_bytes for r in store.query(limit=len(PARTS))[1])
    store.max_bytes = store.used_bytes() - 6 * image  # the 4 passes and 2+ reviewed fails
    removed = store.enforce_retention()
    assert 6 <= removed < len(PARTS)
    assert store.query(verdict="fail", review_state="unreviewed", limit=1)[0] == 2
    store.max_bytes, store.max_age_days = None, 1 / 24
    assert removed + store.enforce_retention() == len(PARTS)
    with srv.client("viewer") as c:
        gone = c.get("/v1/stats").json()
    assert _sum(gone["hourly"]) == _sum(gone["shifts"]) == expected
    [station] = gone["stations"]
    assert _whole(station) == LINE
    for figure in ("hourly", "shifts"):  # (by start: an hour may turn between the reads)
        assert _held(gone[figure]) == _held(before[figure])
    assert gone["versions"] == []


HOSTILE = '<img src=x onerror="document.title=\'owned\'">v9'  # a version as a page shows it


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_pages_show_the_yield_after_review_and_the_unreviewed_fails(
        launch: Any, browser: Any) -> None:
    """The dashboard's KPIs, hour and station tables and its per-version table, and the
    status page's shift figure, each say the yield after review and the fails not
    reviewed, in real Chromium; a stored version and a recipe asked in the link reach the
    page as text."""
    from playwright.sync_api import expect

    srv = launch(store_pass_rate=1.0, **shift_begun_an_hour_ago())
    ids = _inspect(srv, "cam1", 3)
    now = datetime.now(UTC)
    _set(srv, {i: {"verdict": v, "model_version": HOSTILE, "created_at": now - timedelta(minutes=5)}
               for i, v in zip(ids, ("fail", "fail", "pass"), strict=True)})
    with srv.client("reviewer") as c:
        assert c.post(f"/v1/inspections/{ids[0]}/reviews",
                      json={"action": "false_reject"}).status_code == 200
    said = "after review 66.7% · 1 fail not reviewed"  # 1 of 3 first pass, 2 after review
    page = _context(browser).new_page()
    _sign_in(page, srv.url + "/dashboard")
    expect(page.locator("#k-shift-detail")).to_contain_text(said)
    expect(page.locator("#k-yield-detail")).to_contain_text(said)
    expect(page.locator("#k-shift")).to_have_text("33.3%")
    station = page.locator("#stations tbody tr").first
    expect(station.locator("td").nth(-2)).to_have_text("66.7%")
    expect(station.locator("td").nth(-1)).to_have_text("1")
    version = page.locator("#versions tbody tr")
    expect(version).to_have_count(1)
    expect(version.locator("td").nth(2)).to_have_text(HOSTILE)
    assert page.locator("#versions img").count() == 0 and page.title() != "owned"
    hours = page.locator("#trend-table tbody tr", has_text="66.7%")
    expect(hours).to_have_count(1)
    # a recipe asked in the link that no inspection has: said as text, no figure of it
    asked = "<b>r</b>"
    page.goto(srv.url + "/dashboard?recipe=" + quote(asked))
    expect(page.locator("#whose")).to_contain_text(f"recipe {asked}")
    expect(page.locator("#versions tbody tr")).to_have_count(0)
    assert page.locator("#whose b").count() == 0
    page.goto(srv.url + "/")
    expect(page.locator('#yield-shift [data-field="detail"]')).to_contain_text(said)
    expect(page.locator('#yield-shift [data-field="pct"]')).to_have_text("33.3%")


def test_a_row_of_neither_verdict_is_in_no_count(launch: Any) -> None:
    """A row whose verdict is neither pass nor fail (hand-edited, written by another tool)
    is in neither ``passes`` nor ``fails``: a review of it made it a pass after review, and
    the yield after review passed 100 % (review, session 56)."""
    srv = launch(store_pass_rate=1.0)
    [odd, kept] = _inspect(srv, "cam1", 2)
    _set(srv, {odd: {"verdict": "fail"}, kept: {"verdict": "pass"}})
    with srv.client("reviewer") as c:
        assert c.post(f"/v1/inspections/{odd}/reviews",
                      json={"action": "false_reject"}).status_code == 200
        _set(srv, {odd: {"verdict": "maybe"}})  # edited after its review
        [station] = c.get("/v1/stats").json()["stations"]
    assert _whole(station) == {"passes": 1, "fails": 0, "inspections": 1, "yield_pct": 100.0,
                               "passes_after_review": 1, "unreviewed_fails": 0,
                               "reviewed_yield_pct": 100.0}


@pytest.mark.parametrize("fleet", [None, {"site": "plant-a", "line": None, "box_id": "box1"}])
def test_the_versions_csv_names_each_column_once(fleet: dict[str, str | None] | None) -> None:
    """The per-version CSV's rows name their recipe (and on a hub their box): its header
    named ``recipe`` (and ``box_id``) twice, once for the row and once for the scope, and
    a script keying columns by name (``csv.DictReader``) read ``(all)`` as every row's
    recipe (new user walk, session 56)."""
    from lineside_inspect.server.routes.page_data import csv_rows
    row = {"box_id": "box1", "model": "deeppcb", "recipe": "deeppcb", "version": "2",
           "first": None, "last": None, "passes": 6, "fails": 12, "inspections": 18,
           "yield_pct": 33.33, "passes_after_review": 6, "unreviewed_fails": 4,
           "reviewed_yield_pct": 33.33}
    doc = {"camera_id": None, "recipe": None, "versions": [row]}
    head, *rows = csv_rows(doc, "versions", fleet)
    assert len(head) == len(set(head)), head
    [read] = [dict(zip(head, r, strict=True)) for r in rows]
    assert read["recipe"] == "deeppcb" and read["camera_id"] == "(all)"
    assert read["version"] == "2" and read["reviewed_yield_pct"] == 33.33
    if fleet is not None:
        assert read["box_id"] == "box1" and read["site"] == "plant-a"


def test_a_removed_row_of_neither_verdict_is_in_no_count(launch: Any) -> None:
    """Retention removes a row whose verdict is neither pass nor fail (hand-edited): its
    history slot is in no count, as the kept row was. It raised a KeyError in every yield
    figure, and /v1/stats and the status page were a 500 (review, session 56)."""
    srv = launch(store_pass_rate=1.0)
    [odd, kept] = _inspect(srv, "cam1", 2)
    old = datetime.now(UTC) - timedelta(hours=3)
    _set(srv, {odd: {"verdict": "maybe", "created_at": old},
               kept: {"verdict": "fail", "created_at": old}})
    with srv.client("reviewer") as c:
        assert c.post(f"/v1/inspections/{kept}/reviews",
                      json={"action": "false_reject"}).status_code == 200
    store = srv.app.state.store
    store.max_age_days = 1 / 24
    assert store.enforce_retention() == 2
    with srv.client("viewer") as c:
        r = c.get("/v1/stats")
        assert r.status_code == 200, r.text
        assert c.get("/v1/overview").status_code == 200
    [station] = r.json()["stations"]
    assert _whole(station) == {"passes": 0, "fails": 1, "inspections": 1, "yield_pct": 0.0,
                               "passes_after_review": 1, "unreviewed_fails": 0,
                               "reviewed_yield_pct": 100.0}
