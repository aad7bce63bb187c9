"""PostgreSQL refusing the store's login: the password changed or the role dropped under a
running server, or a wrong ``database_url`` at start (session 50). The 503 said "the
database is unreachable", the start-up "cannot be reached" with libpq's words: an operator
looked at the network. Now both say the login was refused and what to fix, and neither
the answer nor the log holds the password. A cluster of its own, with password
authentication (the suite's ``postgres`` fixture trusts every local login)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.serve_process import free_port
from lineside_inspect.store.engine import login_refused

from .conftest import MODEL, SAMPLE, _initdb, keyed, start_server
from .test_line_mqtt import wait_for

ADMIN_PW = "Adm1n-q8RzT4"
PW = "Pw-7f3kq9Zx"  # the store role's password: never in an answer or a log line
JPEG = {"content-type": "image/jpeg"}


@dataclass
class Cluster:
    port: int

    def url(self, user: str = "lineside", password: str = PW) -> str:
        return f"postgresql+psycopg://{user}:{password}@127.0.0.1:{self.port}/ls"

    def admin(self, *statements: str) -> None:
        engine = create_engine(f"postgresql+psycopg://postgres:{ADMIN_PW}@127.0.0.1:"
                               f"{self.port}/postgres", isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                for statement in statements:
                    c.execute(text(statement))
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of its own in a temporary folder, every login by password
    (scram-sha-256), with a role ``lineside`` (password :data:`PW`) owning database
    ``ls``; skipped as the suite's PostgreSQL tests are when the binaries are missing."""
    initdb = _initdb()
    if initdb is None or shutil.which("runuser") is None or os.geteuid() != 0:
        pytest.skip("PostgreSQL server binaries not installed (make test installs them)")
    root = Path(tempfile.mkdtemp(prefix="lineside-pglogin-"))
    shutil.chown(root, "postgres")
    (root / "pw").write_text(ADMIN_PW + "\n")
    shutil.chown(root / "pw", "postgres")

    def as_pg(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True,
                              text=True, timeout=120)

    out = as_pg(str(initdb), "-D", str(root / "data"), "-A", "scram-sha-256", "-U", "postgres",
                f"--pwfile={root / 'pw'}")
    assert out.returncode == 0, out.stderr
    pg_ctl, log = str(initdb.parent / "pg_ctl"), root / "log"
    for _attempt in range(3):  # a port taken between picking and binding: another one
        port = free_port()
        out = as_pg(pg_ctl, "-D", str(root / "data"), "-w", "-l", str(log), "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
        if out.returncode == 0 or "already in use" not in (log.read_text() if log.is_file()
                                                           else ""):
            break
    assert out.returncode == 0, out.stderr
    try:
        made = Cluster(port)
        made.admin(f"CREATE ROLE lineside LOGIN PASSWORD '{PW}'", "CREATE DATABASE ls OWNER lineside")
        yield made
    finally:
        as_pg(pg_ctl, "-D", str(root / "data"), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_a_password_changed_under_a_running_server_is_a_503_saying_so(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    """ALTER ROLE ... PASSWORD under a running server (its sessions ended): each review
    read was "the database is unreachable"; only the log named the password. Verdicts go
    on into the journal, and are applied once the login works again."""
    image = next((SAMPLE / "images").rglob("*_test.jpg")).read_bytes()
    running, stop = start_server(keyed(database_url=cluster.url()))
    caplog.set_level(logging.DEBUG)

    def password(new: str) -> None:
        cluster.admin(f"ALTER ROLE lineside PASSWORD '{new}'",
                      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = 'ls'")

    try:
        with running.client("line") as line, running.client("reviewer") as reviewer:
            assert reviewer.get("/v1/inspections").status_code == 200
            password("Changed-Elsewhere-1")
            r = line.post("/v1/inspect", content=image, headers=JPEG)
            assert r.status_code == 200 and r.json()["stored"] is True, r.text
            later = r.json()["id"]
            for _ in range(3):  # a review page's polls
                r = reviewer.get("/v1/inspections")
                assert r.status_code == 503, r.text
                error = r.json()["error"]
                assert error["code"] == "database_unavailable" and r.headers["retry-after"]
                assert "refused the login (wrong password or no such role" in error["message"]
                assert "fix database_url's credentials" in error["message"]
                assert "unreachable" not in error["message"] and PW not in r.text
            said = [rec.getMessage() for rec in caplog.records]
            assert sum("the database is refusing the login" in m for m in said) == 1, said
            assert not any("the database is unreachable" in m for m in said), said
            metrics = running.client("admin").get("/metrics")
            assert metrics.status_code == 200 and PW not in metrics.text
            password(PW)
            wait_for(lambda: reviewer.get(f"/v1/inspections/{later}").status_code == 200,
                     "the inspection acknowledged meanwhile", 60)
            assert reviewer.get("/v1/inspections").json()["total"] == 1
        said = [rec.getMessage() for rec in caplog.records]
        assert any(m.startswith("the database is refusing the login: over (GET "
                                "/v1/inspections") for m in said), said
        assert PW not in caplog.text and PW not in "".join(said)
    finally:
        stop()


def test_serve_with_a_refused_login_is_one_line(cluster: Cluster, tmp_path: Path) -> None:
    """A wrong password or a role that is not there: ``lineside serve`` said "cannot be
    reached" with libpq's words; now one line (exit 2) naming the login and what to fix,
    without the password."""
    config = tmp_path / "serve.yaml"
    runner = CliRunner()
    for user, password in (("lineside", "Wrong-Pw-42x"), ("nobody", PW)):
        config.write_text(f"database_url: {cluster.url(user, password)}\n"
                          f"data_dir: {tmp_path / 'data'}\nmodels: [{MODEL}]\n")
        result = runner.invoke(app, ["serve", "--config", str(config)])
        out = result.output.strip()
        assert result.exit_code == 2 and len(out.splitlines()) == 1, out
        assert f"the server's database postgresql+psycopg://127.0.0.1:{cluster.port}/ls " \
               "refused the login (wrong password or no such role" in out, out
        assert "fix database_url's credentials" in out and f'for user "{user}"' in out, out
        assert "cannot be reached" not in out and password not in out, out


class _Said(Exception):
    def __init__(self, words: str, sqlstate: str | None = None) -> None:
        super().__init__(words)
        self.sqlstate = sqlstate


def test_what_is_taken_for_a_refused_login() -> None:
    """PostgreSQL's codes (28P01, 28000) where a driver gives them, else its own words;
    a database that is not there, or a server down, is not a refused login."""
    assert login_refused(_Said("x", "28P01")) and login_refused(_Said("x", "28000"))
    assert login_refused(_Said('failed: FATAL:  no pg_hba.conf entry for host "127.0.0.1"'))
    assert login_refused(_Said('failed: FATAL:  role "gone" does not exist'))
    assert not login_refused(_Said('failed: FATAL:  database "ls" does not exist'))
    assert not login_refused(_Said("failed: Connection refused", "08006"))
    # (a code decides alone; without one, only what the server said FATAL: attack pass)
    assert not login_refused(_Said('x password authentication failed for user "y"', "57014"))
    assert not login_refused(_Said('failed: FATAL:  database "no pg_hba.conf entry for" does not exist'))
    assert login_refused(_Said('failed: FATAL:  Peer authentication failed for user "x"'))
    assert login_refused(_Said("failed: fe_sendauth: no password supplied"))
    assert not login_refused(None)


def test_only_what_the_server_said_fatal_is_a_refused_login(cluster: Cluster) -> None:
    """Attack pass, session 50: the login's words were matched anywhere in a driver's
    text. A database that is not there, named "password authentication failed for user
    x", was said as a refused login ("fix database_url's credentials"), and so was an
    error of a running session (a code of its own) whose text held the words. The code
    decides where there is one; without one, only what the server said FATAL."""
    from sqlalchemy.exc import OperationalError

    from lineside_inspect.errors import DatabaseUnavailable
    from lineside_inspect.store.checks import check_database

    named = "password authentication failed for user x"
    with pytest.raises(DatabaseUnavailable) as err:
        check_database(cluster.url().replace("/ls", "/" + named.replace(" ", "%20")))
    assert "cannot be reached" in str(err.value) and "does not exist" in str(err.value)
    assert "refused the login" not in str(err.value) and PW not in str(err.value)
    engine = create_engine(cluster.url())
    try:
        with engine.connect() as c, pytest.raises(OperationalError) as raised:
            c.execute(text(f"DO $$ BEGIN RAISE SQLSTATE '57014' USING MESSAGE = '{named}'; "
                           "END $$"))
    finally:
        engine.dispose()
    assert named in str(raised.value.orig) and not login_refused(raised.value.orig)
    with pytest.raises(DatabaseUnavailable) as err:  # (and a wrong password still is one)
        check_database(cluster.url(password="Wrong-Pw-42x"))
    assert "refused the login" in str(err.value) and 'for user "lineside"' in str(err.value)


def test_the_hubs_routes_say_a_refused_login_not_unreachable(
        cluster: Cluster, weed: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Session 51: the hub's box routes (forward, reviews up and down, status, assignment)
    said "the hub's database is unreachable; retry later" of a wrong password, and its
    reviewer routes "the database ... restart the server ... the journal": an operator
    chased the network. Each now says the hub's database refused the login, without the
    password, in the answer or the log."""
    import httpx

    from .test_fleet_hostile_box import _forwarded, _post, _review
    from .test_fleet_sync import KEYS, ServedHub, hub_settings

    cluster.admin("CREATE DATABASE hub OWNER lineside")
    url = cluster.url().replace("/ls", "/hub")
    caplog.set_level(logging.DEBUG)

    def password(new: str) -> None:
        cluster.admin(f"ALTER ROLE lineside PASSWORD '{new}'",
                      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = 'hub'")

    with ServedHub(hub_settings(tmp_path, weed.settings("hub-login"), database_url=url)) as hub:
        held = _forwarded(1)
        assert _post(hub, "box1", "inspections", {"items": [held]}).status_code == 200
        password("Changed-Elsewhere-2")
        box = {"authorization": f"Bearer {KEYS['box1']}"}
        try:
            answers = {
                "ingest": _post(hub, "box1", "inspections", {"items": [_forwarded(2)]}),
                "reviews up": _post(hub, "box1", "reviews", {"items": [_review(1, held["id"])]}),
                "reviews down": httpx.get(f"{hub.url}/fleet/v1/boxes/box1/hub-reviews",
                                          headers=box, timeout=30),
                "status": _post(hub, "box1", "status", {"version": "x", "models": [], "ready": True,
                                                       "forward_backlog": 0}),
                "models": httpx.get(f"{hub.url}/fleet/v1/boxes/box1/assignment?line=l1",
                                    headers=box, timeout=30),
                "reviewer": httpx.get(f"{hub.url}/v1/inspections", timeout=30,
                                      headers={"authorization": f"Bearer {KEYS['qa']}"}),
            }
        finally:
            password(PW)
    for family, r in answers.items():
        assert r.status_code == 503, (family, r.text)
        message = r.json()["error"]["message"]
        assert message.startswith("the hub's database refused the login (wrong password"), \
            (family, message)
        assert "fix the hub's database_url credentials" in message, (family, message)
        assert "unreachable" not in message and "journal" not in message, (family, message)
        assert PW not in r.text and "Changed-Elsewhere" not in r.text, (family, r.text)
    said = [rec.getMessage() for rec in caplog.records]
    assert any("the hub's database is refusing the login" in m
               and 'password authentication failed for user "lineside"' in m for m in said), said
    assert PW not in caplog.text and "Changed-Elsewhere" not in caplog.text


def test_the_hubs_start_with_a_refused_login_is_one_line_naming_each_attempt(
        cluster: Cluster, tmp_path: Path) -> None:
    """``lineside hub`` with a wrong password: one line, exit 2 (as ``lineside serve``).
    Where psycopg tried several addresses (a host that resolves to ::1 and 127.0.0.1, a
    list of hosts), the line was its first: the last attempt's "Connection refused",
    beside "refused the login" (session 51). Now each attempt's reason."""
    closed = free_port()
    config = tmp_path / "hub.yaml"
    for query, said in (
            (f"?host=127.0.0.1:{cluster.port}&host=127.0.0.1:{closed}",
             [f'127.0.0.1:{cluster.port}: password authentication failed for user "lineside"',
              f"127.0.0.1:{closed}: Connection refused"]),
            (f"?host=127.0.0.1:{cluster.port}&host=localhost:{cluster.port}",
             [f"2 attempts (127.0.0.1:{cluster.port}, localhost:{cluster.port}",
              'each: password authentication failed for user "lineside"'])):
        config.write_text(
            f"database_url: postgresql+psycopg://lineside:Wrong-Pw-42x@/hub{query}\n"
            f"data_dir: {tmp_path / 'data'}\nport: {free_port()}\n"
            "objects: {endpoint: '127.0.0.1:9', bucket: hub-login, access_key: a, "
            "secret_key: s}\n")
        result = CliRunner().invoke(app, ["hub", "--config", str(config)])
        out = result.output.strip()
        assert result.exit_code == 2 and len(out.splitlines()) == 1, out
        assert "the hub's database postgresql+psycopg:///hub refused the login" in out, out
        assert all(part in out for part in said), out
        assert "Wrong-Pw-42x" not in out and "Traceback" not in out, out


def test_each_attempt_is_named_whatever_psycopg_said_of_it(tmp_path: Path) -> None:
    """driver_said named only the attempts whose line read "connection failed: ..." with a
    host quoted '...': a Unix socket's ("connection is bad: ..."), a timeout's, a host
    quoted "..." were left out, and the rest said "1 attempts (...), each: Connection
    refused" of two attempts that failed differently (session 51, adversarial pass).
    Real psycopg messages: a socket folder that is not there, a closed loopback port."""
    import psycopg

    from lineside_inspect.store.engine import driver_said

    closed = free_port()
    for hosts, said in ((f"{tmp_path}/none", f"{tmp_path}/none:{closed}: No such file or "
                         f"directory; 127.0.0.1:{closed}: Connection refused"),
                        (f"{tmp_path}/it's\nhere", "; 127.0.0.1:")):
        with pytest.raises(psycopg.OperationalError) as err:
            psycopg.connect(host=f"{hosts},127.0.0.1", port=f"{closed},{closed}", user="u",
                            password="Secret-Pw-1", dbname="d", connect_timeout=5)
        line = driver_said(err.value)
        assert said in line and "attempts (" not in line, line
        assert "\n" not in line and "Secret-Pw-1" not in line, line
