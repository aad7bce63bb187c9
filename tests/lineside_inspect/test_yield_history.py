"""Yield history through retention (QA review, session 37): the quota removes sampled passes
with their rows first, and the age limit every row past it, so once either ran an older
window's yield read lower than the line's was. A window's passes and fails (per hour,
shift, station, the status page's) are now the same before and after retention removes
rows: on SQLite and PostgreSQL, through a process killed mid-way, with boxes sharing one
PostgreSQL database retaining at once, through /v1/stats and its CSV, and on a hub."""

from __future__ import annotations

import base64
import csv
import io
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import create_engine, delete, event, func, insert, select, text, update
from sqlalchemy.orm import Session

from lineside_inspect.fleet.hub.bench_reviews import synthetic_records
from lineside_inspect.fleet.protocol import FORWARD, ForwardAck, ForwardBatch, ForwardedInspection
from lineside_inspect.imageio import decode_image
from lineside_inspect.inspector import Inspection, inspect
from lineside_inspect.recipes import Recipe
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store import Store
from lineside_inspect.store import stats as figures
from lineside_inspect.store.models import InspectionRow, YieldHistoryRow
from lineside_inspect.store.utc import as_utc

from .test_figures_agree import IMAGE, JPEG, _set
from .test_fleet_hub_retention import _own_rounds, _round
from .test_fleet_sync import KEYS, ServedHub, _png, _record, client, hub_settings
from .test_store import MODEL, ROOT

# the rows' hour: every figure's boundaries whole hours (a removed inspection counts at
# its hour's start: store/history.py)
T = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
SHIFTS = figures.Shifts(("06:00", "18:00"), UTC)
# (hours before T, camera, recipe, passes, fails)
PARTS = [(47, "cam1", "r", 3, 1), (40, "cam2", "r2", 2, 1), (30, "cam1", "r", 2, 2),
         (26, None, "r", 1, 1), (3, "cam1", "r", 2, 1), (2, "cam2", "r2", 1, 0)]
SCOPES: list[dict[str, Any]] = [{}, {"camera_id": "cam1"}, {"camera_id": ""}, {"recipe": "r2"}]


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(MODEL, device="cpu", threads=1)


# each (verdict, camera, recipe)'s inspection of IMAGE, judged once through the runtime:
# the parts a test saves are copies of it, each of its own id and time (the same frame
# judged under the same recipe gave the same inspection each time: ~17 inferences a fill)
_JUDGED: dict[tuple[str, str | None, str], Inspection] = {}


def _part(detector: Detector, verdict: str, when: datetime, camera: str | None,
          recipe: str) -> Inspection:
    raw = IMAGE.read_bytes()
    key = (verdict, camera, recipe)
    if key not in _JUDGED:
        # a recipe that passes everything or fails on anything, so the verdict is chosen
        rule = Recipe(name=recipe, model="deeppcb",
                      default_min_score=1.0 if verdict == "pass" else 0.0)
        _JUDGED[key] = inspect(decode_image(raw), detector, rule, camera_id=camera)
    judged = _JUDGED[key]
    result = replace(judged, id=uuid.uuid4().hex, reasons=list(judged.reasons),
                     timings_ms=dict(judged.timings_ms))
    result.verdict = verdict
    result.raw, result.raw_ext = raw, "jpg"
    result.created_at = when + timedelta(minutes=7)
    return result


def _fill(store: Store, detector: Detector) -> int:
    n = 0
    for hours, camera, recipe, passes, fails in PARTS:
        for verdict, k in (("pass", passes), ("fail", fails)):
            for j in range(k):
                part = _part(detector, verdict, T - timedelta(hours=hours, minutes=-j), camera, recipe)
                assert store.save(part)
                n += 1
    store.flush()
    return n


def _yields(store: Store, **scope: Any) -> dict[str, Any]:
    """The window's yield figures, as the dashboard, its CSV and /v1/stats take them."""
    doc = store.stats(48, now=T, shifts=SHIFTS, **scope)
    keep = ("hourly", "shifts", "stations", "verdicts_per_hour", "inspections_per_camera")
    return {k: doc[k] for k in keep}


def _all_yields(store: Store) -> list[Any]:
    return [*(_yields(store, **scope) for scope in SCOPES),
            store.read(lambda s: figures.yields(s, T - timedelta(hours=48), T))]


def _held(store: Store) -> int:
    return store.query(limit=1)[0]


def _counted(store: Store) -> int:
    with Session(store.engine) as s:
        return int(s.scalar(select(func.coalesce(func.sum(YieldHistoryRow.inspections), 0))) or 0)


MISSED = [{"label": "short", "box": [10, 10, 40, 40]}]


def _review_some(store: Store) -> int:
    """Review some of ``store``'s parts so the yield after review is not the first pass:
    every other fail overturned (a false reject), the others confirmed, every third pass
    drawn a missed defect on (an escape); a few of each left unreviewed. The reviewed ones
    are the quota's first fails to go (store._deletion_order). How many were reviewed."""
    done = 0
    for verdict, every, body in (("fail", 2, {"action": "false_reject"}),
                                 ("pass", 3, {"action": "missed_defect", "boxes": MISSED})):
        rows = store.query(verdict=verdict, limit=100)[1]
        for i, row in enumerate(sorted(rows, key=lambda r: r.id)):
            if i % every == 0:
                store.review(row.id, reviewer="qa", **body)
                done += 1
            elif verdict == "fail" and i % 4 == 1:
                store.review(row.id, reviewer="qa", action="confirm")
                done += 1
    return done


def _after_review_differs(figures_: list[Any]) -> None:
    """The figures read a yield after review that is not the first pass (the test means it)."""
    hours = figures_[0]["hourly"]
    assert sum(h["passes_after_review"] for h in hours) != sum(h["passes"] for h in hours)
    assert sum(h["unreviewed_fails"] for h in hours) < sum(h["fails"] for h in hours)


def test_a_windows_yield_is_the_same_after_retention_removes_rows(
        tmp_path: Path, detector: Detector, database_url: str | None) -> None:
    store = Store(tmp_path, database_url, pass_rate=1.0)
    total = _fill(store, detector)
    assert _review_some(store) > 0
    before = _all_yields(store)
    _after_review_differs(before)
    assert sum(h["inspections"] for h in before[0]["hourly"]) == total
    # the quota: passes go first, with their rows (the newest pass too, before any fail)
    store.checkpoint()
    store.max_bytes = store.overhead_bytes() + 8 * len(IMAGE.read_bytes())
    quota_removed = store.enforce_retention(now=T)
    assert quota_removed >= 4 and store.query(verdict="pass", limit=1)[0] < 11
    assert _all_yields(store) == before
    # then the age limit: every row over a day old
    store.max_bytes, store.max_age_days = None, 1
    assert store.enforce_retention(now=T) > 0
    assert _held(store) < total - quota_removed
    assert _all_yields(store) == before
    assert _held(store) + _counted(store) == total  # each removed row counted once
    store.close()


KILLED = """
import os, sys
from datetime import datetime
from sqlalchemy import event
from lineside_inspect.store import Store
store = Store(sys.argv[1], sys.argv[2] or None)

@event.listens_for(store.engine, "before_cursor_execute")
def die(conn, cursor, statement, *args):
    # the rows are deleted in this transaction, not committed: the process dies here
    if "yield_history" in statement and statement.lstrip().upper().startswith("INSERT"):
        os._exit(9)

store.max_age_days = 1
store.enforce_retention(now=datetime.fromisoformat(sys.argv[3]))
print("retention ran to its end")
"""


def test_retention_killed_before_it_commits_counts_nothing_and_removes_nothing(
        tmp_path: Path, detector: Detector, database_url: str | None) -> None:
    store = Store(tmp_path, database_url, pass_rate=1.0)
    total = _fill(store, detector)
    before = _all_yields(store)
    store.close()
    done = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path), database_url or "",
                           T.isoformat()], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stdout + done.stderr  # died between deletes and commit
    with Store(tmp_path, database_url, pass_rate=1.0) as again:
        assert _held(again) == total and _counted(again) == 0  # neither committed
        assert _all_yields(again) == before
        again.max_age_days = 1
        assert again.enforce_retention(now=T) > 0
        assert _all_yields(again) == before
        assert _held(again) + _counted(again) == total


def _pg(database_url: str | None) -> str:
    if database_url is None:
        pytest.skip("boxes share a PostgreSQL database")
    return database_url


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_boxes_sharing_postgresql_retaining_at_once_count_each_row_once(
        tmp_path: Path, detector: Detector, database_url: str | None) -> None:
    url = _pg(database_url)
    a = Store(tmp_path / "a", url, pass_rate=1.0, box_id="box-a")
    b = Store(tmp_path / "b", url, pass_rate=1.0, box_id="box-b")
    total = _fill(a, detector) + _fill(b, detector)  # the same cameras, hours and recipes
    assert _review_some(a) > 0  # (each store queries every box's rows: reviewed once)
    before = {box: [_yields(a, box_id=box, **scope) for scope in SCOPES]
              for box in ("box-a", "box-b", None)}
    start = threading.Barrier(2)
    removed: dict[str, int] = {}

    def retain(store: Store) -> None:
        store.max_age_days = 1
        start.wait(30)
        removed[store.box_id] = store.enforce_retention(now=T)

    threads = [threading.Thread(target=retain, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert removed["box-a"] == removed["box-b"] > 0
    for box, figures_before in before.items():
        assert [_yields(b, box_id=box, **scope) for scope in SCOPES] == figures_before, box
    assert _held(a) + _counted(a) == total
    a.close()
    b.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_row_another_process_deleted_first_is_counted_once(
        tmp_path: Path, detector: Detector, database_url: str | None) -> None:
    """Two stores of one box id (a copied data folder, or a box_id set twice) retain at
    once: the second's delete waits on the first's row lock, then removes nothing. It
    must not count the rows the first removed again."""
    url = _pg(database_url)
    first = Store(tmp_path / "a", url, pass_rate=1.0, box_id="box-a")
    second = Store(tmp_path / "b", url, pass_rate=1.0, box_id="box-a")
    total = _fill(first, detector)
    assert _review_some(first) > 0
    before = _all_yields(first)
    _after_review_differs(before)
    admin = create_engine(url)
    racing: list[threading.Thread] = []

    def waiting_on_a_lock() -> bool:
        with admin.connect() as c:
            return bool(c.scalar(text("SELECT count(*) FROM pg_stat_activity "
                                      "WHERE wait_event_type = 'Lock'")))

    @event.listens_for(first.engine, "before_cursor_execute")
    def race(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # the first has deleted its rows and not committed: the second tries them now
        if racing or "yield_history" not in statement or not statement.startswith("INSERT"):
            return
        second.max_age_days = 1
        racing.append(threading.Thread(target=second.enforce_retention, kwargs={"now": T}))
        racing[0].start()
        deadline = time.monotonic() + 30
        while not waiting_on_a_lock() and time.monotonic() < deadline:
            time.sleep(0.05)

    first.max_age_days = 1
    gone = first.enforce_retention(now=T)
    assert racing, "the first retention wrote no yield history"
    racing[0].join(60)
    assert gone > 0 and _counted(first) == gone == total - _held(first)
    assert _all_yields(first) == before
    admin.dispose()
    first.close()
    second.close()


def _stats_files(c: httpx.Client) -> dict[str, Any]:
    """/v1/stats's yield figures, its CSVs' and the status page's, keyed by what they
    cover (the window moves between requests; nothing is near its ends)."""
    doc = c.get("/v1/stats", params={"hours": 72}).json()
    got: dict[str, Any] = {
        "hourly": {r["end"]: (r["passes"], r["fails"]) for r in doc["hourly"] if r["inspections"]},
        "shifts": {(r["start"], r["end"]): (r["passes"], r["fails"]) for r in doc["shifts"]},
        "stations": doc["stations"], "per_camera": doc["inspections_per_camera"],
        "per_hour": doc["verdicts_per_hour"]}
    for table in ("hourly", "shifts", "stations"):
        rows = list(csv.DictReader(io.StringIO(c.get("/v1/stats.csv", params={
            "hours": 72, "table": table}).text)))
        got[f"{table}.csv"] = {(r.get("end_utc"), r.get("camera_id"), r.get("recipe")): (
            r["passes"], r["fails"]) for r in rows if r["inspections"] != "0"}
    day = c.get("/v1/overview").json()["day"]
    got["day"] = (day["passes"], day["fails"])
    return got


def test_stats_and_csv_through_the_api_keep_a_windows_yield(
        launch: Any, database_url: str | None) -> None:
    srv = launch(store_pass_rate=1.0, database_url=database_url, shift_timezone="UTC")
    now = datetime.now(UTC)
    # (hours ago, camera, verdict): the day's window holds the last three
    plan = [(60, "cam1", "pass"), (60, "cam1", "fail"), (40, "cam2", "pass"),
            (20, "cam1", "pass"), (20, "cam1", "pass"), (14, None, "fail"), (1, "cam1", "pass")]
    ids = []
    with srv.client("line") as c:
        for _, camera, _ in plan:
            r = c.post("/v1/inspect", content=IMAGE.read_bytes(), headers=JPEG,
                       params={"camera_id": camera} if camera else {})
            assert r.status_code == 200 and r.json()["stored"] is True, r.text
            ids.append(r.json()["id"])
    _set(srv, {i: {"created_at": now - timedelta(hours=h), "verdict": v}
               for i, (h, _, v) in zip(ids, plan, strict=True)})
    with srv.client("viewer") as c:
        before = _stats_files(c)
        assert sum(before["per_camera"].values()) == len(plan) and before["day"] == (3, 1)
        store = srv.app.state.store
        store.max_age_days = 0.5
        assert store.enforce_retention() == 6  # all but the last hour's
        assert _stats_files(c) == before


def _forwarded(seq: int, hours_ago: float, verdict: str, box: str) -> ForwardedInspection:
    iid = uuid.uuid4().hex
    record = _record(iid, datetime.now(UTC) - timedelta(hours=hours_ago))
    record.update(verdict=verdict, box_id=box)
    if verdict == "pass":
        record.update(reasons=[], defects=[])
    # an image for the first only: the object store's part is not what is tested here
    image = base64.b64encode(_png(seq)).decode() if seq == 1 else None
    return ForwardedInspection(seq=seq, id=iid, site="plant1", line="line1", record=record,
                               image_b64=image, image_ext="png" if image else None)


def test_the_hubs_merged_views_keep_their_yield_through_its_retention(
        tmp_path: Path, weed: Any, database_url: str | None) -> None:
    more = {"database_url": database_url} if database_url else {}
    backend = "pg" if database_url else "sqlite"
    settings = hub_settings(tmp_path, weed.settings(f"hub-yield-history-{backend}"),
                            retention_days=2, retention_interval_s=86400, **more)
    with ServedHub(settings) as hub:
        # every round the test's: the hub's first round (on nothing, at start) may come
        # only after the rows below are made old on a loaded host, and take them
        _own_rounds(hub)
        plan = {"box1": [(100, "pass"), (100, "fail"), (80, "pass"), (5, "pass")],
                "box2": [(90, "pass"), (90, "pass"), (70, "fail"), (4, "fail")]}
        sent: dict[str, list[ForwardedInspection]] = {}
        for box, parts in plan.items():
            sender = client(hub, box)
            sent[box] = [_forwarded(seq, h, v, box) for seq, (h, v) in enumerate(parts, 1)]
            ack = sender.post(sender.path(FORWARD), ForwardBatch(items=sent[box]), ForwardAck)
            assert ack.stored == len(parts)
            sender.close()
        with Session(hub.store.engine) as s, s.begin():  # as if received when they were made
            s.execute(update(InspectionRow).values(received_at=InspectionRow.created_at))
        qa = {"Authorization": f"Bearer {KEYS['qa']}"}
        # reviewed on the hub, all of them to be removed: a false reject overturned, an
        # escape drawn, a fail confirmed
        for item, body in ((sent["box1"][1], {"action": "false_reject"}),
                           (sent["box2"][0], {"action": "missed_defect", "boxes": MISSED}),
                           (sent["box2"][2], {"action": "confirm"})):
            r = httpx.post(f"{hub.url}/v1/inspections/{item.id}/reviews", headers=qa, json=body)
            assert r.status_code in (200, 201), r.text

        def views() -> list[Any]:
            out = []
            for scope in ({}, {"site": "plant1"}, {"box_id": "box1"}, {"box_id": "box2"},
                          {"line": "line1", "camera_id": "cam1"}):
                doc = httpx.get(f"{hub.url}/v1/stats", headers=qa,
                                params={"hours": 120, **scope}).json()
                out.append(({r["end"]: (r["passes"], r["fails"], r["passes_after_review"],
                                        r["unreviewed_fails"])
                             for r in doc["hourly"] if r["inspections"]}, doc["stations"]))
            return out

        before = views()
        assert sum(s["inspections"] for s in before[0][1]) == 8
        # 5 passed the machine, 5 after review (1 overturned, 1 escape); 1 of 3 fails unreviewed
        assert [sum(s[k] for s in before[0][1]) for k in (
            "passes", "passes_after_review", "unreviewed_fails")] == [5, 5, 1]
        done = _round(hub)  # (tried again while SeaweedFS does not answer in time)
        assert done.deleted == 6
        assert views() == before


def test_a_store_of_an_earlier_release_gains_the_history(
        tmp_path: Path, detector: Detector, database_url: str | None) -> None:
    """A database made before the history (no ``yield_history`` table) gets it at start,
    and its retention keeps the window's yield from then on."""
    store = Store(tmp_path, database_url, pass_rate=1.0)
    total = _fill(store, detector)
    before = _all_yields(store)
    with store.engine.begin() as c:
        c.execute(text("DROP TABLE yield_history"))
    store.close()
    with Store(tmp_path, database_url, pass_rate=1.0, max_age_days=1) as again:
        assert again.enforce_retention(now=T) > 0
        assert _all_yields(again) == before
        assert _held(again) + _counted(again) == total


AFTER_COLUMNS = ("after_counted", "passes_after_review", "unreviewed_fails")


def test_history_without_verdicts_after_review_reads_at_the_machine_verdict(
        tmp_path: Path, detector: Detector, database_url: str | None) -> None:
    """The history of a release before its verdicts after review (session 56): the columns
    are added at start, and its rows read as they did, at the machine verdict with their
    fails unreviewed; the rows retention removes from then on keep their verdicts after
    review. A removal an older release counts after a downgrade (to ``inspections``
    only) reads at the machine verdict too, the rest of its slot as counted."""
    store = Store(tmp_path, database_url, pass_rate=1.0)
    _fill(store, detector)
    assert _review_some(store) > 0
    before = _all_yields(store)
    store.max_age_days = 1  # the parts of over a day ago go, counted after review
    assert store.enforce_retention(now=T) > 0
    assert _all_yields(store) == before
    with store.engine.begin() as c:  # the table as the release before wrote it
        for column in AFTER_COLUMNS:
            c.execute(text(f"ALTER TABLE yield_history DROP COLUMN {column}"))
    store.close()
    store = Store(tmp_path, database_url, pass_rate=1.0)
    old = T - timedelta(hours=24)
    hours = _yields(store)["hourly"]
    assert [h for h in hours if h["start"] >= old] == [
        h for h in before[0]["hourly"] if h["start"] >= old]
    removed = [h for h in hours if h["start"] < old and h["inspections"]]
    assert len(removed) == 4 and all(
        (h["passes_after_review"], h["unreviewed_fails"]) == (h["passes"], h["fails"])
        for h in removed)
    assert [(h["passes"], h["fails"]) for h in removed] == [
        (h["passes"], h["fails"]) for h in before[0]["hourly"] if h["start"] < old
        and h["inspections"]]
    # this release removes the rest: counted after review
    now_kept = _all_yields(store)
    store.max_age_days = 0.01
    assert store.enforce_retention(now=T) > 0
    assert _held(store) == 0 and _all_yields(store) == now_kept
    # an older release after a downgrade adds two fails to a slot: read at their verdict
    with Session(store.engine) as s, s.begin():
        slot = s.scalars(select(YieldHistoryRow).where(YieldHistoryRow.verdict == "fail",
                                                       YieldHistoryRow.hour >= old)).first()
        assert slot is not None and slot.after_counted == slot.inspections
        at = as_utc(slot.hour)
        slot.inspections += 2
    [hour] = [h for h in now_kept[0]["hourly"] if h["start"] <= at < h["end"]]
    [later] = [h for h in _yields(store)["hourly"] if h["start"] <= at < h["end"]]
    assert later == {**hour, **figures.yield_figure({
        "pass": hour["passes"], "fail": hour["fails"] + 2,
        "pass_after": hour["passes_after_review"],
        "unreviewed_fail": hour["unreviewed_fails"] + 2})}
    store.close()


def _python_calls(store: Store, n: int) -> int:
    """Python function calls retention makes removing ``n`` rows by age (counted, not timed)."""
    old = T - timedelta(days=3)
    rows = synthetic_records(n, now=old, box_id=store.box_id)
    with Session(store.engine) as s, s.begin():
        s.execute(delete(InspectionRow))
        s.execute(insert(InspectionRow), rows)
    calls = 0

    def count(frame: Any, what: str, arg: Any) -> None:
        nonlocal calls
        calls += what == "call"

    store.max_age_days = 1
    sys.setprofile(count)
    try:
        removed = store.enforce_retention(now=T)
    finally:
        sys.setprofile(None)
    assert removed == n
    return calls


def test_retention_work_grows_with_the_rows_it_removes_not_their_square(tmp_path: Path) -> None:
    """Each row's delete synchronized the session, which scanned every row the round had
    loaded: 4000 rows took 20 s, a day of a busy line's hours, under the writer's lock
    (review, session 37). Four times the rows is about four times the work."""
    store = Store(tmp_path)
    small, large = _python_calls(store, 100), _python_calls(store, 400)
    assert large < 6 * small, (small, large)
    store.close()


def test_shifts_and_days_starting_inside_a_utc_hour_keep_their_yield(
        tmp_path: Path, database_url: str | None) -> None:
    """Asia/Kolkata is UTC+05:30: its shifts at 06:00 and 18:00 start at 00:30 and 12:30
    UTC, and its day at 18:30 UTC. Removed inspections counted by the UTC hour went to the
    shift before (those made in the half hour after a start) and left the day (those of
    its first half hour): each shift's yield changed once retention ran (review, session 37)."""
    store = Store(tmp_path, database_url)
    shifts = figures.Shifts(("06:00", "18:00"), ZoneInfo("Asia/Kolkata"))
    midnight = (T - timedelta(hours=64)).replace(hour=0) + timedelta(days=1)
    # fails just after each start, passes just before it
    starts = [midnight - timedelta(hours=5, minutes=30), midnight + timedelta(minutes=30),
              midnight + timedelta(hours=12, minutes=30)]
    rows = synthetic_records(len(starts) * 6, box_id=store.box_id)
    for i, r in enumerate(rows):
        start, k = starts[i // 6], i % 6
        after = k % 2 == 0
        r.update(created_at=start + timedelta(minutes=5 + k) * (1 if after else -1),
                 verdict="fail" if after else "pass")
    with Session(store.engine) as s, s.begin():
        s.execute(insert(InspectionRow), rows)

    def seen() -> Any:
        return (store.stats(96, now=T, shifts=shifts)["shifts"],
                store.read(lambda s: figures.yields(s, starts[0], T)))

    before = seen()
    assert any(r["fails"] == 3 and r["start"] == starts[1] for r in before[0])
    store.max_age_days = 0.5
    assert store.enforce_retention(now=T) == len(rows)
    assert seen() == before
    store.close()


def test_the_history_past_the_longest_window_is_pruned_by_each_box_for_itself(
        tmp_path: Path, database_url: str | None) -> None:
    """The history was never pruned: a hub's grew by ~700,000 slots a year per 10 box
    cameras, though no figure reads past 90 days (/v1/stats' longest window). Retention
    removes this box's slots older than history.KEPT, never another box's or a newer one."""
    from lineside_inspect.store import history

    store = Store(tmp_path, database_url, pass_rate=1.0, box_id="box-a")
    old, recent = T - history.KEPT - timedelta(hours=1), T - history.KEPT + timedelta(hours=1)
    with Session(store.engine) as s, s.begin():
        history.count_removed(s, [(at, box, None, None, "cam1", "r", "pass", None)
                                  for at in (old, recent) for box in ("box-a", "box-b")])
    store.max_age_days = 365  # retention runs; no row of the box's is that old
    store.enforce_retention(now=T)
    with Session(store.engine) as s:
        left = sorted((box, as_utc(at)) for box, at in
                      s.execute(select(YieldHistoryRow.box_id, YieldHistoryRow.hour)))
    assert left == sorted([("box-a", history.slot_of(recent)), ("box-b", history.slot_of(old)),
                           ("box-b", history.slot_of(recent))]), left
    store.close()


def test_retention_with_nothing_to_remove_waits_for_no_other_writer(tmp_path: Path) -> None:
    """The history's prune was a DELETE at every retention pass: on SQLite that takes the
    write lock though it matches nothing, so a save looking for room while another writer
    held the lock (the outbox marking rows delivered) waited out the 30 s busy timeout.
    It looks first now and writes nothing when no slot is that old."""
    import sqlite3

    store = Store(tmp_path, pass_rate=1.0, box_id="box-a", max_age_days=365)
    with Session(store.engine) as s, s.begin():  # a recent slot: nothing to prune
        from lineside_inspect.store import history

        history.count_removed(s, [(T, "box-a", None, None, "cam1", "r", "pass", None)])
    writes: list[str] = []
    event.listen(store.engine, "before_cursor_execute",
                 lambda *a: writes.append(a[2]) if a[2].lstrip().upper().startswith(
                     ("DELETE", "INSERT", "UPDATE")) else None)
    other = sqlite3.connect(tmp_path / "lineside.db", timeout=0.1)
    other.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's write lock
    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(store.enforce_retention(now=T)),
                              daemon=True)
    worker.start()
    worker.join(timeout=20)  # (a hang check: it waited 30 s for the lock)
    other.rollback()
    other.close()
    assert done == [0], done
    assert writes == [], writes
    store.close()
