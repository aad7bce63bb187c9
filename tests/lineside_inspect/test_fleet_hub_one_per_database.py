"""One hub process per database (session 51, a fleet operator's pass on PostgreSQL).

``docs/fleet/views.md`` said "One hub process per database" (a hub's review ids must grow
in commit order for the boxes' cursors) and nothing held to it: a second ``lineside hub``
with a data folder of its own on the same database started, went ready and took
forwards and reviews beside the first. Now the hub holds a PostgreSQL advisory lock on
its store's schema: a second one stops in one line, a hub in another schema of the same
database starts, and the lock is taken again after its connection was lost.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from lineside_inspect.errors import ConfigError
from lineside_inspect.fleet.hub.dblock import HubDatabaseLock

from .conftest import fresh_database, keyed
from .test_fleet_sync import ServedHub, hub_settings


def test_a_second_hub_on_the_hubs_database_stops_in_one_line(
        tmp_path: Path, weed: Any, postgres: str) -> None:
    from lineside_inspect.serve_process import free_port

    url = fresh_database(postgres)
    first = hub_settings(tmp_path, weed.settings("fleet-one-hub"), database_url=url,
                         data_dir=str(tmp_path / "first"))
    with ServedHub(first):
        cfg = tmp_path / "second.yaml"
        cfg.write_text(json.dumps({
            "database_url": url, "data_dir": str(tmp_path / "second"), "port": free_port(),
            "objects": weed.settings("fleet-one-hub")}))
        # a process of its own: before the fix it started and served (a timeout here)
        result = subprocess.run([sys.executable, "-m", "lineside_inspect.cli", "hub",
                                 "--config", str(cfg)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "error: another hub is running on the hub's database postgresql+psycopg://"), lines
        assert "(schema public)" in lines[0]
        # nothing of the second one's was made: its data folder stays unlocked and empty
        assert not (tmp_path / "second").exists() or not any((tmp_path / "second").iterdir())
    # the first one gone, its lock went with it (once its closed session's backend, seeing
    # the close, has ended: not at once)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    _wait(lambda: not _lock_pids(admin), "the first hub's session ending")
    admin.dispose()
    HubDatabaseLock(url).acquire().release()


def test_the_lock_is_per_schema_and_taken_again_after_its_connection_was_lost(
        postgres: str, caplog: pytest.LogCaptureFixture) -> None:
    url = fresh_database(postgres)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("CREATE SCHEMA other"))
    first = HubDatabaseLock(url, every_s=3600).acquire()  # its watch thread left to us
    try:
        with pytest.raises(ConfigError, match=r"another hub is running .*\(schema public\)"):
            HubDatabaseLock(url).acquire()
        # a hub whose host vanished: PostgreSQL ends its idle session, and the lock
        assert first._conn is not None
        assert first._conn.execute(text("SHOW idle_session_timeout")).scalar() == "30s"
        # two schemas of one database are two stores: both take their lock
        HubDatabaseLock(f"{url}?options=-csearch_path%3Dother").acquire().release()

        def lock_pids() -> list[int]:
            return _lock_pids(admin)

        # a closed session's backend ends (and its lock with it) when it reads the close,
        # and one ended by pg_terminate_backend when it takes the signal: waited for below
        _wait(lambda: len(lock_pids()) == 1, "the other schema's session ending")
        # a PostgreSQL restart, or a DBA, ends the session holding it: taken again
        [pid] = lock_pids()
        with admin.connect() as c:
            c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        _wait(lambda: not lock_pids(), "the terminated session ending")
        caplog.set_level(logging.INFO, "lineside.hub")
        first.check()
        assert first.held and len(lock_pids()) == 1 and lock_pids() != [pid]
        assert "taking it again" in caplog.text and "is held again" in caplog.text
        with pytest.raises(ConfigError):
            HubDatabaseLock(url).acquire()
        # lost while another hub started: it says so once, and takes it when it is free
        [pid] = lock_pids()
        with admin.connect() as c:
            c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        _wait(lambda: not lock_pids(), "the terminated session ending")
        second = HubDatabaseLock(url).acquire()
        caplog.clear()
        first.check()
        first.check()
        assert not first.held
        assert caplog.text.count("another hub took the hub's lock") == 1, caplog.text
        second.release()
        _wait(lambda: not lock_pids(), "the second's closed session ending")
        first.check()
        assert first.held
    finally:
        first.release()
        admin.dispose()


def _lock_pids(admin: Any) -> list[int]:
    with admin.connect() as c:
        return list(c.scalars(text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")))


def test_release_while_a_look_waits_on_a_frozen_database_ends_and_keeps_no_lock(
        postgres: str, caplog: pytest.LogCaptureFixture) -> None:
    """Session 51: a database that holds the lock's connection open and answers nothing
    (its backend sent SIGSTOP) held the watch's look in its ``SELECT 1``, and release (the
    hub's shutdown) waited for it for good: closing the connection waited for the statement.
    Release now waits ``release_wait_s`` and leaves the look to close it when it ends."""
    url = fresh_database(postgres)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    lock = HubDatabaseLock(url, every_s=3600, release_wait_s=0.1).acquire()
    [pid] = _lock_pids(admin)
    os.kill(pid, signal.SIGSTOP)
    try:
        look = threading.Thread(target=lock.check, daemon=True)  # the watch's look
        look.start()
        assert lock._conn is not None
        in_flight = lock._conn.connection.dbapi_connection.lock  # type: ignore[union-attr]
        _wait(in_flight.locked, "the look's SELECT 1 on the frozen session")
        releasing = threading.Thread(target=lock.release, daemon=True)
        with caplog.at_level(logging.WARNING, "lineside.hub"):
            releasing.start()
            releasing.join(20)
        assert not releasing.is_alive(), "release waited for the frozen database"
        assert "did not answer the lock's look" in caplog.text
    finally:
        os.kill(pid, signal.SIGCONT)
    look.join(20)
    assert not look.is_alive() and not lock.held
    # the look closed the session it held: the lock is free for the next hub (once the
    # backend, seeing the close, has ended)
    _wait(lambda: not _lock_pids(admin), "the look's session ending")
    HubDatabaseLock(url).acquire().release()
    admin.dispose()


def test_a_lock_a_look_takes_after_release_began_is_not_kept(postgres: str) -> None:
    """Session 51: the watch's look, taking the lock again on a new connection (its session
    lost) while the hub stopped, kept what it took after release: a later hub on the
    database was refused for as long as the process lived (a test's, or an app restarted
    in-process). A look now keeps no lock once release began."""
    url = fresh_database(postgres)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    lock = HubDatabaseLock(url, every_s=3600, release_wait_s=0.1).acquire()
    [pid] = _lock_pids(admin)
    postmaster = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    with admin.connect() as c:
        c.execute(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})
    _wait(lambda: not _lock_pids(admin), "the lock's session ended")
    # new connections wait (the server accepts none): the look's new one is in flight
    os.kill(postmaster, signal.SIGSTOP)
    try:
        look = threading.Thread(target=lock.check, daemon=True)
        look.start()
        _wait(lambda: lock._conn is None, "the look dropping the lost connection")
        lock.release()
    finally:
        os.kill(postmaster, signal.SIGCONT)
    look.join(20)
    assert not look.is_alive() and not lock.held and lock._conn is None
    # the look closed what it took; its backend ends when it reads the close (not at once)
    _wait(lambda: not _lock_pids(admin), "the look's lock ending with its closed session")
    HubDatabaseLock(url).acquire().release()  # was: "another hub is running"
    admin.dispose()


def test_the_start_line_shows_no_query_and_the_lock_keeps_its_idle_end(
        tmp_path: Path, weed: Any, postgres: str, caplog: pytest.LogCaptureFixture) -> None:
    """Session 51: a DSN whose query set ``idle_session_timeout`` (or held a password:
    libpq takes ``?password=``) was printed whole in the hub's "hub store at" start line
    (and the box's "store at"). Now the line names scheme, host and database only; the lock's
    session keeps its own idle end (the DSN's 1 s would end it between the watch's looks)."""
    url = fresh_database(postgres)
    shown = url.replace("postgres@", "")  # no user either, as before
    dsn = f"{url}?options=-c%20idle_session_timeout%3D1s&password=s3cr3t-pw"
    caplog.set_level(logging.INFO)
    settings = hub_settings(tmp_path, weed.settings("fleet-one-hub"), database_url=dsn,
                            data_dir=str(tmp_path / "hub"))
    lock = HubDatabaseLock(dsn, every_s=3600).acquire()
    try:
        assert lock._conn is not None
        assert lock._conn.execute(text("SHOW idle_session_timeout")).scalar() == "30s"
    finally:
        lock.release()
    with ServedHub(settings):
        pass
    [line] = [r.getMessage() for r in caplog.records if "hub store at" in r.getMessage()]
    assert line.startswith(f"hub store at {shown},"), line
    assert "s3cr3t" not in caplog.text and "idle_session_timeout" not in caplog.text
    caplog.clear()
    from fastapi.testclient import TestClient

    from lineside_inspect.server.app import create_app

    with TestClient(create_app(keyed(database_url=dsn, data_dir=tmp_path / "box"))):
        pass
    [line] = [r.getMessage() for r in caplog.records if "store at" in r.getMessage()]
    assert line.startswith(f"store at {shown}, box "), line
    assert "s3cr3t" not in caplog.text


def _wait(cond: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
