"""Wiring the lifecycle into a server: ``install(app, settings)`` from ``create_app``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lineside_inspect.config import Settings
from lineside_inspect.errors import LinesideError
from lineside_inspect.inspector import fused_name
from lineside_inspect.lifecycle.alarm import FailRateAlarm, judged_by_of
from lineside_inspect.lifecycle.alarm_file import AlarmFile, set_aside
from lineside_inspect.lifecycle.kept import STATE_FILE, KeptModels
from lineside_inspect.lifecycle.manager import Lifecycle
from lineside_inspect.lifecycle.routes import router
from lineside_inspect.recipes import Recipe

log = logging.getLogger("lineside.lifecycle")
ALARM_FILE = Path("lifecycle") / "fail_rate_alarm.json"  # under the server's data_dir


def install(app: Any, settings: Settings) -> Lifecycle:
    """The lifecycle on ``app.state.lifecycle`` (the admin routes activate and roll back
    through it) and its routes; with the store (at start-up) its records, the shadow
    worker, the rollout watch and active-learning capture; with or without it, the
    fail-rate alarm (an output of the inspection service). Call after the store is set up,
    so its start-up hook runs after the store's and its shutdown hook before. The start-up
    hook restores what was loaded and activated over the API before a restart
    (:mod:`lineside_inspect.lifecycle.kept`)."""
    lc = Lifecycle(settings.lifecycle, registry=app.state.registry, data_dir=settings.data_dir,
                   device=settings.device, max_pixels=settings.max_pixels)
    app.state.lifecycle = lc
    # what an admin loaded and activated over the API, restored at start-up (session 47)
    lc.kept = KeptModels(Path(settings.data_dir) / STATE_FILE, models=settings.models,
                         roots=settings.model_root_paths(), registry=app.state.registry,
                         fleet_box=bool(settings.fleet.hub_url))
    alarm_settings = settings.lifecycle.fail_rate_alarm
    alarm_path = Path(settings.data_dir) / ALARM_FILE
    if alarm_settings.enabled:
        service = app.state.service

        def judging_now(name: str) -> tuple[Recipe, str] | None:
            try:
                rule, detector, anomaly = service.models_for(name)
            except LinesideError:  # dropped, or its model is gone
                return None
            card = detector.card
            return rule, judged_by_of(card.name, card.version, fused_name(detector, anomaly))

        lc.alarm = FailRateAlarm(alarm_settings, metrics=app.state.metrics,
                                 on_change=lc.alarm_changed, judging_now=judging_now)
        service.add_output(lc.alarm.offer)
        if alarm_settings.save_every_s > 0:
            saved = AlarmFile(lc.alarm, alarm_path, alarm_settings.save_every_s)
            saved.load()  # before any inspection is counted
            app.state.on_startup.append(saved.start)
            app.state.on_shutdown.append(saved.close)  # after the inspections drained
    if (not alarm_settings.enabled or alarm_settings.save_every_s == 0) and alarm_path.exists():
        # counts saved before would be resumed, stale, once saving is on again
        set_aside(alarm_path, "its counts are not saved now (lifecycle.fail_rate_alarm: "
                              "enabled false or save_every_s 0), so the ones saved before are "
                              "not resumed", ".unused")

    def start() -> None:
        if app.state.store is not None:
            lc.attach(app.state.store, app.state.service)
        # before a fleet box's pulled models (its hook runs after this one) and the recipes
        # put over the API (loaded after the start-up hooks: an activation checks them in
        # their place, and one may pin a version restored here)
        saved = getattr(app.state, "saved_recipes", None)
        assert lc.kept is not None
        lc.kept.restore(lc, [] if saved is None else [s.recipe for s in saved.load()])

    def ready() -> None:  # what judges once every start-up hook ran (a fleet box restores)
        unknown = sorted(set(settings.lifecycle.gate.golden) - set(app.state.registry.models()))
        if unknown:
            # a warning, not a refusal: a model may be loaded (or pulled) later
            log.warning("lifecycle.gate.golden names a golden set for model(s) this server "
                        "does not hold: %s (applied once loaded)", ", ".join(unknown))
        if lc.alarm is not None:
            lc.alarm.resume()  # resumed counts against what judges now
        if app.state.store is not None:
            lc.record_startup()

    app.state.on_startup.append(start)
    app.state.on_ready.append(ready)
    app.state.on_shutdown.append(lc.close)
    app.include_router(router)
    return lc
