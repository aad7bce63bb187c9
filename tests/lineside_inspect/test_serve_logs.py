"""The log of a real ``lineside serve`` under a client that sends what it likes (logs
review, session 52): what a client causes without a key is said a few times, not once per
request, and nothing it sends starts a line of its own."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from urllib.parse import quote

import httpx
from sqlalchemy import create_engine, text

from .conftest import KEYS, MODEL, fresh_database
from .server_process import LINESIDE, ROOT, ServerProcess, free_port


def _config(tmp_path: Path, port: int, **extra: object) -> Path:
    config = tmp_path / "serve.yaml"
    config.write_text(json.dumps({
        "port": port, "device": "cpu", "threads": 1, "data_dir": str(tmp_path / "store"),
        "models": [str(MODEL)],
        "recipes": [str(ROOT / "configs" / "recipes" / "deeppcb.yaml")],
        "api_keys": [{"name": role, "role": role, "key": key} for role, key in KEYS.items()],
        **extra}))
    return config


def _send(port: int, *requests: bytes) -> list[bytes]:
    """Each request in turn on one new connection, the next sent once the answer before
    it (a JSON body) arrived; the answers (less if the server closed the connection)."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        for request in requests:
            sock.sendall(request)
            got = b""
            while not got.endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    return [*answers, got] if got else answers
                got += chunk
            answers.append(got)
    return answers


def test_requests_any_client_can_send_are_not_a_log_line_each(tmp_path: Path) -> None:
    """uvicorn logged "Invalid HTTP request received." for each request it could not
    parse (1,700 lines a second from one client, no key needed), and two lines for each
    request asking to upgrade the connection, several per keep-alive connection, one of
    them telling the operator to install a WebSocket library this server has no use for.
    Now each kind is one line (said again each minute with its count) in Lineside's
    format, naming an address."""
    port = free_port()
    env = {**os.environ, "LINESIDE_DRAIN_S": "0"}
    with ServerProcess([*LINESIDE, "serve", "--config", str(_config(tmp_path, port))],
                       tmp_path / "serve.log", port, env=env) as server:
        before = server.output().count("\n")
        bad = (b"GET /\x01 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # a control byte
               b"FOO / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # no such method
               b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\rFORGED line\r\n\r\n",  # bare CR
               b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n")
        for i in range(200):
            [answer] = _send(port, bad[i % len(bad)])
            assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:200]
        upgrade = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
                   b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        for _ in range(5):  # on keep-alive connections: answered as plain HTTP
            answers = _send(port, *[upgrade] * 10)
            assert [a[:12] for a in answers] == [b"HTTP/1.1 200"] * 10, answers
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # it still serves
        added = server.output().splitlines()[before:]
    said = "\n".join(added)
    assert "Invalid HTTP request received" not in said, said
    assert "WebSocket library" not in said and "Unsupported upgrade" not in said, said
    unparsed = [line for line in added if "could not be parsed" in line]
    assert len(unparsed) == 1 and " WARNING " in unparsed[0], said
    assert "answered 400 (one from 127.0.0.1)" in unparsed[0], said
    upgrades = [line for line in added if "upgrade the connection" in line]
    assert len(upgrades) == 1 and " INFO " in upgrades[0], said
    assert "no WebSocket route" in upgrades[0], said
    assert "FORGED" not in said, said
    assert len(added) < 12, said  # those two and the shutdown's few


def test_a_path_in_the_database_outage_line_cannot_start_a_line_or_a_terminal_escape(
        tmp_path: Path, postgres: str) -> None:
    """The URL check refuses C0 controls (CR, LF, ESC...), but a path may hold U+2028,
    U+0085 (line breaks to Python's ``splitlines`` and many log viewers) and U+009B (a
    terminal's CSI): the outage line written at a database's first 503 held the path raw,
    so a reviewer's read of such an id during an outage wrote a line of its choosing."""
    url = fresh_database(postgres)
    name = url.rsplit("/", 1)[1]
    port = free_port()
    config = _config(tmp_path, port, database_url=url)
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    forged = "x\u2028FORGED WARNING a\u0085FORGED b\u009b2J\u2029FORGED"
    try:
        with ServerProcess([*LINESIDE, "serve", "--config", str(config)],
                           tmp_path / "serve.log", port) as server:
            with admin.connect() as c:  # the database goes away under the running server
                c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               f"WHERE datname = '{name}'"))
            r = httpx.get(f"{server.url}/v1/inspections/{quote(forged)}",
                          headers={"X-API-Key": KEYS["reviewer"]}, timeout=60)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "database_unavailable"
            with admin.connect() as c:
                c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            assert httpx.get(f"{server.url}/v1/inspections/{quote(forged)}", timeout=60,
                             headers={"X-API-Key": KEYS["reviewer"]}).status_code == 404
        said = server.output()
    finally:
        admin.dispose()
    outage = [line for line in said.split("\n") if "/v1/inspections/" in line]
    assert outage and any("the database is unreachable" in line for line in outage), said
    assert all(repr(f"/v1/inspections/{forged}") in line for line in outage), outage
    assert not any(c in said for c in "\u2028\u2029\u0085\u009b"), said
    assert not [line for line in said.splitlines() if line.startswith("FORGED")], said


def test_a_flood_of_client_warnings_that_stops_has_its_count_said(tmp_path: Path) -> None:
    """A flood of unparseable requests and of upgrade requests was one line each: their
    count was said only with the next such request a minute or more later, or, when none
    came (or the server stopped), never (adversarial read, session 52). Now each kind's
    count is said once none came for a minute, and at the latest when the server stops."""
    port = free_port()
    env = {**os.environ, "LINESIDE_DRAIN_S": "0"}
    server = ServerProcess([*LINESIDE, "serve", "--config", str(_config(tmp_path, port))],
                           tmp_path / "serve.log", port, env=env)
    with server:
        for _ in range(30):
            [answer] = _send(port, b"FOO / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        upgrade = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
                   b"Upgrade: h2c\r\n\r\n")
        assert len(_send(port, *[upgrade] * 4)) == 4
        server.stop()
    said = server.output()
    unparsed = [line for line in said.splitlines() if "could not be parsed" in line]
    assert len(unparsed) == 2 and " WARNING " in unparsed[1], said
    assert "answered 400: 30 in all, 29 not said one by one (the server stopping)" in unparsed[1], said
    upgrades = [line for line in said.splitlines() if "upgrade the connection" in line]
    assert len(upgrades) == 2 and " INFO " in upgrades[1], said
    assert ": 4 in all, 3 not said one by one (the server stopping)" in upgrades[1], said


def test_one_client_warning_alone_is_said_once(tmp_path: Path) -> None:
    """A single unparseable request is its one line: no count line follows at shutdown."""
    port = free_port()
    env = {**os.environ, "LINESIDE_DRAIN_S": "0"}
    server = ServerProcess([*LINESIDE, "serve", "--config", str(_config(tmp_path, port))],
                           tmp_path / "serve.log", port, env=env)
    with server:
        [answer] = _send(port, b"FOO / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        server.stop()
    unparsed = [line for line in server.output().splitlines() if "could not be parsed" in line]
    assert len(unparsed) == 1 and "(one from 127.0.0.1)" in unparsed[0], server.output()
