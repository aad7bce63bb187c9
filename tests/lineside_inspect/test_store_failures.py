"""The store under failure (an SRE's and a DBA's review): a lock another session holds on
PostgreSQL, PostgreSQL read-only, the SQLite file removed under a running server, and an
MQTT event queued beside the store's writer on PostgreSQL. Each case failed on the code
before its fix: requests hung, a 500, acknowledged inspections lost, an event never sent."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import Session

from lineside_inspect.errors import DataDirLockedError
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store import Store
from lineside_inspect.store import engine as engine_module
from lineside_inspect.store import store as store_module
from lineside_inspect.store.models import OutboxRow

from .conftest import SAMPLE, fresh_database, keyed, start_server
from .test_line_mqtt import MOSQUITTO, PASSWORDS, Broker, Subscriber, wait_for
from .test_store import MODEL, _inspection

JPEG = {"content-type": "image/jpeg"}


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(MODEL, device="cpu", threads=1)


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto broker on loopback, started (``test_line_mqtt.Broker``)."""
    if not MOSQUITTO.is_file() or shutil.which("mosquitto_passwd") is None:
        pytest.skip("Debian's mosquitto is not installed (make test installs it)")
    folder = tmp_path / "broker"
    folder.mkdir()
    made = Broker(folder)
    made.start()
    yield made
    made.kill()


@pytest.fixture
def pg_database(postgres: str) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL server; its URL."""
    url = fresh_database(postgres)
    yield url
    name = url.rsplit("/", 1)[1]
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:  # whatever a test changed, the next one starts clean
        c.execute(text(f'ALTER DATABASE "{name}" RESET ALL'))
    admin.dispose()


def test_an_mqtt_event_queued_beside_the_writer_does_not_pass_its_events(
        mqtt_broker: Broker, detector: Detector, pg_database: str, tmp_path: Path) -> None:
    """On PostgreSQL an outbox id is handed out at insert and seen at commit. The publisher
    queued an alarm (or a PLC part's end, or a refused inspection's event) in its own
    transaction while the writer's batch was between its insert and its commit: the alarm
    took a higher id, was sent first, and the publisher's cursor passed the batch's events,
    which were then never sent until the next restart."""
    from lineside_inspect.lifecycle.alarm import Change
    from lineside_inspect.line.config import MqttConfig
    from lineside_inspect.line.mqtt import MqttPublisher

    sub = Subscriber(mqtt_broker.port)
    wait_for(lambda: sub.subscriptions >= 1, "the subscriber")
    store = Store(tmp_path / "store", pg_database, pass_rate=0.0)
    publisher = MqttPublisher(MqttConfig(url=mqtt_broker.url, username="lineside",
                                         password=PASSWORDS["lineside"]), store, poll_s=0.05)
    store.event_makers.append(publisher.events_for)
    store.outbox_listeners.append(publisher.wake)
    publisher.start()
    hooked = threading.Event()

    def between_insert_and_commit(session: Session, _: Any) -> None:
        if hooked.is_set() or not any(isinstance(o, OutboxRow) for o in session.new):
            return
        hooked.set()  # the writer's batch holds its outbox ids, not committed yet
        publisher.on_alarm(Change("r", "deeppcb", "1", "alarm", "a fail-rate alarm", {}))
        # the publisher may queue and send the alarm meanwhile (it did: its cursor then
        # passed this batch's events); a publisher that waits for the writer does not
        deadline = time.monotonic() + 3
        while not sub.on("/alarm/r") and time.monotonic() < deadline:
            time.sleep(0.02)

    event.listen(Session, "after_flush", between_insert_and_commit)
    try:
        wait_for(lambda: publisher.connected, "the publisher's connection")
        inspection = _inspection(detector, "fail")
        assert store.save(inspection)
        wait_for(hooked.is_set, "the writer's batch")
        wait_for(lambda: sub.on("/alarm/r"), "the alarm")
        wait_for(lambda: [e["id"] for e in sub.inspections()] == [inspection.id],
                 "the inspection's event")
    finally:
        event.remove(Session, "after_flush", between_insert_and_commit)
        publisher.stop()
        store.close()
        sub.close()


def test_a_lock_another_session_holds_stops_neither_verdicts_nor_reads(
        pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DBA's ``LOCK TABLE inspections`` (or a long transaction holding one) under a
    running box: the writer's batch waited on it for as long as it lasted, holding the
    apply lock, so every read (``/v1/inspections``, ``/v1/stats``) hung behind it, and with
    a quota every save that had to make room did too: the line got no verdict. Now a
    statement waits for a lock at most ``LOCK_TIMEOUT_S``: verdicts keep being answered,
    reads answer (or 503 while even reading is locked), and once the lock goes every
    acknowledged inspection is applied, once."""
    monkeypatch.setattr(engine_module, "LOCK_TIMEOUT_S", 1.0)
    image = next((SAMPLE / "images").rglob("*_test.jpg")).read_bytes()
    # the client's timeout only ends a hang; nothing here should come near it
    timeout = httpx.Timeout(120)
    running, stop = start_server(keyed(database_url=pg_database, store_pass_rate=1.0,
                                       store_max_bytes=400_000))
    dba = create_engine(pg_database)
    try:
        with running.client("line") as line, running.client("reviewer") as reviewer:
            line.timeout = reviewer.timeout = timeout
            stored: set[str] = set()

            def inspect() -> None:
                r = line.post("/v1/inspect", content=image, headers=JPEG)
                assert r.status_code == 200, r.text
                if r.json()["stored"]:
                    stored.add(r.json()["id"])

            inspect()
            assert reviewer.get("/v1/inspections").json()["total"] == 1
            with dba.connect() as conn, conn.begin():
                conn.execute(text("LOCK TABLE inspections IN SHARE MODE"))  # writes wait
                for _ in range(30):  # past the quota: room cannot be made meanwhile
                    inspect()
                for path in ("/v1/inspections", "/v1/stats"):
                    r = reviewer.get(path)
                    assert r.status_code == 200, (path, r.text)
            with dba.connect() as conn, conn.begin():
                conn.execute(text("LOCK TABLE inspections"))  # reads wait too
                r = reviewer.get("/v1/inspections")
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "database_unavailable"
                assert "lock" in r.json()["error"]["message"]
                inspect()

            def listed() -> list[str]:
                items = reviewer.get("/v1/inspections", params={"limit": 200}).json()["items"]
                return [i["id"] for i in items]

            wait_for(lambda: set(listed()) == stored, "every stored inspection applied", 60)
            assert len(listed()) == len(stored)  # once each
            inspect()  # and room is made again
            wait_for(lambda: set(listed()) == stored, "the last inspection", 60)
    finally:
        stop()
        dba.dispose()


def test_the_writer_retries_a_lock_soon_and_backs_off_from_an_outage(
        detector: Detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """After each lock timeout the writer backed off as from an outage (0.2, 0.4, 0.8 ...
    up to 5 s): once another session let go of a lock (a reviewer's long transaction, a
    backup, ``sqlite3`` opened by hand) the records it could now write waited up to 5 s
    more, and the review page, the outbox and the hub with them. Now a lock lost is tried
    again after LOCK_RETRY_S each time (the wait for the lock spaced the attempt), while an
    outage still backs off; the log says so once per run of failures, not per attempt."""
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_S", 0.2)
    caplog.set_level(logging.WARNING, logger="lineside.store")
    data = tmp_path / "store"
    store = Store(data, pass_rate=1.0, apply_interval_s=0.05)
    looker = create_engine(f"sqlite:///{data / 'lineside.db'}")

    def rows() -> int:  # the writer's applies only: a store read would apply itself
        with looker.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM inspections")).scalar_one())

    def failed_logs() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if "applying the journal failed" in r.getMessage()]

    lock = (("lock", store_module.LOCK_RETRY_S),)
    try:
        assert store.save(_inspection(detector, "fail"))
        wait_for(lambda: rows() == 1, "the first inspection applied")
        holder = sqlite3.connect(data / "lineside.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another session's write lock, held
        try:
            assert store.save(_inspection(detector, "fail"))  # a verdict goes on meanwhile
            wait_for(lambda: sum(store.writer_retries.values()) >= 1, "a lost attempt")
            # the attempt wrote the image before the database refused the rows; the
            # attempts after it leave that file as it is (each rewrote and synced it)
            images = {p: p.stat().st_ino for p in (data / "images").rglob("*") if p.is_file()}
            assert len(images) == 2, images
            wait_for(lambda: sum(store.writer_retries.values()) >= 3, "three lost attempts")
            assert {p: p.stat().st_ino for p in images} == images
        finally:
            holder.rollback()
            holder.close()
        wait_for(lambda: rows() == 2, "the inspection applied once the lock went")
        # every wait after a lock was the same short one: no backoff grew over the lock
        assert tuple(store.writer_retries) == lock, store.writer_retries
        assert len(failed_logs()) == 1, failed_logs()  # once, not per attempt
        assert "a lock another session holds" in failed_logs()[0]
        wait_for(lambda: any("applied again" in r.getMessage() for r in caplog.records),
                 "the recovery logged")

        # an outage (here the database file moved away) backs off, doubling
        moved = tmp_path / "moved-away.db"
        (data / "lineside.db").rename(moved)
        try:
            assert store.save(_inspection(detector, "fail"))
            steps = {("outage", 0.2), ("outage", 0.4)}
            wait_for(lambda: steps <= set(store.writer_retries), "the backoff growing")
        finally:
            moved.rename(data / "lineside.db")
        wait_for(lambda: rows() == 3, "the inspection applied once the file is back")
        assert len(failed_logs()) == 2, failed_logs()  # a new run of failures: said again
    finally:
        store.close()
        looker.dispose()


def test_a_review_while_postgresql_is_read_only_is_503(pg_database: str) -> None:
    """A database that takes no writes (a hot standby after a failover, or
    ``default_transaction_read_only``): psycopg raises that as an ``InternalError``, and a
    review was a 500 with a traceback. Verdicts go on into the journal meanwhile, and are
    applied once the database takes writes again."""
    image = next((SAMPLE / "images").rglob("*_test.jpg")).read_bytes()
    running, stop = start_server(keyed(database_url=pg_database, store_pass_rate=1.0))
    name = pg_database.rsplit("/", 1)[1]
    admin = create_engine(pg_database.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")

    def read_only(on: bool) -> None:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = '
                           f'{"on" if on else "off"}'))
            c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           f"WHERE datname = '{name}'"))

    try:
        with running.client("line") as line, running.client("reviewer") as reviewer:
            first = line.post("/v1/inspect", content=image, headers=JPEG).json()["id"]
            assert reviewer.get("/v1/inspections").json()["total"] == 1
            read_only(True)
            r = line.post("/v1/inspect", content=image, headers=JPEG)
            assert r.status_code == 200 and r.json()["stored"] is True, r.text
            later = r.json()["id"]
            r = reviewer.post(f"/v1/inspections/{first}/reviews", json={"action": "confirm"})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "database_unavailable"
            assert "read-only" in r.json()["error"]["message"] and r.headers["retry-after"]
            read_only(False)
            wait_for(lambda: reviewer.get(f"/v1/inspections/{later}").status_code == 200,
                     "the inspection acknowledged meanwhile", 60)
            r = reviewer.post(f"/v1/inspections/{first}/reviews", json={"action": "confirm"})
            assert r.status_code == 200, r.text
    finally:
        stop()
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" RESET ALL'))
        admin.dispose()


def test_a_sqlite_file_removed_under_a_running_server_loses_no_acknowledged_inspection(
        tmp_path: Path) -> None:
    """``lineside.db`` removed (or moved away) while the server runs: its connections went
    on writing into the removed file, the journal was applied there and deleted, reviews
    were saved, and after a restart every inspection acknowledged meanwhile was gone (its
    image then removed as an orphan). Now nothing more is written to the removed file:
    requests that need the database answer 503 saying so, verdicts go on into the journal,
    and the restarted server has them all."""
    image = next((SAMPLE / "images").rglob("*_test.jpg")).read_bytes()
    data = tmp_path / "store"
    running, stop = start_server(keyed(data_dir=str(data), store_pass_rate=1.0))
    try:
        with running.client("line") as line, running.client("reviewer") as reviewer:
            first = line.post("/v1/inspect", content=image, headers=JPEG).json()["id"]
            assert reviewer.get("/v1/inspections").json()["total"] == 1
            (data / "lineside.db").rename(tmp_path / "moved-away.db")
            acked = []
            for _ in range(3):
                r = line.post("/v1/inspect", content=image, headers=JPEG)
                assert r.status_code == 200 and r.json()["stored"] is True, r.text
                acked.append(r.json()["id"])
            r = reviewer.post(f"/v1/inspections/{first}/reviews", json={"action": "confirm"})
            assert r.status_code == 503, r.text
            assert "database file was removed" in r.json()["error"]["message"]
            r = reviewer.get("/v1/inspections")
            assert r.status_code == 503, r.text
    finally:
        stop()
    again, stop = start_server(keyed(data_dir=str(data), store_pass_rate=1.0))
    try:
        with again.client("reviewer") as reviewer:
            listed = {i["id"] for i in reviewer.get("/v1/inspections").json()["items"]}
            assert listed == set(acked)  # (the first went with the file)
            for iid in acked:
                assert reviewer.get(f"/v1/inspections/{iid}/image").content == image
    finally:
        stop()


def test_a_box_starts_while_another_session_writes_to_its_tables(
        pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Boxes sharing one PostgreSQL database: each start ran ``CREATE INDEX IF NOT EXISTS``
    for every added index, and PostgreSQL takes that statement's SHARE lock on the table
    before it finds the index there. With ``lock_timeout`` it waited for another box's open
    write (a batch, a retention round, a DBA's session) at most LOCK_TIMEOUT_S, five times,
    and then the box did not start at all. An index that is there is not made again."""
    Store(tmp_path / "first", pg_database).close()  # the tables and indexes are there
    monkeypatch.setattr(engine_module, "LOCK_TIMEOUT_S", 0.2)
    other = create_engine(pg_database)
    try:
        with other.connect() as conn, conn.begin():
            conn.execute(text("DELETE FROM inspections WHERE false"))  # a write, still open
            Store(tmp_path / "second", pg_database).close()
    finally:
        other.dispose()


def test_a_review_when_the_sqlite_disk_is_full_is_503_saying_so(tmp_path: Path) -> None:
    """SQLite's "database or disk is full" was the server's own 500 with an error id: the
    reviewer could not tell a full disk from a bug. It is a 503 naming the full disk (the
    file is capped at the pages it has, as a full disk caps it), and the stored review is
    unharmed."""
    image = next((SAMPLE / "images").rglob("*_test.jpg")).read_bytes()
    running, stop = start_server(keyed(data_dir=str(tmp_path / "store"), store_pass_rate=1.0))
    engine = running.app.state.store.engine
    try:
        with running.client("line") as line, running.client("reviewer") as reviewer:
            iid = line.post("/v1/inspect", content=image, headers=JPEG).json()["id"]
            wait_for(lambda: reviewer.get(f"/v1/inspections/{iid}").status_code == 200,
                     "the inspection stored")
            assert reviewer.post(f"/v1/inspections/{iid}/reviews",
                                 json={"action": "confirm"}).status_code == 200

            @event.listens_for(engine, "connect")
            def full(dbapi: Any, _: Any) -> None:
                pages = dbapi.execute("PRAGMA page_count").fetchone()[0]
                dbapi.execute(f"PRAGMA max_page_count = {pages}")

            engine.dispose()
            for _ in range(20):  # until the notes need a page more than the file may have
                r = reviewer.post(f"/v1/inspections/{iid}/reviews",
                                  json={"action": "confirm", "note": "y" * 2000})
                if r.status_code != 200:
                    break
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "database_unavailable"
            assert "disk holding the database is full" in r.json()["error"]["message"]
            event.remove(engine, "connect", full)
            engine.dispose()
            got = reviewer.get(f"/v1/inspections/{iid}").json()
            assert got["review_state"] == "confirmed" and got["reviews"], got
    finally:
        stop()


def test_closing_while_postgresql_answers_nothing_ends_and_loses_nothing(
        pg_database: str, detector: Detector, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A database that holds its connections open but answers nothing (its server stopped:
    here its backends are sent SIGSTOP) held the writer in a statement, with the apply
    lock: close waited 30 s for the writer, then for that lock for ever, and a box's
    shutdown never ended. Close now leaves what the journal holds for the next start."""
    import os
    import signal

    name = pg_database.rsplit("/", 1)[1]
    admin = create_engine(pg_database.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    store = Store(tmp_path / "store", pg_database, pass_rate=1.0, apply_interval_s=0.05)
    first, second = _inspection(detector, "fail"), _inspection(detector, "fail")
    frozen: list[int] = []
    try:
        assert store.save(first)
        assert store.get(first.id).id == first.id  # applied: the pool holds an idle connection
        with admin.connect() as c:
            frozen = list(c.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :n"),
                                    {"n": name}).scalars())
        assert frozen
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        assert store.save(second)
        wait_for(store._apply_lock.locked, "the writer's apply on the frozen database")
        closing = threading.Thread(target=store.close, kwargs={"wait_s": 0.2}, daemon=True)
        with caplog.at_level(logging.WARNING, "lineside.store"):
            closing.start()
            closing.join(20)
        assert not closing.is_alive(), "close waited for the frozen database"
        assert "applied at the next start" in caplog.text
        # the writer still holds the journal segment it applies: a store opened on the
        # folder now applied it beside it (its rows then refused as duplicates, set aside,
        # their line events sent twice). The folder stays locked until the writer ends
        with pytest.raises(DataDirLockedError, match="in use by process"):
            Store(tmp_path / "store", pg_database, pass_rate=1.0)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    store._writer.join(20)  # the database answers again: the writer's apply ends
    assert not store._writer.is_alive()
    again = Store(tmp_path / "store", pg_database, pass_rate=1.0)
    try:
        assert {again.get(i.id).id for i in (first, second)} == {first.id, second.id}
    finally:
        again.close()
        admin.dispose()


def test_a_postgresql_connection_notices_a_host_gone_from_it(
        pg_database: str, tmp_path: Path) -> None:
    """A database host gone from an open connection held the statement in flight (and the
    writer's apply lock) for the kernel's ~15 minutes of retransmissions: every connection
    now has libpq's keepalives and TCP_USER_TIMEOUT, which end it in about 30 s; a URL's
    own setting wins."""
    for url, idle in ((pg_database, "10"), (f"{pg_database}?keepalives_idle=60", "60")):
        store = Store(tmp_path / idle, url)
        try:
            with store.engine.connect() as conn:
                pgconn = conn.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
                params = {o.keyword.decode(): (o.val or b"").decode() for o in pgconn.info}
            assert params["keepalives"] == "1" and params["keepalives_idle"] == idle, params
            assert params["keepalives_count"] == "4" and params["tcp_user_timeout"] == "30000"
        finally:
            store.close()


def test_the_operators_own_postgresql_timeouts_win(
        pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's connect timeout, keepalives and lock timeout give way to the operator's:
    a URL's parameters, libpq's PGCONNECT_TIMEOUT and a ``lock_timeout`` in PGOPTIONS. The
    store's own connect_timeout overrode PGCONNECT_TIMEOUT (a value passed to libpq beats its
    environment), its SET lock_timeout overrode PGOPTIONS's, and a password holding the word
    ``connect_timeout`` (a substring test) left the store's timeout out."""
    def settings(url: str) -> tuple[dict[str, str], str]:
        store = Store(tmp_path / str(len(list(tmp_path.iterdir()))), url)
        try:
            with store.engine.connect() as conn:
                pgconn = conn.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
                params = {o.keyword.decode(): (o.val or b"").decode() for o in pgconn.info}
                lock = str(conn.execute(text("SHOW lock_timeout")).scalar())
            return params, lock
        finally:
            store.close()

    params, lock = settings(pg_database)
    assert params["connect_timeout"] == "10" and lock == "10s", (params, lock)
    # another parameter holding the words (as a password may): the store's still apply
    params, lock = settings(f"{pg_database}?application_name=connect_timeout-lock_timeout")
    assert params["connect_timeout"] == "10" and lock == "10s", (params, lock)
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "7")
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=3s")
    params, lock = settings(pg_database)
    assert params["connect_timeout"] == "7" and lock == "3s", (params, lock)
    assert params["keepalives_idle"] == "10"  # the rest still the store's


def _gauges(client: httpx.Client) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("lineside_store_")}


def test_a_postgresql_database_dropped_and_made_again_empty_loses_nothing_and_says_so(
        pg_database: str) -> None:
    """An operator's mistake: the box's database dropped and made again, empty, under a
    running server. Verdicts went on into the journal (nothing lost), but a review read was
    a 500 with a traceback per request ("relation inspections does not exist"), and
    ``/metrics`` said nothing of a store whose writer had stopped applying: nothing told
    the operator. Now the read is 503 ``database_unavailable`` naming the missing tables
    and what to do, ``lineside_store_writer_failing`` is 1 and ``lineside_store_unapplied``
    counts the inspections the journal holds; the restarted server makes the tables and
    applies every one of them."""
    image = next((SAMPLE / "images").rglob("*_test.jpg")).read_bytes()
    server, name = pg_database.rsplit("/", 1)
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    settings = keyed(database_url=pg_database, store_pass_rate=1.0,
                     store_apply_interval_s=0.05)
    running, stop = start_server(settings)
    try:
        with running.client("line") as line, running.client("reviewer") as reviewer:
            line.post("/v1/inspect", content=image, headers=JPEG).raise_for_status()
            assert reviewer.get("/v1/inspections").json()["total"] == 1
            assert _gauges(line) == {"lineside_store_refused": 0, "lineside_store_unapplied": 0,
                                     "lineside_store_writer_failing": 0}
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
                c.execute(text(f'CREATE DATABASE "{name}"'))
            acked = []
            for _ in range(2):
                r = line.post("/v1/inspect", content=image, headers=JPEG)
                assert r.status_code == 200 and r.json()["stored"] is True, r.text
                acked.append(r.json()["id"])
            wait_for(lambda: _gauges(line)["lineside_store_writer_failing"] == 1,
                     "the writer's failure in /metrics")
            assert _gauges(line)["lineside_store_unapplied"] == 2
            r = reviewer.get("/v1/inspections")
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "database_unavailable"
            assert "tables" in r.json()["error"]["message"]
            assert "restart" in r.json()["error"]["message"] and r.headers["retry-after"]
    finally:
        stop()
        admin.dispose()
    again, stop = start_server(settings)
    try:
        with again.client("reviewer") as reviewer:
            listed = {i["id"] for i in reviewer.get("/v1/inspections").json()["items"]}
            assert listed == set(acked)  # (the first went with the dropped database)
            assert _gauges(reviewer)["lineside_store_writer_failing"] == 0
    finally:
        stop()


def _connections_switch(pg_database: str) -> tuple[Any, Callable[[bool], None]]:
    """An admin engine on the cluster, and a switch that lets ``pg_database`` take
    connections or refuses them (its sessions ended): an outage of that database only,
    the suite's cluster serving every other test meanwhile."""
    name = pg_database.rsplit("/", 1)[1]
    admin = create_engine(pg_database.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")

    def connections(allowed: bool) -> None:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
            c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           f"WHERE datname = '{name}'"))
    return admin, connections


def test_a_review_page_polling_through_an_outage_logs_it_once_with_a_count(
        pg_database: str, caplog: pytest.LogCaptureFixture) -> None:
    """While PostgreSQL refuses connections each review read logged two lines (the read's
    own apply of the journal, an ERROR, and the 503's WARNING): a page polling every few
    seconds added about a line a second for the whole outage (session 50). Now each is
    said once, and the end with the count."""
    image = next((SAMPLE / "images").rglob("*_test.jpg")).read_bytes()
    running, stop = start_server(keyed(database_url=pg_database))
    admin, connections = _connections_switch(pg_database)

    caplog.set_level(logging.WARNING, logger="lineside")
    try:
        with running.client("line") as line, running.client("reviewer") as reviewer:
            connections(False)
            r = line.post("/v1/inspect", content=image, headers=JPEG)
            assert r.status_code == 200 and r.json()["stored"] is True, r.text
            for _ in range(6):  # the page's polls
                r = reviewer.get("/v1/inspections")
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "database_unavailable"
            said = [rec.getMessage() for rec in caplog.records]
            assert sum("the database is unreachable" in m for m in said) == 1, said
            assert sum("journal before a read failed" in m for m in said) == 1, said
            connections(True)
            wait_for(lambda: reviewer.get("/v1/inspections").status_code == 200,
                     "the database back", 60)
            said = [rec.getMessage() for rec in caplog.records]
            ended = [m for m in said if m.startswith("the database is unreachable: over (GET "
                                                     "/v1/inspections answered again)")]
            assert len(ended) == 1 and int(ended[0].split("after ")[1].split()[0]) >= 6, said
            assert any(m.startswith("store: applying the journal before reads: over")
                       for m in said), said
    finally:
        stop()
        connections(True)
        admin.dispose()


def test_an_outage_is_not_said_over_by_an_answer_that_never_reached_the_database(
        pg_database: str, caplog: pytest.LogCaptureFixture) -> None:
    """Session 50's adversarial read: the outage's end was said at the first answer below
    500 to a path a 503 was given to, and the watch sat outside the sign-in gate. While
    PostgreSQL stayed down, anyone (no key: a 401; a bad query: a 422; HEAD or OPTIONS: a
    405) said it over, falsely, and the next poll's 503 was logged again
    as a new outage: a client could put back the line-per-read the count was made to
    end. Now only a success (2xx) to the same method and path ends it."""
    running, stop = start_server(keyed(database_url=pg_database))
    admin, connections = _connections_switch(pg_database)

    caplog.set_level(logging.WARNING, logger="lineside")
    try:
        with running.client("reviewer") as reviewer, running.client() as anyone:
            connections(False)
            for _ in range(2):
                assert reviewer.get("/v1/inspections").status_code == 503
                for r in (anyone.get("/v1/inspections"),
                          reviewer.get("/v1/inspections", params={"limit": "many"}),
                          reviewer.head("/v1/inspections"),
                          reviewer.options("/v1/inspections")):
                    assert r.status_code in (401, 405, 422), (r.request, r.status_code, r.text)
            said = [rec.getMessage() for rec in caplog.records]
            assert not [m for m in said if "over (" in m], said
            assert sum("the database is unreachable" in m for m in said) == 1, said
            connections(True)
            wait_for(lambda: reviewer.get("/v1/inspections").status_code == 200,
                     "the database back", 60)
            said = [rec.getMessage() for rec in caplog.records]
            assert sum(m.startswith("the database is unreachable: over (GET /v1/inspections")
                       for m in said) == 1, said
    finally:
        stop()
        connections(True)
        admin.dispose()


def test_the_hubs_database_read_only_or_without_tables_is_named_as_the_hubs(
        pg_database: str, weed: Any, tmp_path: Path) -> None:
    """Session 52: on the hub, PostgreSQL read-only (25006) or its tables dropped answered
    as a box does: "the database takes no writes now", and "inspections acknowledged
    meanwhile wait in the journal ... restart the server" (a hub has no journal; its
    boxes keep what they forward). Each now names the hub's database and what to do
    there, as the hub's refused login does (session 51)."""
    from .test_fleet_hostile_box import _forwarded, _post
    from .test_fleet_sync import KEYS, ServedHub, hub_settings

    name = pg_database.rsplit("/", 1)[1]
    admin = create_engine(pg_database.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    qa = {"authorization": f"Bearer {KEYS['qa']}"}

    def as_admin(*statements: str) -> None:
        with admin.connect() as c:
            for statement in statements:
                c.execute(text(statement))

    def refused(r: httpx.Response) -> str:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "database_unavailable", r.text
        message: str = r.json()["error"]["message"]
        assert "journal" not in message and "restart the server" not in message, message
        return message

    settings = hub_settings(tmp_path, weed.settings("hub-read-only"), database_url=pg_database)
    try:
        with ServedHub(settings) as hub:
            held = _forwarded(1)
            assert _post(hub, "box1", "inspections", {"items": [held]}).status_code == 200
            as_admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on',
                     "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     f"WHERE datname = '{name}'")
            reviewed = wait_for_answer(lambda: httpx.post(
                f"{hub.url}/v1/inspections/{held['record']['id']}/reviews", headers=qa,
                json={"action": "confirm"}, timeout=30))
            assert refused(reviewed).startswith("the hub's database takes no writes now"), \
                reviewed.text
            as_admin(f'ALTER DATABASE "{name}" RESET ALL',
                     "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     f"WHERE datname = '{name}'")
            owner = create_engine(pg_database)
            with owner.begin() as c:
                c.execute(text("DROP TABLE reviews, inspections CASCADE"))
            owner.dispose()
            listed = wait_for_answer(lambda: httpx.get(f"{hub.url}/v1/inspections",
                                                       headers=qa, timeout=30))
            message = refused(listed)
            assert message.startswith("the store's tables are not in the hub's database"), message
            assert "boxes keep what they forward and send it again" in message, message
            assert "restart the hub to make the tables again" in message, message
    finally:
        as_admin(f'ALTER DATABASE "{name}" RESET ALL')
        admin.dispose()


def wait_for_answer(ask: Callable[[], httpx.Response]) -> httpx.Response:
    """``ask``'s answer once it is not about a connection PostgreSQL just ended (the
    pool's first use after ``pg_terminate_backend`` may meet one)."""
    for _ in range(20):
        r = ask()
        if "unreachable" not in r.text:
            return r
    return r
