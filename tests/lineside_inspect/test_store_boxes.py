"""The store shared by several boxes, its data-folder lock, UTC times, exact label
filters and the disk quota that counts the database (issue 11, items 2, 3, 10, 14, 22)."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from lineside_inspect.errors import ConfigError, DataDirLockedError, NotFoundError
from lineside_inspect.inspector import Inspection
from lineside_inspect.references import Reference
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store import DataDirLock, Store
from lineside_inspect.store.models import InspectionRow
from lineside_inspect.store.outbox import Outbox, event
from lineside_inspect.store.pull import pull_from_store

from .test_store import SAMPLE, _inspection


@pytest.fixture(scope="module")
def detector() -> Detector:
    from .test_store import MODEL

    return Detector(MODEL, device="cpu", threads=1)


@pytest.fixture(scope="module")
def fail(detector: Detector) -> Inspection:
    return _inspection(detector, "fail")


def again(base: Inspection, **kw: object) -> Inspection:
    """Another inspection like ``base`` (same frame and verdict, a new id)."""
    return dataclasses.replace(base, id=uuid.uuid4().hex, **kw)  # type: ignore[arg-type]


@pytest.fixture
def shared_url(tmp_path: Path, database_url: str | None) -> str:
    """One database two boxes share: a SQLite file outside both data folders, or PostgreSQL."""
    return database_url or f"sqlite:///{tmp_path / 'shared.db'}"


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in (root / "images").rglob("*") if p.is_file()}


# -- item 2: each row belongs to one box ------------------------------------------------
def test_boxes_sharing_a_database_never_clean_up_each_other(
        tmp_path: Path, shared_url: str, fail: Inspection) -> None:
    golden = Reference.from_bytes("golden", next(SAMPLE.rglob("*_temp.jpg")).read_bytes())
    ids: dict[str, list[str]] = {}
    for name in ("a", "b"):
        with Store(tmp_path / name, shared_url, pass_rate=1.0) as store:
            saved = [again(fail), again(fail, reference=golden), again(fail)]
            assert all(store.save(i) for i in saved)
            ids[name] = [i.id for i in saved]
    before = {name: files(tmp_path / name) for name in ("a", "b")}
    assert len(before["a"]) == len(before["b"]) == 4  # three images and the reference

    # each restarts in turn: nothing of the other's is touched
    for name, other in (("b", "a"), ("a", "b"), ("b", "a")):
        with Store(tmp_path / name, shared_url) as store:
            assert store.cleanup() == {"adopted": 0, "orphans_removed": 0, "missing_cleared": 0}
            assert files(tmp_path / other) == before[other]
            rows = {r.id: r for r in store.query(limit=50)[1]}
            assert set(rows) == set(ids["a"]) | set(ids["b"])  # reading sees every box
            assert all(rows[i].image_path for i in ids[other])
            # another box's image is a 404 naming that box, never a wrong file
            with pytest.raises(NotFoundError, match="stored on box") as err:
                store.image_file(rows[ids[other][0]])
            assert str(rows[ids[other][0]].box_id) in err.value.message
            with pytest.raises(NotFoundError, match="stored on box"):
                store.reference_file(rows[ids[other][1]])
    # b's retention (a quota of 1 byte, an age limit of ~0) empties b, and only b
    with Store(tmp_path / "b", shared_url, max_bytes=1, max_age_days=1e-9) as b:
        assert b.enforce_retention() == 3
        assert files(tmp_path / "b") == {}
        assert {r.id for r in b.query(limit=50)[1]} == set(ids["a"])
    with Store(tmp_path / "a", shared_url) as a:
        assert a.cleanup() == {"adopted": 0, "orphans_removed": 0, "missing_cleared": 0}
        assert files(tmp_path / "a") == before["a"]
        for i in ids["a"]:
            assert a.image_file(a.get(i)).read_bytes() == fail.raw


def test_pull_from_a_shared_database_takes_this_boxs_images(
        tmp_path: Path, shared_url: str, fail: Inspection) -> None:
    ids = {}
    for name in ("a", "b"):
        with Store(tmp_path / name, shared_url, pass_rate=1.0) as store:
            inspection = again(fail)
            assert store.save(inspection)
            ids[name] = inspection.id
    with Store(tmp_path / "b", shared_url) as b:
        pulled = pull_from_store(b, tmp_path / "pulled", reviewed=False)
    assert [Path(r.file_name).stem for r in pulled.images] == [ids["b"]]


def test_rows_from_before_box_ids_go_to_the_box_holding_their_file(
        tmp_path: Path, shared_url: str, fail: Inspection) -> None:
    ids: dict[str, str] = {}
    for name in ("a", "b"):
        with Store(tmp_path / name, shared_url, pass_rate=1.0) as store:
            inspection = again(fail)
            assert store.save(inspection)
            ids[name] = inspection.id
            unsampled = again(fail, verdict="pass")
            store.pass_rate = 0.0
            assert store.save(unsampled)  # a row without an image: nothing proves its box
            ids[name + "-row"] = unsampled.id
            # as an earlier release wrote them: no box id
            store.flush()  # the rows from the journal into the database first
            with store.engine.begin() as c:
                c.execute(update(InspectionRow).values(box_id=None))
    with Store(tmp_path / "b", shared_url) as b:
        assert b.cleanup() == {"adopted": 1, "orphans_removed": 0, "missing_cleared": 0}
        assert b.get(ids["b"]).box_id == b.box_id
        assert b.get(ids["a"]).box_id is None and b.get(ids["a-row"]).box_id is None
        b.max_age_days = 1e-9
        b.enforce_retention()  # ages out what b owns, and nothing it cannot prove is its own
        with pytest.raises(NotFoundError):
            b.get(ids["b"])
        assert b.get(ids["a"]).image_path and b.get(ids["b-row"]).box_id is None
    with Store(tmp_path / "a", shared_url) as a:
        assert a.cleanup()["adopted"] == 1
        assert a.image_file(a.get(ids["a"])).read_bytes() == fail.raw


def test_box_id_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        generated = store.box_id
    assert (tmp_path / "box_id").read_text().strip() == generated
    with Store(tmp_path) as store:
        assert store.box_id == generated  # the same box after a restart
    # a configured id that disagrees with the folder's would orphan its own files: refused
    with pytest.raises(ConfigError, match="differs"):
        Store(tmp_path, box_id="line-2")
    with Store(tmp_path / "fresh", box_id="line-2") as store:
        assert store.box_id == "line-2"
    with pytest.raises(ConfigError, match="box_id"):
        Store(tmp_path / "bad", box_id="line\n")
    (tmp_path / "box_id").write_text("../../etc\n")
    with pytest.raises(ConfigError, match="not a valid box id"):
        Store(tmp_path)


def test_a_box_named_hub_is_refused_at_start(tmp_path: Path) -> None:
    """``hub`` is the box id a box files the hub's reviews it takes down under: a box
    named so counted the hub's reviewers as its own and its own as the hub's ("qa (hub)"),
    and a box pointed at a hub's data_dir took the hub's folder for its own (session 51).
    Refused at start, before the folder is locked or a model loaded; the hub's own store
    keeps the name."""
    from lineside_inspect.server.app import create_app
    from lineside_inspect.store.box import refuse_hub_id

    from .conftest import settings

    with pytest.raises(ConfigError, match="box_id 'hub' is the hub's own name"):
        create_app(settings(data_dir=tmp_path / "named", box_id="hub"))
    assert not (tmp_path / "named" / "box_id").exists()
    with Store(tmp_path / "hub", box_id="hub"):  # a hub's data_dir (its store's own name)
        pass
    with pytest.raises(ConfigError, match=r"box_id names this data_dir's box 'hub'"):
        create_app(settings(data_dir=tmp_path / "hub"))
    assert (tmp_path / "hub" / "box_id").read_text().strip() == "hub"  # left as it was
    refuse_hub_id(tmp_path / "box", "hub-2")  # only hub itself


# -- item 3: one process per data folder ------------------------------------------------
def test_second_store_on_a_data_dir_refuses_before_touching_it(
        tmp_path: Path, fail: Inspection) -> None:
    live = Store(tmp_path, pass_rate=1.0)
    inspection = again(fail)
    assert live.save(inspection)
    # an image the live store is writing: not yet in the database (an "orphan" to cleanup)
    in_flight = tmp_path / "images" / "2026-01-01" / f"{uuid.uuid4().hex}.jpg"
    in_flight.parent.mkdir(parents=True)
    in_flight.write_bytes(b"x")
    with pytest.raises(DataDirLockedError, match=f"in use by process {os.getpid()}"):
        Store(tmp_path)  # flock is per open file: refused within one process too
    assert in_flight.is_file() and live.image_file(live.get(inspection.id)).is_file()
    assert live.save(again(fail))  # the live store is unaffected
    live.close()
    with Store(tmp_path) as after:  # released on close
        assert after.cleanup()["orphans_removed"] == 1


def test_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ConfigError, match="cannot create its lock file"):
        DataDirLock(blocked / "store").acquire()  # a data_dir that cannot be made: one line
    with DataDirLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(DataDirLockedError, match=f"process {os.getpid()}"):
            DataDirLock(tmp_path).acquire()
    with DataDirLock(tmp_path) as lock:
        assert lock.held


# -- item 10: UTC in, UTC out ----------------------------------------------------------
def test_times_are_utc_whatever_the_offset(tmp_path: Path, database_url: str | None,
                                          fail: Inspection) -> None:
    noon = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    plus5, minus8 = timezone(timedelta(hours=5)), timezone(timedelta(hours=-8))
    if database_url:  # a session time zone that is not UTC: answers still come back in UTC
        database_url += "?options=-c%20TimeZone%3DAsia%2FKolkata"
    with Store(tmp_path, database_url, pass_rate=1.0) as store:
        # saved as 17:00+05:00: the same instant as 12:00 UTC
        assert store.save(again(fail, created_at=noon.astimezone(plus5)))
        row = store.query()[1][0]
        assert row.created_at == noon and row.created_at.utcoffset() == timedelta(0)
        assert store.record(row).model_dump(mode="json")["created_at"] == "2026-03-01T12:00:00Z"

        def count(**kw: datetime) -> int:
            return store.query(**kw)[0]  # type: ignore[arg-type]

        assert count(since=datetime(2026, 3, 1, 17, 0, tzinfo=plus5)) == 1
        assert count(since=datetime(2026, 3, 1, 17, 0, 1, tzinfo=plus5)) == 0
        assert count(since=datetime(2026, 3, 1, 3, 59, tzinfo=minus8)) == 1
        assert count(since=datetime(2026, 3, 1, 4, 1, tzinfo=minus8)) == 0
        assert count(until=datetime(2026, 3, 1, 4, 0, 1, tzinfo=minus8)) == 1
        assert count(until=datetime(2026, 3, 1, 4, 0, tzinfo=minus8)) == 0  # until is exclusive
        assert count(until=datetime(2026, 3, 1, 17, 1, tzinfo=plus5)) == 1
        assert count(since=datetime(2026, 3, 1, 12, 0)) == 1  # naive means UTC
        assert count(since=datetime(2026, 3, 1, 12, 1)) == 0
        reviewed = store.review(row.id, reviewer="qa", action="confirm")
        assert reviewed.reviews[0].created_at.utcoffset() == timedelta(0)
        assert store.record(reviewed).model_dump(mode="json")["reviews"][0]["created_at"].endswith("Z")


# -- item 14: a label is matched exactly -----------------------------------------------
def test_label_filter_matches_percent_and_underscore_literally(
        tmp_path: Path, database_url: str | None, fail: Inspection) -> None:
    with Store(tmp_path, database_url) as store:
        labels = {",mouse_bite,": again(fail), ",mouseXbite,": again(fail),
                  ",short,100%,": again(fail)}
        for lb, inspection in labels.items():
            assert store.save(inspection)
            store.flush()
            with store.engine.begin() as c:
                c.execute(update(InspectionRow).where(InspectionRow.id == inspection.id)
                          .values(labels=lb))
        assert [r.labels for r in store.query(label="mouse_bite")[1]] == [",mouse_bite,"]
        assert [r.labels for r in store.query(label="100%")[1]] == [",short,100%,"]
        assert store.query(label="%")[0] == 0
        assert store.query(label="_")[0] == 0
        assert store.query(label="mouse%")[0] == 0
        assert store.query(label="short")[0] == 1


# -- item 22: the quota counts every file of the store ------------------------------------
def on_disk(root: Path) -> int:
    """Every byte in the files under ``root`` (a data folder holds only the store's here)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_quota_holds_after_every_write_and_while_applying(tmp_path: Path, fail: Inspection) -> None:
    """The store's files (database, -wal, -shm, journal, images) never take more than the
    quota: after each save (the journal), in the middle of applying a batch (images and rows
    written, its journal segment not yet removed), after each apply and its retention, and
    through bursts of saves the writer has not applied yet. The writer is left asleep and
    the test applies the journal itself, so nothing here depends on timing."""
    quota = 1_000_000
    peaks: list[int] = []
    over: list[str] = []  # (the store logs and goes on when an outbox listener raises)

    def measure(where: str) -> None:
        used = on_disk(tmp_path)
        peaks.append(used)
        if used > quota:
            over.append(f"{where}: {used} bytes on disk for a quota of {quota}: " + str(
                {str(p.relative_to(tmp_path)): p.stat().st_size for p in tmp_path.rglob("*")
                 if p.is_file() and not p.match("images/20*/*")}))
        assert not over, over

    with Store(tmp_path, pass_rate=1.0, max_bytes=quota, sync_interval_s=3600) as store:
        # a fleet event per inspection: the outbox listeners are told once its rows are
        # committed, before its journal segment goes: the peak of applying
        store.event_makers.append(lambda i: [event(i.id, {}, channel="fleet")])
        store.outbox_listeners.append(lambda: measure("applying"))
        n = 0
        bursts = [1, 2, 3, 4, 1] * 6
        for burst in bursts:
            ids = []
            for _ in range(burst):
                inspection = dataclasses.replace(fail, id=f"{n:032x}")
                n += 1
                assert store.save(inspection)
                ids.append(inspection.id)
                measure(f"after saving #{n}")
            assert store.flush() == burst
            measure(f"after applying #{n}")
            assert store.used_bytes() >= on_disk(tmp_path)  # what it counts bounds the disk
            for i in ids:  # the newest are kept, with their images
                assert store.image_file(store.get(i)).read_bytes() == fail.raw
        assert len(peaks) == n + 2 * len(bursts)  # each save, each apply's peak and end
        total = store.query()[0]
        assert 10 <= total < n  # retention removed the oldest; the quota was used, not wasted
        assert max(peaks) > quota * 0.75
        # the write-ahead log is cut back to about a transaction (32 pages with headers)
        assert (tmp_path / "lineside.db-wal").stat().st_size <= 32 + 32 * (4096 + 24)


def test_quota_keeps_unforwarded_rows_and_stops_storing_when_nothing_can_go(
        tmp_path: Path, fail: Inspection, caplog: pytest.LogCaptureFixture) -> None:
    """The hub is down: nothing is forwarded, so no row may go. The quota removes the
    images of the unforwarded inspections, then, with nothing left to remove, refuses new
    ones (answered, not stored) rather than taking more disk; every inspection it
    acknowledged is still there."""
    quota = 500_000
    with Store(tmp_path, pass_rate=1.0, max_bytes=quota, sync_interval_s=3600) as store:
        store.event_makers.append(lambda i: [event(i.id, {}, channel="fleet")])
        store.guard_channel = "fleet"
        acknowledged: list[str] = []
        for n in range(80):
            inspection = dataclasses.replace(fail, id=f"{n:032x}")
            if not store.save(inspection):
                break
            acknowledged.append(inspection.id)
            assert on_disk(tmp_path) <= quota
            store.flush()
            assert on_disk(tmp_path) <= quota
        else:
            pytest.fail("the store took 80 inspections into a quota that holds fewer")
        assert "disk quota (500000 bytes) is full" in caplog.text
        assert store.dropped_unforwarded > 0
        rows = store.query(limit=100)[1]
        assert sorted(r.id for r in rows) == acknowledged
        kept = sorted(r.id for r in rows if r.image_path)  # images went oldest first
        assert kept == acknowledged[len(acknowledged) - len(kept):]
        assert not store.save(dataclasses.replace(fail, id=f"{99:032x}"))
        assert on_disk(tmp_path) <= quota


# -- a full quota with nothing to remove is remembered (security.md item 6) -------------------
def fill_while_the_hub_is_down(store: Store, base: Inspection) -> list[str]:
    """Saves like ``base`` (each applied) until the quota refuses one: the ids acknowledged."""
    store.event_makers.append(lambda i: [event(i.id, {}, channel="fleet")])
    store.guard_channel = "fleet"
    acknowledged: list[str] = []
    for _ in range(80):
        inspection = again(base)
        if not store.save(inspection):
            return acknowledged
        acknowledged.append(inspection.id)
        store.flush()
    pytest.fail("the store took 80 inspections into a quota that holds fewer")


def count_retention(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of ``store.enforce_retention`` from here on (one entry each)."""
    calls: list[int] = []
    real = store.enforce_retention

    def counting(*args: Any, **kwargs: Any) -> int:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "enforce_retention", counting)
    return calls


def quota_full_lines(caplog: pytest.LogCaptureFixture) -> int:
    return sum("is full and nothing in it can be removed" in r.getMessage() for r in caplog.records)


def test_full_quota_refuses_at_once_until_the_hub_takes_rows(
        tmp_path: Path, fail: Inspection, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing can go (the hub is down, every image is gone already, the rows past the age
    limit wait for the hub): once a save found that out, later ones are refused without a
    retention pass each, logged once, not per inspection. Storing resumes by itself once
    the hub takes the rows (the forwarder marks their events delivered): they leave by age,
    and the database pages they leave take new rows (the file does not shrink)."""
    quota = 500_000
    with Store(tmp_path, pass_rate=1.0, max_bytes=quota, max_age_days=1.0,
               sync_interval_s=3600) as store:
        store.quota_recheck_s = 3600.0  # only what happens in the store ends it here
        old = again(fail, created_at=datetime.now(UTC) - timedelta(days=2))
        acknowledged = fill_while_the_hub_is_down(store, old)
        assert quota_full_lines(caplog) == 1
        calls = count_retention(store, monkeypatch)
        assert not any(store.save(again(fail)) for _ in range(50))
        assert calls == []  # refused at once: no retention pass (nor journal apply) each
        assert quota_full_lines(caplog) == 1  # one line for the whole period
        assert on_disk(tmp_path) <= quota
        assert sorted(r.id for r in store.query(limit=100)[1]) == sorted(acknowledged)

        outbox = Outbox(store.engine, store.box_id, "fleet")  # as the forwarder, hub acked
        outbox.mark_delivered(e.id for e in outbox.pending(limit=1000))
        resumed = [again(fail) for _ in range(3)]
        assert all(store.save(i) for i in resumed)  # looked again, on this save's thread
        assert calls
        assert "room in the disk quota again; 51 inspection(s)" in caplog.text  # (and the first)
        assert store.query(limit=100)[0] == len(resumed)  # the forwarded aged out
        assert on_disk(tmp_path) <= quota


def test_full_quota_is_looked_at_again_when_the_oldest_row_passes_the_age_limit(
        tmp_path: Path, fail: Inspection, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Unsampled passes younger than the age limit fill the quota: refused at once (no
    retention pass each) until the oldest of them passes the limit, then the next save
    looks again by itself, and stores."""
    # seconds: the fill and the refused saves below must all come before the oldest row
    # passes it (they took 0.6 s of a 2 s age on a 2-core dev host: on a slower one the
    # oldest row aged out meanwhile, and a save asserted refused was stored)
    age = 10.0
    quota = 420_000
    with Store(tmp_path, pass_rate=0.0, max_bytes=quota, max_age_days=age / 86400,
               sync_interval_s=3600) as store:
        store.quota_recheck_s = 3600.0  # only the age limit ends it here
        acknowledged: list[str] = []
        while len(acknowledged) < 500:
            inspection = again(fail, verdict="pass", created_at=datetime.now(UTC))
            if not store.save(inspection):
                break
            acknowledged.append(inspection.id)
        else:
            pytest.fail("the store took 500 inspections into a quota that holds fewer")
        calls = count_retention(store, monkeypatch)
        assert not any(store.save(again(fail, verdict="pass")) for _ in range(20))
        assert calls == []
        oldest = min(r.created_at for r in store.query(limit=500)[1])
        due = oldest + timedelta(seconds=age)
        deadline = time.monotonic() + age + 30  # wait for the age limit (bounded: never hangs)
        while datetime.now(UTC) <= due and time.monotonic() < deadline:
            time.sleep(0.02)
        resumed = again(fail, verdict="pass", created_at=datetime.now(UTC))
        assert store.save(resumed)
        assert calls and quota_full_lines(caplog) == 1
        assert store.get(resumed.id).id == resumed.id
        assert on_disk(tmp_path) <= quota


def test_full_quota_is_looked_at_again_when_its_settings_change(
        tmp_path: Path, fail: Inspection, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forwarding switched off (the guard channel unset) changes what may go: the next save
    looks again at once, and the rows past the age limit make way."""
    with Store(tmp_path, pass_rate=1.0, max_bytes=500_000, max_age_days=1.0,
               sync_interval_s=3600) as store:
        store.quota_recheck_s = 3600.0
        fill_while_the_hub_is_down(store, again(fail, created_at=datetime.now(UTC) - timedelta(days=2)))
        calls = count_retention(store, monkeypatch)
        assert not store.save(again(fail)) and calls == []
        store.guard_channel = None
        resumed = again(fail)
        assert store.save(resumed) and calls
        assert [r.id for r in store.query(limit=100)[1]] == [resumed.id]
        assert on_disk(tmp_path) <= 500_000


def test_a_delivery_committed_after_a_save_looked_for_room_still_ends_the_full_period(
        tmp_path: Path, fail: Inspection) -> None:
    """The outbox's UPDATE moves the store's generation when it runs, before it commits:
    a save looking for room in between sees the rows still waiting and remembers "full" at
    the new generation. The commit moves it again, so the next save looks again at once
    (it waited for the 2 s re-check; found by the adversarial review)."""
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from lineside_inspect.store.models import OutboxRow

    with Store(tmp_path, pass_rate=1.0, max_bytes=500_000, max_age_days=1.0,
               sync_interval_s=3600) as store:
        store.quota_recheck_s = 3600.0  # only what happens in the store ends it here
        old = again(fail, created_at=datetime.now(UTC) - timedelta(days=2))
        fill_while_the_hub_is_down(store, old)
        with Session(store.engine) as s, s.begin():  # as Outbox.mark_delivered does
            s.execute(update(OutboxRow).where(OutboxRow.channel == "fleet")
                      .values(delivered_at=datetime.now(UTC)))
            assert not store.save(again(fail))  # executed, not committed: still full
        assert store.save(again(fail))  # committed: looked again, and room was made


def test_processes_upgrading_one_database_at_once_both_start(
        tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes sharing one database (a hub's, boxes') upgrade at once: each saw a column
    missing, and the second's ADD COLUMN failed on the first's (PostgreSQL, and a SQLite
    file boxes share). Here the second's first look is taken before the first adds it
    (its view of the columns is stale)."""
    from sqlalchemy import inspect as sa_inspect

    import lineside_inspect.store.store as store_module

    url = database_url or f"sqlite:///{tmp_path / 'shared.db'}"
    Store(tmp_path / "a", url, box_id="a").close()  # the columns exist now
    looks: list[str] = []

    class Stale:
        def __init__(self, engine: Any) -> None:
            self.real = sa_inspect(engine)
            looks.append("stale" if not looks else "fresh")
            self.stale = looks[-1] == "stale"

        def has_table(self, name: str) -> bool:
            return bool(self.real.has_table(name))

        def get_columns(self, table: str) -> list[dict[str, Any]]:
            return [c for c in self.real.get_columns(table)
                    if not (self.stale and c["name"] == "received_at")]

        def get_indexes(self, table: str) -> list[dict[str, Any]]:  # (its index, as stale)
            return [i for i in self.real.get_indexes(table)
                    if not (self.stale and i["name"] == "ix_inspections_received_at")]

    monkeypatch.setattr(store_module, "sa_inspect", Stale)
    Store(tmp_path / "b", url, box_id="b").close()  # was DuplicateColumn
    assert looks[0] == "stale"


def test_processes_making_the_tables_at_once_both_start(
        tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Boxes sharing one database, started at once on a new one: between one's look for a
    table and its CREATE the other made it, and the box stopped at start with "table
    outbox already exists" (fleet review, session 35). Here the second's first look at
    each table is taken before the first made it; the lifecycle's tables too."""
    from lineside_inspect.lifecycle.records import Records
    from lineside_inspect.store.models import LIFECYCLE_TABLES, Base

    url = database_url or f"sqlite:///{tmp_path / 'shared.db'}"
    first = Store(tmp_path / "a", url, box_id="a")
    Records(first)
    first.close()
    real = Base.metadata.create_all
    raced: set[str] = set()

    def late_look(bind: Any, tables: Any = None, checkfirst: bool = True) -> None:
        names = {t.name for t in tables or ()}
        if names - raced:  # its first try at these: it looked before the other made them
            raced.update(names)
            return real(bind, tables=tables, checkfirst=False)
        return real(bind, tables=tables, checkfirst=checkfirst)

    monkeypatch.setattr(Base.metadata, "create_all", late_look)
    second = Store(tmp_path / "b", url, box_id="b")
    Records(second)
    try:
        assert {"inspections", "outbox", *LIFECYCLE_TABLES} <= raced
        assert second.box_id == "b"
    finally:
        second.close()


def test_a_shared_databases_figures_and_reviewer_tally_are_each_boxs(
        tmp_path: Path, shared_url: str, fail: Inspection) -> None:
    """Boxes a and b share a database, each with a reviewer named qa. The tally merged
    them (a review did not record its box) and the dashboard's totals counted every box's
    inspections. Now a review records the box it was made on (one from before the column
    counts as its inspection's box's), and a box's figures (``here``) are its own and the
    rows no box owns; the database-wide figures name the box of each reviewer."""
    from sqlalchemy import text

    from lineside_inspect.store.stats import made_on, reviewers

    stores = {x: Store(tmp_path / x, shared_url, box_id=f"box-{x}") for x in "ab"}
    try:
        a, b = stores["a"], stores["b"]
        on = {x: [again(fail) for _ in range(n)] for x, n in (("a", 1), ("b", 2))}
        for x, made in on.items():
            assert all(stores[x].save(i) for i in made)
            stores[x].flush()
        unowned = again(fail, verdict="pass")  # an old row no box adopted
        assert a.save(unowned)
        a.flush()
        with a.engine.begin() as c:
            c.execute(update(InspectionRow).where(InspectionRow.id == unowned.id)
                      .values(box_id=None))
        # qa of box a reviews its own part and one of box b's; qa of box b the other
        a.review(on["a"][0].id, reviewer="qa", action="confirm")
        a.review(on["b"][0].id, reviewer="qa", action="confirm")
        b.review(on["b"][1].id, reviewer="qa", action="false_reject")
        b.review(unowned.id, reviewer="old", action="confirm")
        with a.engine.begin() as c:  # as a release before the column wrote it
            c.execute(text("UPDATE reviews SET box_id = NULL WHERE reviewer = 'old'"))
        assert [r.box_id for r in a.get(on["b"][0].id).reviews] == ["box-a"]

        since, until = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
        tally = {x: [(r["reviewer"], r["box_id"], r["reviews"])
                     for r in s.read(lambda q, x=x: reviewers(q, since, until, [made_on(f"box-{x}")]))]
                 for x, s in stores.items()}
        # the old review of an unowned inspection counts on every box, as the row is listed
        assert tally == {"a": [("qa", "box-a", 2), ("old", None, 1)],
                         "b": [("old", None, 1), ("qa", "box-b", 1)]}
        every = a.read(lambda q: reviewers(q, since, until, []))
        assert sorted((r["reviewer"], r["box_id"], r["reviews"]) for r in every) == [
            ("old", None, 1), ("qa", "box-a", 2), ("qa", "box-b", 1)]

        def totals(store: Store, **kw: Any) -> tuple[int, int, list[Any], list[Any]]:
            doc = store.stats(1, **kw)
            return (sum(h["inspections"] for h in doc["hourly"]), doc["reviewed_fails"],
                    sorted((s["box_id"] or "-", s["inspections"]) for s in doc["stations"]),
                    sorted((r["reviewer"], r["box_id"] or "-") for r in doc["reviewers"]))

        assert totals(a, here=True) == (2, 1, [("-", 1), ("box-a", 1)],
                                        [("old", "-"), ("qa", "box-a")])
        assert totals(b, here=True) == (3, 2, [("-", 1), ("box-b", 2)],
                                        [("old", "-"), ("qa", "box-b")])
        # box_id asks for that box's; without here: the database's (a hub's view)
        assert totals(a, here=True, box_id="box-b")[:3] == (2, 2, [("box-b", 2)])
        assert totals(a)[:2] == (4, 3)
    finally:
        for s in stores.values():
            s.close()


def test_a_boxs_figures_and_not_judged_read_the_window_not_all_time(tmp_path: Path) -> None:
    """SQLite (no ANALYZE) took ``box_id = x OR box_id IS NULL`` through the box_id index
    and ``verdict = 'fail'`` through the verdict index: a box's dashboard on a shared
    database and the status page's not-judged counts read every row (every fail) ever
    stored, not the window's. On 200k rows over 60 days: 152 ms against 28 ms for the
    dashboard, 18 ms against 1 ms for not_judged, growing with the store's age. Each
    statement they send over inspections in a time window goes by created_at."""
    from sqlalchemy import event

    from lineside_inspect.store import stats as figures

    sent: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        if sql.lstrip().upper().startswith("SELECT") and "inspections.created_at >=" in sql:
            sent.append((sql, params))

    with Store(tmp_path, box_id="box-a") as store:
        event.listen(store.engine, "before_cursor_execute", seen)
        now = datetime.now(UTC)
        store.read(lambda s: figures.not_judged(s, now - timedelta(hours=8), now))
        store.stats(24, here=True, now=now)
        event.remove(store.engine, "before_cursor_execute", seen)
        assert len(sent) >= 5
        with store.engine.connect() as c:
            plans = {sql: " ".join(str(r[3]) for r in c.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {sql}", params)) for sql, params in sent}
    wrong = {sql.split("FROM", 1)[0][:80]: plan for sql, plan in plans.items()
             if "ix_inspections_box_id" in plan or "ix_inspections_verdict" in plan}
    assert wrong == {}


def test_the_reviewer_tally_reads_the_windows_reviews_not_every_review(tmp_path: Path) -> None:
    """"Reviews this shift" (every review page load: GET /v1/reviewers) and the dashboard's
    tally read the reviews of a window, but reviews.created_at had no index: SQLite (and
    PostgreSQL alike: a Seq Scan on 50k rows) read every review ever kept. A store of an
    earlier release gets the index at start, and the tally goes by it."""
    import sqlite3

    from sqlalchemy import event

    from lineside_inspect.store import stats as figures

    Store(tmp_path, box_id="box-a").close()
    db = sqlite3.connect(tmp_path / "lineside.db")  # as an earlier release made it
    db.execute("DROP INDEX IF EXISTS ix_reviews_created_at")
    db.commit()
    db.close()
    sent: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        if "reviews.created_at >=" in sql:
            sent.append((sql, params))

    with Store(tmp_path, box_id="box-a") as store:
        event.listen(store.engine, "before_cursor_execute", seen)
        now = datetime.now(UTC)
        store.read(lambda s: figures.reviewers(s, now - timedelta(hours=8), now,
                                               [figures.made_on("box-a")]))
        store.stats(24, here=True, now=now)
        event.remove(store.engine, "before_cursor_execute", seen)
        assert len(sent) == 2
        with store.engine.connect() as c:
            plans = [" ".join(str(r[3]) for r in c.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
                     for sql, params in sent]
    assert all("SEARCH reviews USING INDEX ix_reviews_created_at" in p for p in plans), plans
