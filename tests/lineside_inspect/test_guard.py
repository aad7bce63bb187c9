"""Host and Origin checks (server/guard.py) on a real server: DNS rebinding and pages of
other origins driving a keyless server, and the same cross-origin refusal with keys."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from lineside_inspect.server.guard import split_host

ROOT = Path(__file__).resolve().parents[2]
TWO_VERSIONS = [str(ROOT / "models" / "deeppcb" / "1"), str(ROOT / "models" / "deeppcb" / "1-int8")]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROLLBACK = "/v1/models/deeppcb/rollback"


def _active(srv) -> str:
    return srv.app.state.registry.models()["deeppcb"].active


def _port(srv) -> int:
    port = urlsplit(srv.url).port
    assert port is not None
    return port


def _error(r: httpx.Response) -> str:
    return r.json()["error"]["code"]


@pytest.fixture
def keyless(launch):
    return launch(keys=False, models=TWO_VERSIONS, store=False)


def test_keyless_answers_only_loopback_host_names(keyless) -> None:
    port = _port(keyless)
    with keyless.client() as c:
        for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST",
                     f"[::1]:{port}", "[::1]", "127.0.0.2:80"):
            r = c.get("/healthz", headers={"host": host})
            assert r.status_code == 200, host
        for host in (f"attacker.example:{port}", "attacker.example", f"localhost.attacker.example:{port}",
                     "127.0.0.1.nip.io", "10.0.0.5", f"127.0.0.1:{port}x", "[::1", ""):
            r = c.get("/healthz", headers={"host": host})
            assert r.status_code == 421, host
            assert _error(r) == "invalid_host"
            assert r.headers["content-type"] == "application/json"
        # a rebound name cannot change anything either
        active = _active(keyless)
        r = c.post(ROLLBACK, headers={"host": f"rebind.attacker.example:{port}"})
        assert r.status_code == 421 and _active(keyless) == active


def test_allowed_hosts_extend_the_keyless_list(launch) -> None:
    srv = launch(keys=False, store=False, allowed_hosts=["linepc.local"])
    with srv.client() as c:
        assert c.get("/healthz", headers={"host": "linepc.local:8000"}).status_code == 200
        assert c.get("/healthz", headers={"host": "other.local:8000"}).status_code == 421


def test_keyless_refuses_state_changes_from_other_origins(keyless) -> None:
    port = _port(keyless)
    active = _active(keyless)
    with keyless.client() as c:
        for headers in ({"origin": "http://attacker.example"},
                        {"origin": f"http://127.0.0.1:{port + 1}"},  # another port: another origin
                        {"origin": f"https://127.0.0.1:{port}"},  # another scheme
                        {"origin": "null"},  # sandboxed frames, file:// pages
                        {"origin": "garbage"},
                        {"sec-fetch-site": "cross-site"},
                        {"sec-fetch-site": "same-site"},
                        {"origin": "null", "sec-fetch-site": "cross-site"}):
            r = c.post(ROLLBACK, headers=headers)
            assert r.status_code == 403, headers
            assert _error(r) == "foreign_origin"
            for method in ("PUT", "PATCH", "DELETE"):
                assert c.request(method, "/v1/recipes/x", headers=headers).status_code == 403
        assert _active(keyless) == active
        # reads are not refused (a browser keeps their answers from the foreign page)
        assert c.get("/healthz", headers={"origin": "http://attacker.example"}).status_code == 200
        # the server's own pages (same origin, also as localhost) and non-browser clients may
        r = c.post(ROLLBACK, headers={"origin": keyless.url, "sec-fetch-site": "same-origin"})
        assert r.status_code == 200 and _active(keyless) != active
        r = c.post("/v1/models/deeppcb/activate", json={"version": active},
                   headers={"host": f"localhost:{port}", "origin": f"http://localhost:{port}"})
        assert r.status_code == 200 and _active(keyless) == active
        assert c.post(ROLLBACK).status_code == 200  # curl: no Origin, no Sec-Fetch-Site
        # our own forms under Referrer-Policy: no-referrer arrive as Origin: null, same-origin
        r = c.post("/v1/models/deeppcb/activate", json={"version": active},
                   headers={"origin": "null", "sec-fetch-site": "same-origin"})
        assert r.status_code == 200


def test_cors_origins_may_change_state(launch) -> None:
    srv = launch(keys=False, models=TWO_VERSIONS, store=False, cors_origins=["http://hmi.example:3000"])
    with srv.client() as c:
        r = c.post(ROLLBACK, headers={"origin": "http://hmi.example:3000", "sec-fetch-site": "cross-site"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://hmi.example:3000"
        assert c.post(ROLLBACK, headers={"origin": "http://hmi.example:3001"}).status_code == 403


def test_keyed_server_refuses_foreign_origins_but_any_host(launch) -> None:
    srv = launch(models=TWO_VERSIONS, store=False)
    active = _active(srv)
    with srv.client("admin") as c:
        assert c.get("/healthz", headers={"host": "edge-box.plant.example"}).status_code == 200
        r = c.post(ROLLBACK, headers={"origin": "http://attacker.example"})
        assert r.status_code == 403 and _error(r) == "foreign_origin"
        assert _active(srv) == active
        assert c.post(ROLLBACK).status_code == 200


def test_split_host() -> None:
    assert split_host("LocalHost:8000") == ("localhost", 8000)
    assert split_host("[::1]:80") == ("::1", 80)
    assert split_host("[::1]") == ("::1", None)
    assert split_host("127.0.0.1") == ("127.0.0.1", None)
    for bad in ("", "[::1", "a:b", "a:123456", "[::1]x", "a:"):
        assert split_host(bad) is None, bad


# ---------------------------------------------------------------- a real browser


ATTACK = """<!doctype html><title>cat pictures</title><script>
fetch("{target}{path}", {{method: "POST", mode: "no-cors"}})
  .finally(() => {{ document.title = "sent"; }});
</script>"""


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass


@contextmanager
def _serve(folder: Path) -> Iterator[str]:
    """Another web site on loopback: Python's http.server on a port of its own."""
    handler = partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_a_page_of_another_origin_cannot_roll_back(keyless, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    (tmp_path / "index.html").write_text(ATTACK.format(target=keyless.url, path=ROLLBACK))
    active = _active(keyless)
    answers: list[int] = []
    with _serve(tmp_path) as site, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.on("response", lambda r: answers.append(r.status) if ROLLBACK in r.url else None)
        page.goto(site + "/index.html")
        expect(page).to_have_title("sent")
        browser.close()
    assert answers == [403]  # the request went out, and the server refused it
    assert _active(keyless) == active
