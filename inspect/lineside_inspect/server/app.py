"""The FastAPI application: ``create_app(settings)``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from lineside_inspect import ui
from lineside_inspect.config import Settings
from lineside_inspect.errors import LinesideError
from lineside_inspect.names import NAME_RULE
from lineside_inspect.package import default_recipe_name
from lineside_inspect.recipes import Recipe, load_recipe
from lineside_inspect.recipes.saved import SavedRecipes
from lineside_inspect.recipes.schema import check_distinct
from lineside_inspect.references import ReferenceLibrary
from lineside_inspect.server import gate
from lineside_inspect.server.guard import Guard
from lineside_inspect.server.handlers import add_error_handlers
from lineside_inspect.server.headers import SecurityHeaders
from lineside_inspect.server.limiter import Limiter
from lineside_inspect.server.metrics import Metrics
from lineside_inspect.server.oip_errors import OipErrors
from lineside_inspect.server.registry import Registry
from lineside_inspect.server.responses import operation_id
from lineside_inspect.server.routes import (
    admin,
    cameras,
    health,
    inspect,
    inspections,
    pages,
    references,
    v2,
)
from lineside_inspect.server.service import InspectionService
from lineside_inspect.server.sessions import SessionStore
from lineside_inspect.server.throttle import SignInThrottle
from lineside_inspect.server.unexpected import CatchUnexpected
from lineside_inspect.server.waiting import add_waiting_recipes, model_missing, waits_for
from lineside_inspect.store.checks import database_address
from lineside_inspect.version import __version__

log = logging.getLogger("lineside")


def load_everything(settings: Settings, registry: Registry) -> None:
    """Load and warm up every configured model, then the recipes (each model's card
    default recipe when none is configured). On a fleet box, a configured recipe whose
    model (or the version it pins, or its good-only partner) no configured package gives
    is not put now but waits (``Registry.waiting``): its model comes from the hub
    (:func:`~lineside_inspect.server.waiting.add_waiting_recipes`)."""
    for path in settings.models:
        registry.load_model(path)
    recipes = [load_recipe(p) for p in settings.recipes]
    configured = [(str(p), r) for p, r in zip(settings.recipes, recipes, strict=True)]
    check_distinct(configured)
    saved = SavedRecipes(settings.saved_recipes_path)
    saved.check_configured(configured)  # (a file edited under a version that judged)
    saved.remember_configured(recipes)
    if not recipes:
        for name, slot in registry.models().items():
            assert slot.active is not None
            card = slot.versions[slot.active].card
            doc = {"name": default_recipe_name(name), "version": "1", "model": name,
                   **card.default_recipe}
            doc["model"] = doc.get("model") or name
            recipes.append(Recipe.model_validate(doc))
    for r in recipes:
        if settings.fleet.hub_url and model_missing(registry, r):
            registry.wait(r, waits_for(r))  # a recipe for a pulled model was a start-up traceback
            continue
        registry.add_recipe(r)
    if settings.default_recipe:
        if settings.default_recipe not in registry.waiting:
            registry.recipe(settings.default_recipe)
        registry.default_recipe = settings.default_recipe
    elif recipes and recipes[0] in registry.waiting_recipes():
        # the first configured recipe is the default, as where its model is configured:
        # the next one put was (a camera without recipe judged with another product's
        # recipe, before the pull and after it); until the pull, a 404 saying it waits
        registry.default_recipe = recipes[0].name
    # the configuration's order, which a recipe put late takes again (a PLC's index)
    registry.configured_order = [r.name for r in recipes]


def load_saved_recipes(app: FastAPI) -> None:
    """The recipes put over the API (recipes/saved.py), over the ones the server holds of
    the same name: the configuration's, a model card's, and a fleet box's pulled models'
    (so this runs after the start-up hooks, once a box restored its models). One that no
    longer fits (its model gone, a camera's config changed) is logged and left out, not a
    reason to refuse to start; the recipe it replaced stays. Under the saved recipes'
    lock: a fleet box's first pull (its thread starts with the start-up hooks) may put a
    waiting configured recipe meanwhile (:func:`add_waiting_recipes`)."""
    with app.state.saved_recipes.lock:
        _load_saved_recipes(app)


def _load_saved_recipes(app: FastAPI) -> None:
    registry: Registry = app.state.registry
    app.state.configured_recipes = {r.name: r for r in registry.recipes()}
    for saved in app.state.saved_recipes.load():
        recipe, name = saved.recipe, saved.recipe.name
        try:
            app.state.service.check_recipe_for_cameras(recipe)
            registry.add_recipe(recipe)
        except LinesideError as exc:
            log.warning("recipe %s put over the API (by %s, %s) is not loaded: %s. The "
                        "recipes put after it come one place earlier in the load order (a "
                        "Modbus PLC's recipe index). PUT it again, or DELETE "
                        "/v1/recipes/%s to drop it", name, saved.put_by, saved.put_at,
                        exc.message, name)
            continue
        app.state.api_recipes.add(name)
        replaces = (" in place of the server's own" if name in app.state.configured_recipes
                    else "")
        log.info("recipe %s version %s: the one put over the API (by %s, %s)%s",
                 name, recipe.version, saved.put_by, saved.put_at, replaces)


def setup_store(app: FastAPI, settings: Settings) -> None:
    from pathlib import Path

    from lineside_inspect.store import DataDirLock, Store
    from lineside_inspect.store.box import refuse_hub_id

    # before the lock and the models: a box named hub took the hub's reviewers for its
    # own (its id is the one it files the hub's reviews under; session 51)
    refuse_hub_id(Path(settings.data_dir), settings.box_id)
    # the data folder is locked now, before models load: a second server on the same
    # folder stops here, before its start-up cleanup can take live files for orphans
    lock = DataDirLock(settings.data_dir).acquire()

    guard: str | None = None
    if settings.fleet.hub_url:  # rows not forwarded yet are kept from the first retention on
        from lineside_inspect.fleet.box.forward import CHANNEL

        guard = CHANNEL

    def start() -> None:
        store = Store(settings.data_dir, settings.database_url,
                      pass_rate=settings.store_pass_rate, max_bytes=settings.store_max_bytes,
                      max_age_days=settings.store_max_age_days, box_id=settings.box_id, lock=lock,
                      sync_interval_s=settings.store_sync_interval_s,
                      apply_interval_s=settings.store_apply_interval_s, guard_channel=guard)
        # no user, password or query (a password, or the options, may sit there: session 51)
        log.info("store at %s, box %s: %s", database_address(store.url)[0], store.box_id,
                 store.cleanup())
        app.state.store = store
        app.state.service.store = store

    def stop() -> None:
        if app.state.store is not None:
            app.state.store.close()
        lock.release()

    def publish_refused() -> None:
        if app.state.store is not None:
            store = app.state.store
            app.state.metrics.store_refused.set(store.refused_count())
            app.state.metrics.store_writer_failing.set(1 if store.writer_failing else 0)
            app.state.metrics.store_unapplied.set(store.unapplied)

    app.state.on_startup.append(start)
    app.state.on_shutdown.append(stop)
    app.state.metrics_hooks.append(publish_refused)


def setup_cameras(app: FastAPI, settings: Settings) -> None:
    """Start camera workers after the models load; stop them (within 2 s) on shutdown.
    Continuous cameras are inspected by the service (see ``InspectionService``)."""
    from lineside_inspect.cameras import CameraManager

    manager = CameraManager(settings.cameras, max_pixels=settings.max_pixels)
    app.state.cameras = manager
    app.state.service.cameras = manager

    def publish_health() -> None:
        m = app.state.metrics
        for h in manager.health():
            m.camera_state.labels(h["id"]).set(1 if h["state"] == "online" else 0)
            m.camera_fps.labels(h["id"]).set(h["fps"])
            m.camera_reconnects.labels(h["id"]).set(h["reconnects"])

    app.state.on_startup.append(manager.start)
    # on SIGTERM, as live views end: a trigger waiting on a stalled camera held the stop
    # for its whole timeout_s (31 s with timeout_s=30, past docker stop's 10 s)
    app.state.on_signal.append(manager.close)
    app.state.on_shutdown.append(lambda: manager.stop(2.0))
    app.state.metrics_hooks.append(publish_health)


DRAIN_THREADS_S = 10.0  # shutdown waits this long for inspections in their threads


def ready_line(registry: Registry) -> str:
    """What the "lineside ready" line names: each model's active version, then each recipe
    that tiles, with its tile and overlap (a tiled frame costs a pass a tile: its infer time
    is many times ``bench model``'s); recipes judging frames whole are not listed."""
    models = ", ".join(f"{n}:{s.active}" for n, s in registry.models().items())
    tiled = [f"recipe {r.name} tiles {r.tiling.tile}/{r.tiling.overlap:g}"
             for r in registry.recipes() if r.tiling is not None]
    return "; ".join([models, *tiled])


def create_app(settings: Settings | None = None, *, registry: Registry | None = None) -> FastAPI:
    settings = settings or Settings()
    registry = registry or Registry(device=settings.device, threads=settings.threads,
                                    spinning=settings.onnx_spinning,
                                    concurrency=settings.max_concurrency,
                                    keep_loaded=settings.keep_loaded)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            app.state.ready = False
            await anyio.to_thread.run_sync(load_everything, settings, registry)
            admin.publish_state(app.state.metrics, registry)
            # a camera whose config contradicts itself (a reference model's recipe and no
            # golden image, or the reverse) stops the server here, before anything started
            await anyio.to_thread.run_sync(app.state.service.check_cameras)
            for hook in app.state.on_startup:
                await anyio.to_thread.run_sync(hook)
            # after the start-up hooks (a fleet box's restored models), before the ready hooks
            # (the fail-rate alarm settles its resumed counts against the recipes loaded then)
            await anyio.to_thread.run_sync(load_saved_recipes, app)
            # the configured recipes of a fleet box's pulled models restored just now; the rest
            # wait for their first pull
            await anyio.to_thread.run_sync(add_waiting_recipes, app)
            for recipe in registry.waiting_recipes():
                log.warning("recipe %s waits for model %s, which no configured package gives: "
                            "it is put when the box pulls it from the hub", recipe.name,
                            recipe.model)
            for hook in app.state.on_ready:
                await anyio.to_thread.run_sync(hook)
            # what a camera still lacks once every hook ran (a recipe a fleet box gets with its
            # first pull, a reference to be registered over the API) is warned about, not
            # refused: the server must run for it to come
            await anyio.to_thread.run_sync(app.state.service.warn_cameras)
            app.state.service.start_continuous()
        except (LinesideError, OSError) as exc:
            # an operator's mistake found at start-up (a camera's config contradicting
            # itself, a folder the system refused): the runner (serve.run) says it in one
            # line and exits 2, as for those found before; uvicorn's traceback and exit 3
            # for anything else (session 50)
            app.state.startup_error = exc
            raise
        app.state.ready = True
        log.info("lineside ready: %s", ready_line(registry))
        try:
            yield
        finally:
            app.state.ready = False
            # first of all, before the drain below (up to DRAIN_THREADS_S) and the other
            # hooks: the PLC stations stop taking triggers and answer their open parts
            for hook in app.state.on_stopping:
                await anyio.to_thread.run_sync(hook)
            await app.state.service.stop_continuous()
            # inspections still in their threads (their requests may be cancelled) save
            # to the store: it closes after them
            if not await anyio.to_thread.run_sync(app.state.limiter.drain, DRAIN_THREADS_S):
                log.warning("shutdown: inspections still running after %.0f s; the store "
                            "closes anyway and answers them not stored", DRAIN_THREADS_S)
            for hook in reversed(app.state.on_shutdown):
                await anyio.to_thread.run_sync(hook)
            app.state.limiter.close()

    app = FastAPI(title="Lineside", version=__version__, lifespan=lifespan,
                  generate_unique_id_function=operation_id,
                  docs_url=None, redoc_url=None,  # ui serves /docs from local files; no ReDoc
                  description="Automated visual inspection at the line: frames in, verdicts out.",
                  # the server's figures are Prometheus' (/metrics); FastAPI's OpenTelemetry
                  # hooks, with no provider configured, looked for one on every request
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.settings = settings
    app.state.registry = registry
    app.state.limiter = Limiter(settings.max_concurrency, settings.max_queue,
                                settings.request_timeout_s, per_holder=settings.places_per_key)
    app.state.metrics = Metrics()
    app.state.references = ReferenceLibrary(settings.references_path, settings.max_pixels)
    if ignored := app.state.references.ignored():
        log.warning("references: %d file(s) in %s are no reference image (a reference is "
                    "NAME.png, NAME.jpg or NAME.bmp, NAME %s): %s", len(ignored),
                    settings.references_path, NAME_RULE,
                    ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else ""))
    app.state.saved_recipes = SavedRecipes(settings.saved_recipes_path)
    app.state.live_views = cameras.LiveViews(settings.max_live_views)
    app.state.configured_recipes = {}  # the server's own recipes, once it started
    app.state.api_recipes = set()  # names whose recipe now is one put over the API
    app.state.service = InspectionService(
        registry=registry, limiter=app.state.limiter, metrics=app.state.metrics,
        references=app.state.references, max_pixels=settings.max_pixels)
    app.state.ready = False
    app.state.store = None
    app.state.cameras = None
    app.state.startup_error = None  # what ended a failed start-up (see lifespan)
    app.state.on_startup = []
    app.state.on_ready = []  # after every start-up hook (e.g. once a fleet box restored its models)
    app.state.on_stopping = []  # first on shutdown, before inspections drain (PLC stations)
    # async, run as soon as SIGTERM comes (before drain_s; serve.py): the PLC stations stop
    # taking triggers at once rather than after the load balancer's drain
    app.state.on_signal = [app.state.live_views.close]  # live views end at once
    app.state.on_shutdown = []
    # set at each scrape: a version activated off the admin routes (a fleet box's pulled
    # promotion, an automatic rollback, a kept model restored) left lineside_model_info
    # naming the version before it until the next admin call (session 51)
    app.state.metrics_hooks = [
        lambda: app.state.metrics.set_loaded(
            (name, v) for name, slot in registry.models().items() for v in slot.versions),
        lambda: admin.publish_state(app.state.metrics, registry)]
    app.state.sessions = SessionStore(settings.session_ttl_s)  # review sign-ins, in memory
    app.state.sign_ins = SignInThrottle()  # unknown keys per address
    # the inspection route first of the routers: routes are matched in order on every
    # request, and the lifecycle's install below adds a router of its own; behind it an
    # inspection was matched against its 15 routes first (~0.1 ms)
    app.include_router(inspect.router)
    if settings.store:
        setup_store(app, settings)
    if settings.cameras:
        setup_cameras(app, settings)
    if settings.line.mqtt is not None:
        # events over MQTT from the store's outbox: started after the store and cameras,
        # stopped (saying offline) after the PLC handshake ended
        from lineside_inspect.line.mqtt import setup_mqtt

        setup_mqtt(app, settings)
    if settings.line.opcua is not None or settings.line.modbus is not None:
        # the PLC handshake (line room): started after the cameras, stopped before them
        from lineside_inspect.line.plc import setup_line_plc

        setup_line_plc(app, settings)
    # model lifecycle (golden sets, gate, shadow, rollout, capture): after the store, so it
    # starts after it and stops before it
    from lineside_inspect.lifecycle.install import install as install_lifecycle

    install_lifecycle(app, settings)
    if settings.fleet.hub_url:
        # store-and-forward to the hub, review sync, model pulls: after the store and the
        # lifecycle (pulled models activate through it), so they start after them and stop
        # before them
        from lineside_inspect.fleet.box import install as install_fleet

        install_fleet(app, settings)
    gate.install(app, settings)  # auth and body limits before any body is read
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["*"], allow_headers=["*"])
    # outermost (added last): Host and Origin are checked before anything else runs
    app.add_middleware(Guard, settings=settings)
    app.add_middleware(SecurityHeaders)

    add_error_handlers(app)

    for router in (health.router, v2.router, admin.router, cameras.router,
                   inspections.router, references.router, pages.router):
        app.include_router(router)
    app.mount("/static", ui.static, name="static")
    # added last, so outermost: answers what escapes every handler without closing the
    # keep-alive connection (see server/unexpected.py)
    app.add_middleware(CatchUnexpected)
    app.add_middleware(OipErrors)  # /v2's errors in the protocol's shape, whoever made them
    return app
