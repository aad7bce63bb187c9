"""The review page's keys against a part still loading or saving, and what the dashboard
counts of a reviewed fail, in a real Chromium (QA reviewer's pass, session 34)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np
import pytest

from .conftest import ROOT, Running, close_contexts, keyed, start_server
from .test_ui_screens import CHROMIUM, REVIEW_JS, _context, _held, _sign_in

SAMPLE = ROOT / "datasets" / "deeppcb-sample" / "images"
GOLDEN = ROOT / "configs" / "line" / "station1-reference.jpg"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def box() -> Iterator[Running]:
    running, stop = start_server(keyed(
        models=[str(ROOT / "models" / "deeppcb" / "1"), str(ROOT / "models" / "deeppcb-ref" / "1")],
        recipes=[str(ROOT / "configs" / "recipes" / "deeppcb.yaml"),
                 str(ROOT / "configs" / "recipes" / "deeppcb-ref.yaml")],
        default_recipe="deeppcb", store_pass_rate=1.0))
    with running.client("admin") as c:
        assert c.put("/v1/references/golden", content=GOLDEN.read_bytes(),
                     headers={"content-type": "image/jpeg"}).status_code == 200
    yield running
    stop()


def _send(box: Running, data: bytes, **params: str) -> dict[str, Any]:
    with box.client("line") as c:
        r = c.post("/v1/inspect", content=data, params=params, headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        return dict(r.json())


def test_a_review_key_never_acts_on_a_part_not_on_screen(browser: Any, box: Running) -> None:
    """j then f at once: f reviewed the part still shown (openId set it only once its
    fetch returned), and the answer put that part back on screen, so every later key
    acted on it too; c twice at once answered the second with a conflict against the
    reviewer's own save. Now a review key waits for the part to show, one review at a
    time, and the part opened takes the focus."""
    from playwright.sync_api import expect

    ids = [_send(box, (SAMPLE / "group13000" / f"1300000{i}_test.jpg").read_bytes(),
                 part_id=f"P{i}")["id"] for i in range(3)]
    newest = ids[::-1]
    page = _context(browser).new_page()
    _sign_in(page, box.url + "/review?camera_id=&part_id=", "reviewer-secret")
    expect(page.locator(".card")).to_have_count(3)
    # a box under load: an inspection is held while asked (it slept 300 ms in the route's
    # handler, which is the test's own thread: Playwright's dispatch stood still with it)
    slow: dict[str, list[Any] | None] = {"held": None}

    def one_part(route: Any) -> None:
        if slow["held"] is not None:
            slow["held"].append(route)
        else:
            route.continue_()

    one = re.compile(r".*/v1/inspections/[0-9a-f]{32}$")
    page.route(one, one_part)
    page.keyboard.press("Enter")
    expect(page.locator("#d-title")).to_contain_text(newest[0][:8])
    assert page.evaluate("document.activeElement.id") == "d-title"
    # the first save held until the second c is pressed: on an idle host it could
    # answer between the two presses, and the second c then confirmed it again (CI)
    reviews = re.compile(r".*/v1/inspections/[0-9a-f]{32}/reviews$")
    held: list[Any] = []
    page.route(reviews, lambda route: held.append(route))
    with page.expect_request(reviews):
        page.keyboard.press("c")
    page.keyboard.press("c")  # while it saves: held back, no conflict with its own save
    expect(page.locator("#d-status")).to_have_text("wait: the part is still loading or saving")
    page.unroute(reviews)
    _held(page, held).continue_()
    expect(page.locator("#d-status")).to_have_text("saved: confirm")
    # the next part held until f is pressed: let through, it could come before f was sent
    # (a fresh-clone failure: f then reviewed it, and the f below reviewed it again)
    coming: list[Any] = []
    slow["held"] = coming
    with page.expect_request(one):
        page.keyboard.press("j")
    page.keyboard.press("f")  # before the next part shows: held back
    expect(page.locator("#d-status")).to_have_text("wait: the part is still loading or saving")
    slow["held"] = None
    _held(page, coming).continue_()  # (its request seen is not yet its handler run)
    expect(page.locator("#d-title")).to_contain_text(newest[1][:8])
    page.wait_for_timeout(500)
    expect(page.locator("#d-title")).to_contain_text(newest[1][:8])  # it stays
    page.keyboard.press("f")  # now on screen: its own
    expect(page.locator("#d-status")).to_have_text("saved: false_reject")
    close_contexts(browser)
    with box.client("reviewer") as c:
        first = c.get(f"/v1/inspections/{newest[0]}").json()
        second = c.get(f"/v1/inspections/{newest[1]}").json()
    assert [r["action"] for r in first["reviews"]] == ["confirm"]
    assert [r["action"] for r in second["reviews"]] == ["false_reject"]


def test_a_confirmed_fail_without_a_box_is_neither_a_false_reject_nor_a_good_part(
        browser: Any, box: Running, tmp_path: Any) -> None:
    """A frame not of the golden's view fails with reference_mismatch and no box; the
    reviewer confirms it. The dashboard counted it a false reject (100%), `data pull` made
    it a good image of the training set, and a golden set from the store a part that must
    pass."""
    from playwright.sync_api import expect

    from lineside_inspect.lifecycle.golden import from_store
    from lineside_inspect.store.pull import pull_from_server

    _ok, buf = cv2.imencode(".jpg", cv2.rotate(cv2.imread(str(GOLDEN)), cv2.ROTATE_180))
    doc = _send(box, buf.tobytes(), recipe="deeppcb-ref", reference="golden")
    assert doc["verdict"] == "fail" and [r["rule"] for r in doc["reasons"]] == ["reference_mismatch"]
    # its card says why it failed: no box does
    page = _context(browser).new_page()
    _sign_in(page, box.url + "/review", "reviewer-secret")
    card = page.locator(".card", has_text="not the golden's view")
    expect(card).to_have_count(1)
    expect(card).to_have_accessible_name(re.compile(r"^✖ FAIL · not the golden's view · "))
    close_contexts(browser)
    with box.client("reviewer") as c:
        before = c.get("/v1/stats").json()["quality"]
        assert c.post(f"/v1/inspections/{doc['id']}/reviews",
                      json={"action": "confirm", "seen_reviews": 0}).status_code == 200
        quality = c.get("/v1/stats").json()["quality"]
    assert quality["reviewed_fails"] == before["reviewed_fails"] + 1
    assert quality["false_rejects"] == before["false_rejects"], quality
    page = _context(browser).new_page()
    _sign_in(page, box.url + "/dashboard", "viewer-secret")
    shown = f"{100 * quality['false_rejects'] / quality['reviewed_fails']:.1f}%"
    expect(page.locator("#fr-rate")).to_have_text(shown)
    close_contexts(browser)
    pulled = pull_from_server(box.url, tmp_path / "pulled", key="reviewer-secret")
    assert not [r for r in pulled.images if doc["id"] in r.file_name]
    box.app.state.store.flush()
    candidates, _ = from_store(box.app.state.store, ids=[doc["id"]])
    assert (candidates[0].item.expected, candidates[0].item.boxes) == ("fail", None)


def test_a_yield_is_rounded_once(browser: Any) -> None:
    """6 of 13 passed is 46.15...%: the API's yield_pct is rounded to 2 digits (46.15), and
    the pages rounded that again (toFixed: 46.1%)."""
    from playwright.sync_api import expect

    running, stop = start_server(keyed(store_pass_rate=1.0))
    try:
        for name, n in (("13000001_temp.jpg", 6), ("13000001_test.jpg", 7)):
            for _ in range(n):
                _send(running, (SAMPLE / "group13000" / name).read_bytes())
        page = _context(browser).new_page()
        _sign_in(page, running.url + "/", "viewer-secret")
        expect(page.locator("#yield-day [data-field=detail]")).to_contain_text("6 of 13 passed")
        expect(page.locator("#yield-day [data-field=pct]")).to_have_text("46.2%")
        close_contexts(browser)
    finally:
        stop()


def test_a_part_the_unchanged_gate_passed_says_so_when_stored(browser: Any, box: Running) -> None:
    """The answer said `reference.unchanged: true`; the stored record said null, and the
    review page showed the part as the detector's pass (QA review, session 34)."""
    from playwright.sync_api import expect

    doc = _send(box, GOLDEN.read_bytes(), recipe="deeppcb-ref", reference="golden",
                part_id="gated")
    assert doc["verdict"] == "pass" and doc["reference"]["unchanged"] is True
    with box.client("reviewer") as c:
        stored = c.get(f"/v1/inspections/{doc['id']}").json()["reference"]
    assert (stored["unchanged"], stored["difference"], stored["sha256"]) == (
        True, doc["reference"]["difference"], doc["reference"]["sha256"])
    page = _context(browser).new_page()
    # the filter sent before the page's script had run (held here, as a slow link or a
    # loaded box holds it: a fresh-clone failure): the form went as a plain GET, and the
    # page showed its default list, the unreviewed fails, the filter dropped unsaid
    held: list[Any] = []
    page.route(REVIEW_JS, lambda route: held.append(route))
    _sign_in(page, box.url + "/review", "reviewer-secret")
    page.locator("#filters [name=verdict]").select_option("pass")
    page.locator("#filters [name=review_state]").select_option("")
    page.locator("#filters button[type=submit]").click()
    page.wait_for_url(re.compile(r".*/review\?.*verdict=pass"), wait_until="commit")
    # the script of the page the plain GET opened (was 200 x 25 ms, then the first page's
    # script let go if the second had not come: 5 s, short on a loaded host)
    _held(page, held, 2).continue_()
    page.unroute(REVIEW_JS)
    # the card of this very part: a count of 1 was also met by the list shown before
    # the filter's answer came back (a fail of another test), and that card was opened
    card = page.locator(f".card[data-id='{doc['id']}']")
    expect(card).to_have_count(1)
    # the address is cleared once read: a reload shows the list as kept, not the link's
    assert page.url == box.url + "/review"
    card.click()
    expect(page.locator("#d-reasons")).to_contain_text("passed by the unchanged gate")
    close_contexts(browser)


def test_d_while_the_next_part_loads_keeps_the_draw_form_focused(browser: Any) -> None:
    """d pressed while the next part loads sets up its box and focuses the form; the part
    then showing took the focus to its title, and the box typed next went to the page's
    keys (digits a class, 0 zoom, Esc out of the part; review, session 34)."""
    from playwright.sync_api import expect

    running, stop = start_server(keyed(store_pass_rate=1.0))
    try:
        for i in range(2):
            _send(running, (SAMPLE / "group13000" / f"1300000{i}_test.jpg").read_bytes())
        page = _context(browser).new_page()
        _sign_in(page, running.url + "/review", "reviewer-secret")
        expect(page.locator(".card")).to_have_count(2)
        page.keyboard.press("Enter")
        expect(page.locator("#detail")).to_be_visible()
        first = page.locator("#d-title").inner_text()
        # the next part held until d is pressed (a delay in the test's thread could
        # let it come first, and the race went untested)
        one = re.compile(r".*/v1/inspections/[0-9a-f]{32}$")
        coming: list[Any] = []
        page.route(one, lambda route: coming.append(route))
        with page.expect_request(one):
            page.keyboard.press("j")
        page.keyboard.press("d")  # sets up the next part's box
        expect(page.locator("#draw-form")).to_be_visible()
        expect(page.locator("#d-title")).to_have_text(first)  # not come yet
        coming[0].continue_()
        expect(page.locator("#d-title")).not_to_have_text(first)
        expect(page.locator("#draw-form [name=x1]")).to_be_focused()
        close_contexts(browser)
    finally:
        stop()


def test_confirm_all_right_after_esc_skips_the_parts_just_reviewed(browser: Any) -> None:
    """f on a part, Esc, Shift+C before the list's reload answered: the page's own list still
    had the part unreviewed, the dialog counted it, and confirming it again came back as a
    conflict "reviewed by someone else meanwhile" (the reviewer's own save; session 35)."""
    from playwright.sync_api import expect

    running, stop = start_server(keyed(store_pass_rate=1.0))
    try:
        ids = [_send(running, (SAMPLE / "group13000" / f"1300000{i}_test.jpg").read_bytes())["id"]
               for i in range(2)]
        page = _context(browser).new_page()
        _sign_in(page, running.url + "/review", "reviewer-secret")
        expect(page.locator(".card")).to_have_count(2)
        page.locator(f".card[data-id='{ids[1]}']").click()
        expect(page.locator("#d-title")).to_contain_text(ids[1][:8])
        page.keyboard.press("f")
        expect(page.locator("#d-status")).to_have_text("saved: false_reject")
        held: list[tuple[int, Any]] = []  # (confirms sent before it, the held request)
        holding = [True]  # a list slow to come back, until let go
        confirms: list[str] = []  # the reviews the confirm-all sends

        def slow(r: Any) -> None:
            held.append((len(confirms), r)) if holding[0] else r.continue_()

        def confirm(r: Any) -> None:
            if r.request.method == "POST":
                confirms.append(r.request.url)
            r.continue_()
        page.route(re.compile(r".*/v1/inspections\?.*"), slow)
        page.route(re.compile(r".*/v1/inspections/[^/?]+/reviews$"), confirm)
        page.keyboard.press("Escape")
        expect(page.locator("#grid")).to_be_visible()
        page.keyboard.press("Shift+C")
        expect(page.locator("#ca-text")).to_contain_text("the 1 unreviewed inspection(s)")
        page.click("#ca-yes")
        # the confirm is sent, the reload after it held too (was a fixed 300 ms): the page
        # asks for the list only once the confirm is answered
        deadline = time.monotonic() + 30
        while not any(after for after, _ in held):
            assert time.monotonic() < deadline, ("no reload after the confirm", confirms, held)
            page.wait_for_timeout(20)  # (Playwright calls the routes while it waits)
        assert len(confirms) == 1, confirms
        holding[0] = False
        for _, r in held:
            r.continue_()
        expect(page.locator("#count")).to_contain_text("confirmed 1")
        expect(page.locator("#count")).not_to_contain_text("someone else")
        close_contexts(browser)
        with running.client("reviewer") as c:
            states = [c.get(f"/v1/inspections/{i}").json()["review_state"] for i in ids]
        assert states == ["confirmed", "corrected"]
    finally:
        stop()


def test_a_whole_image_anomaly_box_and_a_blank_frame_read_at_320_px(browser: Any, box: Running) -> None:
    """An anomaly fail with no region in its map is one `anomaly` box as large as the image
    (session 39): its label went below the box, where the card's picture cut it off and
    the part's showed a sliver at the image's bottom edge. A blank frame (a lens cap, here
    a flat grey frame against the golden) fails as blank_frame, said on its card and in
    the part, both reached by the keys alone on a 320 px screen."""
    from playwright.sync_api import expect
    from sqlalchemy.orm import Session

    from lineside_inspect.store.models import InspectionRow

    _ok, flat = cv2.imencode(".jpg", np.full((640, 640, 3), 128, np.uint8))
    blank = _send(box, flat.tobytes(), recipe="deeppcb-ref", reference="golden")
    [said] = [r["message"] for r in blank["reasons"] if r["rule"] == "blank_frame"]
    # a stored fail of an anomaly model as the runtime reports one with no region (the
    # rules' own message), on a real stored image
    anomaly = _send(box, (SAMPLE / "group13000" / "13000003_test.jpg").read_bytes(), part_id="whole")
    store = box.app.state.store
    store.flush()
    message = ("anomaly score 0.912 >= threshold 0.500 (model pcb-good), no region in the map: "
               "the whole image is reported")
    with Session(store.engine) as s, s.begin():
        row = s.get(InspectionRow, anomaly["id"])
        assert row is not None
        row.verdict, row.class_names, row.labels = "fail", ["anomaly"], ",anomaly,"
        row.defects = [{"label": "anomaly", "score": 0.912, "box": [0.0, 0.0, float(row.width),
                                                                    float(row.height)]}]
        row.reasons = [{"rule": "anomaly", "label": "anomaly", "count": 1, "allowed": 0,
                        "score": 0.912, "threshold": 0.5, "message": message}]
        row.created_at = datetime.now(UTC)  # the newest: the first card

    def inside(inner: Any, outer: Any) -> tuple[bool, Any]:
        # both rectangles read in one layout: read one at a time, the queue buttons that
        # came meanwhile moved the grid down between the two (a fresh-clone failure)
        a, b = page.evaluate("([i, o]) => [i, o].map((e) => e.getBoundingClientRect().toJSON())",
                             [inner.element_handle(), outer.element_handle()])
        return (a["x"] >= b["x"] - 1 and a["y"] >= b["y"] - 1
                and a["x"] + a["width"] <= b["x"] + b["width"] + 1
                and a["y"] + a["height"] <= b["y"] + b["height"] + 1), (a, b)

    page = _context(browser, 320, 640).new_page()
    _sign_in(page, box.url + "/review", "reviewer-secret")
    card = page.locator(f".card[data-id='{anomaly['id']}']")
    expect(card).to_have_count(1)
    label = card.locator(".bx span")
    expect(label).to_have_text("anomaly 0.91")
    # the picture is as tall as its image once loaded (lazy: 0 px high until then)
    page.wait_for_function("(i) => i.complete && i.naturalWidth > 0",
                           arg=card.locator("img").element_handle())
    pic = card.locator(".pic")
    held, seen = inside(label, pic)
    assert held, seen
    expect(card).to_have_accessible_name(
        re.compile(r"^✖ FAIL · anomaly score · 1 defect\(s\) · .* anomaly 0\.91$"))
    blank_card = page.locator(f".card[data-id='{blank['id']}']")
    expect(blank_card.locator("p").first).to_contain_text("blank frame")
    # by the keys: the first card is the anomaly's, the next the blank frame's
    page.keyboard.press("j")
    page.keyboard.press("k")
    expect(card).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#d-reasons")).to_have_text(message)
    shown = page.locator("#boxes .bx span")
    expect(shown).to_have_text("▶ anomaly 0.91")
    stage = page.locator("#stage")
    held, seen = inside(shown, stage)
    assert held, seen
    page.keyboard.press("j")  # the blank frame, its reason said as text
    expect(page.locator("#d-title")).to_contain_text(blank["id"][:8])
    expect(page.locator("#d-reasons")).to_contain_text(said)
    wide = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert wide[0] <= wide[1], wide
    close_contexts(browser)


def _exif_turned_jpeg() -> bytes:
    """A 200x400 JPEG, white above and black below, whose EXIF orientation (6) says to
    show it turned 90° clockwise: as a phone or some cameras write it."""
    picture = np.zeros((400, 200, 3), np.uint8)
    picture[:200] = 255
    _ok, jpg = cv2.imencode(".jpg", picture)
    ifd = (b"MM\x00\x2a\x00\x00\x00\x08\x00\x01"
           b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00")
    app1 = b"Exif\x00\x00" + ifd
    data = jpg.tobytes()
    return data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]


def test_a_frame_with_an_exif_turn_is_shown_as_judged(browser: Any, box: Running) -> None:
    """Lineside judges a JPEG's pixels as stored (EXIF orientation ignored: imageio), and
    its boxes are in those pixels; the browser turned such a frame as its tag says and
    stretched it into the stored size, so the boxes lay over another picture and a
    missed defect drawn on it landed elsewhere in `data pull` (loop walk, session 50).
    The part and its card now show the pixels as stored."""
    from playwright.sync_api import expect

    turned = _send(box, _exif_turned_jpeg(), part_id="EXIF-1")
    page = _context(browser).new_page()
    _sign_in(page, box.url + "/review?part_id=EXIF-1&verdict=&review_state=", "reviewer-secret")
    card = page.locator(f".card[data-id='{turned['id']}'] img")
    expect(card).to_have_count(1)
    card.evaluate("e => e.decode()")  # (loaded and decoded)
    shots = [card.screenshot()]
    page.keyboard.press("Enter")
    big = page.locator("#big")
    expect(big).to_be_visible()
    big.evaluate("e => e.decode()")
    for png in [*shots, big.screenshot()]:
        shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
        h, w = shot.shape
        # stored: white above, black below; turned, the left half was black, the right white
        top_left, bottom_right = shot[h // 8, w // 8], shot[7 * h // 8, 7 * w // 8]
        assert top_left > 200 and bottom_right < 50, (top_left, bottom_right)
