"""The PLC handshake at run time: one :class:`Station` per configured camera, shown to
PLCs by the protocol adapters (OPC UA, Modbus TCP), all on the server's event loop.

A trigger runs ``InspectionService.inspect_camera`` as a task on that loop: the same path
as ``POST /v1/cameras/{id}/trigger`` (recipe, pinned detector, limiter, store, outputs),
with no route in between and no thread held while it waits for a frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from lineside_inspect.errors import (
    CameraUnavailable,
    ConfigError,
    DeadlineExceeded,
    LinesideError,
    NotFoundError,
    Overloaded,
    ReferenceImageError,
)
from lineside_inspect.line.config import LineSettings
from lineside_inspect.line.station import Changes, ErrorCode, Station, TagAdapter, TagValue

if TYPE_CHECKING:
    from fastapi import FastAPI

    from lineside_inspect.config import Settings
    from lineside_inspect.server.service import InspectionService

log = logging.getLogger("lineside.line")

TICK_S = 0.05  # heartbeat and ack-timeout resolution


def error_code(exc: BaseException) -> ErrorCode:
    """The ``ErrorCode`` a failed inspection reports to the PLC."""
    if isinstance(exc, CameraUnavailable):
        # the manager answers at once for a camera known to be down; an online (or
        # stale) one that sent nothing in time is "no fresh frame"
        state = exc.health.get("state")
        return ErrorCode.CAMERA_OFFLINE if state in ("offline", "stopped", "starting") \
            else ErrorCode.NO_FRESH_FRAME
    if isinstance(exc, Overloaded | DeadlineExceeded):
        return ErrorCode.OVERLOAD
    if isinstance(exc, ReferenceImageError):
        return ErrorCode.RECIPE_NOT_USABLE
    if isinstance(exc, LinesideError):
        return ErrorCode.MODEL_ERROR
    return ErrorCode.INTERNAL


class PlcLine:
    """The stations of a server and the adapters that show them."""

    def __init__(self, service: InspectionService, settings: LineSettings,
                 adapters: list[TagAdapter]) -> None:
        self.service = service
        self.settings = settings
        self.adapters = adapters
        self.stations: dict[str, Station] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None

    # -- recipes ----------------------------------------------------------------------
    def recipe_names(self) -> list[str]:
        """The loaded recipes in load order (Modbus recipe index = position here)."""
        return [r.name for r in self.service.registry.recipes()]

    def check_recipe(self, camera_id: str, name: str) -> ErrorCode:
        registry = self.service.registry
        try:
            rule = registry.recipe(name) if name else None
        except NotFoundError:
            rule = None
        if rule is None:
            return ErrorCode.UNKNOWN_RECIPE
        try:
            detector = registry.detector_for(rule)
        except NotFoundError:
            return ErrorCode.RECIPE_NOT_USABLE
        cameras = self.service.cameras
        cfg = cameras.configs.get(camera_id) if cameras is not None else None
        has_reference = cfg is not None and cfg.reference is not None
        if detector.needs_reference != has_reference:
            # a reference model without the camera's golden image, or a single-image model
            # on a camera that names one: every frame would be refused
            return ErrorCode.RECIPE_NOT_USABLE
        return ErrorCode.NONE

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        cameras = self.service.cameras
        if cameras is None or not cameras.configs:
            log.warning("line: no cameras configured, so no stations: OPC UA / Modbus not started")
            return
        now = time.monotonic()
        for cid, cfg in cameras.configs.items():
            recipe = cfg.recipe or self.service.registry.default_recipe or ""
            self.stations[cid] = Station(
                cid, recipe, ack_timeout_s=self.settings.ack_timeout_s, now=now,
                check_recipe=functools.partial(self.check_recipe, cid))
            self._locks[cid] = asyncio.Lock()
        started: list[TagAdapter] = []
        try:
            for adapter in self.adapters:
                try:
                    await adapter.start(list(self.stations.values()), self.plc_write)
                except OSError as exc:  # address in use, not an address of this machine...
                    raise ConfigError(f"line: {adapter.name} cannot listen: {exc.strerror or exc}") \
                        from None
                started.append(adapter)
                log.info("line: %s serving %d station(s)", adapter.name, len(self.stations))
        except BaseException:
            for adapter in reversed(started):
                await adapter.stop()
            raise
        self._ticker = asyncio.create_task(self._tick(), name="line-plc-tick")

    async def stop(self) -> None:
        """Close the stations first (TriggerReady off, a part in progress ends with Fail and
        ErrorCode 8, so no PLC waits for a result that never comes), then stop the
        inspections and the adapters. The heartbeat stops with them."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        await asyncio.sleep(0)  # publications already spawned queue on the locks first
        now = time.monotonic()
        for sid, station in self.stations.items():
            changes = station.close(now)
            if ("ErrorCode", int(ErrorCode.SHUTDOWN)) in changes:
                log.warning("line: station %s: server stopping: part in progress ends with "
                            "Fail, ErrorCode 8", sid)
            await self._publish(sid, changes)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for adapter in reversed(self.adapters):
            try:
                await adapter.stop()
            except Exception:
                log.exception("line: stopping %s failed", adapter.name)

    # -- the handshake ------------------------------------------------------------------
    def plc_write(self, station_id: str, tag: str, value: TagValue) -> None:
        """A PLC wrote ``tag`` (called by an adapter on the event loop). The transition
        happens now; its tags are published by a task, after the adapter has stored the
        PLC's own write."""
        station = self.stations.get(station_id)
        if station is None:
            return
        now = time.monotonic()
        step = station.plc_write(tag, value, now)
        self._spawn(self._publish(station_id, step.changes))
        if tag == "Recipe" and station.recipe_fault is not ErrorCode.NONE:
            log.warning("line: station %s: Recipe %r refused (ErrorCode %d): its triggers "
                        "fail until a usable recipe is written", station_id, value,
                        station.recipe_fault)
        elif step.inspect_recipe is None and ("ResultReady", True) in step.changes:
            log.warning("line: station %s: trigger failed with ErrorCode %d: the last Recipe "
                        "write was refused", station_id, station.recipe_fault)
        if step.inspect_recipe is not None:
            # the trigger's own time: the frame judged is one captured after the PLC's write
            self._spawn(self._inspect(station_id, step.inspect_recipe, step.part, now))

    async def _inspect(self, station_id: str, recipe: str, part: int, triggered_at: float) -> None:
        station = self.stations[station_id]
        code = self.check_recipe(station_id, recipe)  # a recipe may have gone since
        if code is not ErrorCode.NONE:
            log.warning("line: station %s: recipe %r cannot be used (ErrorCode %d)",
                        station_id, recipe, code)
            await self._publish(station_id, station.failed(code, time.monotonic(), part=part))
            return
        try:
            result = await self.service.inspect_camera(
                station_id, recipe=recipe or None, timeout_s=self.settings.trigger_timeout_s,
                triggered_at=triggered_at,
                answer=False)  # the PLC hears tags, not the JSON answer
        except Exception as exc:  # fail-safe: whatever went wrong is a Fail with a code
            code = error_code(exc)
            if code is ErrorCode.INTERNAL:
                log.exception("line: station %s: inspection failed", station_id)
            else:
                log.warning("line: station %s: Fail, ErrorCode %d (%s): %s", station_id, code,
                            code.name.lower(), getattr(exc, "message", exc))
            changes = station.failed(code, time.monotonic(), part=part)
        else:
            changes = station.finished(result.verdict == "pass", len(result.defects), result.id,
                                       time.monotonic(), part=part)
        await self._publish(station_id, changes)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for sid, station in self.stations.items():
                changes = station.tick(now)
                if changes:
                    if ("ErrorCode", int(ErrorCode.ACK_TIMEOUT)) in changes:
                        log.warning("line: station %s: no ResultAck within %.1fs: result "
                                    "dropped (ErrorCode 5)", sid, station.ack_timeout_s)
                    await self._publish(sid, changes)

    async def _publish(self, station_id: str, changes: Changes) -> None:
        """Write ``changes`` to every adapter. One station's publications never interleave
        (the lock is first come, first served), so no adapter shows an older state last."""
        if not changes:
            return
        async with self._locks[station_id]:
            for adapter in self.adapters:
                try:
                    await adapter.write(station_id, changes)
                except Exception:
                    log.exception("line: %s: writing station %s failed", adapter.name, station_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def make_adapters(settings: LineSettings, line: PlcLine) -> list[TagAdapter]:
    """The configured protocol adapters (imports asyncua / pymodbus only when used)."""
    adapters: list[TagAdapter] = []
    if settings.opcua is not None:
        from lineside_inspect.line.opcua import OpcUaAdapter

        adapters.append(OpcUaAdapter(settings.opcua))
    if settings.modbus is not None:
        from lineside_inspect.line.modbus import ModbusAdapter

        adapters.append(ModbusAdapter(settings.modbus, line.recipe_names))
    return adapters


def setup_line_plc(app: FastAPI, settings: Settings) -> None:
    """Serve the PLC handshake when ``line.opcua`` or ``line.modbus`` is configured: started
    after the cameras (on the server's event loop), stopped before them."""
    line_settings = settings.line
    if line_settings.opcua is None and line_settings.modbus is None:
        return
    from lineside_inspect.errors import MissingExtraError

    try:
        if line_settings.opcua is not None:
            import asyncua  # noqa: F401
        if line_settings.modbus is not None:
            import pymodbus  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"line.opcua / line.modbus need {exc.name}: install "
                                "lineside[line]") from None
    import anyio.from_thread

    # a port in use is a one-line config error now, not a traceback from the lifespan
    if line_settings.opcua is not None:
        _check_port("line.opcua", line_settings.opcua.host, line_settings.opcua.port)
    if line_settings.modbus is not None:
        _check_port("line.modbus", line_settings.modbus.host, line_settings.modbus.port)
    line = PlcLine(app.state.service, line_settings, [])
    line.adapters = make_adapters(line_settings, line)
    app.state.line_plc = line
    # start-up hooks run in worker threads (after the models, the store and the cameras);
    # the servers themselves run on the event loop, where from_thread puts them
    app.state.on_startup.append(lambda: anyio.from_thread.run(line.start))
    app.state.on_shutdown.append(lambda: anyio.from_thread.run(line.stop))


def _check_port(what: str, host: str, port: int) -> None:
    """Refuse at once an address this machine cannot listen on (in use, not its own)."""
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as sock:
            # as asyncio's server does, so a port in TIME_WAIT is not taken for in use
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise ConfigError(f"{what}: cannot listen on {host}:{port}: "
                                  f"{exc.strerror or exc}") from None
