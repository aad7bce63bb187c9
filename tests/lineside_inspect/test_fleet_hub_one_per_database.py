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
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from lineside_inspect.errors import ConfigError
from lineside_inspect.fleet.hub.dblock import HubDatabaseLock

from .conftest import fresh_database
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
    # the first one gone, its lock went with it
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
            with admin.connect() as c:
                return list(c.scalars(text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database())")))

        # a PostgreSQL restart, or a DBA, ends the session holding it: taken again
        [pid] = lock_pids()
        with admin.connect() as c:
            c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
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
        second = HubDatabaseLock(url).acquire()
        caplog.clear()
        first.check()
        first.check()
        assert not first.held
        assert caplog.text.count("another hub took the hub's lock") == 1, caplog.text
        second.release()
        first.check()
        assert first.held
    finally:
        first.release()
        admin.dispose()
