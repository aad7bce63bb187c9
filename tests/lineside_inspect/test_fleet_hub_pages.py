"""The hub's dashboard and review page over several boxes (a dev hub: SQLite, images in a
real SeaweedFS, under uvicorn on loopback): a camera and a model version are a box's, the
files a quality engineer downloads say which boxes they cover, and a queue stays within
the box chosen (headless Chromium)."""

from __future__ import annotations

import csv
import io
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy.orm import Session

from lineside_inspect.fleet.hub.bench_reviews import synthetic_rows

from .test_fleet_sync import KEYS, ServedHub, hub_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, weed: Any) -> Iterator[ServedHub]:
    tmp = tmp_path_factory.mktemp("hub-pages")
    with ServedHub(hub_settings(tmp, weed.settings("fleet-hub-pages"))) as served:
        yield served


def _client(hub: ServedHub, key: str = "qa") -> httpx.Client:
    return httpx.Client(base_url=hub.url, timeout=30,
                        headers={"authorization": f"Bearer {KEYS[key]}"})


def _seed(hub: ServedHub, box: str, n: int, version: str, start: datetime, **kw: Any) -> list[str]:
    """``n`` of ``box``'s inspections on cam1 at ``start``, ``start`` - 10 s, ... (as if
    forwarded), judged by deeppcb ``version``; their ids, newest first."""
    kw.setdefault("seed", int(box.removeprefix("box")))
    rows = synthetic_rows(n, box_id=box, site="plant-a", line=f"line-{box}", now=start, **kw)
    for r in rows:
        r.camera_id, r.model_version = "cam1", version
    ids = [r.id for r in rows]
    with Session(hub.app.state.store.engine) as s, s.begin():
        s.add_all(rows)
    return ids


def _csv(c: httpx.Client, **params: Any) -> tuple[str, list[list[str]]]:
    r = c.get("/v1/stats.csv", params=params)
    assert r.status_code == 200, r.text
    name = re.search(r'filename="([^"]+)"', r.headers["content-disposition"])
    assert name is not None
    return name.group(1), list(csv.reader(io.StringIO(r.text)))


def _sign_in(page: Any, url: str) -> None:
    """Open ``url`` in ``page`` and sign in as the QA reviewer."""
    page.goto(url)
    page.fill("#key", KEYS["qa"])
    page.keyboard.press("Enter")


def _report(c: httpx.Client, box: str) -> None:
    """``box``'s status report at plant-a (the hub's pages list the boxes that reported)."""
    r = c.post(f"/fleet/v1/boxes/{box}/status", headers={"authorization": f"Bearer {KEYS[box]}"},
               json={"site": "plant-a", "version": "1", "models": [], "ready": True,
                     "forward_backlog": 0})
    assert r.status_code == 200, r.text


def test_a_rollout_is_one_change_per_box_and_a_camera_is_a_boxs(hub: ServedHub) -> None:
    """Two boxes mid-rollout, box1 on deeppcb 1 and box2 on 2, inspecting in turn: the
    hub's dashboard listed 1 -> 2 -> 1 -> 2 ... at every turn (one "model change" per
    inspection, the chart's markers a solid band), and their cam1s as one camera at the
    average of both. Each box's version is in use from the window's start, each camera
    is its box's, and the CSVs say which box each row is and which boxes the file
    covers."""
    start = NOW - timedelta(hours=2)
    _seed(hub, "box1", 20, "1", start, fail_every=1)
    _seed(hub, "box2", 20, "2", start + timedelta(seconds=5), fail_every=10**6)
    with _client(hub) as c:
        doc = c.get("/v1/stats", params={"hours": 8}).json()
        assert [(m["previous"], m["version"]) for m in doc["model_changes"]] == \
            [(None, "1"), (None, "2")]
        assert [(m["box_id"], m["previous"], m["version"]) for m in doc["model_changes"]] == \
            [("box1", None, "1"), ("box2", None, "2")]
        assert not doc["model_changes_cut"]
        assert [(st["box_id"], st["camera_id"], st["passes"], st["fails"])
                for st in doc["stations"]] == [("box1", "cam1", 0, 20), ("box2", "cam1", 20, 0)]
        name, rows = _csv(c, table="stations", hours=8)
        assert name == "lineside-stations-8h.csv"
        assert rows[0][:3] == ["box_id", "camera_id", "recipe"]
        assert [r[:3] for r in rows[1:]] == [["box1", "cam1", "deeppcb"], ["box2", "cam1", "deeppcb"]]
        name, rows = _csv(c, table="model_changes", hours=8)
        assert [r[1:5] for r in rows] == [["box_id", "model", "recipe", "version"],
                                          ["box1", "deeppcb", "deeppcb", "1"],
                                          ["box2", "deeppcb", "deeppcb", "2"]]
        # one box's yield per hour: the file and its rows name the box (they read "(all)",
        # named as the whole fleet's file)
        name, rows = _csv(c, table="hourly", hours=8, site="plant-a", box_id="box1")
        assert name == "lineside-hourly-8h-site-plant-a-box-box1.csv"
        assert rows[0][:7] == ["start_utc", "end_utc", "site", "line", "box_id", "camera_id",
                               "recipe"]
        assert {tuple(r[2:7]) for r in rows[1:]} == {("plant-a", "(all)", "box1", "(all)", "(all)")}
        assert sum(int(r[8]) for r in rows[1:]) == 20  # fails: box1's only
        # one part across the fleet (each box made SN0000000...): the hub's figures had no
        # part filter (session 48); the same route, over every box's inspections
        doc = c.get("/v1/stats", params={"hours": 8, "part_id": "SN0000003"}).json()
        assert doc["part_id"] == "SN0000003"
        assert [(st["box_id"], st["camera_id"], st["passes"], st["fails"])
                for st in doc["stations"]] == [("box1", "cam1", 0, 1), ("box2", "cam1", 1, 0)]
        name, rows = _csv(c, table="stations", hours=8, part_id="SN0000003", box_id="box2")
        assert [r[:6] for r in rows[1:]] == [["box2", "cam1", "deeppcb", "1", "0", "1"]], rows


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_a_queue_keeps_the_box_chosen(hub: ServedHub) -> None:
    """A reviewer who chose box3 saw the queue "Unreviewed fails" count every box's, and
    pressing it dropped the box: the list showed every plant's fails (and Shift+C would
    confirm them). The queue counts and lists box3's. On the dashboard each camera and
    model version row names its box (two boxes' cam1 were one row)."""
    from playwright.sync_api import expect, sync_playwright

    mine = _seed(hub, "box3", 3, "1", NOW - timedelta(minutes=1), fail_every=1)
    _seed(hub, "box4", 5, "1", NOW, fail_every=1)
    with httpx.Client(base_url=hub.url, timeout=30) as c:
        for box in ("box3", "box4"):  # their reports: the page's box choices
            _report(c, box)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        _sign_in(page, hub.url + "/review")
        expect(page.locator('select[name=box_id] option[value="box3"]')).to_have_count(1)
        page.select_option("select[name=box_id]", "box3")
        page.click("#filters button[type=submit]")
        expect(page.locator("#count")).to_have_text("1–3 of 3")
        queue = page.locator("[data-queue=unreviewed_fails]")
        expect(queue).to_have_text("Unreviewed fails (3)")
        expect(queue).to_have_attribute("aria-pressed", "true")
        queue.click()
        expect(page.locator("select[name=box_id]")).to_have_value("box3")
        expect(page.locator("#count")).to_have_text("1–3 of 3")
        expect(page.locator(".card").first).to_have_attribute("data-id", mine[0])
        # the dashboard's cameras and model versions are each a box's, and say whose
        page.goto(hub.url + "/dashboard")
        page.select_option("select[name=box_id]", "box3")
        row = page.locator("#stations tbody tr").first
        expect(row.locator("td").first).to_have_text("box3")
        expect(page.locator("#stations thead th").first).to_have_text("box")
        expect(page.locator("#models tbody tr").first.locator("td").nth(1)).to_have_text("box3")
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_fleet_page_asks_once_at_a_time_of_a_slow_hub(hub: ServedHub) -> None:
    """The fleet page asked every 5 s whether or not the last answer had come: a hub slow
    to answer got one request more every 5 s on top of those waiting. Now a refresh due
    meanwhile is skipped: the next is the one due after the answer came."""
    from playwright.sync_api import expect, sync_playwright

    held: list[Any] = []
    boxes = re.compile(r".*/fleet/v1/boxes$")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        page.clock.install()
        page.route(boxes, lambda route: held.append(route))  # the hub answers nothing yet
        page.goto(hub.url + "/fleet")
        page.fill("#key", KEYS["qa"])
        with page.expect_request(boxes):
            page.keyboard.press("Enter")
        page.clock.run_for(4 * 5000)  # four refreshes due, the first answer not come
        held[0].continue_()
        expect(page.locator("#updated")).to_contain_text("updated")
        with page.expect_request(boxes):  # the next refresh due
            page.clock.run_for(5000)
        deadline = time.monotonic() + 30  # its route handler runs as Playwright dispatches
        while len(held) < 2:  # events (was 500 x 10 ms: short on a loaded host)
            assert time.monotonic() < deadline, len(held)
            page.wait_for_timeout(10)
        assert len(held) == 2, len(held)  # (4 more were sent while the first waited)
        page.unroute(boxes)
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_a_queue_counts_the_box_chosen_in_a_browser_without_urlsearchparams_size(
        hub: ServedHub) -> None:
    """URLSearchParams.size is new (Chrome 113, Safari 17): a tablet's Safari 16 has none,
    and there the queue counted the whole fleet's fails again, the box chosen (here kept
    from before a reload) left out of its count."""
    from playwright.sync_api import expect, sync_playwright

    _seed(hub, "box5", 2, "1", NOW - timedelta(minutes=2), fail_every=1)
    _seed(hub, "box6", 7, "1", NOW - timedelta(minutes=2), fail_every=1)
    with httpx.Client(base_url=hub.url, timeout=30) as c:
        _report(c, "box5")  # a box the fleet lists (one it does not is left out, said)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        page.add_init_script("delete URLSearchParams.prototype.size;"  # an older browser's
                             "sessionStorage.setItem('lineside.review', 'box_id=box5&offset=0')")
        _sign_in(page, hub.url + "/review")
        expect(page.locator("select[name=box_id]")).to_have_value("box5")
        assert page.evaluate("new URLSearchParams('a=1').size") is None
        expect(page.locator("#count")).to_have_text("1–2 of 2")
        expect(page.locator("[data-queue=unreviewed_fails]")).to_have_text("Unreviewed fails (2)")
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_fleet_page_tells_a_screen_reader_only_what_changed(hub: ServedHub) -> None:
    """The fleet page wrote "updated 14:02:05" and the box count into its live regions at
    every refresh: a screen reader read them out every 5 s, nothing having changed
    (accessibility pass, session 37)."""
    from playwright.sync_api import expect, sync_playwright

    boxes = re.compile(r".*/fleet/v1/boxes$")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        page.clock.install()
        _sign_in(page, hub.url + "/fleet")
        expect(page.locator("#updated")).to_contain_text("updated")
        expect(page.locator("#summary")).to_contain_text("box(es)")
        first = page.locator("#updated").inner_text()
        page.evaluate("""() => { window.spoken = [];
          for (const live of document.querySelectorAll('[role=status], [role=alert], [aria-live]'))
            new MutationObserver(() => window.spoken.push(live.id)).observe(live,
              { childList: true, characterData: true, subtree: true }); }""")
        for _ in range(3):  # three refreshes, the fleet unchanged
            with page.expect_response(boxes) as answer:
                page.clock.run_for(5000)
            answer.value.finished()
        expect(page.locator("#updated")).not_to_have_text(first)  # it did refresh
        assert page.evaluate("window.spoken") == []
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_fleet_page_at_320_px_scrolls_its_table_not_the_page(hub: ServedHub) -> None:
    """At 320 CSS px (200% zoom) the fleet's 13 columns made the page 900 px wide, the
    header and filters scrolled away with it. The table scrolls in its own box, which a
    keyboard reaches (and names)."""
    from playwright.sync_api import expect, sync_playwright

    with httpx.Client(base_url=hub.url, timeout=30) as c:
        _report(c, "box1")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 320, "height": 640})
        _sign_in(page, hub.url + "/fleet")
        expect(page.locator("#boxes tbody tr[data-box=box1]")).to_have_count(1)
        wide = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert wide[0] <= wide[1], wide
        region = page.get_by_role("region", name="boxes")
        expect(region).to_have_attribute("tabindex", "0")
        assert region.evaluate("(e) => e.scrollWidth > e.clientWidth")  # the table scrolls there
        browser.close()


def test_the_hubs_review_figures_keep_the_box_chosen(hub: ServedHub) -> None:
    """The hub's all-time review figures (/v1/stats' reviewed_fails,
    false_rejects_confirmed) and "Reviews this shift" (/v1/reviewers) were the whole
    fleet's beside one box's yield, whatever box, line or site was asked for; and a review
    a box sent up was recorded with no box (reviews.box_id)."""
    from sqlalchemy import select

    from lineside_inspect.fleet.protocol import REVIEWS_UP
    from lineside_inspect.store.models import ReviewRow

    five = _seed(hub, "box5", 3, "1", NOW - timedelta(days=3), fail_every=1, seed=405)
    nine = _seed(hub, "box9", 2, "1", NOW - timedelta(days=3), fail_every=1, seed=409)
    with _client(hub) as c:  # on the hub: a false reject of box5's, box9's two confirmed
        for iid, action in ((five[0], "false_reject"), (nine[0], "confirm"), (nine[1], "confirm")):
            r = c.post(f"/v1/inspections/{iid}/reviews", json={"action": action})
            assert r.status_code == 200, r.text
    with _client(hub, "box5") as c:  # made on box5, sent up
        r = c.post(REVIEWS_UP.format(box_id="box5"), json={"items": [{
            "seq": 1, "inspection_id": five[1], "created_at": NOW.isoformat(),
            "reviewer": "op", "action": "confirm", "boxes": [], "origin": "box"}]})
        assert r.status_code == 200 and r.json()["through_seq"] == 1, r.text
    with _client(hub) as c:
        for params, fails, rejects in (({"box_id": "box5"}, 2, 1), ({"box_id": "box9"}, 2, 0),
                                       ({"line": "line-box9"}, 2, 0)):
            doc = c.get("/v1/stats", params=params).json()
            assert (doc["reviewed_fails"], doc["false_rejects_confirmed"]) == (fails, rejects), params
            got = c.get("/v1/reviewers", params=params).json()["reviewers"]
            assert sorted((t["reviewer"], t["box_id"], t["reviews"]) for t in got) == (
                [("op (box5)", "box5", 1), ("qa", "hub", 1)] if params.get("box_id") == "box5"
                else [("qa", "hub", 2)]), params
    with Session(hub.app.state.store.engine) as s:
        made = s.execute(select(ReviewRow.inspection_id, ReviewRow.box_id)
                         .where(ReviewRow.inspection_id.in_(five + nine))).all()
    assert sorted(made) == sorted([(five[0], "hub"), (five[1], "box5"), (nine[0], "hub"),
                                   (nine[1], "hub")])


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_hubs_dashboard_says_a_scope_of_no_inspections_and_keeps_it(hub: ServedHub) -> None:
    """Session 50: the hub's dashboard (dashboard.js, with the fleet's site, line and box)
    as the box's since session 49: a box chosen that holds no inspections in the window
    says so, its yields "–", never "0 of 0 passed" read as a good shift; the scope is kept
    in the tab and restored on a reload, the box's option listed before the fleet's came."""
    from playwright.sync_api import expect, sync_playwright

    _seed(hub, "box7", 2, "1", NOW - timedelta(minutes=3), fail_every=1)  # the fleet's
    with httpx.Client(base_url=hub.url, timeout=30) as c:
        _report(c, "box8")  # a box the fleet lists, none of its inspections forwarded
    said = ("No inspections for box box8 in the last 8 h: the figures below are empty, "
            "not a shift without fails")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        whose, box = page.locator("#whose"), page.locator("select[name=box_id]")
        _sign_in(page, hub.url + "/dashboard?hours=8")
        expect(page.locator("#k-yield-detail")).to_contain_text(" passed · ")  # the fleet's figures
        expect(box.locator('option[value="box8"]')).to_have_count(1)
        box.select_option("box8")
        expect(whose).to_have_text(said)
        for kpi in ("#k-yield", "#k-shift", "#fr-rate", "#escape-rate"):
            expect(page.locator(kpi)).to_have_text("–")
        expect(page.locator("#k-yield-detail")).to_have_text("no inspections in the last 8 h")
        page.reload()
        expect(whose).to_have_text(said)
        expect(box).to_have_value("box8")
        expect(page.locator("select[name=hours]")).to_have_value("8")
        expect(page.locator("#k-yield")).to_have_text("–")
        expect(page.locator("#linknote")).to_have_count(0)
        browser.close()


def _page_asking(p: Any, asked_for: str) -> tuple[Any, Any, list[str]]:
    """A Chromium page, and the URLs of its requests holding ``asked_for`` as they go."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if asked_for in r.url else None)
    return browser, page, asked


GONE = "gone-box"  # a box the fleet does not list (retired; a bidi one is refused by the API: 422)
GONE_SAID = ('box "gone-box": not a box the fleet lists now (retired or renamed?): what the '
             "hub still holds for it is shown")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_hubs_dashboard_says_a_box_the_fleet_no_longer_lists(hub: ServedHub) -> None:
    """Session 50: a link or the kept scope naming a box the fleet no longer lists (a box
    retired) was added to the box select and sent: "No inspections for box X", read as an
    idle box. The page says the fleet does not list it now, and still asks for its figures
    (the hub keeps a retired box's history: no other way reaches it); a listed site is
    not said."""
    from playwright.sync_api import expect, sync_playwright

    with httpx.Client(base_url=hub.url, timeout=30) as c:
        _report(c, "box7")  # (plant-a: a site the fleet lists)
    with sync_playwright() as p:
        browser, page, asked = _page_asking(p, "/v1/stats?")
        box, status = page.locator("select[name=box_id]"), page.locator("#status")
        _sign_in(page, hub.url + "/dashboard?" + urlencode({"box_id": GONE, "site": "plant-a"}))
        expect(page.locator("#linknote")).to_contain_text("This link: " + GONE_SAID + ".")
        expect(status).to_contain_text("updated")
        expect(box).to_have_value(GONE)
        expect(page.locator("select[name=site]")).to_have_value("plant-a")
        expect(page.locator("#linknote")).not_to_contain_text("plant-a")
        # the scope kept in the tab: the same, said as the kept one's
        page.evaluate("sessionStorage.setItem('lineside.dashboard', 'hours=8&box_id=gone&per=hourly')")
        page.reload()
        expect(page.locator("#linknote")).to_contain_text(
            'The scope kept in this tab: box "gone": not a box the fleet lists now (retired or '
            "renamed?): what the hub still holds for it is shown.")
        expect(status).to_contain_text("updated")
        expect(box).to_have_value("gone")
        expect(page.locator("select[name=hours]")).to_have_value("8")
        assert asked and all("box_id=" in u for u in asked), asked
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_hubs_review_page_says_a_box_and_a_queue_it_cannot_show(hub: ServedHub) -> None:
    """Session 50: on the hub's review page a link's or the kept filter's box the fleet no
    longer lists was sent (an empty list, read as an idle box), and ?queue=shadow listed
    nothing under "not one of this page's queues": a hub has no queues but its unreviewed
    fails. Both are said (shadow comparisons are each box's, on its own review page); the
    queue is left out (the hub's unreviewed fails shown), the box kept (its history)."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page, asked = _page_asking(p, "/v1/inspections?")
        note, count = page.locator("#linknote"), page.locator("#count")
        _sign_in(page, hub.url + "/review?" + urlencode({"queue": "shadow", "box_id": GONE}))
        expect(note).to_contain_text(
            'This link: queue "shadow": shadow comparisons are each box\'s, on that box\'s own review '
            "page (the hub has none), left out. " + GONE_SAID + ".")
        expect(count).not_to_be_empty()
        expect(page.locator("#queuenote")).to_be_hidden()
        expect(page.locator("select[name=box_id]")).to_have_value(GONE)
        expect(page.locator("[data-queue=unreviewed_fails]")).to_have_attribute("aria-pressed", "true")
        page.evaluate("sessionStorage.setItem('lineside.review', "
                      "'verdict=fail&review_state=unreviewed&box_id=gone&offset=0')")
        page.reload()
        expect(note).to_contain_text('The filter kept in this tab: box "gone": not a box the fleet '
                                     "lists now (retired or renamed?): what the hub still holds "
                                     "for it is shown.")
        expect(count).not_to_be_empty()
        expect(page.locator("select[name=box_id]")).to_have_value("gone")
        assert asked and not [u for u in asked if "queue=" in u], asked
        assert all("box_id=" in u for u in asked), asked
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_hubs_pages_show_their_list_while_the_fleet_list_is_slow(hub: ServedHub) -> None:
    """Attack pass, session 50: the hub's review page and dashboard awaited the fleet's
    list (GET /fleet/v1/boxes, for a box it no longer lists) before asking for anything
    else: a hub slow to list its boxes (or never answering) left both pages empty, no list,
    no figures and no word why; they used to load in parallel. The list and the figures
    come with the fleet's list held, and the note about the box once it comes."""
    from playwright.sync_api import expect, sync_playwright

    held: list[Any] = []
    boxes = re.compile(r".*/fleet/v1/boxes$")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        page.route(boxes, lambda route: held.append(route))  # the hub answers nothing yet
        _sign_in(page, hub.url + "/review?" + urlencode({"box_id": GONE}))
        expect(page.locator("#count")).not_to_be_empty()  # (the list, the fleet's still held)
        assert held  # (it was asked for)
        expect(page.locator("#linknote")).to_have_count(0)
        for route in held:
            route.continue_()
        held.clear()
        expect(page.locator("#linknote")).to_contain_text("This link: " + GONE_SAID + ".")
        expect(page.locator("select[name=box_id]")).to_have_value(GONE)
        page.goto(hub.url + "/dashboard?" + urlencode({"box_id": GONE}))
        expect(page.locator("#status")).to_contain_text("updated")
        assert held
        for route in held:
            route.continue_()
        expect(page.locator("#linknote")).to_contain_text("This link: " + GONE_SAID + ".")
        expect(page.locator("select[name=box_id]")).to_have_value(GONE)
        page.unroute(boxes)
        browser.close()
