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
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from lineside_inspect.errors import (
    CameraUnavailable,
    ConfigError,
    DeadlineExceeded,
    LinesideError,
    NotFoundError,
    Overloaded,
    RecipeDoesNotFitFrame,
    ReferenceImageError,
    echo,
)
from lineside_inspect.line.config import LineSettings, is_loopback
from lineside_inspect.line.peer_logs import BOUND
from lineside_inspect.line.station import (
    Changes,
    ErrorCode,
    PartEnd,
    Station,
    TagAdapter,
    TagValue,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from lineside_inspect.config import Settings
    from lineside_inspect.server.service import InspectionService

log = logging.getLogger("lineside.line")

TICK_S = 0.05  # heartbeat and ack-timeout resolution
LOG_EVERY_S = 60.0  # the same warning of a station again (a PLC rewriting a refused Recipe)
STOP_WRITES_S = 2.0  # stop() waits this long for tag publications in flight to complete


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
    if isinstance(exc, ReferenceImageError | RecipeDoesNotFitFrame):
        return ErrorCode.RECIPE_NOT_USABLE
    if isinstance(exc, LinesideError):
        return ErrorCode.MODEL_ERROR
    return ErrorCode.INTERNAL


class PlcLine:
    """The stations of a server and the adapters that show them."""

    def __init__(self, service: InspectionService, settings: LineSettings,
                 adapters: list[TagAdapter],
                 recipes_in_alarm: Callable[[], frozenset[str]] | None = None) -> None:
        """``recipes_in_alarm``: the recipes in fail-rate alarm now (polled each tick and
        at a recipe change; without it ``FailRateAlarm`` stays 0)."""
        self.service = service
        self.settings = settings
        self.adapters = adapters
        self.recipes_in_alarm = recipes_in_alarm
        self.stations: dict[str, Station] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # inspections
        self._writes: set[asyncio.Task[None]] = set()  # tag publications (see _publish)
        self._ticker: asyncio.Task[None] | None = None
        self._closed_at: float | None = None  # monotonic: when the stations closed
        self.failed_parts: dict[str, int] = {}  # per station, since start (the status page)
        # told of each PLC part as it ends for the line (MQTT's part events), on the loop
        self.part_listeners: list[Callable[[PartEnd], None]] = []
        # parts that ended without a verdict, by station and code: only a WARNING line
        # said so, and a Grafana board showed a healthy box while the line rejected parts
        metrics = getattr(service, "metrics", None)
        self.failures = None if metrics is None else Counter(
            "lineside_line_part_failures", "PLC parts that ended without a verdict (Fail "
            "with an ErrorCode), by station and code (docs/line-integration.md)",
            ["station", "code"], registry=metrics.registry)
        self._told = _Told()
        self._names: list[str] | None = None  # the load order of the last tick

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
        has_reference = cfg is not None and cfg.reference_for(rule.name) is not None
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
            # a camera without a recipe follows the server's default, which may come later
            # (a fleet box adds its recipes after the stations start): see use_default
            self.stations[cid] = Station(
                cid, cfg.recipe or self._default_recipe(), follows_default=cfg.recipe is None,
                ack_timeout_s=self.settings.ack_timeout_s, now=now,
                check_recipe=functools.partial(self.check_recipe, cid))
            self.stations[cid].on_failure = functools.partial(self._count_failure, cid)
            self.stations[cid].on_part_end = self._part_ended
            self._locks[cid] = asyncio.Lock()
        cameras.plc_recipe = self._plc_recipe
        table = None if self.settings.modbus is None else self.settings.modbus.recipes
        loaded = set(self.recipe_names())
        if missing := [f"{i}: {n}" for i, n in enumerate(table or []) if n not in loaded]:
            # may still come (a fleet box's first pull, the admin API); a typo would only
            # show as ErrorCode 6 on the line
            log.warning("line.modbus.recipes: not loaded now (a switch to them is refused "
                        "with ErrorCode 6 until they are): %s", ", ".join(missing))
        default = self._default_recipe()
        if table is not None and (outside := [
                f"{cid} ({st.recipe or default})" for cid, st in self.stations.items()
                if (st.recipe or default) and (st.recipe or default) not in table]):
            # its recipe index read back 65535, "no recipe", while its triggers were judged
            # with one (line review, session 36)
            log.warning("line.modbus.recipes: camera(s) %s judge with a recipe not in the "
                        "table: their recipe index reads 65535 until the PLC switches them to "
                        "one that is; add it to the table", ", ".join(outside))
        started: list[TagAdapter] = []
        try:
            for adapter in self.adapters:
                try:
                    await adapter.start(list(self.stations.values()), self.plc_write)
                except (OSError, RuntimeError) as exc:  # address in use, not this machine's
                    # (pymodbus says it with a RuntimeError)
                    reason = exc.strerror if isinstance(exc, OSError) else None
                    raise ConfigError(f"line: {adapter.name} cannot listen: {reason or exc}") \
                        from None
                started.append(adapter)
                log.info("line: %s serving %d station(s)", adapter.name, len(self.stations))
        except BaseException:
            for adapter in reversed(started):
                await adapter.stop()
            raise
        self._ticker = asyncio.create_task(self._tick(), name="line-plc-tick")
        # one part in flight per station: its trigger always finds a place (limiter.py)
        self.service.limiter.reserve(len(self.stations))

    def _plc_recipe(self, camera_id: str) -> str | None:
        """The recipe a station's next PLC trigger uses: the PLC's last accepted ``Recipe``
        write, else the camera's own or the server's default."""
        station = self.stations.get(camera_id)
        return station.recipe if station else None

    async def stop_triggers(self) -> None:
        """SIGTERM came: no station takes a trigger any more (``TriggerReady`` 0), while
        the HTTP server drains; a part in progress still gets its verdict if it comes
        before :meth:`close` (scrapping it at the signal failed parts whose verdict came
        milliseconds later, and the store kept a verdict the PLC never read)."""
        for sid, station in self.stations.items():
            self._publish(sid, station.stop_taking())

    async def close(self) -> None:
        """The server is stopping: no station takes a trigger any more (TriggerReady off),
        and a part in progress ends with Fail and ErrorCode 8, so no PLC waits for a result
        that never comes. Called first on shutdown, while the adapters still serve (the
        PLC can read the code and acknowledge); again by :meth:`stop` (then a no-op)."""
        now = time.monotonic()
        if self._closed_at is None:
            self._closed_at = now
        # every station closed before anything is awaited: a trigger meanwhile is refused
        for sid, station in self.stations.items():
            changes = station.close(now)
            if ("ErrorCode", int(ErrorCode.SHUTDOWN)) in changes:
                log.warning("line: station %s: server stopping: part in progress ends with "
                            "Fail, ErrorCode 8", sid)
            self._publish(sid, changes)

    async def stop(self) -> None:
        """Close the stations (if :meth:`close` did not yet), stop the heartbeat and the
        inspections, let the tag publications in flight complete (a publication cut
        halfway would leave a PLC reading half of a state), then stop the adapters."""
        await self.close()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._writes:
            _done, pending = await asyncio.wait(set(self._writes), timeout=STOP_WRITES_S)
            if pending:
                log.warning("line: %d tag publication(s) still running after %.0f s: "
                            "cancelled", len(pending), STOP_WRITES_S)
                for write in pending:
                    write.cancel()
                await asyncio.wait(pending)
        # the adapters serve the closed stations a while yet: the servers went 3 ms after
        # ErrorCode 8 was set, before a polling PLC had read it
        closed_at = self._closed_at if self._closed_at is not None else time.monotonic()
        hold = closed_at + self.settings.close_hold_s - time.monotonic()
        if hold > 0 and self.adapters and self.stations:
            await asyncio.sleep(hold)
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
        # a station without a recipe of its own judges with the default of now
        changes = station.use_default(self._default_recipe()) if tag == "Trigger" and value \
            else []
        step = station.plc_write(tag, value, now)
        changes += step.changes
        if any(name == "Recipe" for name, _ in changes):
            changes += self._alarm_of(station, self._in_alarm())  # the new recipe's, at once
        self._publish(station_id, changes)
        if tag == "Recipe":
            fault = station.recipe_fault
            if fault is ErrorCode.NONE:
                self._told.forget(station_id)  # a new fault later is told at once
            else:
                # a PLC that rewrites its product every scan would write a line each time:
                # told when the fault starts or changes, then once a minute with a count
                # (the value cut: distinct 200 kB names, each told in full, put 4 MB in
                # the log in 20 writes; line review, session 34)
                n = self._told((station_id, "recipe"), (echo(value), fault), now)
                if n is not None:
                    log.warning("line: station %s: Recipe %s refused (ErrorCode %d): its "
                                "triggers fail until a usable recipe is written%s", station_id,
                                echo(value), fault, _since(n))
        elif step.inspect_recipe is None and ("ResultReady", True) in step.changes:
            n = self._told((station_id, "trigger"), station.recipe_fault, now)
            if n is not None:
                log.warning("line: station %s: trigger failed with ErrorCode %d: the last "
                            "Recipe write was refused%s", station_id, station.recipe_fault,
                            _since(n, "trigger"))
        if step.inspect_recipe is not None:
            # the trigger's own time: the frame judged is one captured after the PLC's write
            self._spawn(self._inspect(station_id, step.inspect_recipe, step.part, now))

    async def _inspect(self, station_id: str, recipe: str, part: int, triggered_at: float) -> None:
        station = self.stations[station_id]
        code = self.check_recipe(station_id, recipe)  # a recipe may have gone since
        if code is not ErrorCode.NONE:
            # e.g. a box whose recipe comes with its first model pull: one line per trigger
            # until then would bury the log
            n = self._told((station_id, "inspect"), (recipe, code), time.monotonic())
            if n is not None:
                log.warning("line: station %s: recipe %r cannot be used (ErrorCode %d)%s",
                            station_id, recipe, code, _since(n, "trigger"))
            self._publish(station_id, station.failed(code, time.monotonic(), part=part))
            return
        self._told.forget(station_id, "inspect")
        try:
            result = await self.service.inspect_camera(
                station_id, recipe=recipe or None, timeout_s=self.settings.trigger_timeout_s,
                triggered_at=triggered_at, reserved=True,  # the line's own place
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
            changes = station.finished(
                result.verdict == "pass", len(result.defects), result.id, time.monotonic(),
                part=part, blank_frame=any(r.rule == "blank_frame" for r in result.reasons),
                wrong_view=any(r.rule == "reference_mismatch" for r in result.reasons))
        self._publish(station_id, changes)

    async def _tick(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            try:
                self.tick(now)
                # the protocol libraries' messages held back a minute: their counts told
                # (a burst that stopped was never counted: line review, session 43)
                BOUND.flush()
            except Exception as exc:
                # heartbeats and ack timeouts go on whatever one tick met: a raise here ended
                # the ticker without a word, and the PLC saw the box's heartbeat stop while
                # its inspections went on (line review, session 36)
                failing = True
                if (n := self._told(("", "tick"), type(exc).__name__, now)) is not None:
                    log.error("line: a heartbeat tick failed (the next goes on): %r%s",
                              exc, _since(n, "failure"), exc_info=exc)
            else:
                if failing:
                    failing = False
                    self._told.forget("", "tick")

    def _part_ended(self, end: PartEnd) -> None:
        for listener in self.part_listeners:
            try:
                listener(end)
            except Exception:  # an output never breaks the handshake
                log.exception("line: a part-end listener failed")

    def _count_failure(self, station_id: str, code: ErrorCode) -> None:
        self.failed_parts[station_id] = self.failed_parts.get(station_id, 0) + 1
        if self.failures is not None:
            self.failures.labels(station_id, code.name.lower()).inc()

    def status(self) -> dict[str, Any]:
        """What the status page shows of the line: the protocols served and each
        station's handshake state."""
        stations = []
        for sid, st in self.stations.items():
            code = int(st.tags["ErrorCode"])
            stations.append({
                "id": sid, "recipe": st.recipe, "trigger_ready": bool(st.tags["TriggerReady"]),
                "busy": bool(st.tags["Busy"]), "result_ready": bool(st.tags["ResultReady"]),
                "error_code": code,
                "error": _code_name(code),
                "failed_parts": self.failed_parts.get(sid, 0)})
        return {"protocols": [a.name for a in self.adapters], "stations": stations}

    def tick(self, now: float) -> None:
        """Heartbeats, ack timeouts, a new default recipe, the fail-rate alarm tags."""
        default = self._default_recipe()
        in_alarm = self._in_alarm()
        # a recipe put or dropped over the API moves the load order, and with it the Modbus
        # index of the recipe in force: published again, the register reads back the
        # recipe a station judges with, not the one now at its old index (line review, 34)
        names = self.recipe_names()
        moved = self._names is not None and names != self._names
        self._names = names
        for sid, station in self.stations.items():
            # Recipe shows what the next trigger uses, also once a default arrives
            changes = station.use_default(default) + station.tick(now)
            if moved and not any(tag == "Recipe" for tag, _ in changes):
                changes.append(("Recipe", station.recipe))
            changes += self._alarm_of(station, in_alarm)
            if changes:
                if ("ErrorCode", int(ErrorCode.ACK_TIMEOUT)) in changes:
                    log.warning("line: station %s: no ResultAck within %.1fs: result "
                                "dropped (ErrorCode 5)", sid, station.ack_timeout_s)
                self._publish(sid, changes)

    def _in_alarm(self) -> frozenset[str] | None:
        """The recipes in fail-rate alarm now; None when that cannot be read (the tags then
        keep their last value: unknown is not "all clear")."""
        if self.recipes_in_alarm is None:
            return frozenset()
        try:
            in_alarm = self.recipes_in_alarm()
        except Exception as exc:  # the handshake goes on whatever the alarm does
            n = self._told(("", "alarm"), type(exc).__name__, time.monotonic())
            if n is not None:  # once a minute, not 20 times a second
                log.error("line: reading the fail-rate alarms failed (FailRateAlarm tags keep "
                          "their last value): %r%s", exc, _since(n, "read"))
            return None
        self._told.forget("", "alarm")
        return in_alarm

    @staticmethod
    def _alarm_of(station: Station, in_alarm: frozenset[str] | None) -> Changes:
        return [] if in_alarm is None else station.show_alarm(station.recipe in in_alarm)

    def _default_recipe(self) -> str:
        return self.service.registry.default_recipe or ""

    def _publish(self, station_id: str, changes: Changes) -> None:
        """Write ``changes`` to every adapter, from a task of its own made now, at the
        transition: the tasks take the station's lock in the order they were made (first
        come, first served), so one station's publications never interleave and no adapter
        shows an older state last. Whoever made it may be cancelled (the ticker, an
        inspection at stop) without cutting it halfway; :meth:`stop` waits for them."""
        if not changes:
            return
        task = asyncio.create_task(self._write(station_id, changes))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, station_id: str, changes: Changes) -> None:
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


class _Told:
    """When to tell a station's recurring warning: at once when what it says changes (a
    fault starts or becomes another), else at most once per :data:`LOG_EVERY_S`."""

    def __init__(self) -> None:
        # (station, kind): (what was told, when, how many times untold since)
        self._last: dict[tuple[str, str], tuple[object, float, int]] = {}

    def __call__(self, key: tuple[str, str], what: object, now: float) -> int | None:
        """The number of times it happened untold since last told, or None: not now."""
        last = self._last.get(key)
        if last is None or last[0] != what or now - last[1] >= LOG_EVERY_S:
            untold = last[2] if last is not None and last[0] == what else 0
            self._last[key] = (what, now, 0)
            return untold
        self._last[key] = (what, last[1], last[2] + 1)
        return None

    def forget(self, station_id: str, kind: str | None = None) -> None:
        """The cause is gone: the next time it is told at once."""
        for key in [k for k in self._last if k[0] == station_id and kind in (None, k[1])]:
            del self._last[key]


def _since(untold: int, what: str = "write") -> str:
    return f" ({untold} more such {what}(s) since last told)" if untold else ""


def make_adapters(settings: LineSettings, line: PlcLine) -> list[TagAdapter]:
    """The configured protocol adapters (imports asyncua / pymodbus only when used)."""
    adapters: list[TagAdapter] = []
    if settings.opcua is not None:
        from lineside_inspect.line.opcua import OpcUaAdapter

        adapters.append(OpcUaAdapter(settings.opcua))
    if settings.modbus is not None:
        from lineside_inspect.line.modbus import ModbusAdapter

        table = settings.modbus.recipes
        # a fixed table when the config gives one, else the server's load order
        names = (lambda: list(table)) if table is not None else line.recipe_names
        adapters.append(ModbusAdapter(settings.modbus, names))
    return adapters


def setup_line_plc(app: FastAPI, settings: Settings) -> None:
    """Serve the PLC handshake when ``line.opcua`` or ``line.modbus`` is configured: started
    after the cameras (on the server's event loop), stopped before them."""
    line_settings = settings.line
    if line_settings.opcua is None and line_settings.modbus is None:
        return
    from lineside_inspect.errors import MissingExtraError, install_hint

    try:
        if line_settings.opcua is not None:
            import asyncua  # noqa: F401
        if line_settings.modbus is not None:
            import pymodbus  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"line.opcua / line.modbus need {exc.name}: "
                                f"{install_hint('line')}") from None
    import anyio.from_thread

    # a port in use is a one-line config error now, not a traceback from the lifespan
    if line_settings.opcua is not None:
        _check_port("line.opcua", line_settings.opcua.host, line_settings.opcua.port)
        # so is a certificate, key or trust folder that cannot serve Basic256Sha256
        from lineside_inspect.line.opcua import check_security

        check_security(line_settings.opcua)
    if line_settings.modbus is not None:
        _check_port("line.modbus", line_settings.modbus.host, line_settings.modbus.port)
    if line_settings.opcua is not None and line_settings.modbus is not None \
            and line_settings.modbus.port == line_settings.opcua.port != 0:
        # each port alone is free before either listens: the second then failed to bind
        raise ConfigError(f"line.modbus: port {line_settings.modbus.port} is also "
                          "line.opcua's; give each its own")
    for what, listener in (("line.opcua", line_settings.opcua), ("line.modbus", line_settings.modbus)):
        # the stations start before the HTTP server binds: on its port they came up (a PLC
        # could trigger), then the server stopped on "address already in use" with nothing
        # else listening by then (line review, session 36)
        if listener is not None and listener.port == settings.port != 0 \
                and _same_address(listener.host, settings.host):
            raise ConfigError(f"{what}: port {listener.port} is also the HTTP server's "
                              "(port); give each its own")

    def recipes_in_alarm() -> frozenset[str]:
        # read when polled: duck-typed, so the line does not import the lifecycle room
        alarm = getattr(getattr(app.state, "lifecycle", None), "alarm", None)
        return frozenset() if alarm is None else alarm.recipes_in_alarm()

    line = PlcLine(app.state.service, line_settings, [], recipes_in_alarm)
    line.adapters = make_adapters(line_settings, line)
    app.state.line_plc = line
    # start-up hooks run in worker threads (after the models, the store and the cameras);
    # the servers themselves run on the event loop, where from_thread puts them
    app.state.on_startup.append(lambda: anyio.from_thread.run(line.start))
    # shutdown closes the stations first of all (before the server drains its inspections),
    # while the adapters still serve the code-8 results; they stop with the other hooks
    app.state.on_stopping.append(lambda: anyio.from_thread.run(line.close))
    app.state.on_signal.append(line.stop_triggers)  # at SIGTERM already, before the drain
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


def _same_address(a: str, b: str) -> bool:
    """Whether listening on ``a`` and on ``b`` (one port) would clash: the same address,
    either one every address (0.0.0.0, ::, empty), or ``localhost`` beside a loopback one."""
    wildcard = ("", "0.0.0.0", "::")
    return a == b or a in wildcard or b in wildcard or (
        "localhost" in (a, b) and is_loopback(a) and is_loopback(b))


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return str(code)
