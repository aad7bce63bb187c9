"""Running the server under uvicorn with a graceful shutdown: readiness drops first,
in-flight requests finish, then the process exits."""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn
from fastapi import FastAPI

from lineside_inspect.config import Settings
from lineside_inspect.server.app import create_app

log = logging.getLogger("lineside")


class _Server(uvicorn.Server):
    drain_s = 0.5

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.app
        if app.state.ready:
            # readiness drops first and the server keeps serving for drain_s, so a load
            # balancer stops sending before we stop accepting; then uvicorn's own graceful
            # shutdown lets in-flight requests finish
            app.state.ready = False
            log.info("shutting down: readiness dropped, draining for %.1fs", self.drain_s)
            asyncio.get_running_loop().call_later(self.drain_s, super().handle_exit, sig, frame)
            return
        super().handle_exit(sig, frame)


def run(settings: Settings) -> None:
    settings.check_bind()
    if not settings.api_keys:
        log.warning("no API keys configured: auth is off, listening on loopback only")
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                            timeout_graceful_shutdown=30, access_log=False)
    _Server(config, app).run()
