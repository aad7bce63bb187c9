"""The same inspections counted in every place that counts them (QA review, session 37): the
dashboard's rows and totals, its CSV, the status page, the listing's filters, the all-time
review figures, on a real server with inspections whose times, verdicts, cameras and
reviews the test sets."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from lineside_inspect.cameras.simulator import MJPEGSimulator
from lineside_inspect.config import CameraConfig
from lineside_inspect.store.models import InspectionRow

from .conftest import Running, shift_begun_an_hour_ago

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "deeppcb-sample" / "images"
JPEG = {"content-type": "image/jpeg"}
IMAGE = next(SAMPLE.rglob("*_test.jpg"))


def _inspect(srv: Running, camera_id: str | None, n: int = 1) -> list[str]:
    ids = []
    with srv.client("line") as c:
        for _ in range(n):
            r = c.post("/v1/inspect", content=IMAGE.read_bytes(), headers=JPEG,
                       params={"camera_id": camera_id} if camera_id else {})
            assert r.status_code == 200 and r.json()["stored"] is True, r.text
            ids.append(r.json()["id"])
    return ids


def _set(srv: Running, values: dict[str, dict[str, Any]]) -> None:
    """Rows as the test wants them (a time, a verdict), once the journal is applied."""
    store = srv.app.state.store
    store.flush()
    with Session(store.engine) as s, s.begin():
        for iid, v in values.items():
            s.execute(update(InspectionRow).where(InspectionRow.id == iid).values(**v))


def test_each_hourly_row_counts_the_interval_it_names(launch) -> None:
    """The first hour of a window rarely starts on the hour: its row was named from the
    whole hour (13:00-14:00) but counted from the window's start (13:27), so the chart's
    first bar, its table row and the CSV said too few parts for that hour."""
    srv = launch(store_pass_rate=1.0)
    ids = _inspect(srv, "cam1", 3)
    now = datetime.now(UTC)
    # just before the 24 h window opens (the request comes later: its window starts later
    # still), in the hour the window opens in; one in the window, one now
    before = max(now - timedelta(hours=24, seconds=1),
                 (now - timedelta(hours=24)).replace(minute=0, second=0, microsecond=0))
    times = {ids[0]: before, ids[1]: now - timedelta(hours=23, minutes=30), ids[2]: now}
    _set(srv, {i: {"created_at": t} for i, t in times.items()})
    with srv.client("viewer") as c:
        doc = c.get("/v1/stats", params={"hours": 24}).json()
        rows = list(csv.DictReader(io.StringIO(c.get("/v1/stats.csv", params={
            "hours": 24, "table": "hourly"}).text)))
    since = datetime.fromisoformat(doc["since"])
    assert datetime.fromisoformat(doc["hourly"][0]["start"]) == since
    for row in doc["hourly"]:
        a, b = datetime.fromisoformat(row["start"]), datetime.fromisoformat(row["end"])
        assert row["inspections"] == sum(a <= t < b for t in times.values()), row
    assert sum(r["inspections"] for r in doc["hourly"]) == 2
    # the file (asked a moment later: its window opens a moment later) starts where it counts
    assert datetime.fromisoformat(rows[0]["start_utc"]) >= since
    assert sum(int(r["inspections"]) for r in rows) == 2


def test_false_rejects_are_one_count_in_the_window_and_all_time(launch, database_url) -> None:
    """A false reject undone (the reviewer drew the defect back) stayed one in the all-time
    figure: the window's quality figures, data pull and the rollout watch go by the
    reviewed truth (store.models.reviewed_verdict); the all-time figure now does too."""
    srv = launch(store_pass_rate=1.0, database_url=database_url)
    names = ["fr", "undone", "fr_then_confirm", "confirmed", "escape", "escape_undone", "pass"]
    ids = dict(zip(names, _inspect(srv, "cam1", len(names)), strict=True))
    _set(srv, {ids[n]: {"verdict": "pass" if "escape" in n or n == "pass" else "fail"}
               for n in names})
    box = {"label": "short", "box": [10, 10, 40, 40]}
    reviews: dict[str, list[dict[str, Any]]] = {
        "fr": [{"action": "false_reject"}],
        "undone": [{"action": "false_reject"}, {"action": "missed_defect", "boxes": [box]}],
        "fr_then_confirm": [{"action": "false_reject"}, {"action": "missed_defect", "boxes": [box]},
                            {"action": "false_reject"}, {"action": "confirm"}],
        "confirmed": [{"action": "confirm"}],
        "escape": [{"action": "missed_defect", "boxes": [box]}],
        "escape_undone": [{"action": "missed_defect", "boxes": [box]}, {"action": "false_reject"}],
        "pass": [{"action": "confirm"}],
    }
    with srv.client("reviewer") as c:
        for name, steps in reviews.items():
            for body in steps:
                r = c.post(f"/v1/inspections/{ids[name]}/reviews", json=body)
                assert r.status_code == 200, r.text
        doc = c.get("/v1/stats").json()
        quality = {r["measure"]: r for r in csv.DictReader(io.StringIO(
            c.get("/v1/stats.csv", params={"table": "quality"}).text))}
    q = doc["quality"]
    # fails: "fr" and "fr_then_confirm" (called a false reject, confirmed without a box)
    # are good parts; "undone" and "confirmed" are not. Passes: "escape" only
    assert (q["reviewed_fails"], q["false_rejects"], q["reviewed_passes"], q["escapes"]) == (4, 2, 3, 1)
    assert (doc["reviewed_fails"], doc["false_rejects_confirmed"]) == (4, 2)
    assert doc["false_reject_rate_reviewed"] == q["false_reject_rate"] == 0.5
    assert (int(quality["false_rejects"]["count"]), int(quality["escapes"]["count"])) == (2, 1)


def test_status_page_cards_count_their_own_box(launch, tmp_path: Path) -> None:
    """Boxes sharing a database, each with a cam1: box-a's status card counted box-b's
    cam1 parts too, where box-a's /metrics and its dashboard row (box-a, cam1) did not."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    cams = [CameraConfig(id="cam1", source=str(SAMPLE))]
    # (a shift change between the parts and the page would leave the shift's card none)
    a = launch(database_url=db, box_id="box-a", cameras=cams, store_pass_rate=1.0,
               **shift_begun_an_hour_ago())
    b = launch(database_url=db, box_id="box-b", cameras=cams, store_pass_rate=1.0,
               **shift_begun_an_hour_ago())
    _inspect(a, "cam1", 2)
    _inspect(b, "cam1", 3)
    b.app.state.store.flush()
    for srv, mine in ((a, 2), (b, 3)):
        with srv.client("viewer") as c:
            overview = c.get("/v1/overview").json()
            stats = c.get("/v1/stats").json()
            metrics = c.get("/metrics").text
        card = next(s for s in overview["stations"] if s["camera"]["id"] == "cam1")
        assert card["shift"]["inspections"] == card["day"]["inspections"] == mine
        box = srv.app.state.store.box_id
        assert [s["inspections"] for s in stats["stations"]
                if s["box_id"] == box and s["camera_id"] == "cam1"] == [mine]
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith('lineside_inspections_total{camera="cam1"'))
        assert counted == mine
        # the page's total is this box's too, as its dashboard's (session 39)
        assert overview["day"]["inspections"] == sum(h["inspections"] for h in stats["hourly"]) \
            == mine


def test_status_cards_count_the_fails_with_nothing_judged(
        launch, database_url, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A camera with its lens cap on failed every part as blank_frame (a knocked one as
    reference_mismatch), and its status card showed only its yield falling, as for bad
    parts (review, session 39). Each card counts this shift's fails with nothing judged
    and the latest's time, a blank frame as blank only; its last verdict says why."""
    # a camera whose lens is capped: flat dark frames, on a recipe that checks contrast
    camera = MJPEGSimulator(lambda i: np.full((64, 64, 3), 3, np.uint8), fps=10)
    request.addfinalizer(camera.kill)
    checked = tmp_path / "checked.yaml"
    checked.write_text("name: checked\nmodel: deeppcb\nmin_contrast: 16\n")
    cams = [CameraConfig(id="cam1", source=camera.url, recipe="checked"),
            CameraConfig(id="cam2", source=str(SAMPLE), recipe="checked")]
    # the shift begun an hour ago: a row set 30 s back is in it whatever the hour (run
    # within 30 s of a shift change, it was in the shift before and not counted)
    srv = launch(database_url=database_url, cameras=cams, store_pass_rate=1.0,
                 recipes=[str(checked)], **shift_begun_an_hour_ago())
    with srv.client("line") as c:
        blank = [c.post("/v1/cameras/cam1/trigger", params={"timeout_s": 10}).json()
                 for _ in range(2)]
    assert [[x["rule"] for x in r["reasons"]] for r in blank] == [["blank_frame"]] * 2, blank
    with srv.client("viewer") as c:
        start = datetime.fromisoformat(c.get("/v1/overview").json()["shift_start"])
    moved, both, before, odd = _inspect(srv, "cam2", 4)
    mismatch = {"rule": "reference_mismatch", "label": "reference", "count": 9, "allowed": 4,
                "message": "not the reference's view"}
    at = datetime.now(UTC) - timedelta(seconds=30)
    _set(srv, {moved: {"verdict": "fail", "reasons": [mismatch], "created_at": at},
               both: {"verdict": "fail", "reasons": [mismatch, {**blank[0]["reasons"][-1]}]},
               before: {"verdict": "fail", "reasons": [mismatch],  # the shift before
                        "created_at": start - timedelta(minutes=1)},
               # not a list of reasons (a hand-edited row): none of them, not a 500
               odd: {"verdict": "fail", "reasons": {"rule": "blank_frame"}}})
    with srv.client("viewer") as c:
        r = c.get("/v1/overview")
    assert r.status_code == 200, r.text
    cards = {st["camera"]["id"]: st for st in r.json()["stations"]}
    one, two = cards["cam1"]["not_judged"], cards["cam2"]["not_judged"]
    assert datetime.fromisoformat(one["since"]) == start
    assert one["blank_frame"]["parts"] == 2 and one["reference_mismatch"] == {"parts": 0, "last": None}
    assert datetime.fromisoformat(one["blank_frame"]["last"]) == max(
        datetime.fromisoformat(b["created_at"]) for b in blank)
    assert (two["blank_frame"]["parts"], two["reference_mismatch"]["parts"]) == (1, 1)
    assert datetime.fromisoformat(two["reference_mismatch"]["last"]) == at
    assert cards["cam1"]["last"]["not_judged"] == "blank_frame"
    assert cards["cam2"]["last"]["not_judged"] is None  # its last upload: defects found


def test_listing_uploads_is_the_dashboards_uploads(launch) -> None:
    """camera_id='' is the uploads on the dashboard (its "(uploads)" row); the listing took
    it as no filter and listed every inspection."""
    srv = launch(store_pass_rate=1.0)
    _inspect(srv, None, 2)
    _inspect(srv, "cam1", 3)
    srv.app.state.store.flush()
    with srv.client("reviewer") as c:
        listed = c.get("/v1/inspections", params={"camera_id": ""}).json()
        stats = c.get("/v1/stats", params={"camera_id": ""}).json()
        every = c.get("/v1/inspections").json()
    assert [s["inspections"] for s in stats["stations"]] == [2]
    assert listed["total"] == 2 and all(i["camera_id"] is None for i in listed["items"])
    assert every["total"] == 5
