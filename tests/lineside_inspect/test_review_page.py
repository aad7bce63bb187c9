"""The reviewers' web page in headless Chromium (Debian's, driven by Playwright): sign
in, filter the grid, review with the keyboard, draw a missed defect; then the database
is checked."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from .conftest import CHROMIUM, close_contexts

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "deeppcb-sample" / "images"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(make test installs it)")


def new_page(browser: Any) -> Any:
    """A page in a context of its own (cookies, storage and cache) in the module's Chromium."""
    return browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()


def signed_in(browser: Any, url: str) -> Any:
    """A page of its own in headless Chromium on the review page, signed in with the
    reviewer key."""
    page = new_page(browser)
    page.goto(url + "/review")
    page.fill("#key", "reviewer-secret")
    page.click("button[type=submit]")
    return page


def test_review_in_the_browser(launch, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    srv = launch(store_pass_rate=1.0)
    with srv.client("admin") as admin:
        admin.put("/v1/recipes/strict", json={"name": "strict", "model": "deeppcb",
                                              "default_min_score": 0.05})
    with srv.client("line") as c:
        for i, f in enumerate(sorted(SAMPLE.rglob("*_test.jpg"))[:4]):
            r = c.post("/v1/inspect", content=f.read_bytes(), headers={"content-type": "image/jpeg"},
                       params={"recipe": "strict", "camera_id": f"cam{i % 2}",
                               "part_id": f"<i>SN-{i}</i>"})
            assert r.json()["verdict"] == "fail"
    store = srv.app.state.store

    page = new_page(browser)
    page.goto(srv.url + "/review")
    page.fill("#key", "line-secret")  # a line key may not review
    page.click("button[type=submit]")
    expect(page.locator(".err")).to_contain_text("may not review")
    page.goto(srv.url + "/review")
    page.fill("#key", "reviewer-secret")
    page.click("button[type=submit]")
    expect(page.locator(".card")).to_have_count(4)

    page.fill("input[name=camera_id]", "cam1")  # filter the grid
    page.click("#filters button[type=submit]")
    expect(page.locator(".card")).to_have_count(2)
    page.fill("input[name=camera_id]", "")
    page.click("#filters button[type=submit]")
    expect(page.locator(".card")).to_have_count(4)
    # one part (session 47): its id exactly, sent as text
    page.fill("input[name=part_id]", "<i>SN-1</i>")
    page.click("#filters button[type=submit]")
    expect(page.locator(".card")).to_have_count(1)
    page.click("#queues button[data-queue=unreviewed_fails]")  # a queue is every part's
    expect(page.locator(".card")).to_have_count(4)
    expect(page.locator("input[name=part_id]")).to_have_value("")

    page.keyboard.press("j")  # second card
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    first_id = page.locator("#d-title").inner_text().split()[-1]
    page.keyboard.press("c")  # confirm
    expect(page.locator("#d-status")).to_have_text("saved: confirm")
    page.keyboard.press("j")  # next inspection
    expect(page.locator("#d-title")).not_to_contain_text(first_id)
    second_id = page.locator("#d-title").inner_text().split()[-1]
    page.keyboard.press("f")  # false reject
    expect(page.locator("#d-status")).to_have_text("saved: false_reject")

    page.keyboard.press("k")
    # the first part on screen before the drag: saved while it still loaded, the box
    # was refused ("wait: the part is still loading or saving") and went nowhere
    expect(page.locator("#d-title")).to_contain_text(first_id)
    page.keyboard.press("3")  # class 3: mousebite
    page.keyboard.press("d")
    box = page.locator("#overlay").bounding_box()
    assert box is not None
    sx, sy = box["width"] / 640, box["height"] / 640
    page.mouse.move(box["x"] + 100 * sx, box["y"] + 120 * sy)
    page.mouse.down()
    page.mouse.move(box["x"] + 150 * sx, box["y"] + 170 * sy, steps=5)
    page.mouse.up()
    expect(page.locator("#d-status")).to_have_text("saved: missed_defect")
    # a drag released past the image's edge was lost: it ends at the edge
    page.keyboard.press("d")
    page.mouse.move(box["x"] + 600 * sx, box["y"] + 600 * sy)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] + 40, box["y"] + box["height"] + 40, steps=5)
    page.mouse.up()
    expect(page.locator("#d-status")).to_have_text("saved: missed_defect")
    page.screenshot(path=str(tmp_path / "detail.png"))
    page.keyboard.press("Escape")
    page.click("#tab-dash")
    expect(page.locator("#fr-rate")).to_have_text("50.0%")
    close_contexts(browser)

    rows = {r.id[:8]: r for r in store.query(limit=10)[1]}
    confirmed, rejected = rows[first_id], rows[second_id]
    assert confirmed.review_state == "corrected"  # confirmed, then a missed defect was added
    assert [r.action for r in confirmed.reviews] == ["confirm", "missed_defect", "missed_defect"]
    drawn = confirmed.reviews[1].boxes[-1]
    assert drawn["label"] == "mousebite"
    x1, y1, x2, y2 = drawn["box"]
    assert abs(x1 - 100) < 4 and abs(y1 - 120) < 4 and abs(x2 - 150) < 4 and abs(y2 - 170) < 4
    x1, y1, x2, y2 = confirmed.reviews[2].boxes[-1]["box"]
    assert abs(x1 - 600) < 4 and abs(y1 - 600) < 4 and (x2, y2) == (640, 640)
    assert rejected.review_state == "corrected" and rejected.reviews[-1].boxes == []
    assert rejected.reviews[-1].reviewer == "reviewer"


def test_each_inspection_is_labelled_with_its_own_models_classes(launch, browser: Any) -> None:
    """The class list came from the first item on the page: on a line with a detector and
    a good-only model, relabelling or drawing on the other kind's inspections failed
    ("unknown class 'open' (model classes: anomaly)"), and its class was not a filter."""
    from playwright.sync_api import expect

    models = Path(__file__).resolve().parents[2] / "models"
    srv = launch(store_pass_rate=1.0, models=[str(models / "deeppcb" / "1"),
                                              str(models / "deeppcb-good" / "1")])
    with srv.client("admin") as c:
        recipes = {r["model"]: r["name"] for r in c.get("/v1/recipes").json()}
    board = sorted(SAMPLE.rglob("*_test.jpg"))[0].read_bytes()
    with srv.client("line") as c:
        for model in ("deeppcb", "deeppcb-good"):
            r = c.post("/v1/inspect", content=board, headers={"content-type": "image/jpeg"},
                       params={"recipe": recipes[model], "camera_id": model})
            assert r.status_code == 200, r.text
    page = signed_in(browser, srv.url)
    page.select_option("select[name=verdict]", "")
    page.click("#filters button[type=submit]")
    expect(page.locator(".card")).to_have_count(2)
    labels = page.locator("select[name=label] option")
    expect(labels).to_contain_text(["anomaly", "open"])  # every class seen, as filters
    for n in range(2):
        page.locator(".card").nth(n).click()
        expect(page.locator("#detail")).to_be_visible()  # shown once it is fetched
        camera = page.locator("#d-meta bdi").first.inner_text()
        want = ["1 anomaly"] if camera == "deeppcb-good" else ["1 open", "2 short"]
        expect(page.locator("#d-label option").first).to_have_text(want[0])
        if camera == "deeppcb":
            expect(page.locator("#d-label option").nth(1)).to_have_text(want[1])
        else:
            expect(page.locator("#d-label option")).to_have_count(1)
        page.keyboard.press("Escape")
        expect(page.locator("#detail")).to_be_hidden()
    close_contexts(browser)


def test_reference_image_in_the_browser(launch, browser: Any) -> None:
    from playwright.sync_api import expect

    ref_model = Path(__file__).resolve().parents[2] / "models" / "deeppcb-ref" / "1"
    srv = launch(store_pass_rate=1.0, models=[str(ref_model)])
    test = next(SAMPLE.rglob("*_test.jpg"))
    template = test.with_name(test.name.replace("_test", "_temp"))
    with srv.client("line") as c:
        r = c.post("/v1/inspect", files={"image": ("t.jpg", test.read_bytes(), "image/jpeg"),
                                         "reference": ("r.jpg", template.read_bytes(), "image/jpeg")})
        assert r.json()["verdict"] == "fail"
    page = signed_in(browser, srv.url)
    expect(page.locator(".card")).to_have_count(1)
    page.keyboard.press("Enter")
    expect(page.locator("#d-meta")).to_contain_text("reference (sent with the frame)")
    expect(page.locator("#b-ref")).to_be_visible()
    expect(page.locator("#big")).to_have_attribute("src", re.compile(r"/image$"))
    page.keyboard.press("r")
    expect(page.locator("#big")).to_have_attribute("src", re.compile(r"/reference$"))
    expect(page.locator("#d-status")).to_contain_text("showing the reference image")
    # properties, not a string predicate: polling one is an eval, which the page's CSP
    # refuses (a CI run failed whenever the image was not loaded at the first look)
    expect(page.locator("#big")).to_have_js_property("complete", True)
    expect(page.locator("#big")).to_have_js_property("naturalWidth", 640)
    page.keyboard.press("r")
    expect(page.locator("#big")).to_have_attribute("src", re.compile(r"/image$"))
    close_contexts(browser)


def test_a_shadow_disagreement_shows_both_answers(launch, browser: Any, tmp_path: Path) -> None:
    """In the shadow queue the reviewer sees what the shadow said (text and dashed boxes)
    beside the active model's verdict, before saying who was right."""
    import json
    import time

    from playwright.sync_api import expect

    model = Path(__file__).resolve().parents[2] / "models" / "deeppcb" / "1"
    jumpy = tmp_path / "models" / "deeppcb" / "jumpy"  # fails good boards: disagrees
    shutil.copytree(model, jumpy)
    card = json.loads((jumpy / "model.json").read_text())
    card["version"] = "jumpy"
    card["thresholds"] = dict.fromkeys(card["thresholds"], 0.02)
    card["default_recipe"]["min_score"] = dict.fromkeys(card["thresholds"], 0.02)
    (jumpy / "model.json").write_text(json.dumps(card))
    srv = launch(store_pass_rate=0.0, model_roots=[str(model.parents[1]), str(tmp_path / "models")])
    with srv.client("admin") as admin, srv.client("line") as line:
        assert admin.post("/v1/models", json={"path": str(jumpy), "activate": False}).status_code == 200
        r = admin.post("/v1/models/deeppcb/shadow", json={"version": "jumpy", "sample_rate": 1.0})
        assert r.status_code == 200, r.text
        good = sorted(SAMPLE.rglob("*_temp.jpg"))[:3]
        verdicts = [line.post("/v1/inspect", content=f.read_bytes(),
                              headers={"content-type": "image/jpeg"}).json()["verdict"] for f in good]
        passes = verdicts.count("pass")
        assert passes, "the bundled model passes some good boards"
        deadline = time.monotonic() + 30
        while admin.get("/v1/models/deeppcb/shadow").json()["disagreements"] < passes:
            assert time.monotonic() < deadline, "the shadow did not judge the frames"
            time.sleep(0.1)
    page = signed_in(browser, srv.url)
    expect(page.locator("[data-queue=shadow]")).to_be_visible()
    with page.expect_response(lambda r: "queue=shadow" in r.url):
        page.click("[data-queue=shadow]")
    expect(page.locator("[data-queue=shadow]")).to_have_attribute("aria-pressed", "true")
    expect(page.locator(".card")).to_have_count(passes)
    page.locator(".card").first.click()
    expect(page.locator("#d-shadow")).to_be_visible()
    expect(page.locator("#d-shadow")).to_contain_text("Shadow deeppcb:jumpy said fail")
    expect(page.locator("#d-shadow")).to_contain_text("active 1 said pass")
    assert page.locator("#shadow-boxes .bx").count() > 0
    page.keyboard.press("c")  # the reviewer says the board is good: the active was right
    expect(page.locator("#d-status")).to_have_text("saved: confirm")
    close_contexts(browser)


def test_the_review_page_says_how_a_shadow_judged(launch, browser: Any) -> None:
    """A disagreement says how the shadow judged the frame where the recipe fuses a
    detector with a good-only model (fused_with, fused_kind): the page said nothing of it,
    so a good-only shadow's fail read as its own when it was the served detector's boxes
    fused with its finding (docs/security.md session 42). The values come from the store:
    shown as text, markup and all; a row without them (alone, or stored before) reads as
    before."""
    from playwright.sync_api import expect

    srv = launch(store_pass_rate=1.0)
    with srv.client("line") as c:
        ids = [c.post("/v1/inspect", content=f.read_bytes(), headers={"content-type": "image/jpeg"}
                      ).json()["id"] for f in sorted(SAMPLE.rglob("*_temp.jpg"))[:3]]
    records = srv.app.state.lifecycle.records
    records.start_shadow("r1", model="board-good", version="2", sha256="0" * 64, sample_rate=1.0)
    said = {"model": "board-good", "active_version": "1", "active_verdict": "pass",
            "active_defects": [], "shadow_version": "2", "shadow_verdict": "fail",
            "shadow_defects": [{"label": "anomaly", "score": 0.9, "box": [10, 10, 60, 60]}],
            "shadow_reasons": []}
    records.add_disagreement("r1", inspection_id=ids[0], **said)  # as rows before read
    records.add_disagreement("r1", inspection_id=ids[1], **said, fused_kind="detector",
                             fused_with='<b id="x">deeppcb</b> 1')
    records.add_disagreement("r1", inspection_id=ids[2], **{**said, "model": "deeppcb"},
                             fused_kind="anomaly", fused_with="board-good 1")
    before = "said fail: anomaly (dashed boxes) · active 1 said pass"
    expected = {
        ids[0]: f"Shadow board-good:2 {before}",
        ids[1]: f'Shadow board-good:2 {before} · its finding fused with the served detector '
                '<b id="x">deeppcb</b> 1',
        ids[2]: f"Shadow deeppcb:2 {before} · judged with the served good-only board-good 1"}
    page = signed_in(browser, srv.url)
    with page.expect_response(lambda r: "queue=shadow" in r.url):
        page.click("[data-queue=shadow]")
    expect(page.locator(".card")).to_have_count(3)
    page.locator(".card").first.click()
    for i, inspection in enumerate(ids[::-1]):  # newest first; j: the next one
        if i:
            page.keyboard.press("j")
        expect(page.locator("#d-title")).to_contain_text(inspection[:8])
        expect(page.locator("#d-shadow")).to_have_text(expected[inspection])
    assert page.locator("#d-shadow b, #x").count() == 0
    close_contexts(browser)
