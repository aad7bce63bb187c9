"""The hub's FastAPI application: ``create_hub_app(settings)``.

The same HTTP front as the edge server: the gate (auth and body limits before a body is
read), the guard (Host and Origin), review sessions, the error answers and the catch-all
for the unexpected; around the hub's routers, one module per concern in this package:
``ingest`` (forwarded inspections), ``reviews`` and ``boxes`` (the plant view), ``models``
(model distribution). A module that is not there yet is left out; each one has a
``router`` and may have ``install(app, settings)`` for its start and stop hooks.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from lineside_inspect.errors import (
    ObjectStoreUnavailable,
)
from lineside_inspect.fleet.hub.config import HUB_DATABASE_KEEPS, HUB_DATABASE_WORDS, HubSettings
from lineside_inspect.fleet.hub.dblock import HubDatabaseLock
from lineside_inspect.fleet.hub.front import BoxFront, HubFeatures
from lineside_inspect.fleet.hub.images import ObjectImages
from lineside_inspect.fleet.hub.tables import create_hub_tables
from lineside_inspect.fleet.objects import ObjectStore
from lineside_inspect.server import gate
from lineside_inspect.server.guard import Guard
from lineside_inspect.server.handlers import add_error_handlers
from lineside_inspect.server.headers import SecurityHeaders
from lineside_inspect.server.metrics import Metrics
from lineside_inspect.server.responses import operation_id
from lineside_inspect.server.routes import health
from lineside_inspect.server.sessions import SessionStore
from lineside_inspect.server.throttle import SignInThrottle
from lineside_inspect.server.unexpected import CatchUnexpected
from lineside_inspect.store.checks import check_data_dir, check_database, database_address
from lineside_inspect.store.models import HUB_BOX_ID  # the hub store's own name
from lineside_inspect.version import __version__

log = logging.getLogger("lineside.hub")
# the hub's router modules (lineside_inspect.fleet.hub.<name>), included when present
ROUTER_MODULES = ("ingest", "reviews", "boxes", "models")


def router_modules() -> list[ModuleType]:
    """The router modules that exist; a module that fails to import for any other reason
    than being absent is an error (not silently left out)."""
    found = []
    for name in ROUTER_MODULES:
        full = f"{__package__}.{name}"
        try:
            found.append(importlib.import_module(full))
        except ModuleNotFoundError as exc:
            if exc.name != full:
                raise
    return found


def setup_store(app: FastAPI, hub: HubSettings) -> None:
    """The hub's Store (records in ``database_url``, images in the object store) and the
    object store, made at start-up; an object store that is down does not stop the hub
    (forwarding answers 503 until it is back)."""
    from lineside_inspect.store import DataDirLock, Store

    lock = DataDirLock(hub.data_dir).acquire()  # one hub per folder, checked before anything
    # and one hub process per database (dblock.py: its review ids in commit order)
    held = getattr(app.state, "db_lock", None)
    db_lock: list[HubDatabaseLock] = [] if held is None else [held]

    def start() -> None:
        objects = ObjectStore(hub.objects)
        try:
            objects.ensure_bucket()
        except ObjectStoreUnavailable as exc:
            log.info("hub: %s at start; forwarding waits for it", exc.message)  # (said: objects.py)
        store = Store(hub.data_dir, hub.database_url, box_id=HUB_BOX_ID, lock=lock,
                      pass_rate=0.0, images=ObjectImages(objects))
        if not db_lock:  # an app run_hub did not make (it takes the lock before serving)
            try:
                db_lock.append(HubDatabaseLock(hub.database_url).acquire())
            except BaseException:
                store.close()
                raise
        create_hub_tables(store.engine)
        # no user, password or query: a password (or options) may sit there (session 51)
        log.info("hub store at %s, objects in %s/%s", database_address(store.url)[0],
                 hub.objects.endpoint, hub.objects.bucket)
        app.state.objects = objects
        app.state.store = store
        if hub.retention_days is not None:
            from lineside_inspect.fleet.hub.retention import HubRetention

            app.state.retention = HubRetention(store, objects, hub.retention_days,
                                               hub.retention_interval_s, app.state.metrics)
            app.state.retention.start()

    def stop() -> None:
        if app.state.retention is not None:
            app.state.retention.stop()
        for held in db_lock:
            held.release()
        if app.state.store is not None:
            app.state.store.close()  # releases the lock
        else:
            lock.release()

    app.state.on_startup.append(start)
    app.state.on_shutdown.append(stop)


class DatabaseProbe:
    """Whether the hub's database answers, for ``/readyz``: it said ready while PostgreSQL
    was down and every route answered 503. One ``SELECT 1`` at a time, started at most
    once per ``every_s`` (probes come often); until it ends the last answer stands, and
    one still running after ``timeout_s`` makes the answer "down" (its thread ends when
    the connection attempt does, ``CONNECT_TIMEOUT_S`` at most; none starts meanwhile)."""

    def __init__(self, app: FastAPI, every_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self.app = app
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.answer = True
        self.at = -math.inf
        self.running = threading.Event()  # a ping's thread is alive

    async def __call__(self) -> bool:
        if self.running.is_set() or anyio.current_time() - self.at < self.every_s:
            return self.answer
        self.running.set()
        self.at = anyio.current_time()
        with anyio.move_on_after(self.timeout_s) as waited:
            self.answer = await anyio.to_thread.run_sync(self._ping, abandon_on_cancel=True)
        if waited.cancelled_caught:
            self.answer = False
        return self.answer

    def _ping(self) -> bool:
        try:
            store = self.app.state.store
            if store is None:
                return False
            with store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except OperationalError:
            return False
        finally:  # the thread's end, not the wait's: no second ping while one hangs
            self.running.clear()


def create_hub_app(hub: HubSettings, db_lock: HubDatabaseLock | None = None) -> FastAPI:
    """The hub's app; ``db_lock``: the database's hub lock already held (``run_hub``),
    else taken as the store opens and released as it closes."""
    settings = hub.server_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ready = False
        for hook in app.state.on_startup:
            await anyio.to_thread.run_sync(hook)
        app.state.ready = True
        log.info("lineside hub ready on %s:%d", hub.host, hub.port)
        try:
            yield
        finally:
            app.state.ready = False
            for hook in reversed(app.state.on_shutdown):
                await anyio.to_thread.run_sync(hook)

    app = FastAPI(title="Lineside hub", version=__version__, lifespan=lifespan,
                  generate_unique_id_function=operation_id,
                  docs_url=None, redoc_url=None,
                  description="The fleet hub: every box's inspections, one plant view.")
    # the shared HTTP parts (gate, guard, key lookup, sessions) read app.state.settings
    app.state.settings = settings
    app.state.hub = hub
    app.state.db_lock = db_lock
    # a refused login's 503: the hub's database, and what to fix (session 51)
    app.state.database_words = HUB_DATABASE_WORDS
    app.state.database_keeps = HUB_DATABASE_KEEPS  # (no journal: session 52)
    app.state.metrics = Metrics()
    app.state.metrics_hooks = []
    app.state.sessions = SessionStore(settings.session_ttl_s)
    app.state.sign_ins = SignInThrottle()  # unknown keys per address
    app.state.ready = False
    app.state.ready_probe = DatabaseProbe(app)
    app.state.store = None
    app.state.objects = None
    app.state.retention = None
    app.state.on_startup = []
    app.state.on_shutdown = []
    setup_store(app, hub)
    app.include_router(health.router)
    for module in router_modules():
        install = getattr(module, "install", None)
        if install is not None:
            install(app, hub)
        app.include_router(module.router)
    gate.install(app, settings)  # auth and body limits before any body is read
    # before the gate: a box route's box id, and the forward route's admission
    app.add_middleware(BoxFront, max_forward_bodies=hub.max_forward_bodies,
                       metrics=app.state.metrics)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(Guard, settings=settings)  # Host and Origin first
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HubFeatures)  # what it takes from boxes, on every answer
    add_error_handlers(app)
    app.add_middleware(CatchUnexpected)
    return app


def run_hub(hub: HubSettings) -> None:
    """Serve the hub under uvicorn with the edge server's connection limits."""
    from lineside_inspect.serve import _Server, listen, uvicorn_config, warn_auth_off

    settings = hub.server_settings()
    settings.check_bind()
    # reads; and the hub's user may write it and its folders (session 50)
    check_database(hub.database_url, "the hub's database", data_dir=hub.data_dir, write=True)
    check_data_dir(hub.data_dir, "the hub's data_dir")
    sock = listen(settings)  # a port in use said before the database is made
    # one hub process per database: a second one said in one line, before it serves
    db_lock = HubDatabaseLock(hub.database_url).acquire()
    try:
        warn_auth_off(settings, "publish and assign models, and read every plant's inspections")
        app = create_hub_app(hub, db_lock=db_lock)
        _Server(uvicorn_config(app, settings), app, drain_s=settings.drain_s).run(sockets=[sock])
    finally:
        db_lock.release()
