"""The box side of the fleet, wired into the edge server by :func:`install` (called by
``server/app.py`` when ``fleet.hub_url`` is set).

One :class:`~lineside_inspect.fleet.box.client.HubClient` per box (``app.state.hub_client``),
made once the store is open (its box id is the key's name on the hub); then each part
starts: the forwarder (``forward.py``: store-and-forward of inspections), the review sync
and status reports (``reviews.py``, ``status.py``) and model pulls (``models.py``). They
stop in reverse order, before the store closes. Nothing here ever blocks a verdict: a hub
that is down only grows the backlog.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from lineside_inspect.config import Settings

log = logging.getLogger("lineside.fleet")


def install(app: FastAPI, settings: Settings) -> None:
    from lineside_inspect.fleet.box.client import HubClient
    from lineside_inspect.fleet.box.forward import Forwarder, forward_events

    fleet = settings.fleet
    if not fleet.hub_url:
        return
    app.state.hub_client = None
    app.state.forwarder = None

    def start() -> None:
        store = app.state.store
        if store is None:
            log.warning("fleet: hub_url is set but this server keeps no store: nothing to forward")
            return
        store.site, store.line = fleet.site, fleet.line
        if fleet.token is None:  # the hub refuses every call: say what to set, once
            log.error("fleet: fleet.token is not set: the hub refuses every call of box %s "
                      "(401); set fleet.token (or LINESIDE_FLEET__TOKEN) to the box's key on "
                      "the hub (role box, named %s)", store.box_id, store.box_id)
        client = HubClient(fleet, store.box_id)
        app.state.hub_client = client
        forwarder = Forwarder(store, client, fleet, app.state.metrics)
        # the fleet event is journaled with each inspection: forwarding survives kill -9
        store.event_makers.append(forward_events)
        store.outbox_listeners.append(forwarder.wake)
        store.guard_channel = forwarder.channel
        forwarder.start()
        app.state.forwarder = forwarder
        app.state.metrics_hooks.append(forwarder.refresh_gauges)
        log.info("fleet: box %s forwards to %s (site %s, line %s)", store.box_id,
                 client.shown_url, fleet.site, fleet.line)

    def stop() -> None:
        if app.state.forwarder is not None:
            app.state.forwarder.stop()
        if app.state.hub_client is not None:
            app.state.hub_client.close()

    app.state.on_startup.append(start)
    app.state.on_shutdown.append(stop)
    from lineside_inspect.fleet.box.routes import router

    app.include_router(router)  # set-aside inspections (the hub refused them)
    # model pulls (models.py): start after the hub client is made, stop before it closes
    from lineside_inspect.fleet.box.models import setup as setup_models

    setup_models(app, settings)
    # reviews both ways and status reports (reviews.py, status.py): start after the hub
    # client is made, stop before it closes
    from lineside_inspect.fleet.box.reviews import setup as setup_reviews
    from lineside_inspect.fleet.box.status import setup as setup_status

    setup_reviews(app, settings)
    setup_status(app, settings)
